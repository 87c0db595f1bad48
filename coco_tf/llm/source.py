"""The decoder a pretraining or probe run starts from: ``llm.checkpoint`` or the random ``llm.preset``.

Shared by ``coco_tf.llm.pretrain`` and ``coco_tf.llm.probe`` (which the pretrainer
calls around training), so neither imports the other for it.

Example::

    backbone = build_source_backbone(cfg)           # QwenBackbone, LoRA off
    backbone = build_source_backbone(cfg, dropout=0.1)
"""

from __future__ import annotations

import os
from typing import Optional

import tf_keras as keras

from coco_tf.config import ConfigError


def build_source_backbone(cfg, lora_rank: int = 0, lora_alpha: float = 16.0, lora_dropout: float = 0.0,
                          dropout: Optional[float] = None):
    """The starting decoder of ``cfg.llm``, with clear one-line errors.

    ``llm.checkpoint`` (a converted / pretrained directory) or the random
    ``llm.preset`` seeded by ``train.seed``.
    """
    from coco_tf.llm import presets
    from coco_tf.llm.qwen_decoder import QwenBackbone

    keras.utils.set_random_seed(cfg.train.seed)
    kwargs = dict(lora_rank=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout, name="pretrain_llm")
    if dropout is not None:
        kwargs["dropout"] = dropout
    if cfg.llm.checkpoint:
        if not os.path.isdir(cfg.llm.checkpoint):
            raise ConfigError(f"config key 'llm.checkpoint': {cfg.llm.checkpoint} is not a directory")
        try:
            return QwenBackbone.from_pretrained(cfg.llm.checkpoint, **kwargs)
        except (ValueError, OSError, KeyError) as e:
            raise ConfigError(f"config key 'llm.checkpoint': cannot read {cfg.llm.checkpoint}: {e}") from None
    if cfg.llm.preset not in presets.PRESETS:
        raise ConfigError(
            f"config key 'llm.preset': {cfg.llm.preset!r} is not allowed; allowed values: "
            f"{', '.join(presets.PRESETS)}"
        )
    return QwenBackbone.from_preset(cfg.llm.preset, **kwargs)


def source_dropout(cfg) -> float:
    """The dropout the starting decoder's config has (the written one keeps it)."""
    from coco_tf.llm import presets
    from coco_tf.llm.qwen_decoder import read_backbone_config

    config = read_backbone_config(cfg.llm.checkpoint) if cfg.llm.checkpoint else presets.get_preset(cfg.llm.preset)
    return float(config.get("dropout", 0.0))
