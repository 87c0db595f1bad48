"""The model of a config: :func:`build_model` (``coco.method``: base, kar, coco) on ``model.backbone``.

The only module that knows every method; the trainers, the exporter and the experiments build
their models here. A new method adds its branch (and its ``coco.method`` choice) here.

Example:

>>> model = build_model(cfg, num_items=dataset.num_items, llm_assets=build_llm_assets(cfg, dataset))
"""

from __future__ import annotations

from coco_tf.backbones.registry import get_backbone
from coco_tf.config import Config
from coco_tf.methods.coco.model import CoCoModel
from coco_tf.methods.kar import KARModel
from coco_tf.methods.retrieval_model import SequentialRetrievalModel


def needs_llm_assets(cfg: Config) -> bool:
    """Whether :func:`build_model` needs ``llm_assets``: kar, coco, or item text in the candidates."""
    return cfg.coco.method != "base" or cfg.model.item_text


def build_model(
    cfg: Config, num_items: int, llm_assets=None, seen_items=None, attributes=None, loss_normalizer=None
) -> SequentialRetrievalModel:
    """The model for ``cfg.coco.method``: ``base``, ``kar`` or ``coco``, on ``cfg.model.backbone``.

    ``kar``, ``coco`` and ``model.item_text`` need ``llm_assets``
    (``coco_tf.llm.assets.build_llm_assets``: the item text table, the base
    decoder weights and the prompt encodings). ``seen_items``: bool
    ``[num_items + 1]``, the training split's items (``model.item_text``: the
    others are scored by their text alone); ``None``: all.
    ``attributes``: ``SequenceDataset.attributes`` ({name: int [num_items + 1]}), the
    item features of feature-aware backbones (fdsa, s3rec), passed as constants.
    ``loss_normalizer``: divides the summed per-position loss (the trainers: batch size × mean
    training history length; ``None``: the batch mean), see :class:`SequentialRetrievalModel`.
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
        loss_normalizer=loss_normalizer,
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
    # The user-level LLM methods' shared switches (docs/design.md §5).
    common.update(alpha=c.alpha, zero_init=c.zero_init, user_position=c.user_position,
                  rec_to_backbone=c.rec_to_backbone, branch_penalty=c.branch_penalty, text_score=c.text_score,
                  text_window=c.text_window, text_decay=c.text_decay, text_summary=c.text_summary,
                  rec_excludes_history=cfg.eval.exclude_history)
    if method == "kar":
        return KARModel(
            **common,
            llm=llm_assets.make_decoder(lora_rank=0),
            prompt_vectors=llm_assets.kar_prompts,
            name="kar_retrieval",
        )
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
        beta=c.beta,
        gamma=c.gamma,
        usage_weight=c.usage_weight,
        usage_temperature=c.usage_temperature,
        name="coco_retrieval",
    )
