"""One pre-norm Qwen3 decoder block (attention + SwiGLU), in tf_keras."""

import tensorflow as tf
import tf_keras as keras

from coco_tf.utils import build_in_scope

from coco_tf.llm.qwen_attention import QwenAttention
from coco_tf.llm.qwen_feed_forward import QwenFeedForward
from coco_tf.llm.rms_norm import RMSNorm


def compute_causal_padding_mask(padding_mask, seq_len=None):
    """Causal mask AND key padding mask, ``[batch, seq, seq]`` bool.

    Args:
        padding_mask: int/bool ``[batch, seq]``, 1 = real position.
        seq_len: optional static or dynamic sequence length (defaults to the
            mask's second dimension).

    Returns:
        bool tensor ``[batch, seq(query), seq(key)]``: query ``i`` may attend key
        ``j`` iff ``j <= i`` and key ``j`` is not padding.
    """
    padding_mask = tf.cast(padding_mask, tf.bool)
    if seq_len is None:
        seq_len = tf.shape(padding_mask)[1]
    causal = tf.linalg.band_part(tf.ones([seq_len, seq_len], tf.bool), -1, 0)
    return tf.logical_and(causal[None, :, :], padding_mask[:, None, :])


class QwenDecoderBlock(keras.layers.Layer):
    """``x + attn(norm(x))`` then ``x + ffn(norm(x))`` (Qwen3 pre-norm block).

    Sublayers carry keras-nlp's ``Qwen3TransformerDecoder`` names:
    ``self_attention_layernorm``, ``self_attention``, ``feedforward_layernorm``
    and the feed-forward kernels (see ``QwenFeedForward``). The attention mask is
    causal plus key padding; a precomputed ``attention_mask`` may be passed
    instead (the backbone computes it once for all blocks).

    Args:
        intermediate_dim: int. SwiGLU width.
        num_query_heads, num_key_value_heads, head_dim: attention shape.
        rope_max_wavelength, rope_scaling_factor: RoPE settings.
        layer_norm_epsilon: float. Epsilon of the block's RMS norms.
        qk_norm_epsilon: float or None. Epsilon of the per-head query/key norms;
            ``None`` = ``layer_norm_epsilon`` (Hugging Face Qwen3).
        dropout: float. Dropout after attention (and inside it).
        kernel_initializer: initializer of every kernel.
        lora_rank, lora_alpha, lora_dropout: LoRA on query/value (rank 0 = off).
        **kwargs: passed to ``tf_keras.layers.Layer``.

    Call arguments:
        x: float tensor ``[batch, seq, hidden]``.
        padding_mask: int/bool ``[batch, seq]`` (1 = real), optional.
        attention_mask: bool ``[batch, seq, seq]``, optional; overrides the
            mask built from ``padding_mask``.
        training: bool.
        positions: optional ``[seq]`` or ``[batch, seq]`` RoPE positions
            (default ``0..seq-1``).

    Returns:
        Tensor ``[batch, seq, hidden]``.

    Example:

    ```python
    block = QwenDecoderBlock(intermediate_dim=64, num_query_heads=4,
                             num_key_value_heads=2, head_dim=8,
                             name="transformer_layer_0")
    y = block(tf.random.normal([2, 5, 32]), padding_mask=tf.ones([2, 5]))
    ```
    """

    def __init__(
        self,
        intermediate_dim,
        num_query_heads,
        num_key_value_heads,
        head_dim,
        rope_max_wavelength=1_000_000.0,
        rope_scaling_factor=1.0,
        layer_norm_epsilon=1e-6,
        qk_norm_epsilon=None,
        dropout=0.0,
        kernel_initializer="glorot_uniform",
        lora_rank=0,
        lora_alpha=16.0,
        lora_dropout=0.05,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.intermediate_dim = int(intermediate_dim)
        self.num_query_heads = int(num_query_heads)
        self.num_key_value_heads = int(num_key_value_heads)
        self.head_dim = int(head_dim)
        self.rope_max_wavelength = rope_max_wavelength
        self.rope_scaling_factor = rope_scaling_factor
        self.layer_norm_epsilon = layer_norm_epsilon
        self.qk_norm_epsilon = qk_norm_epsilon
        self.dropout = dropout
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.lora_rank = int(lora_rank or 0)
        self.lora_alpha = lora_alpha
        self.lora_dropout = lora_dropout

    def _initializer(self):
        return keras.initializers.get(keras.initializers.serialize(self.kernel_initializer))

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        self._self_attention_layernorm = RMSNorm(
            epsilon=self.layer_norm_epsilon, name="self_attention_layernorm"
        )
        build_in_scope(self._self_attention_layernorm, input_shape)
        self._self_attention_layer = QwenAttention(
            num_query_heads=self.num_query_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            rope_max_wavelength=self.rope_max_wavelength,
            rope_scaling_factor=self.rope_scaling_factor,
            layer_norm_epsilon=(
                self.layer_norm_epsilon if self.qk_norm_epsilon is None else self.qk_norm_epsilon
            ),
            dropout=self.dropout,
            kernel_initializer=self._initializer(),
            lora_rank=self.lora_rank,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            name="self_attention",
        )
        build_in_scope(self._self_attention_layer, input_shape)
        self._self_attention_dropout = keras.layers.Dropout(
            self.dropout, name="self_attention_dropout"
        )
        self._feedforward_layernorm = RMSNorm(
            epsilon=self.layer_norm_epsilon, name="feedforward_layernorm"
        )
        build_in_scope(self._feedforward_layernorm, input_shape)
        self._feedforward = QwenFeedForward(
            intermediate_dim=self.intermediate_dim,
            kernel_initializer=self._initializer(),
            name="feedforward",
        )
        build_in_scope(self._feedforward, input_shape)
        super().build(input_shape)

    def call(self, x, padding_mask=None, attention_mask=None, training=None, positions=None):
        if attention_mask is None:
            if padding_mask is None:
                padding_mask = tf.ones(tf.shape(x)[:2], tf.bool)
            attention_mask = compute_causal_padding_mask(padding_mask)
        residual = x
        h = self._self_attention_layernorm(x)
        h = self._self_attention_layer(h, attention_mask=attention_mask, training=training, positions=positions)
        h = self._self_attention_dropout(h, training=training)
        x = residual + h
        h = self._feedforward(self._feedforward_layernorm(x))
        return x + h

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "intermediate_dim": self.intermediate_dim,
                "num_query_heads": self.num_query_heads,
                "num_key_value_heads": self.num_key_value_heads,
                "head_dim": self.head_dim,
                "rope_max_wavelength": self.rope_max_wavelength,
                "rope_scaling_factor": self.rope_scaling_factor,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "qk_norm_epsilon": self.qk_norm_epsilon,
                "dropout": self.dropout,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "lora_rank": self.lora_rank,
                "lora_alpha": self.lora_alpha,
                "lora_dropout": self.lora_dropout,
            }
        )
        return config
