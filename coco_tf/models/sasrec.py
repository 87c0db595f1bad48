"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

Causal self-attention over the item history; the hidden state at position t
scores the item at t+1 by a dot product with the shared item embeddings.
"""

from __future__ import annotations

import math

import tensorflow as tf
import tf_keras as keras

from coco_tf.layers.sasrec_block import SASRecBlock
from coco_tf.models.backbone import SequentialBackbone, recency_positions
from coco_tf.models.registry import register


@register("sasrec")
class SASRec(SequentialBackbone):
    """Causal transformer query tower.

    Example:

    >>> items = keras.layers.Embedding(1001, 64, name="item_embedding")
    >>> tower = SASRec(items, max_len=50, hidden_dim=64, num_blocks=2)
    >>> states = tower.encode(history)  # int64 [B, T] -> [B, T, 64]
    >>> user = tower(history)           # [B, 64]
    """

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
        self.position_embedding = keras.layers.Embedding(max_len, hidden_dim, name="position_embedding")
        self.embedding_dropout = keras.layers.Dropout(dropout, name="embedding_dropout")
        self.blocks = [
            SASRecBlock(hidden_dim, num_heads, ffn_dim, dropout, name=f"block_{i}") for i in range(num_blocks)
        ]
        self.final_norm = keras.layers.LayerNormalization(epsilon=1e-8, name="final_norm")

    def encode(self, history, training=None):
        valid = history != 0
        x = self.item_embedding(history) * math.sqrt(self.hidden_dim)
        # Items older than max_len share the oldest position embedding.
        positions = tf.minimum(recency_positions(valid), self.max_len - 1)
        x = x + self.position_embedding(positions)
        x = self.embedding_dropout(x, training=training)
        x = x * tf.cast(valid, x.dtype)[..., tf.newaxis]
        t = tf.shape(history)[1]
        causal = tf.linalg.band_part(tf.ones([t, t], tf.bool), -1, 0)
        mask = causal[tf.newaxis] & valid[:, tf.newaxis, :]
        for block in self.blocks:
            x = block(x, attention_mask=mask, valid=valid, training=training)
        return self.final_norm(x)

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
