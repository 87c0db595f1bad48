"""Item attribute features for feature-aware backbones (FDSA, S3Rec).

* :func:`merge_attribute_tables`: per-field id arrays ``{name: [num_items + 1]}``
  (0 = unknown, as in ``SequenceDataset.attributes``) -> one int32 table
  ``[num_items + 1, F]`` of ids in a shared vocabulary (field f's value v -> its
  offset + v; 0 stays "unknown") and the vocabulary size ``A + 1``.
* :func:`attribute_constants`: the same, as a backbone stores it.
* :class:`FeatureAttention`: FDSA's vanilla attention that pools an item's
  ``F`` feature embeddings into one vector.
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import tensorflow as tf
import tf_keras as keras


def merge_attribute_tables(tables: Dict[str, object], num_items: int) -> Tuple[np.ndarray, int]:
    """``({name: int [num_items + 1]}, num_items)`` -> ``(int32 [num_items + 1, F], vocab size A + 1)``."""
    if not tables:
        raise ValueError("no item attribute tables: fdsa and s3rec need item attributes (model.attributes)")
    columns, offset = [], 0
    for name in sorted(tables):
        values = np.asarray(tables[name], np.int64)
        if values.shape != (num_items + 1,):
            raise ValueError(f"attribute {name!r}: expected [{num_items + 1}] values, got {values.shape}")
        if values.min() < 0:
            raise ValueError(f"attribute {name!r}: negative ids")
        columns.append(np.where(values > 0, values + offset, 0))
        offset += int(values.max())
    merged = np.stack(columns, axis=1).astype(np.int32)
    merged[0] = 0  # padding item
    return merged, offset + 1


def attribute_constants(attribute_tables, num_items: int):
    """A feature backbone's attribute inputs: ``({name: int64 [num_items + 1]}`` as given (for
    ``get_config``), the merged table as a constant ``int32 [num_items + 1, F]``, vocab size ``A + 1``)."""
    tables = {k: np.asarray(v, np.int64) for k, v in (attribute_tables or {}).items()}
    table, vocab = merge_attribute_tables(tables, num_items)
    return tables, tf.constant(table), vocab


def select_attributes(cfg, attributes) -> Dict[str, np.ndarray]:
    """The fields of ``cfg.model.attributes`` that the data has (with at least one known value)."""
    attributes = attributes or {}
    chosen = {n: np.asarray(attributes[n]) for n in cfg.model.attributes
              if n in attributes and np.asarray(attributes[n]).max() > 0}
    if not chosen:
        raise ValueError(
            f"config key 'model.attributes': backbone {cfg.model.backbone} needs item attributes; none of "
            f"{cfg.model.attributes} are in the data (it has: {', '.join(sorted(attributes)) or 'none'})"
        )
    return chosen


class FeatureAttention(keras.layers.Layer):
    """``α_j = softmax_j(vᵀ tanh(W f_j + b))``, output ``Σ_j α_j f_j`` over known features.

    Example:

    >>> pool = FeatureAttention(64)
    >>> y = pool(f, mask)   # [B, T, F, d], [B, T, F] bool -> [B, T, d] (zeros if no known feature)
    """

    def __init__(self, hidden_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.key = keras.layers.Dense(hidden_dim, activation="tanh", name="key")
        self.score = keras.layers.Dense(1, use_bias=False, name="score")

    def call(self, features, mask):
        logits = self.score(self.key(features))[..., 0]  # [B, T, F]
        logits = tf.where(mask, logits, tf.cast(-1e9, logits.dtype))
        weights = tf.nn.softmax(logits, axis=-1) * tf.cast(mask, logits.dtype)
        return tf.einsum("btf,btfd->btd", weights, features)

    def get_config(self):
        config = super().get_config()
        config.update({"hidden_dim": self.hidden_dim})
        return config
