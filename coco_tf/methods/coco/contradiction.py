"""Contradiction elimination (paper §4.3, eq. 8-9).

Decision (eq. 8), per example and without gradient:

    M = 1[cos(h_aligned, v_t) > cos(h_RS, v_t)]        M ∈ {0, 1}^B

M = 1: the LLM knowledge helped this user's target; M = 0: it did not.

Gradient mask (eq. 9), docs/design.md §4 reading: the paper writes it on ``h_aligned``,
which would also stop the recommender and the alignment from learning on the
M = 1 examples. We apply it to the **LLM-branch outputs** instead (the decoder
output ``h_mix`` and the prompt rows used as decoupling queries):

    x' = sg(M · x) + (1 − M) · x                          (same value as x)

so LoRA and the soft prompts receive gradients only from M = 0 examples, while
the backbone and the alignment module learn from every example.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras


def contradiction_decision(h_aligned: tf.Tensor, h_rs: tf.Tensor, target_embedding: tf.Tensor) -> tf.Tensor:
    """Eq. 8: float32 ``[B]`` in {0, 1}, 1 where the aligned vector is closer (cosine) to ``v_t``.

    All three inputs are ``[B, d]``; no gradient flows through the decision.
    """
    v = tf.math.l2_normalize(tf.stop_gradient(tf.cast(target_embedding, tf.float32)), -1)
    a = tf.math.l2_normalize(tf.stop_gradient(tf.cast(h_aligned, tf.float32)), -1)
    r = tf.math.l2_normalize(tf.stop_gradient(tf.cast(h_rs, tf.float32)), -1)
    return tf.cast(tf.reduce_sum(a * v, -1) > tf.reduce_sum(r * v, -1), tf.float32)


class ContradictionGradientMask(keras.layers.Layer):
    """Eq. 9 at the LLM-branch output: ``sg(M·x) + (1−M)·x``.

    Forward: identity. Backward: the gradient of row b is multiplied by
    ``1 − M_b``.

    Call:
        x: ``[B, ...]`` float; decision: ``[B]`` float in {0, 1}.

    Example:

    >>> mask = ContradictionGradientMask()
    >>> h_mix = mask(h_mix, contradiction_decision(h_aligned, h_rs, v_t))
    """

    def call(self, x, decision):
        m = tf.cast(tf.stop_gradient(decision), x.dtype)
        m = tf.reshape(m, tf.concat([tf.shape(m), tf.ones([tf.rank(x) - 1], tf.int32)], 0))
        return tf.stop_gradient(m * x) + (1.0 - m) * x

    def get_config(self):
        return super().get_config()
