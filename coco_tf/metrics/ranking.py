"""Full-ranking evaluation: the target's rank among all items, Recall@K, NDCG@K.

Ranks are 0-based and *pessimistic*: an item that ties with the target counts
as ranked above it, so a model that scores every item the same gets rank
``num_items - 1`` rather than a perfect rank 0. Padding (id 0) is never ranked.

For one example with rank ``r``:

* ``Recall@K = 1[r < K]`` (one relevant item, so Recall@K equals HitRate@K);
* ``NDCG@K = 1[r < K] / log2(r + 2)``.

K may exceed the catalog size; every rank is then below K.
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional

import numpy as np
import tensorflow as tf


def history_exclusion(history: tf.Tensor, targets: tf.Tensor, num_cols) -> tf.Tensor:
    """bool ``[B, num_cols]``: True at the items of ``history`` ``[B, T]`` other than ``targets``
    ``[B]`` (padding id 0 is not marked): what ``eval.exclude_history`` leaves out of a ranking."""
    history = tf.cast(history, tf.int32)
    targets = tf.cast(targets, tf.int32)
    drop = (history != targets[:, tf.newaxis]) & (history > 0)  # [B, T]
    rows = tf.broadcast_to(tf.range(tf.shape(history)[0])[:, tf.newaxis], tf.shape(history))
    idx = tf.stack([tf.boolean_mask(rows, drop), tf.boolean_mask(history, drop)], axis=1)
    marked = tf.scatter_nd(idx, tf.ones([tf.shape(idx)[0]], tf.int32), [tf.shape(history)[0], num_cols])
    return marked > 0


def target_ranks(
    scores: tf.Tensor, targets: tf.Tensor, history: Optional[tf.Tensor] = None
) -> tf.Tensor:
    """Pessimistic 0-based rank of each target.

    Args:
      scores: float ``[B, num_items + 1]``; column 0 is padding and is ignored.
      targets: int ``[B]`` item ids in ``1..num_items``.
      history: optional int ``[B, T]``; when given, history items other than the
        target are ranked below every other item (``eval.exclude_history``).

    Returns:
      int32 ``[B]``; a NaN target score gets the worst rank ``num_items``.
    """
    scores = tf.convert_to_tensor(scores)
    targets = tf.cast(targets, tf.int32)
    num_cols = tf.shape(scores)[1]
    neg_inf = tf.constant(-np.inf, scores.dtype)
    is_item = tf.range(num_cols) > 0
    scores = tf.where(is_item[tf.newaxis, :], scores, neg_inf)
    if history is not None:
        scores = tf.where(history_exclusion(history, targets, num_cols), neg_inf, scores)
    target_score = tf.gather(scores, targets, batch_dims=1)
    at_or_above = tf.reduce_sum(tf.cast(scores >= target_score[:, tf.newaxis], tf.int32), axis=1)
    rank = at_or_above - 1  # the target itself is always counted
    worst = num_cols - 1
    return tf.where(tf.math.is_nan(target_score), worst, tf.maximum(rank, 0))


class RankingMetrics:
    """Accumulates ranks over batches; ``result()`` gives Recall@K and NDCG@K."""

    def __init__(self, ks: Iterable[int] = (5, 10, 20)):
        self.ks = sorted(set(int(k) for k in ks))
        self.reset()

    def reset(self) -> None:
        self._ranks = []

    def update(self, ranks) -> None:
        self._ranks.append(np.asarray(ranks).reshape(-1))

    @property
    def count(self) -> int:
        return int(sum(len(r) for r in self._ranks))

    def result(self) -> Dict[str, float]:
        ranks = np.concatenate(self._ranks) if self._ranks else np.zeros(0, np.int64)
        return metrics_from_ranks(ranks, self.ks)


def metrics_from_ranks(ranks: np.ndarray, ks: Iterable[int]) -> Dict[str, float]:
    ranks = np.asarray(ranks, np.float64)
    out: Dict[str, float] = {}
    for k in sorted(set(ks)):
        hit = ranks < k
        out[f"recall@{k}"] = float(hit.mean()) if len(ranks) else 0.0
        out[f"ndcg@{k}"] = float((hit / np.log2(ranks + 2.0)).mean()) if len(ranks) else 0.0
    return out


def popularity_metrics(train_sequences, targets, num_items: int, ks: Iterable[int] = (5, 10)) -> Dict[str, float]:
    """The popularity baseline (RecBole's ``Pop``): every user ranks the items by their count in
    ``train_sequences``; Recall / NDCG@K of ``targets`` ``[U]`` with the same pessimistic ranks."""
    counts = np.bincount(np.concatenate([np.asarray(s, np.int64) for s in train_sequences]),
                         minlength=num_items + 1)
    ordered = np.sort(counts[1:])
    at_or_above = len(ordered) - np.searchsorted(ordered, counts[np.asarray(targets, np.int64)], side="left")
    return metrics_from_ranks(at_or_above - 1, ks)


def format_table(result: Dict) -> str:
    """The metrics table the CLI prints."""
    keys = list(result["test"])
    ks = sorted({int(k.split("@")[1]) for k in keys})
    head = "| split | " + " | ".join(f"R@{k} | N@{k}" for k in ks) + " |"
    rule = "|---|" + "---|---|" * len(ks)
    rows = [head, rule]
    for split in ("valid", "test"):
        m = result[split]
        rows.append(f"| {split} | " + " | ".join(f"{m[f'recall@{k}']:.4f} | {m[f'ndcg@{k}']:.4f}" for k in ks) + " |")
    return "\n".join(rows)
