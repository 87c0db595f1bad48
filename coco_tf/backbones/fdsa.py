"""FDSA: feature-level deeper self-attention network (Zhang et al., IJCAI 2019).

Two self-attention streams over the history, fused per position::

    item stream:     E[history] + positions ──causal blocks──► h_item    [B, T, d]
    feature stream:  attributes[history]                                   [B, T, F]
                     ──feature embeddings──► [B, T, F, d] ──vanilla attention──► [B, T, d]
                     + positions ──causal blocks──► h_feat               [B, T, d]
    states = Dense_d([h_item ; h_feat])                                    [B, T, d]

Features come from the catalog (``model.attributes``, e.g. category and brand,
those the data has); unknown values (id 0) are masked out of the attention.
The attribute table ``[num_items + 1, F]`` is a constant of the backbone, built
from ``SequenceDataset.attributes``. Objective: next-item prediction at every
position (the original trains the last position; every position is the same
loss on each prefix), scored against the shared item table.
"""

from __future__ import annotations

import math

import tensorflow as tf
import tf_keras as keras

from coco_tf.backbones.item_features import FeatureAttention, attribute_constants, select_attributes
from coco_tf.backbones.sasrec_block import SASRecBlock
from coco_tf.backbones.registry import register
from coco_tf.backbones.sasrec import SASRec, self_attention_stack


@register("fdsa")
class FDSA(SASRec):
    """Item + feature self-attention query tower.

    Example:

    >>> items = keras.layers.Embedding(1001, 64, name="item_embedding")
    >>> tower = FDSA(items, max_len=50, hidden_dim=64,
    ...              attribute_tables={"category": cat, "brand": brand})  # each int [1001]
    >>> user = tower(history)   # [B, 64]
    """

    def __init__(self, item_embedding, max_len: int = 50, hidden_dim: int = 64, attribute_tables=None, **kwargs):
        super().__init__(item_embedding, max_len=max_len, hidden_dim=hidden_dim, **kwargs)
        num_items = int(item_embedding.input_dim) - 1
        self.attribute_tables, self._feature_table, vocab = attribute_constants(attribute_tables, num_items)
        self.num_features = int(self._feature_table.shape[1])  # F; the table is [num_items + 1, F]
        self.feature_vocab_size = vocab
        self.feature_embedding = keras.layers.Embedding(
            vocab, hidden_dim, embeddings_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            name="feature_embedding",
        )
        self.feature_attention = FeatureAttention(hidden_dim, name="feature_attention")
        self.feature_position_embedding = keras.layers.Embedding(
            self.num_positions, hidden_dim, name="feature_position_embedding"
        )
        self.feature_dropout = keras.layers.Dropout(self.dropout, name="feature_dropout")
        self.feature_blocks = [
            SASRecBlock(hidden_dim, self.num_heads, self.ffn_dim, self.dropout, name=f"feature_block_{i}")
            for i in range(self.num_blocks)
        ]
        self.feature_norm = keras.layers.LayerNormalization(epsilon=1e-8, name="feature_norm")
        self.fusion = keras.layers.Dense(hidden_dim, name="fusion")

    uses_attributes = True

    @classmethod
    def config_kwargs(cls, cfg, attributes=None) -> dict:
        return {"attribute_tables": select_attributes(cfg, attributes)}

    def item_features(self, history):
        """int32 ``[B, T, F]`` attribute ids of each history item (0 unknown / padding)."""
        return tf.gather(self._feature_table, tf.cast(history, tf.int32))

    def encode(self, history, training=None):
        valid = history != 0
        h_item = super().encode(history, training=training)  # [B, T, d]
        feats = self.item_features(history)
        f = self.feature_attention(self.feature_embedding(feats), feats != 0)  # [B, T, d]
        h_feat = self_attention_stack(
            f * math.sqrt(self.hidden_dim), valid, self.feature_position_embedding, self.num_positions,
            self.feature_dropout, self.feature_blocks, self.feature_norm, training=training, causal=True,
        )
        states = self.fusion(tf.concat([h_item, h_feat], axis=-1))
        return states * tf.cast(valid, states.dtype)[..., tf.newaxis]

    def get_config(self):
        config = super().get_config()
        config.update({"attribute_tables": {k: v.tolist() for k, v in self.attribute_tables.items()}})
        return config
