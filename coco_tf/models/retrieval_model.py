"""The sequential retrieval model: a TFRS two-tower model.

* candidate tower: the item-id embedding table ``E [num_items + 1, d]`` (row 0
  is padding and is never scored);
* query tower: a registered backbone (``model.backbone``) that reads the same
  table for its inputs;
* task: :class:`coco_tf.tasks.retrieval.NextItemRetrieval` (``train.loss``).

One example from data to loss::

    features = {"history": int64 [B, T], "targets": int64 [B, T]}   # pipeline.py
    queries, target_ids = backbone.training_queries(features)       # [N, d], [N]
    loss = mean(task(queries, target_ids, E))                       # scalar
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from coco_tf.config import Config
from coco_tf.models.registry import get_backbone
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
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_items = num_items
        self.embedding_dim = embedding_dim
        self.item_embedding = keras.layers.Embedding(
            num_items + 1,
            embedding_dim,
            embeddings_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            name="item_embedding",
        )
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
            return tf.concat([tf.convert_to_tensor(v) for v in emb.variables], axis=0)
        return tf.convert_to_tensor(emb)

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
            return self.task(queries, targets, candidates=self.item_embedding(targets))
        return self.task(queries, targets, self.item_table())

    def compute_loss(self, features, training=False) -> tf.Tensor:
        per_example = self.per_example_loss(features, training=training)
        if self.loss_normalizer is None:
            return tf.reduce_mean(per_example)
        return tf.reduce_sum(per_example) / self.loss_normalizer

    def score_all(self, user: tf.Tensor) -> tf.Tensor:
        return tf.matmul(user, self.item_table(), transpose_b=True)


def build_model(cfg: Config, num_items: int, llm_assets=None, attributes=None) -> SequentialRetrievalModel:
    """The model for ``cfg.coco.method``: ``base``, ``kar`` or ``coco``, on ``cfg.model.backbone``.

    ``kar`` and ``coco`` need ``llm_assets`` (``coco_tf.llm.assets.build_llm_assets``:
    the item text table, the base decoder weights and the prompt encodings).
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
    if method == "base":
        return SequentialRetrievalModel(**common, name="sequential_retrieval")
    if llm_assets is None:
        raise ValueError(f"coco.method={method} needs llm_assets (coco_tf.llm.assets.build_llm_assets)")
    c = cfg.coco
    if method == "kar":
        from coco_tf.models.kar import KARModel

        return KARModel(
            **common,
            item_text_table=llm_assets.item_text_table,
            llm=llm_assets.make_decoder(lora_rank=0),
            prompt_vectors=llm_assets.kar_prompts,
            alpha=c.alpha,
            name="kar_retrieval",
        )
    from coco_tf.models.coco_model import CoCoModel

    lora_rank = 0 if c.ablation == "con" else cfg.llm.lora_rank
    return CoCoModel(
        **common,
        item_text_table=llm_assets.item_text_table,
        llm=llm_assets.make_decoder(lora_rank, cfg.llm.lora_alpha, cfg.llm.lora_dropout),
        codebook_size=c.codebook_size,
        num_shared_prompts=c.num_shared_prompts,
        threshold=c.threshold,
        max_prompts=c.max_prompts,
        selection=c.selection,
        initial_codebook=llm_assets.codebook_init,
        initial_shared=llm_assets.shared_init,
        ablation=c.ablation,
        fusion=c.fusion,
        alpha=c.alpha,
        beta=c.beta,
        gamma=c.gamma,
        name="coco_retrieval",
    )
