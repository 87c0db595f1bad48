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


def full_sequence(features) -> tf.Tensor:
    """int64 ``[B, T + 1]``: the training sequence, ``history`` plus its last target.

    ``targets[t]`` is the item after ``history[t]``, so the whole sequence is the
    history with the newest position's target appended after it (any padding
    layout; one extra padding column).
    """
    history, targets = features["history"], features["targets"]
    newest = tf.gather(targets, last_valid_index(history != 0), batch_dims=1)  # [B]
    return append_token(history, newest)[0]


def append_token(history: tf.Tensor, token) -> tuple:
    """``(history with token after its newest item [B, T + 1], token index [B])``.

    ``token``: a scalar id or one id per row ``[B]``.
    """
    valid = history != 0
    at = tf.where(tf.reduce_any(valid, axis=1), last_valid_index(valid) + 1, 0)
    padded = tf.pad(history, [[0, 0], [0, 1]])
    slot = tf.one_hot(at, tf.shape(padded)[1], on_value=True, off_value=False, dtype=tf.bool)
    return tf.where(slot, tf.reshape(tf.cast(token, padded.dtype), [-1, 1]), padded), at


def random_item_mask(valid: tf.Tensor, rate: float, seed=None) -> tf.Tensor:
    """bool ``[B, T]``: each valid position masked with probability ``rate``.

    A row with valid items but no draw gets its newest item masked, so every
    sequence contributes at least one prediction (BERT4Rec, S3Rec).
    """
    draw = valid & (tf.random.uniform(tf.shape(valid), seed=seed) < rate)
    none = tf.reduce_any(valid, axis=1) & ~tf.reduce_any(draw, axis=1)
    newest = tf.one_hot(last_valid_index(valid), tf.shape(valid)[1], on_value=True, off_value=False, dtype=tf.bool)
    return draw | (newest & none[:, tf.newaxis])


class SequentialBackbone(keras.layers.Layer):
    """Base class. Subclasses implement :meth:`encode`.

    Hooks a backbone may override (CoCo and KAR only use these, so they wrap any
    backbone unchanged):

    * ``user_states(history)`` -> ``(states [B, T, d], user [B, d])``; default:
      the encoder states and the newest position's state (BERT4Rec appends its
      mask token and reads that position instead);
    * ``training_queries(features, states=None, user=None)`` -> ``(queries [N, d],
      target_ids [N])``, the training objective; default: next-item prediction at
      every position (SASRec, FDSA, S3Rec fine-tuning). BERT4Rec (cloze) and
      PinnerFormer (future window) override it. ``states``, when given, are the
      caller's ``encode(history)`` and ``user`` its ``user_states(history)[1]``;
      objectives that read them reuse them (BERT4Rec's last-item samples read ``user``);
    * ``config_kwargs(cfg, attributes)`` (classmethod): constructor arguments
      taken from the config and the catalog's item attributes;
    * optionally ``pretrain_epochs`` and ``pretrain_losses(features)`` ->
      ``{name: scalar}`` with a ``total`` key: a self-supervised stage the
      trainer runs before fine-tuning (S3Rec).
    """

    registered_name = None
    uses_attributes = False  # True: config_kwargs needs the catalog's item attributes (fdsa, s3rec)

    def __init__(self, item_embedding: keras.layers.Embedding, max_len: int, **kwargs):
        super().__init__(**kwargs)
        self.item_embedding = item_embedding
        self.max_len = max_len

    def encode(self, history: tf.Tensor, training=None) -> tf.Tensor:
        """``history`` int64 ``[B, T]`` -> hidden states ``[B, T, d]``."""
        raise NotImplementedError

    def user_states(self, history, training=None):
        """``(states [B, T, d], user [B, d])``: user = the hidden state of the newest item."""
        states = self.encode(history, training=training)
        return states, tf.gather(states, last_valid_index(history != 0), batch_dims=1)

    def call(self, history, training=None):
        """User vector ``[B, d]``."""
        return self.user_states(history, training=training)[1]

    def training_queries(self, features, training=None, states=None, user=None):
        """Next-item objective: ``(queries [N, d], target_ids [N])`` at valid positions."""
        if states is None:
            states = self.encode(features["history"], training=training)
        targets = features["targets"]
        keep = targets != 0
        return tf.boolean_mask(states, keep), tf.boolean_mask(targets, keep)

    @classmethod
    def config_kwargs(cls, cfg, attributes=None) -> dict:
        """Backbone-specific constructor arguments from ``cfg`` (a Config) and item attributes."""
        return {}


class MaskTokenMixin:
    """A learned ``[MASK]`` input token with id ``num_items + 1`` (BERT4Rec, S3Rec).

    The id is one past the shared item table, so it is never a candidate: the
    table has ``num_items + 1`` rows and scores only real items. Its embedding
    is the backbone's own weight ``mask_token_embedding [d]``.
    """

    def _init_mask_token(self, hidden_dim: int):
        self.mask_token_id = int(self.item_embedding.input_dim)  # num_items + 1
        self.mask_embedding = self.add_weight(  # owned by the backbone, not the candidate table
            name="mask_token_embedding",
            shape=[hidden_dim],
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        )

    def embed_items(self, ids):
        """int ``[B, T]`` (items, 0 padding, ``mask_token_id``) -> ``[B, T, d]``."""
        is_mask = ids == self.mask_token_id
        x = self.item_embedding(tf.where(is_mask, tf.zeros_like(ids), ids))
        return tf.where(is_mask[..., tf.newaxis], tf.cast(self.mask_embedding, x.dtype), x)
