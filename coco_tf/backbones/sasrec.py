"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

Causal self-attention over the item history; the hidden state at position t
scores the item at t+1 by a dot product with the shared item embeddings.
"""

from __future__ import annotations

import math

import tensorflow as tf
import tf_keras as keras

from coco_tf.backbones.sasrec_block import SASRecBlock
from coco_tf.backbones.base import SequentialBackbone, recency_positions
from coco_tf.backbones.registry import register


def self_attention_stack(x, valid, position_embedding, num_positions, dropout_layer, blocks, final_norm,
                         training=None, causal=True):
    """Adds recency positions, runs ``blocks`` and the final norm: ``[B, T, d]`` -> ``[B, T, d]``.

    ``causal``: position t attends to positions <= t (SASRec); otherwise to every
    valid position (BERT4Rec, S3Rec pre-training). Padding is never attended.
    """
    # Items older than num_positions share the oldest position embedding.
    positions = tf.minimum(recency_positions(valid), num_positions - 1)
    x = x + position_embedding(positions)
    x = dropout_layer(x, training=training)
    x = x * tf.cast(valid, x.dtype)[..., tf.newaxis]
    t = tf.shape(valid)[1]
    allowed = tf.ones([t, t], tf.bool)
    if causal:
        allowed = tf.linalg.band_part(allowed, -1, 0)
    mask = allowed[tf.newaxis] & valid[:, tf.newaxis, :]  # [B, T, T]
    for block in blocks:
        x = block(x, attention_mask=mask, valid=valid, training=training)
    return final_norm(x)


@register("sasrec")
class SASRec(SequentialBackbone):
    """Causal transformer query tower.

    Example:

    >>> items = keras.layers.Embedding(1001, 64, name="item_embedding")
    >>> tower = SASRec(items, max_len=50, hidden_dim=64, num_blocks=2)
    >>> states = tower.encode(history)  # int64 [B, T] -> [B, T, 64]
    >>> user = tower(history)           # [B, 64]

    Subclasses reuse the encoder: ``embed_items`` (ids -> ``[B, T, d]``; a mask
    token may be added there) and ``encode(history, causal=...)``;
    ``extra_positions`` widens the position table (BERT4Rec's appended mask).
    """

    extra_positions = 0

    def __init__(
        self,
        item_embedding,
        max_len: int = 50,
        hidden_dim: int = 64,
        num_blocks: int = 2,
        num_heads: int = 1,
        ffn_dim: int = 0,
        dropout: float = 0.2,
        **kwargs,
    ):
        super().__init__(item_embedding, max_len, **kwargs)
        self.hidden_dim = hidden_dim
        self.num_blocks = num_blocks
        self.num_heads = num_heads
        self.ffn_dim = ffn_dim
        self.dropout = dropout
        self.num_positions = max_len + self.extra_positions
        self.position_embedding = keras.layers.Embedding(self.num_positions, hidden_dim, name="position_embedding")
        self.embedding_dropout = keras.layers.Dropout(dropout, name="embedding_dropout")
        self.blocks = [
            SASRecBlock(hidden_dim, num_heads, ffn_dim, dropout, name=f"block_{i}") for i in range(num_blocks)
        ]
        self.final_norm = keras.layers.LayerNormalization(epsilon=1e-8, name="final_norm")

    def embed_items(self, ids):
        """int ``[B, T]`` -> ``[B, T, d]`` input embeddings (the shared item table)."""
        return self.item_embedding(ids)

    def encode(self, history, training=None, causal=True):
        valid = history != 0
        x = self.embed_items(history) * math.sqrt(self.hidden_dim)
        return self_attention_stack(
            x, valid, self.position_embedding, self.num_positions, self.embedding_dropout, self.blocks,
            self.final_norm, training=training, causal=causal,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "max_len": self.max_len,
                "hidden_dim": self.hidden_dim,
                "num_blocks": self.num_blocks,
                "num_heads": self.num_heads,
                "ffn_dim": self.ffn_dim,
                "dropout": self.dropout,
            }
        )
        return config
