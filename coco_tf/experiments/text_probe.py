"""Offline probe: does a text-space score from the history add to a trained model's ranking?

For a finished run (its best checkpoint) and an item text table ``T`` (rows L2-normalised):

    score(u, i) = s_run(u, i) + λ · q_u · t̂_i,   q_u = normalize(Σ_{k < L} ρ^k · t̂_{h_u,-k})

for a grid of λ, L (``--windows``, default 1 3) and ρ (``--decays``, default 0.5), on validation (select here; read test once, for the chosen λ).
λ = 0 is the run itself. ``--alone`` ranks by the text score only. This is the fixed-weight form of
``coco.text_score`` (``coco_tf/methods/text_space.py``), which learns ``a`` (λ) and adds the LLM
branch's ``W · s_u``; ``docs/results.md`` §11 records what it showed on Beauty.

Usage::

    python -m coco_tf.experiments.text_probe runs/base --table llm \\
        --set llm.checkpoint=/work/ckpt/beauty_tiny_end [--shuffle] [--exclude_history] [--no_self]
    python -m coco_tf.experiments.text_probe runs/base --table tfidf     # numpy TF-IDF of the titles

``--table llm`` builds the item text table a kar/coco run of the run's config plus ``--set`` would
read (``coco_tf.llm.assets``, cached in ``--cache_dir``). ``--shuffle``: the rows permuted across items
(``llm.text_table_shuffle``'s permutation): the knowledge control. ``--exclude_history``: the
history's items ranked last (``eval.exclude_history``). ``--no_self``: the history's own items get
no text score (their self-similarity is 1).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

import coco_tf  # noqa: F401  (Keras 2 behind tf.keras before TensorFlow is imported)
import tensorflow as tf

from coco_tf.data.pipeline import pad_histories
from coco_tf.experiments.analysis import load_run
from coco_tf.llm.item_text import item_texts
from coco_tf.methods.text_space import recency_weights
from coco_tf.metrics.ranking import metrics_from_ranks, target_ranks
from coco_tf.training.inputs import shuffle_item_rows

LAMBDAS = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0)
WINDOWS = (1, 3)
DECAYS = (0.5,)


def text_table(run, kind: str, overrides=(), cache_dir: str = "", run_dir: str = "") -> np.ndarray:
    """``[num_items + 1, D]`` item text vectors: numpy TF-IDF of ``{title}`` (``tfidf``) or of
    ``{title} | {categories}`` (``tfidf_cat``), or the LLM item text table (``llm``)."""
    if kind.startswith("tfidf"):
        from coco_tf.llm.probe import tfidf_vectors

        return tfidf_vectors(item_texts(run.dataset, "{title} | {categories}" if kind == "tfidf_cat" else "{title}"))
    import os

    from coco_tf.config import load_config
    from coco_tf.llm.assets import build_llm_assets

    cfg = load_config(os.path.join(run_dir, "config.yaml"), list(overrides))
    return build_llm_assets(cfg, run.dataset, cache_dir or None).item_text_table


def history_query(padded: np.ndarray, rows: np.ndarray, window: int, decay: float = 0.5) -> np.ndarray:
    """``[U, D]``: each padded history's newest ``window`` rows, pooled with the weights
    ``coco.text_score`` uses (``recency_weights``; ``coco.text_window``, ``coco.text_decay``), normalised."""
    weights = recency_weights(tf.constant(padded), window, decay).numpy()  # [U, T]
    q = sum(weights[:, t, None] * rows[padded[:, t]] for t in range(padded.shape[1]))  # [U, D] (D may be large)
    return q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-8)


def metrics(ranks: np.ndarray) -> dict:
    """R@5, R@10, N@5, N@10 of 0-based ranks (``metrics_from_ranks``)."""
    m = metrics_from_ranks(ranks, (5, 10))
    return {f"{name[0].upper()}@{k}": m[f"{name}@{k}"] for name in ("recall", "ndcg") for k in (5, 10)}


def probe(run, rows: np.ndarray, split: str, exclude_history=False, no_self=False, alone=False, batch=1024,
          windows=WINDOWS, decays=DECAYS):
    """``{(window, decay, λ): metrics}`` on ``split`` (see the module doc)."""
    es = getattr(run.split, split)
    acc = {(w, d, lam): [] for w in windows for d in decays for lam in LAMBDAS if not (alone and lam == 0)}
    for start in range(0, len(es.targets), batch):
        padded = pad_histories([np.asarray(h, np.int64) for h in es.histories[start:start + batch]],
                               run.cfg.data.max_len)
        targets = tf.constant(es.targets[start:start + batch])
        history = tf.constant(padded)
        if alone:
            base = np.zeros([len(padded), rows.shape[0]], np.float32)
        else:
            base = run.model.score_all(run.model({"history": history}, training=False)).numpy()
        excluded = history if exclude_history else None
        for w in windows:
            for d in decays:
                text = history_query(padded, rows, w, d) @ rows.T
                if no_self:
                    np.put_along_axis(text, padded, 0.0, axis=1)  # (column 0, padding, is never ranked)
                for lam in LAMBDAS:
                    if (w, d, lam) in acc:
                        acc[(w, d, lam)].append(target_ranks(base + lam * text, targets, excluded).numpy())
    return {key: metrics(np.concatenate(v)) for key, v in acc.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--table", default="llm", choices=("llm", "tfidf", "tfidf_cat"))
    p.add_argument("--set", action="append", default=[], help="config override for --table llm (key=value)")
    p.add_argument("--cache_dir", default="")
    p.add_argument("--split", default="valid", choices=("valid", "test"))
    p.add_argument("--shuffle", action="store_true")
    p.add_argument("--exclude_history", action="store_true")
    p.add_argument("--no_self", action="store_true")
    p.add_argument("--alone", action="store_true", help="rank by the text score alone")
    p.add_argument("--windows", type=int, nargs="+", default=list(WINDOWS), help="history lengths L")
    p.add_argument("--decays", type=float, nargs="+", default=list(DECAYS), help="recency ratios ρ in (0, 1]")
    args = p.parse_args(argv)
    run = load_run(args.run_dir)
    rows = np.asarray(text_table(run, args.table, args.set, args.cache_dir, args.run_dir), np.float32)
    if args.shuffle:
        rows = shuffle_item_rows(rows)
    rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-8)
    rows[0] = 0.0
    result = probe(run, rows, args.split, args.exclude_history, args.no_self, args.alone,
                   windows=args.windows, decays=args.decays)
    for (w, d, lam), m in result.items():
        print(json.dumps({"split": args.split, "L": w, "decay": d, "lambda": lam,
                          **{k: round(v, 4) for k, v in m.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
