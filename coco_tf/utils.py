"""Small helpers shared across packages (one home each; nothing here imports coco_tf).

* :func:`masked_mean`: mean pooling over the valid positions (item text table, KAR, CoCo's
  ``dec`` ablation and alignment, prompt encodings);
* :func:`build_in_scope`: build a sublayer under its own name scope (the decoder layers);
* :func:`join_names`: a bounded, comma-separated list for error messages;
* :func:`variable_shards`: the shards of a (possibly partitioned) variable.

Example:

>>> masked_mean(tf.ones([2, 3, 4]), tf.constant([[1, 1, 0], [0, 0, 0]]))   # [2, 4]: ones, zeros
"""

from __future__ import annotations

import tensorflow as tf


def masked_mean(x: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean of ``x`` ``[B, L, d]`` over positions where ``mask`` ``[B, L]`` is true (or 1) → ``[B, d]``.

    Rows without any valid position give zeros.
    """
    m = tf.cast(mask, x.dtype)[:, :, None]
    return tf.reduce_sum(x * m, axis=1) / tf.maximum(tf.reduce_sum(m, axis=1), 1.0)


def build_in_scope(layer, input_shape) -> None:
    """Build a sublayer under its own name scope (variable names nest: a/b/kernel)."""
    with tf.name_scope(layer.name):
        layer.build(input_shape)


def join_names(names, limit: int = 20) -> str:
    """``"a, b, c, ... (n more)"``: at most ``limit`` of ``names``."""
    names = list(names)
    text = ", ".join(names[:limit])
    return text + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def variable_shards(variable) -> list:
    """The shards of ``variable``: its parts under a variable partitioner (``ShardedVariable``,
    parameter-server training), else ``[variable]``."""
    parts = getattr(variable, "variables", None)
    return list(parts) if isinstance(parts, (list, tuple)) else [variable]
