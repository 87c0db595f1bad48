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
    loss = mean(task(queries, target_ids, E))                       # scalar
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from coco_tf.config import Config
from coco_tf.backbones.registry import get_backbone
from coco_tf.tasks.retrieval import NextItemRetrieval


class SequentialRetrievalModel(tfrs.Model):
    """Two-tower next-item retrieval model.

    Example:

    >>> model = SequentialRetrievalModel(num_items=1000, backbone="sasrec", embedding_dim=64)
    >>> loss = model.compute_loss({"history": h, "targets": t}, training=True)
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
        **kwargs,
    ):
        """``item_text_table``: ``[num_items + 1, d_llm]`` frozen LLM item vectors (row 0 zeros);
        needed by ``text_in_candidates`` (``model.item_text``), which also takes
        ``seen_items``: bool ``[num_items + 1]``, the items of the training split.
        ``zero_text_projection`` (``coco.zero_init``): the text projection ``W`` starts at zero."""
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
        # Divides the summed per-position loss. None: the batch's own position
        # count (a plain mean). The trainer sets it to the *average* positions
        # per batch, so that every position weighs the same whatever batch it
        # lands in: with length-bucketed batches a per-batch mean would give a
        # position of a 3-item history 10x the weight of one in a 40-item one.
        self.loss_normalizer = None

    def item_table(self) -> tf.Tensor:
        """``[num_items + 1, d]`` candidate embeddings (works for sharded tables too)."""
        if not self.item_embedding.built:
            self.item_embedding.build(None)
        emb = self.item_embedding.embeddings
        if hasattr(emb, "variables") and isinstance(getattr(emb, "variables"), (list, tuple)):
            table = tf.concat([tf.convert_to_tensor(v) for v in emb.variables], axis=0)
        else:
            table = tf.convert_to_tensor(emb)
        if not self.text_in_candidates:
            return table
        if not self.item_text.built:
            self.item_text.build(None)
        return self._with_text(table, self.item_seen, tf.convert_to_tensor(self.item_text.embeddings))

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

    def per_example_loss(self, features, training=False) -> tf.Tensor:
        """``[N]`` losses, one per predicted position (for strategy-aware averaging).

        ``in_batch`` looks up only the targets' rows (sparse gradient for the
        table); ``full_softmax`` scores against the whole table (dense gradient).
        """
        queries, targets = self.backbone.training_queries(features, training=training)
        if self.task.loss == "in_batch":
            return self.task(queries, targets, candidates=self.candidate_embeddings(targets))
        return self.task(queries, targets, self.item_table())

    def compute_loss(self, features, training=False) -> tf.Tensor:
        per_example = self.per_example_loss(features, training=training)
        if self.loss_normalizer is None:
            return tf.reduce_mean(per_example)
        return tf.reduce_sum(per_example) / self.loss_normalizer

    def score_all(self, user: tf.Tensor) -> tf.Tensor:
        return tf.matmul(user, self.item_table(), transpose_b=True)


def needs_llm_assets(cfg: Config) -> bool:
    """Whether :func:`build_model` needs ``llm_assets``: kar, coco, or item text in the candidates."""
    return cfg.coco.method != "base" or cfg.model.item_text


def build_model(
    cfg: Config, num_items: int, llm_assets=None, seen_items=None, attributes=None
) -> SequentialRetrievalModel:
    """The model for ``cfg.coco.method``: ``base``, ``kar`` or ``coco``, on ``cfg.model.backbone``.

    ``kar``, ``coco`` and ``model.item_text`` need ``llm_assets``
    (``coco_tf.llm.assets.build_llm_assets``: the item text table, the base
    decoder weights and the prompt encodings). ``seen_items``: bool
    ``[num_items + 1]``, the training split's items (``model.item_text``: the
    others are scored by their text alone); ``None``: all.
    ``attributes``: ``SequenceDataset.attributes`` ({name: int [num_items + 1]}), the
    item features of feature-aware backbones (fdsa, s3rec), passed as constants.
    """
    m = cfg.model
    backbone_kwargs = {
        "num_blocks": m.num_blocks,
        "num_heads": m.num_heads,
        "ffn_dim": m.ffn_dim,
        "dropout": m.dropout,
    }
    backbone_kwargs.update(get_backbone(m.backbone).config_kwargs(cfg, attributes))
    common = dict(
        num_items=num_items,
        backbone=m.backbone,
        embedding_dim=m.embedding_dim,
        max_len=cfg.data.max_len,
        loss=cfg.train.loss,
        temperature=cfg.train.temperature,
        backbone_kwargs=backbone_kwargs,
    )
    method = cfg.coco.method
    if needs_llm_assets(cfg):
        if llm_assets is None:
            raise ValueError(
                f"coco.method={method} / model.item_text needs llm_assets (coco_tf.llm.assets.build_llm_assets)"
            )
        common["item_text_table"] = llm_assets.item_text_table
    if m.item_text:
        common.update(text_in_candidates=True, seen_items=seen_items, zero_text_projection=cfg.coco.zero_init)
    if method == "base":
        return SequentialRetrievalModel(**common, name="sequential_retrieval")
    c = cfg.coco
    if method == "kar":
        from coco_tf.methods.kar import KARModel

        return KARModel(
            **common,
            llm=llm_assets.make_decoder(lora_rank=0),
            prompt_vectors=llm_assets.kar_prompts,
            alpha=c.alpha,
            zero_init=c.zero_init,
            user_position=c.user_position,
            rec_to_backbone=c.rec_to_backbone,
            name="kar_retrieval",
        )
    from coco_tf.methods.coco.model import CoCoModel

    lora_rank = 0 if c.ablation == "con" else cfg.llm.lora_rank
    return CoCoModel(
        **common,
        llm=llm_assets.make_decoder(lora_rank, cfg.llm.lora_alpha, cfg.llm.lora_dropout),
        codebook_size=c.codebook_size,
        num_shared_prompts=c.num_shared_prompts,
        threshold=c.threshold,
        max_prompts=c.max_prompts,
        selection=c.selection,
        trim_prompt_slots=c.trim_prompt_slots,
        initial_codebook=llm_assets.codebook_init,
        initial_shared=llm_assets.shared_init,
        ablation=c.ablation,
        fusion=c.fusion,
        alpha=c.alpha,
        user_position=c.user_position,
        beta=c.beta,
        gamma=c.gamma,
        usage_weight=c.usage_weight,
        usage_temperature=c.usage_temperature,
        zero_init=c.zero_init,
        rec_to_backbone=c.rec_to_backbone,
        name="coco_retrieval",
    )
