"""Knowledge probes of a decoder on its catalog's text.

* ``perplexity``: next-token perplexity (``exp`` of the mean NLL per predicted
  token, tied LM head) on the held-out 5% of item texts
  (``coco_tf.llm.corpus``), rendered with ``llm.item_text_template``;
* ``category_agreement``: over items with a known leaf category and a title, the
  share whose nearest neighbour (cosine, the item itself excluded, among those
  items) has the same leaf category, in an item text table encoded from the
  TITLE ONLY (``{title}``, whatever the template): a template with
  ``{categories}`` would put the answer into the text. The same number for a
  bag-of-words TF-IDF of the titles (numpy) is the reference;
* ``category_agreement_generated``: the same over the item text table of
  ``llm.item_text_source=written``, i.e. vectors of what the decoder *writes*: each
  title followed by the template's separator (``" |"`` before ``{categories}``) is continued
  greedily for at most ``llm.knowledge_tokens`` tokens (it stops at the end-of-text token) and
  mean-pooled over what it wrote (``coco_tf.llm.knowledge``); a pretrained decoder writes the
  category path it learnt, a random one writes noise;
* ``..._heldout``: the agreements among the 5% of items held out of pretraining only (their
  texts were never trained on, so this part is generalisation, not memory); TF-IDF has both too;
* ``prompt_spread``: mean pairwise cosine of the K codebook-init prompt
  encodings (``coco.codebook_size`` texts of
  ``coco_tf.llm.prompts.prompt_texts``); lower = more distinct.

Usage::

    python -m coco_tf.llm.probe --config configs/beauty_sasrec.yaml \\
        --set data.path=/work/shared/data/amazon-beauty --set llm.checkpoint=/work/ckpt/beauty_tiny
    # without llm.checkpoint: the random llm.preset decoder (seed train.seed)
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import re
import sys
from typing import Dict, Optional

import numpy as np
import tensorflow as tf

from coco_tf.llm.prompts import prompt_texts
from coco_tf.llm.corpus import split_corpus
from coco_tf.llm.item_text import TITLE_TEMPLATE, item_texts, leaf_categories

SEQUENCE_LENGTH = 32  # tokens per item text, as the item text table
BATCH_SIZE = 256


def perplexity(lm, tokenizer, texts, sequence_length: int = SEQUENCE_LENGTH, batch_size: int = BATCH_SIZE) -> float:
    """Next-token perplexity of ``lm`` (a ``CausalLM``) over ``texts`` (list of str), the
    end-of-text token included as pretraining reads them (``TitleTokenizer.encode_with_end``)."""
    total, count = 0.0, 0.0
    for start in range(0, len(texts), batch_size):
        ids, mask = tokenizer.encode_with_end(texts[start:start + batch_size], sequence_length)
        nll, n = lm.token_nll(tf.constant(ids), tf.constant(mask))
        total += float(nll)
        count += float(n)
    if count == 0:
        return float("nan")
    return float(math.exp(total / count))


def nearest_neighbour_agreement(vectors: np.ndarray, labels: np.ndarray, chunk: int = 1024) -> float:
    """Share of rows whose cosine nearest neighbour (itself excluded) has the same label.

    Args:
        vectors: float ``[n, d]`` (zero rows are never anyone's neighbour).
        labels: int ``[n]``.
    """
    x = np.asarray(vectors, np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.maximum(norms, 1e-12)
    n = len(x)
    if n < 2:
        return float("nan")
    hits = 0
    for start in range(0, n, chunk):
        sims = x[start:start + chunk] @ x.T
        rows = np.arange(sims.shape[0])
        sims[rows, start + rows] = -np.inf
        sims[:, norms[:, 0] == 0] = -np.inf
        hits += int(np.sum(labels[np.argmax(sims, axis=1)] == labels[start:start + chunk]))
    return hits / n


def probe_items(catalog):
    """``(item ids, leaf labels, titles)`` of the items the agreement probe scores."""
    titles = item_texts(catalog, TITLE_TEMPLATE)
    leaf = leaf_categories(catalog)
    ids = np.array([i for i in range(1, len(titles)) if leaf[i] > 0 and titles[i].strip()], np.int64)
    return ids, leaf[ids], titles


def tfidf_vectors(texts) -> np.ndarray:
    """Dense L2-normalised TF-IDF ``[len(texts), V]`` over lower-cased ``\\w+`` words (numpy).

    idf = ln((1 + n) / (1 + df)) + 1. Only words in at least two texts get a column
    (the others cannot be shared by two items), but every word counts in the norm,
    so cosines equal those of the full TF-IDF matrix.
    """
    docs = [collections.Counter(re.findall(r"\w+", t.lower())) for t in texts]
    df = collections.Counter(w for d in docs for w in d)
    n = len(docs)
    idf = {w: math.log((1 + n) / (1 + c)) + 1.0 for w, c in df.items()}
    shared = sorted(w for w, c in df.items() if c >= 2)
    column = {w: j for j, w in enumerate(shared)}
    out = np.zeros((n, max(1, len(shared))), np.float32)
    for i, d in enumerate(docs):
        weights = {w: c * idf[w] for w, c in d.items()}
        norm = math.sqrt(sum(v * v for v in weights.values())) or 1.0
        for w, v in weights.items():
            if w in column:
                out[i, column[w]] = v / norm
    return out


def heldout_probe_rows(catalog, ids: np.ndarray, template: str) -> np.ndarray:
    """bool ``[len(ids)]``: which probe items (``ids`` of :func:`probe_items`) are among the
    pretraining held-out 5%."""
    return np.isin(ids, split_corpus(item_texts(catalog, template)).heldout_ids)


def _agreements(vectors, labels, heldout) -> Dict[str, float]:
    out = {"all": nearest_neighbour_agreement(vectors, labels)}
    out["heldout"] = nearest_neighbour_agreement(vectors[heldout], labels[heldout]) if heldout.sum() >= 2 else float("nan")
    return out


def tfidf_probes(catalog, template: str) -> Dict[str, float]:
    """The TF-IDF reference's category agreement, on all probe items and among the held-out ones."""
    ids, labels, titles = probe_items(catalog)
    a = _agreements(tfidf_vectors([titles[i] for i in ids]), labels, heldout_probe_rows(catalog, ids, template))
    return {"category_agreement": a["all"], "category_agreement_heldout": a["heldout"]}


def prompt_spread(backbone, tokenizer, k: int) -> float:
    """Mean pairwise cosine of the ``k`` codebook-init prompt encodings (off-diagonal)."""
    from coco_tf.llm.item_text_table import encode_texts

    v = encode_texts(prompt_texts(k), backbone, tokenizer)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    sims = v @ v.T
    if k < 2:
        return float("nan")
    return float((sims.sum() - np.trace(sims)) / (k * (k - 1)))


def run_probes(cfg, catalog, backbone, tokenizer, lm=None) -> Dict[str, Optional[float]]:
    """The three probes of one decoder; ``perplexity`` is None without an LM (untied head unknown)."""
    from coco_tf.llm.causal_lm import CausalLM

    if lm is None and backbone.tie_word_embeddings:
        lm = CausalLM(backbone)
    from coco_tf.llm.item_text_table import build_item_text_table
    from coco_tf.llm.knowledge import knowledge_prompt

    texts = item_texts(catalog, cfg.llm.item_text_template)
    heldout = [texts[i] for i in split_corpus(texts).heldout_ids]
    out = {"heldout_perplexity": perplexity(lm, tokenizer, heldout) if lm is not None and heldout else None}
    ids, labels, titles = probe_items(catalog)
    rows = heldout_probe_rows(catalog, ids, cfg.llm.item_text_template)
    if len(ids) >= 2:
        table = build_item_text_table(titles, backbone, tokenizer, cache_dir=None, sequence_length=SEQUENCE_LENGTH,
                                      batch_size=BATCH_SIZE, verbose=0)
        a = _agreements(table[ids], labels, rows)
        out.update(category_agreement=a["all"], category_agreement_heldout=a["heldout"])
        if cfg.llm.knowledge_tokens > 0 and backbone.tie_word_embeddings:
            # The item text table of llm.item_text_source=written: what the decoder writes per title.
            written = build_item_text_table(titles, backbone, tokenizer, cache_dir=None, sequence_length=SEQUENCE_LENGTH,
                                            batch_size=BATCH_SIZE, verbose=0, knowledge_tokens=cfg.llm.knowledge_tokens,
                                            knowledge_prompt=knowledge_prompt(cfg.llm.item_text_template))
            a = _agreements(written[ids], labels, rows)
            out.update(category_agreement_generated=a["all"], category_agreement_generated_heldout=a["heldout"])
    else:
        out["category_agreement"] = float("nan")
    out["prompt_spread"] = prompt_spread(backbone, tokenizer, cfg.coco.codebook_size)
    return out


def format_table(rows: Dict[str, Dict]) -> str:
    """``{name: probes}`` as an aligned text table."""
    def cell(v, digits):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"

    lines = [f"{'decoder':<22}{'held-out ppl':>14}{'cat. agreement':>16}{'(held-out items)':>18}"
             f"{'generated':>11}{'(held-out items)':>18}{'prompt spread':>15}"]
    for name, r in rows.items():
        lines.append(
            f"{name:<22}{cell(r.get('heldout_perplexity'), 2):>14}{cell(r.get('category_agreement'), 4):>16}"
            f"{cell(r.get('category_agreement_heldout'), 4):>18}{cell(r.get('category_agreement_generated'), 4):>11}"
            f"{cell(r.get('category_agreement_generated_heldout'), 4):>18}{cell(r.get('prompt_spread'), 4):>15}"
        )
    return "\n".join(lines)


def load_decoder(cfg, texts):
    """``(backbone, tokenizer)`` for ``cfg.llm``: the checkpoint, or the random preset seeded by ``train.seed``."""
    from coco_tf.llm.source import build_source_backbone
    from coco_tf.llm.tokenizer import catalog_tokenizer

    backbone = build_source_backbone(cfg, lora_rank=0)
    tokenizer = catalog_tokenizer(texts, cfg.llm.checkpoint or None, backbone.vocabulary_size)
    return backbone, tokenizer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coco_tf.llm.probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="YAML config (data.*, llm.*, coco.codebook_size)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="dotted.key=value")
    parser.add_argument("--out", default=None, help="also write the probes as JSON here")
    args = parser.parse_args(argv)
    from coco_tf.config import ConfigError, load_config
    from coco_tf.data.loader import load_dataset

    try:
        cfg = load_config(args.config, args.overrides)
        catalog = load_dataset(cfg.data)
        texts = item_texts(catalog, cfg.llm.item_text_template)
        backbone, tokenizer = load_decoder(cfg, texts)
        name = cfg.llm.checkpoint or f"{cfg.llm.preset} (random)"
        rows = {name: run_probes(cfg, catalog, backbone, tokenizer),
                "TF-IDF (titles)": tfidf_probes(catalog, cfg.llm.item_text_template)}
    except (ConfigError, ValueError, OSError) as e:
        print(f"probe: error: {e}", file=sys.stderr)
        return 2
    print(format_table(rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
