"""SwiGLU feed-forward of the Qwen3 decoder block, in tf_keras."""

import tensorflow as tf
import tf_keras as keras

from coco_tf.utils import build_in_scope


class QwenFeedForward(keras.layers.Layer):
    """``down(up(x) * silu(gate(x)))``, bias-free, as in Qwen3 / Llama.

    Sublayer names and kernel layouts follow keras-nlp's
    ``Qwen3TransformerDecoder``: ``feedforward_gate_dense [hidden, inter]``,
    ``feedforward_intermediate_dense [hidden, inter]`` (Hugging Face
    ``up_proj``) and ``feedforward_output_dense [inter, hidden]``
    (``down_proj``). The activation runs in float32 (like ``torch`` SiLU).

    Args:
        intermediate_dim: int. Width of the gated hidden layer.
        activation: activation of the gate branch (default ``"silu"``).
        kernel_initializer: initializer of the three kernels.
        **kwargs: passed to ``tf_keras.layers.Layer``.

    Call arguments:
        x: float tensor ``[batch, seq, hidden]``.

    Returns:
        Tensor ``[batch, seq, hidden]``.

    Example:

    ```python
    ffn = QwenFeedForward(intermediate_dim=64, name="feedforward")
    y = ffn(tf.random.normal([2, 5, 32]))  # [2, 5, 32]
    ```
    """

    def __init__(
        self,
        intermediate_dim,
        activation="silu",
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.intermediate_dim = int(intermediate_dim)
        self.activation = keras.activations.get(activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def _dense(self, units, name):
        return keras.layers.Dense(
            units,
            use_bias=False,
            kernel_initializer=keras.initializers.get(
                keras.initializers.serialize(self.kernel_initializer)
            ),
            name=name,
        )

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        hidden_dim = int(input_shape[-1])
        self._feedforward_gate_dense = self._dense(self.intermediate_dim, "feedforward_gate_dense")
        build_in_scope(self._feedforward_gate_dense, input_shape)
        self._feedforward_intermediate_dense = self._dense(
            self.intermediate_dim, "feedforward_intermediate_dense"
        )
        build_in_scope(self._feedforward_intermediate_dense, input_shape)
        self._feedforward_output_dense = self._dense(hidden_dim, "feedforward_output_dense")
        build_in_scope(self._feedforward_output_dense, input_shape[:-1].concatenate([self.intermediate_dim]))
        super().build(input_shape)

    def call(self, x):
        gate = self._feedforward_gate_dense(x)
        gate = tf.cast(self.activation(tf.cast(gate, tf.float32)), x.dtype)
        up = self._feedforward_intermediate_dense(x)
        return self._feedforward_output_dense(up * gate)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "intermediate_dim": self.intermediate_dim,
                "activation": keras.activations.serialize(self.activation),
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config
