"""Everything the LLM-augmented models need from the frozen base decoder, built once.

:func:`build_llm_assets` loads the base decoder (``llm.checkpoint`` directory,
the ``llm.preset`` pretrained in-run when ``llm.pretrain_epochs > 0``, or the
random preset), builds the tokenizer (the checkpoint's own, or word-piece learned
from the item texts), and encodes with the frozen decoder (masked mean pooling):

* the item text table ``[num_items + 1, d_llm]`` of the item texts
  (``llm.item_text_template``, ``coco_tf.llm.item_text``; cached on disk by
  ``coco_tf.llm.item_text_table``);
* the codebook init: K prompt texts (``coco.codebook_init=llm``; see
  ``coco_tf.llm.prompts.PROMPT_TEXTS``), and the S shared prompts;
* KAR's two fixed factorised prompts (:data:`KAR_PROMPT_TEXTS`).

It keeps the base weights as numpy arrays so that the model's own decoder
(with LoRA for CoCo, frozen for KAR) starts from exactly the weights that
encoded the table — with the random ``tiny`` preset too.

Example::

    assets = build_llm_assets(cfg, dataset, cache_dir="runs/x/cache")
    llm = assets.make_decoder(lora_rank=8)           # QwenBackbone, base weights loaded
    assets.item_text_table.shape                      # (num_items + 1, 64)
"""

from __future__ import annotations

import dataclasses
import time
from typing import Dict, Optional

import numpy as np
from absl import logging

from coco_tf.llm.item_text_table import build_item_text_table, encode_texts  # noqa: F401 (export reads it here)
from coco_tf.llm.item_text import TITLE_TEMPLATE, item_texts
from coco_tf.llm.knowledge import knowledge_prompt
from coco_tf.llm.prompts import KAR_PROMPT_TEXTS, SHARED_PROMPT_TEXTS, prompt_texts
from coco_tf.llm.tokenizer import catalog_tokenizer
from coco_tf.llm.qwen_decoder import QwenBackbone, decoder_config

@dataclasses.dataclass
class LLMAssets:
    decoder_config: Dict
    base_weights: Dict[str, np.ndarray]
    item_text_table: np.ndarray
    codebook_init: Optional[np.ndarray]
    shared_init: np.ndarray
    kar_prompts: np.ndarray

    def make_decoder(self, lora_rank: int = 0, lora_alpha: float = 16.0, lora_dropout: float = 0.05, name: str = "llm"):
        """A ``QwenBackbone`` with the base weights; ``lora_rank == 0`` gives a frozen decoder."""
        config = dict(self.decoder_config)
        config.update(lora_rank=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout, name=name)
        decoder = QwenBackbone(**config)
        decoder.set_base_weights(self.base_weights, what="base decoder weights")
        if lora_rank == 0:
            decoder.trainable = False
        return decoder


def build_llm_assets(cfg, catalog, cache_dir: Optional[str] = None) -> LLMAssets:
    """Builds :class:`LLMAssets` for ``cfg`` (``llm`` and ``coco`` sections) and ``catalog``.

    ``catalog``: the ``SequenceDataset`` (or a bare title list, index 0 padding);
    its item texts are rendered with ``llm.item_text_template``. With
    ``llm.pretrain_epochs > 0`` and no ``llm.checkpoint`` the preset is first
    pretrained on those texts (``coco_tf.llm.pretrain.resolve_checkpoint``,
    cached in ``cache_dir``).
    """
    from coco_tf.llm.pretrain import resolve_checkpoint

    started = time.time()
    texts = item_texts(catalog, cfg.llm.item_text_template)
    checkpoint = resolve_checkpoint(cfg, catalog, cache_dir)
    source = checkpoint or cfg.llm.preset
    base = QwenBackbone.from_preset(source, lora_rank=0, name="base_llm")
    base.trainable = False
    tokenizer = catalog_tokenizer(texts, checkpoint or None, base.vocabulary_size)
    if cfg.llm.item_text_source == "written":  # what the decoder writes after each title (llm/knowledge.py)
        table = build_item_text_table(item_texts(catalog, TITLE_TEMPLATE), base, tokenizer, cache_dir=cache_dir or None,
                                      verbose=0, knowledge_tokens=cfg.llm.knowledge_tokens,
                                      knowledge_prompt=knowledge_prompt(cfg.llm.item_text_template))
    else:
        table = build_item_text_table(texts, base, tokenizer, cache_dir=cache_dir or None, verbose=0)
    k, s = cfg.coco.codebook_size, cfg.coco.num_shared_prompts
    codebook = encode_texts(prompt_texts(k), base, tokenizer) if cfg.coco.codebook_init == "llm" else None
    shared = encode_texts(prompt_texts(s, SHARED_PROMPT_TEXTS), base, tokenizer)
    kar = encode_texts(KAR_PROMPT_TEXTS, base, tokenizer)
    config = decoder_config(base)
    weights = {name: v.numpy() for name, v in base.weight_map(include_lora=False).items()}
    logging.info("LLM assets (%s, table %s) in %.1f s", source, table.shape, time.time() - started)
    return LLMAssets(config, weights, table, codebook, shared, kar)
