"""The sequential retrieval model: a TFRS two-tower model.

* candidate tower: the item-id embedding table ``E [num_items + 1, d]`` (row 0
  is padding and is never scored); with ``model.item_text`` each candidate is
  ``seen_i · E_i + W · text_i`` — the frozen item text table projected to ``d``
  — and items that never occur in the training split (cold items, ``seen_i =
  0``) are scored by their text alone;
* query tower: a registered backbone (``model.backbone``) that reads the same
  table for its inputs;
* task: :class:`coco_tf.tasks.retrieval.NextItemRetrieval` (``train.loss``).

One example from data to loss::

    features = {"history": int64 [B, T], "targets": int64 [B, T]}   # pipeline.py
    queries, target_ids = backbone.training_queries(features)       # [N, d], [N]
    loss = sum(task(queries, target_ids, E)) / loss_normalizer      # scalar (None: the mean)

The loss contract every model of ``coco_tf.methods`` keeps: ``compute_loss_and_metrics(features,
training)`` returns ``(loss, {name: scalar})`` (here ``{}``; the LLM-augmented models report every
loss term and their telemetry), and the trainers call nothing else.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from coco_tf.backbones.registry import get_backbone
from coco_tf.tasks.retrieval import NextItemRetrieval
from coco_tf.utils import variable_shards


class SequentialRetrievalModel(tfrs.Model):
    """Two-tower next-item retrieval model.

    Example:

    >>> model = SequentialRetrievalModel(num_items=1000, backbone="sasrec", embedding_dim=64)
    >>> loss, metrics = model.compute_loss_and_metrics({"history": h, "targets": t}, training=True)
    >>> user = model({"history": h})          # [B, 64]
    >>> scores = model.score_all(user)         # [B, 1001], column 0 = padding
    """

    def __init__(
        self,
        num_items: int,
        backbone: str = "sasrec",
        embedding_dim: int = 64,
        max_len: int = 50,
        loss: str = "full_softmax",
        temperature: float = 1.0,
        backbone_kwargs=None,
        item_text_table=None,
        text_in_candidates: bool = False,
        seen_items=None,
        zero_text_projection: bool = True,
        loss_normalizer=None,
        **kwargs,
    ):
        """``item_text_table``: ``[num_items + 1, d_llm]`` frozen LLM item vectors (row 0 zeros);
        needed by ``text_in_candidates`` (``model.item_text``), which also takes
        ``seen_items``: bool ``[num_items + 1]``, the items of the training split.
        ``zero_text_projection`` (``coco.zero_init``): the text projection ``W`` starts at zero.
        ``loss_normalizer``: divides the summed per-position loss; ``None``: the batch's own
        position count (a plain mean). The trainers pass the *average* positions per batch
        (``train.batch_size`` × mean training history length), so that every position weighs the
        same whatever batch it lands in: with length-bucketed batches a per-batch mean would give
        a position of a 3-item history 10x the weight of one in a 40-item one."""
        super().__init__(**kwargs)
        self.num_items = num_items
        self.embedding_dim = embedding_dim
        self.item_embedding = keras.layers.Embedding(
            num_items + 1,
            embedding_dim,
            embeddings_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            name="item_embedding",
        )
        self.item_text = None
        if item_text_table is not None:
            table = np.asarray(item_text_table, np.float32)
            if table.ndim != 2 or table.shape[0] != num_items + 1:
                raise ValueError(
                    f"item_text_table must be [num_items + 1, d_llm] = [{num_items + 1}, *], got {table.shape}"
                )
            self.text_dim = int(table.shape[1])
            self.item_text = keras.layers.Embedding(
                num_items + 1,
                self.text_dim,
                embeddings_initializer=keras.initializers.Constant(table),
                trainable=False,
                name="item_text_table",
            )
        self.text_in_candidates = bool(text_in_candidates)
        if self.text_in_candidates:
            if self.item_text is None:
                raise ValueError("text_in_candidates (model.item_text) needs item_text_table")
            seen = np.ones([num_items + 1], np.float32) if seen_items is None else np.asarray(seen_items, np.float32)
            if seen.shape != (num_items + 1,):
                raise ValueError(f"seen_items must have shape [{num_items + 1}], got {seen.shape}")
            self.item_seen = tf.Variable(seen[:, None], trainable=False, name="item_seen_mask")
            # zero_text_projection: W starts at 0, so the candidates start as the id embeddings alone
            # (a random W makes W·text, ~50x the id rows' scale, dominate them: slower training).
            self.text_projection = keras.layers.Dense(
                embedding_dim, use_bias=False, kernel_initializer="zeros" if zero_text_projection else "glorot_uniform",
                name="item_text_projection")
            self.text_projection.build([None, self.text_dim])  # created before the optimizer is built
        self.backbone = get_backbone(backbone)(
            self.item_embedding, max_len=max_len, hidden_dim=embedding_dim, name=backbone, **(backbone_kwargs or {})
        )
        self.task = NextItemRetrieval(loss, temperature, name="retrieval")
        self.loss_normalizer = None if loss_normalizer is None else float(loss_normalizer)

    def item_table(self) -> tf.Tensor:
        """``[num_items + 1, d]`` candidate embeddings (works for sharded tables too)."""
        if not self.item_embedding.built:
            self.item_embedding.build(None)
        emb = self.item_embedding.embeddings
        shards = variable_shards(emb)
        table = tf.convert_to_tensor(emb) if len(shards) == 1 else tf.concat(
            [tf.convert_to_tensor(v) for v in shards], axis=0)
        if not self.text_in_candidates:
            return table
        if not self.item_text.built:
            self.item_text.build(None)
        return self._with_text(table, self.item_seen, tf.convert_to_tensor(self.item_text.embeddings))

    def candidate_table(self) -> tf.Tensor:
        """What :meth:`call`'s user vector is ranked against (serving indexes it): :meth:`item_table`
        here; ``[E ; t̂]`` for an LLM-augmented model with ``coco.text_score``."""
        return self.item_table()

    def candidate_embeddings(self, ids: tf.Tensor) -> tf.Tensor:
        """Rows of :meth:`item_table` for ``ids`` ``[...]`` -> ``[..., d]`` (sparse lookups)."""
        emb = self.item_embedding(ids)
        if not self.text_in_candidates:
            return emb
        return self._with_text(emb, tf.gather(self.item_seen, ids), self.item_text(ids))

    def _with_text(self, emb, seen, text):
        """The ``model.item_text`` candidate: ``seen · E + W · text`` (the frozen text gets no gradient)."""
        return emb * seen + self.text_projection(tf.stop_gradient(text))

    def call(self, features, training=None):
        history = features["history"] if isinstance(features, dict) else features
        return self.backbone(history, training=training)

    def retrieval_loss(self, queries: tf.Tensor, target_ids: tf.Tensor) -> tf.Tensor:
        """``[N]`` task losses of ``queries [N, d]`` for ``target_ids [N]``.

        ``in_batch`` looks up only the targets' rows (sparse gradient for the
        table); ``full_softmax`` scores against the whole table (dense gradient).
        """
        if self.task.loss == "in_batch":
            return self.task(queries, target_ids, candidates=self.candidate_embeddings(target_ids))
        return self.task(queries, target_ids, self.item_table())

    def per_example_loss(self, features, training=False, states=None, user=None) -> tf.Tensor:
        """``[N]`` losses of the backbone's own objective, one per predicted position.

        ``states [B, T, d]`` / ``user [B, d]``: the backbone's outputs on ``features["history"]``
        when the caller has them already (the LLM-augmented models), else computed here.
        """
        queries, targets = self.backbone.training_queries(features, training=training, states=states, user=user)
        return self.retrieval_loss(queries, targets)

    def normalized_loss(self, per_example: tf.Tensor) -> tf.Tensor:
        """The scalar loss of ``per_example`` ``[N]``: summed and divided by ``loss_normalizer``
        (``None``: the mean)."""
        if self.loss_normalizer is None:
            return tf.reduce_mean(per_example)
        return tf.reduce_sum(per_example) / self.loss_normalizer

    def compute_loss_and_metrics(self, features, training=False):
        """``(loss, {})``: the backbone's objective, normalised (the plain model has no telemetry)."""
        return self.normalized_loss(self.per_example_loss(features, training=training)), {}

    def compute_loss(self, features, training=False) -> tf.Tensor:
        """TFRS' entry point (``model.fit``): the loss of :meth:`compute_loss_and_metrics`."""
        return self.compute_loss_and_metrics(features, training=training)[0]

    def score_all(self, user: tf.Tensor) -> tf.Tensor:
        return tf.matmul(user, self.item_table(), transpose_b=True)
