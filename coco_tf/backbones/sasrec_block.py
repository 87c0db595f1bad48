"""One SASRec self-attention block (Kang & McAuley, 2018).

As in the reference implementation::

    q   = LayerNorm(x)
    x   = q + MultiHeadAttention(q, x, x, mask)      # causal + padding mask
    x   = LayerNorm(x)
    x   = x + FFN(x)                                 # point-wise, ReLU
    x   = x * valid                                  # padded positions stay zero
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras


class SASRecBlock(keras.layers.Layer):
    """Self-attention + point-wise feed-forward over ``[B, T, d]``.

    Example:

    >>> block = SASRecBlock(hidden_dim=64, num_heads=1, ffn_dim=64, dropout=0.2)
    >>> y = block(x, attention_mask=mask, valid=valid)  # [B,T,d], [B,T,T] bool, [B,T] bool
    """

    def __init__(self, hidden_dim: int, num_heads: int = 1, ffn_dim: int = 0, dropout: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.ffn_dim = ffn_dim
        self.dropout = dropout
        inner = ffn_dim or hidden_dim
        self.attention_norm = keras.layers.LayerNormalization(epsilon=1e-8, name="attention_norm")
        self.attention = keras.layers.MultiHeadAttention(
            num_heads=num_heads, key_dim=hidden_dim // num_heads, dropout=dropout, name="attention"
        )
        self.ffn_norm = keras.layers.LayerNormalization(epsilon=1e-8, name="ffn_norm")
        self.ffn_in = keras.layers.Dense(inner, activation="relu", name="ffn_in")
        self.ffn_out = keras.layers.Dense(hidden_dim, name="ffn_out")
        self.ffn_dropout_1 = keras.layers.Dropout(dropout, name="ffn_dropout_1")
        self.ffn_dropout_2 = keras.layers.Dropout(dropout, name="ffn_dropout_2")

    def call(self, x, attention_mask, valid, training=None):
        q = self.attention_norm(x)
        x = q + self.attention(q, x, x, attention_mask=attention_mask, training=training)
        x = self.ffn_norm(x)
        h = self.ffn_dropout_1(self.ffn_in(x), training=training)
        x = x + self.ffn_dropout_2(self.ffn_out(h), training=training)
        return x * tf.cast(valid, x.dtype)[..., tf.newaxis]

    def get_config(self):
        config = super().get_config()
        config.update(
            {"hidden_dim": self.hidden_dim, "num_heads": self.num_heads, "ffn_dim": self.ffn_dim, "dropout": self.dropout}
        )
        return config
