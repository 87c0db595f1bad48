"""Semantic-behavioural alignment (paper §4.2.3, eq. 7; fusion variants of Table 7).

``fusion="attention"`` (eq. 7): the backbone output ``h_RS`` ``[B, d]`` is the
query; keys/values are ``h_RS`` itself plus one row per prompt slot,
``h_concat_i = MLP([h_RS, h_pure_i])`` ``[B, P, d]``; unselected prompt slots are
masked out of the keys, so they cannot change the output:

    h_aligned = h_RS + CrossAttention(h_RS W_Q², h_concat W_K², h_concat W_V²)   (eq. 7)

The residual ``h_RS +`` is our addition (the paper does not say): it starts
``h_aligned`` at the behavioural representation, so early on the LLM branch
neither helps nor hurts (M of eq. 8 near 1/2) instead of replacing a trained
backbone's output by a random projection.

``fusion="mlp"``: ``h_aligned = h_RS + MLP([h_RS, mean_i h_pure_i])`` (masked mean).
``fusion="concat"``: ``h_aligned = Dense([h_RS, mean_i h_pure_i])`` (plain linear
fusion of the concatenation).
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from coco_tf.layers.decoupling import masked_mean

FUSIONS = ("attention", "mlp", "concat")


class SemanticBehavioralAlignment(keras.layers.Layer):
    """Aligns decoupled semantic knowledge with the behavioural user vector.

    Args:
        hidden_dim: int, d (the backbone's hidden size; output size).
        fusion: ``"attention" | "mlp" | "concat"``.
        num_heads: int, heads of the eq. 7 attention.
        mlp_dim: int, inner size of the fusion MLP (0 = 2·d).
        dropout: float, attention dropout.

    Call:
        h_rs ``[B, d]``; h_pure ``[B, P, d_llm]``; pure_mask bool ``[B, P]``.

    Returns:
        h_aligned ``[B, d]``.

    Example:

    >>> align = SemanticBehavioralAlignment(hidden_dim=32, fusion="attention")
    >>> h_aligned = align(h_rs, h_pure, prompt_mask)   # [B, 32]
    """

    def __init__(self, hidden_dim: int, fusion: str = "attention", num_heads: int = 1, mlp_dim: int = 0,
                 dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        self.hidden_dim = int(hidden_dim)
        self.fusion = fusion
        self.num_heads = int(num_heads)
        self.mlp_dim = int(mlp_dim)
        self.dropout = float(dropout)
        inner = self.mlp_dim or 2 * self.hidden_dim
        if fusion == "concat":
            self.fuse = keras.layers.Dense(self.hidden_dim, name="concat_projection")
        else:
            self.fuse = keras.Sequential(
                [
                    keras.layers.Dense(inner, activation="gelu", name="fusion_mlp_inner"),
                    keras.layers.Dense(self.hidden_dim, name="fusion_mlp_output"),
                ],
                name="fusion_mlp",
            )
        if fusion == "attention":
            self.attention = keras.layers.MultiHeadAttention(
                num_heads=self.num_heads,
                key_dim=self.hidden_dim // self.num_heads,
                dropout=self.dropout,
                name="alignment_attention",
            )

    def call(self, h_rs, h_pure, pure_mask, training=None):
        pure_mask = tf.cast(pure_mask, tf.bool)
        h_pure = tf.cast(h_pure, h_rs.dtype)
        if self.fusion == "attention":
            slots = tf.shape(h_pure)[1]
            rs_rows = tf.tile(h_rs[:, None, :], [1, slots, 1])
            h_concat = self.fuse(tf.concat([rs_rows, h_pure], axis=-1), training=training)  # [B, P, d]
            kv = tf.concat([h_rs[:, None, :], h_concat], axis=1)  # [B, P + 1, d]
            kv_mask = tf.concat([tf.ones_like(pure_mask[:, :1]), pure_mask], axis=1)
            out = self.attention(
                query=h_rs[:, None, :], value=kv, key=kv, attention_mask=kv_mask[:, None, :], training=training
            )
            return h_rs + out[:, 0, :]
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
            }
        )
        return config
