"""S3-Rec: self-supervised learning for sequential recommendation with mutual
information maximization (Zhou et al., CIKM 2020).

Pre-training (``pretrain_losses``; the trainer runs ``model.s3rec_pretrain_epochs``
epochs of it before fine-tuning) maximises the mutual information between views
of the sequence with four objectives, each scored by a bilinear form
``σ(xᵀ W y)``. On the training sequence ``seq`` ``[B, L]`` (history + last target)::

    AAP  associated attribute:  item embedding e_i vs all attributes a    BCE(σ(e_iᵀ W_aap a), 1[a ∈ attrs(i)])
    MIP  masked item:           states f_t of the item-masked sequence     -log σ(f_tᵀ W_mip e_i - f_tᵀ W_mip e_neg)
    MAP  masked attribute:      f_t vs all attributes                      BCE(σ(f_tᵀ W_map a), 1[a ∈ attrs(i_t)])
    SP   segment:               s̃ = state of the segment-masked sequence,  -log σ(s̃ᵀ W_sp s - s̃ᵀ W_sp s_neg)
                                s / s_neg = states of the segment alone / a
                                segment at the same place in another user's sequence

Items are masked with probability ``mask_prob`` (``[MASK]`` = id num_items + 1, this
backbone's own embedding); the pre-training encoder is bidirectional. MIP and SP use
one uniform negative each (the pairwise form of the paper's loss, as RecBole does);
AAP/MAP sum the BCE over attributes and average over positions. Attributes are the
catalog's (``model.attributes``) in one shared vocabulary ``[A + 1]``.

Fine-tuning: the same encoder, causal, next-item prediction at every position
(SASRec's objective); the pre-training heads and attribute embeddings are unused.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from coco_tf.backbones.item_features import attribute_constants, select_attributes
from coco_tf.backbones.base import MaskTokenMixin, full_sequence, last_valid_index, random_item_mask
from coco_tf.backbones.registry import register
from coco_tf.backbones.sasrec import SASRec

PRETRAIN_LOSSES = ("aap", "mip", "map", "sp")


@register("s3rec")
class S3Rec(MaskTokenMixin, SASRec):
    """Self-supervised pre-trained, causal fine-tuned query tower.

    Example:

    >>> tower = S3Rec(items, max_len=50, hidden_dim=64, attribute_tables={"category": cat},
    ...               pretrain_epochs=10, mask_prob=0.2)
    >>> losses = tower.pretrain_losses({"history": h, "targets": y}, training=True)
    >>> losses["total"], losses["aap"], losses["mip"], losses["map"], losses["sp"]   # scalars
    >>> user = tower(history)   # [B, 64] (causal encoder, newest position)
    """

    def __init__(self, item_embedding, max_len: int = 50, hidden_dim: int = 64, attribute_tables=None,
                 pretrain_epochs: int = 0, mask_prob: float = 0.2, aap_weight: float = 0.2,
                 mip_weight: float = 1.0, map_weight: float = 1.0, sp_weight: float = 0.5, **kwargs):
        super().__init__(item_embedding, max_len=max_len, hidden_dim=hidden_dim, **kwargs)
        if not 0.0 < mask_prob <= 1.0:
            raise ValueError(f"config key 'model.s3rec_mask_prob': must be in (0, 1], got {mask_prob}")
        self.num_items = int(item_embedding.input_dim) - 1
        self.attribute_tables, self._attribute_table, vocab = attribute_constants(attribute_tables, self.num_items)
        self.attribute_vocab_size = vocab  # the table is [num_items + 1, F]
        self.pretrain_epochs = int(pretrain_epochs)
        self.mask_prob = float(mask_prob)
        self.aap_weight, self.mip_weight = float(aap_weight), float(mip_weight)
        self.map_weight, self.sp_weight = float(map_weight), float(sp_weight)
        self._init_mask_token(hidden_dim)
        # Built here so that checkpoints hold them whether or not pre-training ran.
        self.attribute_embedding = keras.layers.Embedding(
            vocab, hidden_dim, embeddings_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            name="attribute_embedding",
        )
        with tf.name_scope(f"{self.name}/attribute_embedding"):
            self.attribute_embedding.build(None)
        self.heads = {}
        for name in PRETRAIN_LOSSES:
            head = keras.layers.Dense(hidden_dim, use_bias=False, name=f"{name}_head")
            with tf.name_scope(f"{self.name}/{head.name}"):
                head.build((None, hidden_dim))
            self.heads[name] = head

    uses_attributes = True

    @classmethod
    def config_kwargs(cls, cfg, attributes=None) -> dict:
        return {
            "attribute_tables": select_attributes(cfg, attributes),
            "pretrain_epochs": cfg.model.s3rec_pretrain_epochs,
            "mask_prob": cfg.model.s3rec_mask_prob,
        }

    # ------------------------------------------------------------ pieces
    def multi_hot(self, items):
        """float ``[..., A]``: the attributes of each item (column j = attribute j + 1)."""
        ids = tf.gather(self._attribute_table, tf.cast(items, tf.int32))  # [..., F]
        hot = tf.reduce_max(tf.one_hot(ids, self.attribute_vocab_size), axis=-2)
        return hot[..., 1:]

    def _attribute_logits(self, x, head):
        """``[N, d]`` -> ``[N, A]`` bilinear scores against every attribute (not "unknown")."""
        table = self.attribute_embedding.embeddings[1:]
        return tf.matmul(self.heads[head](x), table, transpose_b=True)

    def _pair_loss(self, context, positive, negative, head):
        """``-log σ(cᵀWp - cᵀWn)`` per row."""
        projected = self.heads[head](context)
        margin = tf.reduce_sum(projected * (positive - negative), axis=-1)
        return tf.nn.softplus(-margin)

    def _newest(self, states, seq):
        return tf.gather(states, last_valid_index(seq != 0), batch_dims=1)

    def _random_items(self, shape):
        """Uniform item ids in ``[1, num_items]`` (negatives), int64."""
        return tf.random.uniform(shape, 1, self.num_items + 1, dtype=tf.int64)

    def segment_mask(self, seq):
        """bool ``[B, L]``: one contiguous segment per row, length ~ U[1, max(1, n // 2)]."""
        valid = seq != 0
        n = tf.reduce_sum(tf.cast(valid, tf.int32), axis=1)  # [B]
        rank = tf.cumsum(tf.cast(valid, tf.int32), axis=1, exclusive=True)  # index among valid items
        longest = tf.maximum(n // 2, 1)
        length = 1 + tf.cast(tf.random.uniform(tf.shape(n)) * tf.cast(longest, tf.float32), tf.int32)
        length = tf.minimum(length, longest)
        room = tf.maximum(n - length + 1, 1)
        start = tf.minimum(tf.cast(tf.random.uniform(tf.shape(n)) * tf.cast(room, tf.float32), tf.int32), room - 1)
        return valid & (rank >= start[:, None]) & (rank < (start + length)[:, None])

    # ------------------------------------------------------------ pre-training
    def pretrain_losses(self, features, training=None):
        """``{"aap", "mip", "map", "sp", "total"}`` scalars on one batch (see the module docstring)."""
        seq = full_sequence(features)  # [B, L]
        valid = seq != 0
        mask_id = tf.cast(self.mask_token_id, seq.dtype)

        # AAP: each item's own embedding predicts its attributes.
        items = tf.boolean_mask(seq, valid)  # [M]
        aap = tf.nn.sigmoid_cross_entropy_with_logits(
            labels=self.multi_hot(items), logits=self._attribute_logits(self.item_embedding(items), "aap")
        )
        aap = tf.reduce_mean(tf.reduce_sum(aap, axis=-1))

        # MIP + MAP: the bidirectional encoding of the item-masked sequence at the masked positions.
        masked = random_item_mask(valid, self.mask_prob)
        states = self.encode(tf.where(masked, mask_id, seq), training=training, causal=False)
        f = tf.boolean_mask(states, masked)  # [N, d]
        targets = tf.boolean_mask(seq, masked)  # [N]
        negatives = self._random_items(tf.shape(targets))
        mip = tf.reduce_mean(
            self._pair_loss(f, self.item_embedding(targets), self.item_embedding(negatives), "mip")
        )
        map_ = tf.nn.sigmoid_cross_entropy_with_logits(
            labels=self.multi_hot(targets), logits=self._attribute_logits(f, "map")
        )
        map_ = tf.reduce_mean(tf.reduce_sum(map_, axis=-1))

        # SP: the segment-masked sequence vs the segment itself / another user's segment.
        segment = self.segment_mask(seq)
        other = tf.roll(seq, shift=1, axis=0)
        other = tf.where(other != 0, other, self._random_items(tf.shape(seq)))
        context_seq = tf.where(segment, mask_id, seq)
        pos_seq = tf.where(valid, tf.where(segment, seq, mask_id), tf.zeros_like(seq))
        neg_seq = tf.where(valid, tf.where(segment, other, mask_id), tf.zeros_like(seq))
        both = self.encode(tf.concat([context_seq, pos_seq, neg_seq], axis=0), training=training, causal=False)
        context, pos, neg = tf.split(self._newest(both, tf.concat([seq, seq, seq], axis=0)), 3, axis=0)
        sp = tf.reduce_mean(self._pair_loss(context, pos, neg, "sp"))

        total = self.aap_weight * aap + self.mip_weight * mip + self.map_weight * map_ + self.sp_weight * sp
        return {"aap": aap, "mip": mip, "map": map_, "sp": sp, "total": total}

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "attribute_tables": {k: v.tolist() for k, v in self.attribute_tables.items()},
                "pretrain_epochs": self.pretrain_epochs,
                "mask_prob": self.mask_prob,
                "aap_weight": self.aap_weight,
                "mip_weight": self.mip_weight,
                "map_weight": self.map_weight,
                "sp_weight": self.sp_weight,
            }
        )
        return config
