"""Next-item retrieval loss for sequential recommenders.

Two losses (``train.loss``):

* ``full_softmax``: softmax cross-entropy over the whole catalog,
  ``-log softmax(q · Eᵀ / τ)[target]``, padding column excluded.
* ``in_batch``: InfoNCE with in-batch negatives, the paper's eq. 1: the
  other targets of the batch are the negatives. Implemented with the TFRS
  ``Retrieval`` task, removing accidental hits (a negative that is the
  positive's own item).

Both take one query vector per prediction and return per-example losses
(``reduction = none``) so that training loops can average them correctly under
a distribution strategy.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

LOSSES = ("full_softmax", "in_batch")
_PAD_QUERIES = 256


def _padded_rows(n):
    """Rows the full-softmax kernel runs on for ``n`` queries: next power of two <= 256, else a multiple of 256."""
    n = tf.cast(n, tf.int32)
    powers = tf.constant([2**i for i in range(9)], tf.int32)  # 1 .. 256
    small = tf.reduce_min(tf.where(powers >= n, powers, _PAD_QUERIES))
    large = (n + _PAD_QUERIES - 1) // _PAD_QUERIES * _PAD_QUERIES
    return tf.where(n <= _PAD_QUERIES, small, large)


@tf.function(jit_compile=True)
def _full_softmax_xent(query, target_ids, item_table, temperature):
    """``-log softmax(query · item_tableᵀ / τ)[target]`` per row, padding column excluded."""
    logits = tf.matmul(query, item_table, transpose_b=True)
    logits = tf.cast(logits, tf.float32) / temperature
    pad = tf.one_hot(0, tf.shape(logits)[1], on_value=-1e9, off_value=0.0)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target_ids, logits=logits + pad[tf.newaxis, :])


class NextItemRetrieval(keras.layers.Layer):
    """Per-example retrieval loss.

    Example:

    >>> task = NextItemRetrieval("full_softmax")
    >>> loss = task(query, target_ids, item_table)  # [N, d], [N], [I+1, d] -> [N]
    """

    def __init__(self, loss: str = "full_softmax", temperature: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if loss not in LOSSES:
            raise ValueError(f"config key 'train.loss': {loss!r} is not allowed; allowed values: {', '.join(LOSSES)}")
        self.loss = loss
        self.temperature = float(temperature)
        if loss == "in_batch":
            self._retrieval = tfrs.tasks.Retrieval(
                loss=keras.losses.CategoricalCrossentropy(
                    from_logits=True, reduction=keras.losses.Reduction.NONE
                ),
                temperature=self.temperature,
                remove_accidental_hits=True,
                name="in_batch_retrieval",
            )

    def call(self, query: tf.Tensor, target_ids: tf.Tensor, item_table=None, candidates=None) -> tf.Tensor:
        """query ``[N, d]``, target_ids int ``[N]``, item_table ``[I+1, d]`` -> loss ``[N]``.

        ``in_batch`` needs only the targets' rows: pass them as ``candidates``
        ``[N, d]`` (then ``item_table`` may be None) so that a table sharded over
        parameter servers is read row by row instead of whole.
        """
        if self.loss == "full_softmax":
            # XLA fuses the [N, I] logits, softmax and gradient passes, which
            # are memory-bound on CPU (about 2x faster on this loss). N is
            # padded so that only a few shapes compile: to the next power of two up to 256
            # (a user-level loss over a batch of 128 stays 128 rows), then to a multiple of 256.
            n = tf.shape(query)[0]
            padded = _padded_rows(n)
            q = tf.pad(query, [[0, padded - n], [0, 0]])
            t = tf.pad(tf.cast(target_ids, tf.int32), [[0, padded - n]], constant_values=1)
            return _full_softmax_xent(q, t, tf.cast(item_table, query.dtype), self.temperature)[:n]
        if candidates is None:
            candidates = tf.gather(item_table, target_ids)
        return self._retrieval(
            tf.cast(query, tf.float32),
            tf.cast(candidates, tf.float32),
            candidate_ids=target_ids,
            compute_metrics=False,
            compute_batch_metrics=False,
        )

    def get_config(self):
        config = super().get_config()
        config.update({"loss": self.loss, "temperature": self.temperature})
        return config
