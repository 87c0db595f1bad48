"""BERT4Rec: sequential recommendation with bidirectional transformers (Sun et al., CIKM 2019).

Objective (cloze): each item of the training sequence is replaced by ``[MASK]``
with probability ρ (``model.bert4rec_mask_prob``) and the bidirectional encoder
predicts the original item at every masked position from both sides::

    seq       = history + last target            int64 [B, T + 1]
    masked    = where(mask, [MASK], seq)         mask ~ Bernoulli(ρ) on valid items
    states    = encode(masked, bidirectional)    [B, T + 1, d]
    queries   = states[mask], targets = seq[mask]           [N, d], [N]

A row that draws no mask gets its newest item masked. As in the paper, every
sequence also gives a sample whose last item only is masked (``[MASK]`` appended
to the history, predicting its last target: the prediction setting); this is on
by default (``last_item_samples``) and speeds learning up several-fold.

Prediction: ``[MASK]`` is appended after the newest item and its hidden state
is the user vector. ``[MASK]`` has id ``num_items + 1``, outside the shared item
table (never a candidate); its embedding is this backbone's own weight.

Encoder: the SASRec block stack (pre-norm self-attention + point-wise FFN) with
a full (bidirectional) padding mask instead of the causal one; recency position
embeddings, one extra position for the appended mask.
"""

from __future__ import annotations

import tensorflow as tf

from coco_tf.backbones.base import (
    MaskTokenMixin,
    append_token,
    full_sequence,
    last_valid_index,
    random_item_mask,
)
from coco_tf.backbones.registry import register
from coco_tf.backbones.sasrec import SASRec


@register("bert4rec")
class BERT4Rec(MaskTokenMixin, SASRec):
    """Bidirectional cloze-trained query tower.

    Example:

    >>> items = keras.layers.Embedding(1001, 64, name="item_embedding")
    >>> tower = BERT4Rec(items, max_len=50, hidden_dim=64, mask_prob=0.2)
    >>> user = tower(history)                                   # [B, 64], state of the appended [MASK]
    >>> q, t = tower.training_queries({"history": h, "targets": y}, training=True)  # [N, 64], [N]
    """

    extra_positions = 1  # the appended [MASK]

    def __init__(self, item_embedding, max_len: int = 50, hidden_dim: int = 64, mask_prob: float = 0.2,
                 last_item_samples: bool = True, **kwargs):
        super().__init__(item_embedding, max_len=max_len, hidden_dim=hidden_dim, **kwargs)
        self.last_item_samples = bool(last_item_samples)
        if not 0.0 < mask_prob <= 1.0:
            raise ValueError(f"config key 'model.bert4rec_mask_prob': must be in (0, 1], got {mask_prob}")
        self.mask_prob = float(mask_prob)
        self._init_mask_token(hidden_dim)

    @classmethod
    def config_kwargs(cls, cfg, attributes=None) -> dict:
        return {"mask_prob": cfg.model.bert4rec_mask_prob}

    def encode(self, history, training=None, causal=False):
        """``[B, T]`` (may contain ``mask_token_id``) -> ``[B, T, d]``, bidirectional."""
        return super().encode(history, training=training, causal=causal)

    def user_states(self, history, training=None):
        """``(states of the history [B, T, d], state of the appended [MASK] [B, d])``."""
        with_mask, at = append_token(history, self.mask_token_id)
        states = self.encode(with_mask, training=training)  # [B, T + 1, d]
        return states[:, :-1], tf.gather(states, at, batch_dims=1)

    def cloze(self, seq):
        """``(masked sequence [B, L], mask [B, L] bool)`` for a sequence ``[B, L]``."""
        mask = random_item_mask(seq != 0, self.mask_prob)
        return tf.where(mask, tf.cast(self.mask_token_id, seq.dtype), seq), mask

    def training_queries(self, features, training=None, states=None, user=None):
        """Cloze objective: ``(states at masked positions [N, d], original items [N])``.

        With ``last_item_samples`` the rows' appended-``[MASK]`` states and last
        targets follow (``N = masked items + users with a target``); ``user``
        ``[B, d]``, the caller's ``user_states(history)[1]`` (CoCo/KAR's h_RS), is
        reused for them instead of encoding the history a second time. ``states``
        (the caller's unmasked encoding) is ignored: the cloze task encodes the
        masked sequence.
        """
        seq = full_sequence(features)
        masked, mask = self.cloze(seq)
        out = self.encode(masked, training=training)
        queries, targets = tf.boolean_mask(out, mask), tf.boolean_mask(seq, mask)
        if not self.last_item_samples:
            return queries, targets
        history = features["history"]
        if user is None:
            _, user = self.user_states(history, training=training)  # [B, d]
        last = tf.gather(features["targets"], last_valid_index(history != 0), batch_dims=1)  # [B]
        keep = last != 0
        return (tf.concat([queries, tf.boolean_mask(user, keep)], axis=0),
                tf.concat([targets, tf.boolean_mask(last, keep)], axis=0))

    def get_config(self):
        config = super().get_config()
        config.update({"mask_prob": self.mask_prob, "last_item_samples": self.last_item_samples})
        return config
