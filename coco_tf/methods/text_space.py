"""Scoring the LLM branch's knowledge in the item text space (``coco.text_score``; not in the paper).

The paper fuses the LLM branch into the backbone's id space: the user vector ``h_aligned [B, d]`` is
ranked against the item-id embeddings ``E [N + 1, d]``. Whatever the branch knows about item
*content* must then be re-learnt, item by item, in ``E``, from one (history, next item) pair per
user — on Amazon Beauty it never was (``docs/results.md`` §9: real, category and shuffled text gave
the same curves). With ``text_score`` each candidate also carries its frozen item text row, and the
user tower adds a query in that space, so that "an item whose text is like the history's" scores
high for every item, rare ones included, without a parameter per item:

    t̂_i = T_i / ||T_i||                        rows of the frozen item text table   [N + 1, d_llm]
    r_u = normalize(Σ_{k < L} ρ^k · t̂_{h_u,-k})  the newest L history items, decayed  [B, d_llm]
    q_u = a · r_u + W · s_u                      s_u: the LLM branch's summary        [B, d_llm]
    score(u, i) = h_user · E_i + q_u · t̂_i

``a`` (a scalar) and ``W`` start at zero (``zero_init``), so an untrained model ranks exactly as its
backbone. In two-tower form the user vector is ``[h_user ; q_u]`` ``[B, d + d_llm]`` and the
candidate ``[E_i ; t̂_i]``: serving stays one dot product (``SequentialRetrievalModel.candidate_table``).
Under ``llm.text_table_shuffle`` every item's row belongs to another item, so ``r_u · t̂_i`` measures
nothing about ``i``'s content: the control that separates knowledge from capacity. The only
parameters that see items are ``a`` and ``W`` (``d_llm² + 1``), far too few to memorise items.

Example:

>>> query = TextSpaceQuery(text_dim=64, summary_dim=64, window=3, decay=0.5, name="text_query")
>>> q = query(history, table_rows, summary)      # [B, d_llm]; zeros at initialisation
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

# a = SCALE_STEP · θ with θ the trained variable: Adam moves a variable by about the learning rate per
# step whatever its gradient's size, so a bare scalar at lr 1e-3 would need thousands of steps to reach
# the useful range of a (2-6 against a full-softmax backbone's logits, docs/results.md §9); with the
# step it gets there within about one epoch of Beauty (175 steps).
SCALE_STEP = 20.0


def normalized_rows(table: tf.Tensor) -> tf.Tensor:
    """``table / ||table||`` row by row (zero rows, the padding, stay zero)."""
    return tf.math.l2_normalize(tf.cast(table, tf.float32), axis=-1)


def recency_weights(history: tf.Tensor, window: int, decay: float) -> tf.Tensor:
    """float32 ``[B, T]``: ``decay^k`` on the k-th newest valid position (``k < window``), 0 elsewhere
    (padding anywhere in the row: the order of the valid ids is the history's time order)."""
    valid = history != 0
    rank = tf.cumsum(tf.cast(valid, tf.int32), axis=1)  # 1-based, oldest first
    from_newest = rank[:, -1:] - rank  # 0 at the newest valid position
    keep = valid & (from_newest < window)
    return tf.where(keep, tf.pow(tf.constant(decay, tf.float32), tf.cast(from_newest, tf.float32)), 0.0)


class TextSpaceQuery(keras.layers.Layer):
    """The user's query in the item text space, ``q_u = a · r_u + W · s_u`` (see the module doc).

    Args:
        text_dim: int d_llm, the item text table's width.
        summary_dim: int d_s, width of the LLM branch's summary ``s_u`` (0: no ``W · s_u`` term).
        window: int L, newest history items pooled into ``r_u``.
        decay: float ρ, weight ratio between consecutive history items (1: plain mean).
        zero_init: ``a`` and ``W`` start at zero (the model then ranks as its backbone); false:
            ``a = 1`` and a Glorot ``W``.

    Call:
        history int ``[B, T]`` (0 = padding); rows ``[B, T, d_llm]``, the history's normalised text
        rows (:func:`normalized_rows`); summary ``[B, d_s]`` or ``None``, the LLM branch's output.

    Returns:
        ``q_u`` ``[B, d_llm]``.
    """

    def __init__(self, text_dim: int, summary_dim: int = 0, window: int = 3, decay: float = 0.5,
                 zero_init: bool = True, **kwargs):
        super().__init__(**kwargs)
        if window < 1:
            raise ValueError(f"config key 'coco.text_window': must be >= 1, got {window}")
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"config key 'coco.text_decay': must be in (0, 1], got {decay}")
        self.text_dim = int(text_dim)
        self.summary_dim = int(summary_dim)
        self.window = int(window)
        self.decay = float(decay)
        self.zero_init = bool(zero_init)
        # Created here, not on first call: the optimizer (and the PS placement) must see them.
        self.scale_parameter = self.add_weight(
            name="history_scale", shape=[], trainable=True,
            initializer=keras.initializers.Constant(0.0 if self.zero_init else 1.0 / SCALE_STEP))
        self.summary_projection = None
        if self.summary_dim:
            self.summary_projection = keras.layers.Dense(
                self.text_dim, use_bias=False, kernel_initializer="zeros" if self.zero_init else "glorot_uniform",
                name="summary_projection")
            self.summary_projection.build([None, self.summary_dim])

    @property
    def scale(self) -> tf.Tensor:
        """``a`` (scalar): ``SCALE_STEP`` times the trained variable."""
        return SCALE_STEP * tf.convert_to_tensor(self.scale_parameter)

    def call(self, history, rows, summary=None):
        weights = recency_weights(history, self.window, self.decay)  # [B, T]
        pooled = tf.math.l2_normalize(tf.reduce_sum(rows * weights[:, :, None], axis=1), axis=-1)  # [B, d_llm]
        query = self.scale * pooled
        if self.summary_projection is not None:
            if summary is None:
                raise ValueError(f"{self.name}: built with summary_dim={self.summary_dim}, called without a summary")
            query = query + self.summary_projection(tf.cast(summary, query.dtype))
        return query

    def get_config(self):
        config = super().get_config()
        config.update({"text_dim": self.text_dim, "summary_dim": self.summary_dim, "window": self.window,
                       "decay": self.decay, "zero_init": self.zero_init})
        return config
