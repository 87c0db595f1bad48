"""Root-mean-square layer normalisation (Qwen3's ``Qwen3LayerNorm``), in tf_keras."""

import tensorflow as tf
import tf_keras as keras


class RMSNorm(keras.layers.Layer):
    """RMS normalisation over the last axis with a learned scale.

    ``y = x / sqrt(mean(x**2, axis=-1) + epsilon) * scale``, computed in float32
    and cast back to the input dtype, exactly as keras-nlp's ``Qwen3LayerNorm``.
    The scale variable is named ``scale`` and starts at ones.

    Args:
        epsilon: float. Added to the mean square before the square root.
        head_dim: int or None. Size of the scale vector when the layer
            normalises per attention head (inputs ``[batch, seq, heads,
            head_dim]``); ``None`` uses the input's last dimension.
        **kwargs: passed to ``tf_keras.layers.Layer`` (``name``, ``dtype``, ...).

    Call arguments:
        x: float tensor ``[..., dim]``.

    Returns:
        Tensor of the same shape and dtype as ``x``.

    Example:

    ```python
    norm = RMSNorm(epsilon=1e-6, name="sequence_output_layernorm")
    y = norm(tf.random.normal([2, 5, 32]))  # [2, 5, 32]
    ```
    """

    def __init__(self, epsilon=1e-6, head_dim=None, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.head_dim = head_dim

    def build(self, input_shape):
        dim = self.head_dim if self.head_dim else int(input_shape[-1])
        self.scale = self.add_weight(
            name="scale",
            shape=(dim,),
            initializer="ones",
            trainable=True,
        )
        super().build(input_shape)

    def call(self, x):
        input_dtype = x.dtype
        x = tf.cast(x, tf.float32)
        variance = tf.reduce_mean(tf.square(x), axis=-1, keepdims=True)
        x = x * tf.math.rsqrt(variance + self.epsilon)
        return tf.cast(x * tf.cast(self.scale, tf.float32), input_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"epsilon": self.epsilon, "head_dim": self.head_dim})
        return config
