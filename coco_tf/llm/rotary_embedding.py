"""Rotary position embedding (RoPE), Qwen3 flavour, in tf_keras."""

import tensorflow as tf
import tf_keras as keras


class RotaryEmbedding(keras.layers.Layer):
    """Rotates feature pairs by position-dependent angles (RoFormer RoPE).

    The feature axis is split into two halves ``x1, x2`` (the Hugging Face /
    keras-nlp "rotate half" convention, not interleaved pairs):
    ``y = x * cos(p * f) + concat([-x2, x1]) * sin(p * f)`` with inverse
    frequencies ``f_j = max_wavelength ** (-2j / d)`` (``j < d/2``, duplicated
    over both halves) and positions ``p = (start_index + arange(seq)) /
    scaling_factor``. This is the same float32 arithmetic as keras-nlp's
    ``RotaryEmbedding`` with ``rope_type="linear"``. No weights.

    Args:
        max_wavelength: float. Base of the frequencies (Qwen3: ``1e6``).
        scaling_factor: float. Linear position scaling (1.0 = none).
        **kwargs: passed to ``tf_keras.layers.Layer``.

    Call arguments:
        inputs: tensor ``[batch, seq, d]`` or ``[batch, seq, heads, d]``; the
            sequence axis is 1, the feature axis is the last; ``d`` must be even.
        start_index: int or scalar tensor. Position of the first element.
        positions: optional int/float ``[seq]`` or ``[batch, seq]``: explicit
            positions (then ``start_index`` is ignored), e.g. to keep the
            positions of a sequence whose padding slots were cut out.

    Returns:
        Tensor of the same shape and dtype as ``inputs``.

    Example:

    ```python
    rope = RotaryEmbedding(max_wavelength=1e6)
    q = rope(tf.random.normal([2, 7, 4, 16]))  # [2, 7, 4, 16]
    ```
    """

    def __init__(self, max_wavelength=1_000_000.0, scaling_factor=1.0, **kwargs):
        super().__init__(**kwargs)
        self.max_wavelength = max_wavelength
        self.scaling_factor = scaling_factor

    def call(self, inputs, start_index=0, positions=None):
        rotary_dim = inputs.shape[-1]
        if rotary_dim is None or rotary_dim % 2:
            raise ValueError(
                f"RotaryEmbedding needs an even, static feature dimension; got {rotary_dim}."
            )
        seq_len = tf.shape(inputs)[1]
        idx = tf.range(0, rotary_dim, 2, dtype=tf.float32)
        inverse_freq = tf.pow(
            tf.constant(self.max_wavelength, tf.float32), -(idx / float(rotary_dim))
        )
        inverse_freq = inverse_freq / tf.cast(self.scaling_factor, tf.float32)
        if positions is None:
            positions = tf.range(seq_len, dtype=tf.float32) + tf.cast(start_index, tf.float32)
        positions = tf.cast(positions, tf.float32)
        freq = positions[..., None] * inverse_freq  # [seq, d/2] or [batch, seq, d/2]
        embedding = tf.concat([freq, freq], axis=-1)
        # Broadcast over batch (unless per-example positions) and any axes between sequence and features.
        lead = [1, -1] if positions.shape.rank == 1 else [tf.shape(positions)[0], -1]
        shape = lead + [1] * (inputs.shape.rank - 3) + [rotary_dim]
        embedding = tf.reshape(embedding, shape)
        cos = tf.cast(tf.cos(embedding), inputs.dtype)
        sin = tf.cast(tf.sin(embedding), inputs.dtype)
        x1, x2 = tf.split(inputs, 2, axis=-1)
        rotated = tf.concat([-x2, x1], axis=-1)
        return inputs * cos + rotated * sin

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "max_wavelength": self.max_wavelength,
                "scaling_factor": self.scaling_factor,
            }
        )
        return config
