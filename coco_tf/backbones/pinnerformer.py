"""PinnerFormer: sequence modeling for user representation at Pinterest (Pancha et al., KDD 2022).

Encoder: a causal (pre-norm) transformer over the action sequence with learned
positions, the SASRec block stack here; the hidden state of the newest action
is the user embedding.

Objective, the *dense all-action loss*: every position t of the sequence
predicts the actions in a future window after it, not only the next one. Pinterest's
window is 28 days; without timestamps ours is the next ``K`` actions
(``model.pinnerformer_window``)::

    window[b, t, k] = targets[b, t + k]        k < K  (targets[t] = the item after t)   [B, T, K]

As in the paper, each position takes one positive drawn uniformly from its
(non-empty) window per step, so a batch costs the same as next-item training
(``sample_positive=False`` uses every (position, window item) pair instead).
``K = 1`` is SASRec's next-item objective. The paper's L2-normalised embeddings
and sampled softmax are replaced by the shared retrieval task (``train.loss``).
"""

from __future__ import annotations

import tensorflow as tf

from coco_tf.backbones.registry import register
from coco_tf.backbones.sasrec import SASRec


def future_window_targets(targets: tf.Tensor, window: int) -> tf.Tensor:
    """int64 ``[B, T, K]``: ``out[b, t, k] = targets[b, t + k]`` (0 past the end / padding).

    ``targets [B, T]`` holds the next item of each position, so ``out[b, t]``
    are the ``K`` items that follow position t.
    """
    t = tf.shape(targets)[1]
    padded = tf.pad(targets, [[0, 0], [0, window - 1]])
    shifted = [padded[:, k : k + t] for k in range(window)]
    out = tf.stack(shifted, axis=-1)
    # A position without a next item (padding) has an empty window.
    return tf.where((targets != 0)[..., tf.newaxis], out, tf.zeros_like(out))


def sample_window_positive(window_targets: tf.Tensor, seed=None) -> tf.Tensor:
    """int64 ``[B, T]``: one item drawn uniformly from each position's non-empty window (0 if empty)."""
    valid = window_targets != 0
    logits = tf.where(valid, 0.0, -1e9)
    shape = tf.shape(window_targets)
    flat = tf.reshape(logits, [-1, shape[-1]])
    pick = tf.random.categorical(flat, 1, seed=seed, dtype=tf.int32)[:, 0]
    chosen = tf.gather(tf.reshape(window_targets, [-1, shape[-1]]), pick, batch_dims=1)
    return tf.reshape(chosen, shape[:-1])


@register("pinnerformer")
class PinnerFormer(SASRec):
    """Causal transformer user tower trained with the dense all-action loss.

    Example:

    >>> items = keras.layers.Embedding(1001, 64, name="item_embedding")
    >>> tower = PinnerFormer(items, max_len=50, hidden_dim=64, window=4)
    >>> user = tower(history)                                                   # [B, 64]
    >>> q, t = tower.training_queries({"history": h, "targets": y}, training=True)  # [N, 64], [N]
    """

    def __init__(self, item_embedding, max_len: int = 50, hidden_dim: int = 64, window: int = 4,
                 sample_positive: bool = True, **kwargs):
        super().__init__(item_embedding, max_len=max_len, hidden_dim=hidden_dim, **kwargs)
        if window < 1:
            raise ValueError(f"config key 'model.pinnerformer_window': must be >= 1, got {window}")
        self.window = int(window)
        self.sample_positive = bool(sample_positive)

    @classmethod
    def config_kwargs(cls, cfg, attributes=None) -> dict:
        return {"window": cfg.model.pinnerformer_window}

    def training_queries(self, features, training=None, states=None, user=None):
        """Dense all-action objective: ``(queries [N, d], future items [N])``."""
        if states is None:
            states = self.encode(features["history"], training=training)
        window = future_window_targets(features["targets"], self.window)  # [B, T, K]
        if self.sample_positive:
            positive = sample_window_positive(window)  # [B, T]
            keep = positive != 0
            return tf.boolean_mask(states, keep), tf.boolean_mask(positive, keep)
        keep = window != 0  # [B, T, K]
        queries = tf.broadcast_to(states[:, :, tf.newaxis, :], tf.concat([tf.shape(window), tf.shape(states)[-1:]], 0))
        return tf.boolean_mask(queries, keep), tf.boolean_mask(window, keep)

    def get_config(self):
        config = super().get_config()
        config.update({"window": self.window, "sample_positive": self.sample_positive})
        return config
