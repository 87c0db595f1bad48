"""Semantic-behavioural alignment (paper §4.2.3, eq. 7; fusion variants of Table 7).

``fusion="attention"`` (eq. 7): the backbone output ``h_RS`` ``[B, d]`` is the
query; keys/values are ``h_RS`` itself plus one row per prompt slot,
``h_concat_i = MLP([h_RS, h_pure_i])`` ``[B, P, d]``; unselected prompt slots are
masked out of the keys, so they cannot change the output:

    h_aligned = h_RS + CrossAttention(h_RS W_Q², h_concat W_K², h_concat W_V²)   (eq. 7)

(scaled dot-product attention, ``num_heads`` heads, no output projection: eq. 7 has none).

``fusion="mlp"``: ``h_aligned = h_RS + MLP([h_RS, mean_i h_pure_i])`` (masked mean).
``fusion="concat"``: ``h_aligned = Dense([h_RS, mean_i h_pure_i])`` (plain linear
fusion of the concatenation).

Where this departs from the paper (docs/design.md §4 and §5):

* the residual ``h_RS +`` (the paper does not say): the LLM branch adds to the
  behavioural vector instead of replacing it;
* ``zero_init=True`` (``coco.zero_init``, default): the branch's last projection
  starts at zero — ``W_V²`` for attention, the MLP's output layer for mlp, and for
  concat the kernel ``[I_d; 0]`` — so that at initialisation ``h_aligned == h_RS``
  exactly and CoCo ranks as its backbone does (it can start from a trained base and
  only move away where the loss says so). ``zero_init=False`` is the paper's reading
  (every weight randomly initialised).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras as keras

from coco_tf.utils import masked_mean

FUSIONS = ("attention", "mlp", "concat")


class _IdentityOnTop(keras.initializers.Initializer):
    """Kernel ``[d + e, d]`` = ``[I_d; 0]``: a Dense on ``[x, y]`` that returns ``x`` at init."""

    def __call__(self, shape, dtype=None, **kwargs):
        rows, cols = shape
        return tf.constant(np.eye(rows, cols, dtype=np.float32), dtype=dtype or tf.float32)


class SemanticBehavioralAlignment(keras.layers.Layer):
    """Aligns decoupled semantic knowledge with the behavioural user vector.

    Args:
        hidden_dim: int, d (the backbone's hidden size; output size).
        fusion: ``"attention" | "mlp" | "concat"``.
        num_heads: int, heads of the eq. 7 attention (must divide d).
        mlp_dim: int, inner size of the fusion MLP (0 = 2·d).
        dropout: float, attention-weight dropout.
        zero_init: bool, start the branch's contribution at zero (``h_aligned == h_RS``).

    Call:
        h_rs ``[B, d]``; h_pure ``[B, P, d_llm]``; pure_mask bool ``[B, P]``.

    Returns:
        h_aligned ``[B, d]``.

    Example:

    >>> align = SemanticBehavioralAlignment(hidden_dim=32, fusion="attention")
    >>> h_aligned = align(h_rs, h_pure, prompt_mask)   # [B, 32]; == h_rs at init
    """

    def __init__(self, hidden_dim: int, fusion: str = "attention", num_heads: int = 1, mlp_dim: int = 0,
                 dropout: float = 0.0, zero_init: bool = True, **kwargs):
        super().__init__(**kwargs)
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if hidden_dim % num_heads:
            raise ValueError(f"num_heads {num_heads} does not divide hidden_dim {hidden_dim}")
        self.hidden_dim = int(hidden_dim)
        self.fusion = fusion
        self.num_heads = int(num_heads)
        self.mlp_dim = int(mlp_dim)
        self.dropout = float(dropout)
        self.zero_init = bool(zero_init)
        inner = self.mlp_dim or 2 * self.hidden_dim
        last = "zeros" if self.zero_init else "glorot_uniform"
        if fusion == "concat":
            self.fuse = keras.layers.Dense(
                self.hidden_dim, kernel_initializer=_IdentityOnTop() if self.zero_init else "glorot_uniform",
                name="concat_projection",
            )
        else:
            self.fuse = keras.Sequential(
                [
                    keras.layers.Dense(inner, activation="gelu", name="fusion_mlp_inner"),
                    keras.layers.Dense(self.hidden_dim, kernel_initializer="zeros" if fusion == "mlp" and
                                       self.zero_init else "glorot_uniform", name="fusion_mlp_output"),
                ],
                name="fusion_mlp",
            )
        if fusion == "attention":
            self.query = keras.layers.Dense(self.hidden_dim, use_bias=False, name="alignment_query")
            self.key = keras.layers.Dense(self.hidden_dim, use_bias=False, name="alignment_key")
            self.value = keras.layers.Dense(self.hidden_dim, use_bias=False, kernel_initializer=last,
                                            name="alignment_value")
            self.attention_dropout = keras.layers.Dropout(self.dropout, name="alignment_dropout")

    def _heads(self, x):
        """``[B, L, d]`` -> ``[B, heads, L, d / heads]``."""
        shape = tf.shape(x)
        x = tf.reshape(x, [shape[0], shape[1], self.num_heads, self.hidden_dim // self.num_heads])
        return tf.transpose(x, [0, 2, 1, 3])

    def call(self, h_rs, h_pure, pure_mask, training=None):
        pure_mask = tf.cast(pure_mask, tf.bool)
        h_pure = tf.cast(h_pure, h_rs.dtype)
        if self.fusion == "attention":
            slots = tf.shape(h_pure)[1]
            rs_rows = tf.tile(h_rs[:, None, :], [1, slots, 1])
            h_concat = self.fuse(tf.concat([rs_rows, h_pure], axis=-1), training=training)  # [B, P, d]
            kv = tf.concat([h_rs[:, None, :], h_concat], axis=1)  # [B, P + 1, d]
            kv_mask = tf.concat([tf.ones_like(pure_mask[:, :1]), pure_mask], axis=1)  # [B, P + 1]
            q = self._heads(self.query(h_rs[:, None, :]))  # [B, H, 1, d_h]
            k, v = self._heads(self.key(kv)), self._heads(self.value(kv))  # [B, H, P + 1, d_h]
            logits = tf.matmul(q, k, transpose_b=True) / tf.sqrt(float(self.hidden_dim // self.num_heads))
            logits = tf.where(kv_mask[:, None, None, :], logits, tf.constant(-1e9, logits.dtype))
            weights = self.attention_dropout(tf.nn.softmax(logits, axis=-1), training=training)
            out = tf.reshape(tf.matmul(weights, v), [-1, self.hidden_dim])  # [B, d] (one query)
            return h_rs + out
        pooled = masked_mean(h_pure, pure_mask)
        fused = self.fuse(tf.concat([h_rs, pooled], axis=-1), training=training)
        return h_rs + fused if self.fusion == "mlp" else fused

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "fusion": self.fusion,
                "num_heads": self.num_heads,
                "mlp_dim": self.mlp_dim,
                "dropout": self.dropout,
                "zero_init": self.zero_init,
            }
        )
        return config
