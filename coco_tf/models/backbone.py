"""The interface every sequential backbone (query tower) implements.

A backbone maps a padded item-id history to one hidden state per position and
to one user vector. The item embedding table is *shared* with the candidate
tower, so it is passed in rather than owned.

Padding: id 0, at any position. ``valid = history != 0``. Positions are counted
from the most recent item backwards (``recency``: 0 for the newest), so left and
right padding, and any batch length ``T``, give the same result.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras


def recency_positions(valid: tf.Tensor) -> tf.Tensor:
    """int32 ``[B, T]``: how many valid items come after each position (0 = newest)."""
    v = tf.cast(valid, tf.int32)
    return tf.cumsum(v, axis=1, reverse=True, exclusive=True)


def last_valid_index(valid: tf.Tensor) -> tf.Tensor:
    """int32 ``[B]``: index of the newest valid position (0 for an all-padding row)."""
    t = tf.shape(valid)[1]
    idx = tf.where(valid, tf.range(t)[tf.newaxis, :], -1)
    return tf.maximum(tf.reduce_max(idx, axis=1), 0)


class SequentialBackbone(keras.layers.Layer):
    """Base class. Subclasses implement :meth:`encode`.

    ``training_queries`` defines the backbone's training objective; the default
    is next-item prediction at every position (SASRec, PinnerFormer-style
    causal models). Backbones with another objective (BERT4Rec's cloze task)
    override it.
    """

    registered_name = None

    def __init__(self, item_embedding: keras.layers.Embedding, max_len: int, **kwargs):
        super().__init__(**kwargs)
        self.item_embedding = item_embedding
        self.max_len = max_len

    def encode(self, history: tf.Tensor, training=None) -> tf.Tensor:
        """``history`` int64 ``[B, T]`` -> hidden states ``[B, T, d]``."""
        raise NotImplementedError

    def call(self, history, training=None):
        """User vector ``[B, d]``: the hidden state of the newest item."""
        states = self.encode(history, training=training)
        return tf.gather(states, last_valid_index(history != 0), batch_dims=1)

    def training_queries(self, features, training=None):
        """Next-item objective: ``(queries [N, d], target_ids [N])`` at valid positions."""
        states = self.encode(features["history"], training=training)
        targets = features["targets"]
        keep = targets != 0
        return tf.boolean_mask(states, keep), tf.boolean_mask(targets, keep)
