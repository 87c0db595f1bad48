"""Qwen3 grouped-query self-attention with q/k RMS norm, RoPE and LoRA, in tf_keras."""

import math

import tensorflow as tf
import tf_keras as keras

from coco_tf.utils import build_in_scope

from coco_tf.llm.lora_dense import LoraDense
from coco_tf.llm.rms_norm import RMSNorm
from coco_tf.llm.rotary_embedding import RotaryEmbedding

# Same fill value as keras-nlp's masked Softmax (float32), so that even rows with
# no visible key (left padding) come out the same as the oracle.
_MASK_VALUE = -1e9


class QwenAttention(keras.layers.Layer):
    """Causal grouped-query attention of a Qwen3 decoder block.

    ``num_query_heads`` query heads share ``num_key_value_heads`` key/value heads
    (query head ``u`` reads key/value head ``u // (num_query_heads //
    num_key_value_heads)``, as ``repeat`` in keras-nlp). Queries and keys get a
    per-head RMS norm (scale ``[head_dim]``) and then RoPE; scores are scaled by
    ``1/sqrt(head_dim)``; softmax runs in float32 with masked scores set to
    ``-1e9``. Projections are bias-free ``LoraDense`` layers named and laid out
    as keras-nlp's ``Qwen3Attention``: ``query [hidden, heads, head_dim]``,
    ``key``/``value [hidden, kv_heads, head_dim]``, ``attention_output
    [heads, head_dim, hidden]``. LoRA (when ``lora_rank > 0``) sits on the query
    and value projections only, as in the CoCo paper.

    Args:
        num_query_heads: int. Query heads.
        num_key_value_heads: int. Key/value heads; divides ``num_query_heads``.
        head_dim: int. Per-head width (Qwen3: 128, not ``hidden / heads``).
        rope_max_wavelength: float. RoPE base (Qwen3: 1e6).
        rope_scaling_factor: float. Linear RoPE position scaling.
        layer_norm_epsilon: float. Epsilon of the q/k RMS norms.
        dropout: float. Dropout on the attention output (training only).
        kernel_initializer: initializer of the projection kernels.
        lora_rank, lora_alpha, lora_dropout: LoRA on query and value (rank 0 = off).
        **kwargs: passed to ``tf_keras.layers.Layer``.

    Call arguments:
        hidden_states: float tensor ``[batch, seq, hidden]``.
        attention_mask: bool/int tensor ``[batch, seq, seq]``, 1 = may attend;
            ``None`` = attend everywhere (the caller adds causality).
        training: bool.
        positions: optional ``[seq]`` or ``[batch, seq]`` RoPE positions
            (default ``0..seq-1``).

    Returns:
        Tensor ``[batch, seq, hidden]``.

    Example:

    ```python
    attention = QwenAttention(num_query_heads=4, num_key_value_heads=2,
                              head_dim=8, lora_rank=8, name="self_attention")
    causal = tf.linalg.band_part(tf.ones([1, 5, 5], tf.bool), -1, 0)
    y = attention(tf.random.normal([1, 5, 32]), attention_mask=causal)  # [1, 5, 32]
    ```
    """

    def __init__(
        self,
        num_query_heads,
        num_key_value_heads,
        head_dim,
        rope_max_wavelength=1_000_000.0,
        rope_scaling_factor=1.0,
        layer_norm_epsilon=1e-6,
        dropout=0.0,
        kernel_initializer="glorot_uniform",
        lora_rank=0,
        lora_alpha=16.0,
        lora_dropout=0.05,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if num_query_heads % num_key_value_heads:
            raise ValueError(
                f"num_query_heads ({num_query_heads}) must be a multiple of "
                f"num_key_value_heads ({num_key_value_heads})."
            )
        self.num_query_heads = int(num_query_heads)
        self.num_key_value_heads = int(num_key_value_heads)
        self.head_dim = int(head_dim)
        self.rope_max_wavelength = rope_max_wavelength
        self.rope_scaling_factor = rope_scaling_factor
        self.layer_norm_epsilon = layer_norm_epsilon
        self.dropout = dropout
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.lora_rank = int(lora_rank or 0)
        self.lora_alpha = lora_alpha
        self.lora_dropout = lora_dropout
        self.num_key_value_groups = self.num_query_heads // self.num_key_value_heads
        self._inv_norm_factor = 1.0 / math.sqrt(self.head_dim)

    def _projection(self, units, name, lora, num_input_axes=1):
        return LoraDense(
            units=units,
            num_input_axes=num_input_axes,
            lora_rank=self.lora_rank if lora else 0,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            kernel_initializer=keras.initializers.get(
                keras.initializers.serialize(self.kernel_initializer)
            ),
            name=name,
        )

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        hidden_dim = int(input_shape[-1])
        heads = (self.num_query_heads, self.head_dim)
        kv_heads = (self.num_key_value_heads, self.head_dim)
        self._query_dense = self._projection(heads, "query", lora=True)
        build_in_scope(self._query_dense, input_shape)
        self._query_dense_layer_norm = RMSNorm(
            epsilon=self.layer_norm_epsilon, head_dim=self.head_dim, name="query_dense_layernorm"
        )
        build_in_scope(self._query_dense_layer_norm, input_shape[:-1].concatenate(heads))
        self._key_dense = self._projection(kv_heads, "key", lora=False)
        build_in_scope(self._key_dense, input_shape)
        self._key_dense_layer_norm = RMSNorm(
            epsilon=self.layer_norm_epsilon, head_dim=self.head_dim, name="key_dense_layernorm"
        )
        build_in_scope(self._key_dense_layer_norm, input_shape[:-1].concatenate(kv_heads))
        self._value_dense = self._projection(kv_heads, "value", lora=True)
        build_in_scope(self._value_dense, input_shape)
        self._output_dense = self._projection(
            hidden_dim, "attention_output", lora=False, num_input_axes=2
        )
        build_in_scope(self._output_dense, input_shape[:-1].concatenate(heads))
        self._rotary_embedding = RotaryEmbedding(
            max_wavelength=self.rope_max_wavelength,
            scaling_factor=self.rope_scaling_factor,
            name="rotary_embedding",
        )
        self._dropout_layer = keras.layers.Dropout(self.dropout, name="attention_dropout")
        super().build(input_shape)

    @property
    def lora_layers(self):
        """The projections that carry LoRA (query, value)."""
        return [self._query_dense, self._value_dense]

    def call(self, hidden_states, attention_mask=None, training=None, positions=None):
        query = self._query_dense(hidden_states, training=training)  # [b, q, u, h]
        query = self._rotary_embedding(self._query_dense_layer_norm(query), positions=positions)
        key = self._key_dense(hidden_states)  # [b, k, v, h]
        key = self._rotary_embedding(self._key_dense_layer_norm(key), positions=positions)
        value = self._value_dense(hidden_states, training=training)  # [b, k, v, h]

        # Group the query heads per key/value head instead of repeating K and V:
        # u = v * groups + g, the same assignment as keras-nlp's ops.repeat.
        shape = tf.shape(query)
        query = tf.reshape(
            query,
            [shape[0], shape[1], self.num_key_value_heads, self.num_key_value_groups, self.head_dim],
        )
        scores = tf.einsum("bqvgh,bkvh->bvgqk", query, key)
        scores = tf.cast(scores, tf.float32) * self._inv_norm_factor
        if attention_mask is not None:
            mask = tf.cast(attention_mask, tf.bool)[:, None, None, :, :]
            scores = tf.where(mask, scores, tf.constant(_MASK_VALUE, tf.float32))
        probs = tf.cast(tf.nn.softmax(scores, axis=-1), value.dtype)
        output = tf.einsum("bvgqk,bkvh->bqvgh", probs, value)
        output = tf.reshape(
            output, [shape[0], shape[1], self.num_query_heads, self.head_dim]
        )
        output = self._dropout_layer(output, training=training)
        return self._output_dense(output)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_query_heads": self.num_query_heads,
                "num_key_value_heads": self.num_key_value_heads,
                "head_dim": self.head_dim,
                "rope_max_wavelength": self.rope_max_wavelength,
                "rope_scaling_factor": self.rope_scaling_factor,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "dropout": self.dropout,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "lora_rank": self.lora_rank,
                "lora_alpha": self.lora_alpha,
                "lora_dropout": self.lora_dropout,
            }
        )
        return config
