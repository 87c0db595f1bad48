"""A bias-free projection (Dense / EinsumDense layout) with optional LoRA."""

import numpy as np
import tensorflow as tf
import tf_keras as keras


def _as_tuple(units):
    if isinstance(units, (int, np.integer)):
        return (int(units),)
    return tuple(int(u) for u in units)


class LoraDense(keras.layers.Layer):
    """Linear projection ``y = x · W`` with an optional low-rank update.

    The kernel has the layout of keras-nlp's ``EinsumDense`` kernels, so real
    weights copy over unchanged: ``kernel.shape == input_dims + units``, where
    ``input_dims`` are the last ``num_input_axes`` dimensions of the input.
    Examples (Qwen3): query ``[hidden, heads, head_dim]`` (``units=(heads,
    head_dim)``), attention output ``[heads, head_dim, hidden]``
    (``num_input_axes=2``, ``units=hidden``), a plain ``Dense``: ``[in, out]``.

    With ``lora_rank > 0`` (LoRA, Hu et al. 2021):
    ``y = x · W + dropout(x) · A · B · (lora_alpha / lora_rank)`` where
    ``A [in_flat, r]`` starts Kaiming-uniform (as in PEFT) and ``B [r, out_flat]``
    starts at zero, so a fresh LoRA layer equals the base layer. The base kernel
    is then created non-trainable (frozen); only ``lora_a`` / ``lora_b`` train.
    ``merge_lora()`` folds ``A · B · alpha / r`` into the kernel, zeroes ``B``
    and skips the LoRA branch from then on (for export).

    No bias: Qwen3 projections have none.

    Args:
        units: int or tuple of ints. Output dimensions appended to the batch
            axes.
        num_input_axes: int. How many trailing input axes are contracted.
        lora_rank: int. LoRA rank ``r``; ``0`` disables LoRA.
        lora_alpha: float. LoRA scale numerator (update scaled by alpha / r).
        lora_dropout: float. Dropout on the LoRA branch's input (training only).
        kernel_initializer: initializer of the base kernel.
        **kwargs: passed to ``tf_keras.layers.Layer``.

    Call arguments:
        inputs: tensor ``[..., *input_dims]``.
        training: bool; enables LoRA dropout.

    Returns:
        Tensor ``[..., *units]``.

    Example:

    ```python
    query = LoraDense(units=(4, 8), lora_rank=8, lora_alpha=16, name="query")
    q = query(tf.random.normal([2, 5, 32]))  # [2, 5, 4, 8]
    query.merge_lora()                       # kernel += A·B·2; LoRA off
    ```
    """

    def __init__(
        self,
        units,
        num_input_axes=1,
        lora_rank=0,
        lora_alpha=16.0,
        lora_dropout=0.05,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = _as_tuple(units)
        self.num_input_axes = int(num_input_axes)
        self.lora_rank = int(lora_rank or 0)
        self.lora_alpha = float(lora_alpha)
        self.lora_dropout = float(lora_dropout)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        if self.lora_rank < 0:
            raise ValueError(f"LoraDense {self.name!r}: lora_rank must be >= 0, got {lora_rank}.")
        self.lora_merged = False
        self._lora_dropout_layer = keras.layers.Dropout(self.lora_dropout, name="lora_dropout")

    @property
    def lora_enabled(self):
        """True when the layer has LoRA variables that are not merged yet."""
        return self.lora_rank > 0 and not self.lora_merged

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        input_dims = tuple(input_shape[-self.num_input_axes :].as_list())
        if any(d is None for d in input_dims):
            raise ValueError(
                f"LoraDense {self.name!r}: the last {self.num_input_axes} input "
                f"dimension(s) must be known, got input shape {input_shape}."
            )
        self.input_dims = input_dims
        self.in_flat = int(np.prod(input_dims))
        self.out_flat = int(np.prod(self.units))
        self.kernel = self.add_weight(
            name="kernel",
            shape=input_dims + self.units,
            initializer=self.kernel_initializer,
            trainable=self.lora_rank == 0,
        )
        if self.lora_rank > 0:
            self.lora_a = self.add_weight(
                name="lora_a",
                shape=(self.in_flat, self.lora_rank),
                # Kaiming-uniform with a=sqrt(5), PEFT's default: U(±1/sqrt(fan_in)).
                initializer=keras.initializers.VarianceScaling(
                    scale=1.0 / 3.0, mode="fan_in", distribution="uniform"
                ),
                trainable=True,
            )
            self.lora_b = self.add_weight(
                name="lora_b",
                shape=(self.lora_rank, self.out_flat),
                initializer="zeros",
                trainable=True,
            )
        super().build(input_shape)

    @property
    def lora_scale(self):
        return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

    @property
    def lora_variables(self):
        """``[lora_a, lora_b]`` when LoRA is configured, else ``[]``."""
        if self.lora_rank > 0 and self.built:
            return [self.lora_a, self.lora_b]
        return []

    def call(self, inputs, training=None):
        batch_shape = tf.shape(inputs)[: inputs.shape.rank - self.num_input_axes]
        x = tf.reshape(inputs, [-1, self.in_flat])
        kernel = tf.reshape(tf.cast(self.kernel, x.dtype), [self.in_flat, self.out_flat])
        y = tf.matmul(x, kernel)
        if self.lora_enabled:
            x_lora = self._lora_dropout_layer(x, training=training)
            delta = tf.matmul(
                tf.matmul(x_lora, tf.cast(self.lora_a, x.dtype)), tf.cast(self.lora_b, x.dtype)
            )
            y = y + delta * tf.cast(self.lora_scale, x.dtype)
        y = tf.reshape(y, tf.concat([batch_shape, self.units], axis=0))
        static_batch = inputs.shape[: inputs.shape.rank - self.num_input_axes]
        y.set_shape(static_batch.concatenate(self.units))
        return y

    def merge_lora(self):
        """Fold ``A·B·alpha/r`` into the kernel (exactly once), zero B, skip LoRA.

        Safe to call twice; a no-op for a layer without LoRA.
        """
        if not self.lora_enabled:
            return
        delta = tf.matmul(self.lora_a, self.lora_b) * self.lora_scale
        self.kernel.assign_add(tf.reshape(tf.cast(delta, self.kernel.dtype), self.kernel.shape))
        self.lora_b.assign(tf.zeros_like(self.lora_b))
        self.lora_merged = True

    def compute_output_shape(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        return input_shape[: input_shape.rank - self.num_input_axes].concatenate(self.units)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": list(self.units),
                "num_input_axes": self.num_input_axes,
                "lora_rank": self.lora_rank,
                "lora_alpha": self.lora_alpha,
                "lora_dropout": self.lora_dropout,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config
