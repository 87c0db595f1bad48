"""Category agreement of a decoder's title-only item text table under other poolings (issue #17).

The shipped table mean-pools the last hidden states over a title's tokens
(``coco_tf.llm.item_text_table``). This asks whether another pooling of the
same decoder closes the gap to TF-IDF: smooth-inverse-frequency weights
``a / (a + p(token))`` (Arora et al. 2017) with or without removing the first
principal component, IDF weights, centering, the input embeddings instead of the
hidden states, the last token, and the title followed by the pretraining
template's separator ``" |"`` (the position that predicts the category).
Token frequencies come from the catalog's titles (metadata only). Prints a table.

Usage::

    python bench/bench_probe_pooling.py --data /work/shared/data/amazon-beauty \\
        --checkpoint /work/ckpt/beauty_small [--preset small]
"""

import argparse

import coco_tf  # noqa: F401  (Keras 2 behind tf.keras)
import numpy as np
import tensorflow as tf

from coco_tf.config import load_config
from coco_tf.data.loader import load_dataset
from coco_tf.llm import probe
from coco_tf.llm.item_text import item_texts


def _remove_top_component(v):
    v = v - v.mean(0)
    _, _, vt = np.linalg.svd(v, full_matrices=False)
    return v - (v @ vt[:1].T) @ vt[:1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--checkpoint", default="", help="decoder directory (empty: the random preset)")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--template", default="{title} | {categories}", help="the tokenizer's training template")
    args = parser.parse_args()
    overrides = [f"data.path={args.data}", f"llm.item_text_template={args.template}", f"llm.preset={args.preset}"]
    if args.checkpoint:
        overrides.append(f"llm.checkpoint={args.checkpoint}")
    cfg = load_config("configs/beauty_sasrec.yaml", overrides)
    catalog = load_dataset(cfg.data)
    backbone, tokenizer = probe.load_decoder(cfg, item_texts(catalog, cfg.llm.item_text_template))
    ids, labels, titles = probe.probe_items(catalog)
    length = probe.SEQUENCE_LENGTH + 1

    all_ids, all_mask = tokenizer.encode([t for t in titles[1:] if t.strip()], length)
    counts = np.bincount(all_ids[all_mask.astype(bool)], minlength=backbone.vocabulary_size).astype(np.float64)
    freq = counts / counts.sum()

    @tf.function(reduce_retracing=True)
    def run(t, m):
        hidden = backbone({"token_ids": t, "padding_mask": m}, training=False)
        return tf.cast(hidden, tf.float32), tf.cast(backbone.embed_tokens(t), tf.float32)

    def encode(texts):
        tid, mask = tokenizer.encode(texts, length)
        outs = [run(tf.constant(tid[s:s + 256]), tf.constant(mask[s:s + 256])) for s in range(0, len(texts), 256)]
        return tid, mask.astype(np.float32), np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])

    def pool(x, mask, w):
        w = w * mask
        return (x * w[:, :, None]).sum(1) / np.maximum(w.sum(1, keepdims=True), 1e-9)

    tid, mask, hidden, embedded = encode([titles[i] for i in ids])
    ones = np.ones_like(mask)
    sif = freq[tid]
    last = hidden[np.arange(len(ids)), mask.sum(1).astype(int) - 1]
    _, sep_mask, sep_hidden, _ = encode([titles[i] + " |" for i in ids])
    sep_last = sep_hidden[np.arange(len(ids)), sep_mask.sum(1).astype(int) - 1]
    variants = {
        "mean (shipped)": pool(hidden, mask, ones),
        "mean, centred": pool(hidden, mask, ones) - pool(hidden, mask, ones).mean(0),
        "mean, top component removed": _remove_top_component(pool(hidden, mask, ones)),
        "SIF a=1e-3": pool(hidden, mask, 1e-3 / (1e-3 + sif)),
        "SIF a=1e-3, top component removed": _remove_top_component(pool(hidden, mask, 1e-3 / (1e-3 + sif))),
        "IDF, top component removed": _remove_top_component(pool(hidden, mask, -np.log(np.maximum(sif, 1e-12)))),
        "input embeddings, mean": pool(embedded, mask, ones),
        "last token": last,
        "title + ' |', mean": pool(sep_hidden, sep_mask, np.ones_like(sep_mask)),
        "title + ' |', last token": sep_last,
    }
    print(f"decoder: {args.checkpoint or args.preset + ' (random)'}; {len(ids)} items with a leaf category")
    print("| pooling | category agreement |\n|---|---|")
    for name, v in variants.items():
        print(f"| {name} | {probe.nearest_neighbour_agreement(v, labels):.4f} |", flush=True)
    print(f"| TF-IDF of the titles (reference) | {probe.tfidf_probes(catalog, args.template)['category_agreement']:.4f} |")


if __name__ == "__main__":
    main()
