"""tf.data pipelines (pure TensorFlow ops, so they also run on remote PS workers).

Training element, one user: ``history`` int64 ``[T]`` = the training sequence
minus its last item, ``targets`` int64 ``[T]`` = the same shifted by one
(position t predicts item t+1). Both keep the most recent ``max_len`` items.
Batches are padded with 0 *after* the items (right padding); the models find
valid positions from ``history != 0`` and so accept any padding layout.

With ``bucket_by_length`` users of similar length share a batch that is padded
only to its own longest history: on Amazon Beauty (mean length 8.9, cap 50)
this cuts the positions the transformer processes several-fold.

Evaluation element: ``history`` int64 ``[max_len]`` (right padded) and
``target`` int64 scalar.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf

from coco_tf.data.split import EvalSet

# Length buckets of the training batches (history lengths); boundaries at or above max_len are left out.
BUCKET_BOUNDARIES = (3, 5, 8, 12, 20, 30, 40)


def bucket_boundaries(max_len: int) -> List[int]:
    """The bucket boundaries of :func:`train_dataset` for ``max_len``."""
    return [b for b in BUCKET_BOUNDARIES if b < max_len]


def count_batches(lengths: np.ndarray, batch_size: int, max_len: int, bucket: bool) -> int:
    """Batches in one pass of :func:`train_dataset` over examples of history ``lengths`` ``[N]``."""
    if not bucket:
        return int(math.ceil(len(lengths) / batch_size))
    bucket_ids = np.searchsorted(bucket_boundaries(max_len), lengths, side="right")
    return int(sum(math.ceil(c / batch_size) for c in np.bincount(bucket_ids) if c))


def _rows_dataset(columns: Dict[str, List[np.ndarray]]) -> tf.data.Dataset:
    """A dataset of variable-length int64 rows, one dict element per row.

    Rows are stored as one flat constant plus row offsets and sliced in the
    graph, which keeps the pipeline serialisable for remote workers.
    """
    out = {}
    n = None
    for name, rows in columns.items():
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        out[name] = (tf.constant(np.concatenate(rows).astype(np.int64)), tf.constant(offsets))
        n = len(rows)

    def row(i):
        return {name: values[offsets[i] : offsets[i + 1]] for name, (values, offsets) in out.items()}

    return tf.data.Dataset.range(n).map(row, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def training_examples(train_sequences: List[np.ndarray], max_len: int):
    """(histories, targets) as lists of arrays: each prefix predicts its next item."""
    hist, tgt = [], []
    for seq in train_sequences:
        if len(seq) < 2:
            continue
        seq = seq[-(max_len + 1) :]
        hist.append(seq[:-1])
        tgt.append(seq[1:])
    return hist, tgt


def train_dataset(
    train_sequences: List[np.ndarray],
    max_len: int,
    batch_size: int,
    seed: int,
    bucket_by_length: bool = True,
    shard: Optional[tuple] = None,
    epoch: Optional[int] = None,
) -> tf.data.Dataset:
    """Shuffled, padded batches ``{"history": [B, T], "targets": [B, T]}`` (T <= max_len).

    Args:
      shard: ``(num_shards, index)`` to read only every num_shards-th user
        (parameter-server workers each read their own shard).
      epoch: one pass in the order of that epoch, a function of ``(seed, epoch)`` alone (the
        local trainer: a resumed run re-creates the epoch's order and skips the batches it
        already trained on). ``None``: reshuffled at every iteration.
    """
    hist, tgt = training_examples(train_sequences, max_len)
    if not hist:
        raise ValueError("no training examples: every user sequence is shorter than 4 items")
    ds = _rows_dataset({"history": hist, "targets": tgt})
    if shard is not None:
        ds = ds.shard(*shard)
    if epoch is None:
        ds = ds.shuffle(len(hist), seed=seed, reshuffle_each_iteration=True)
    else:
        ds = ds.shuffle(len(hist), seed=(seed * 1_000_003 + epoch) % (2**31 - 1), reshuffle_each_iteration=False)
    if bucket_by_length:
        boundaries = bucket_boundaries(max_len)
        ds = ds.bucket_by_sequence_length(
            element_length_func=lambda x: tf.shape(x["history"])[0],
            bucket_boundaries=boundaries,
            bucket_batch_sizes=[batch_size] * (len(boundaries) + 1),
            padded_shapes={"history": [None], "targets": [None]},
        )
    else:
        ds = ds.padded_batch(batch_size, padded_shapes={"history": [max_len], "targets": [max_len]})
    return ds.prefetch(tf.data.AUTOTUNE)


def pad_histories(histories: List[np.ndarray], max_len: int) -> np.ndarray:
    """Right-padded int64 ``[N, max_len]`` keeping the most recent ``max_len`` items."""
    out = np.zeros((len(histories), max_len), np.int64)
    for i, h in enumerate(histories):
        h = h[-max_len:]
        out[i, : len(h)] = h
    return out


def eval_dataset(eval_set: EvalSet, max_len: int, batch_size: int) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(
        {"history": pad_histories(eval_set.histories, max_len), "target": eval_set.targets}
    ).batch(batch_size).prefetch(tf.data.AUTOTUNE)
