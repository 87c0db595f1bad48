"""Semantic decoupling (paper §4.2.2, eq. 5) and the orthogonality loss (eq. 6).

``SemanticDecoupling`` splits the decoder's mixed output ``h_mix``
(``[B, L, d_llm]``, L = S + m_max + T positions) into one knowledge fragment per
prompt slot:

    h_pure = CrossAttention(h_prompt W_Q¹, h_mix W_K¹, h_mix W_V¹)        (eq. 5)

queries ``h_prompt`` ``[B, P, d_llm]`` (P = S + m_max), keys/values ``h_mix`` with
its padding mask (padded prompt slots and padded history positions are never
attended to). Output ``h_pure`` ``[B, P, d_llm]``; rows of unselected prompt slots
are computed but carry no meaning (the alignment masks them).

``mode="mean_pool"`` is the ``dec`` ablation (no decoupling): every slot gets the
same masked mean of ``h_mix``, i.e. the undivided mixed knowledge.

:func:`orthogonality_loss` is L_ortho (eq. 6) with the docs/design.md §4 reading: the
paper's ``Σ_{i<j} cos(z_i, z_j)`` is unbounded below (it rewards anti-parallel
prompts), so we use the mean of ``cos(z_i, z_j)²`` over the K(K−1)/2 pairs i < j,
which is 0 exactly when the codewords are mutually orthogonal.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from coco_tf.utils import masked_mean

MODES = ("cross_attention", "mean_pool")


def orthogonality_loss(codebook: tf.Tensor) -> tf.Tensor:
    """L_ortho (eq. 6, squared-cosine reading): mean over i < j of ``cos(z_i, z_j)²``.

    ``codebook`` ``[K, d]`` → scalar. K = 1 gives 0.

    Example:

    >>> orthogonality_loss(tf.eye(4))              # 0.0
    >>> orthogonality_loss(tf.ones([3, 8]))        # 1.0
    """
    z = tf.math.l2_normalize(tf.convert_to_tensor(codebook), axis=-1)
    cos = tf.matmul(z, z, transpose_b=True)  # [K, K]
    k = tf.shape(cos)[0]
    upper = tf.linalg.band_part(tf.ones_like(cos), 0, -1) - tf.linalg.band_part(tf.ones_like(cos), 0, 0)
    pairs = tf.maximum(tf.cast(k * (k - 1) // 2, cos.dtype), 1.0)
    return tf.reduce_sum(tf.square(cos) * upper) / pairs


class SemanticDecoupling(keras.layers.Layer):
    """Prompt-queried cross-attention over the LLM output (eq. 5).

    Args:
        hidden_dim: int, d_llm (query, key, value and output size).
        num_heads: int, attention heads (must divide ``hidden_dim``).
        dropout: float, attention dropout.
        mode: ``"cross_attention"`` (eq. 5) or ``"mean_pool"`` (``dec`` ablation).

    Call:
        h_prompt: ``[B, P, d_llm]``; h_mix: ``[B, L, d_llm]``; mix_mask: bool ``[B, L]``.

    Returns:
        h_pure ``[B, P, d_llm]``.

    Example:

    >>> layer = SemanticDecoupling(hidden_dim=64, num_heads=4)
    >>> h_pure = layer(h_prompt, h_mix, mix_mask)   # [B, P, 64]
    """

    def __init__(self, hidden_dim: int, num_heads: int = 4, dropout: float = 0.0, mode: str = "cross_attention", **kwargs):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if hidden_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} does not divide hidden_dim={hidden_dim}")
        self.hidden_dim = int(hidden_dim)
        self.num_heads = int(num_heads)
        self.dropout = float(dropout)
        self.mode = mode
        if mode == "cross_attention":
            self.cross_attention = keras.layers.MultiHeadAttention(
                num_heads=self.num_heads,
                key_dim=self.hidden_dim // self.num_heads,
                dropout=self.dropout,
                name="cross_attention",
            )

    def call(self, h_prompt, h_mix, mix_mask, training=None):
        mix_mask = tf.cast(mix_mask, tf.bool)
        if self.mode == "mean_pool":
            pooled = masked_mean(h_mix, mix_mask)
            return tf.tile(pooled[:, None, :], [1, tf.shape(h_prompt)[1], 1])
        attention_mask = tf.tile(mix_mask[:, None, :], [1, tf.shape(h_prompt)[1], 1])  # [B, P, L]
        return self.cross_attention(
            query=h_prompt, value=h_mix, key=h_mix, attention_mask=attention_mask, training=training
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {"hidden_dim": self.hidden_dim, "num_heads": self.num_heads, "dropout": self.dropout, "mode": self.mode}
        )
        return config
