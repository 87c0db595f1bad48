"""From a training ``model_dir`` to a TF Serving version directory.

:func:`load_trained_model` rebuilds the model of ``<model_dir>/config.yaml`` and
restores ``<model_dir>/best/`` (the best validation checkpoint) into it, with
LoRA merged into the decoder kernels by default. The catalog size comes from
the checkpoint's item table, so base and CoCo models export without their
training data; KAR's two encoded prompt vectors are a checkpointed variable too (a KAR
checkpoint from before that encodes them again with the restored frozen decoder and the
tokenizer of the catalog titles, reading the data, ``data.*``).

:func:`export_saved_model` writes ``<export_dir>/<version>/`` (TF Serving's
numbered layout: a new version is picked up by a running server) through a
temporary directory renamed at the end, so that a server never sees half a
model. Next to the SavedModel, ``assets.extra/export_info.json`` records what
was exported (TF Serving ignores ``assets.extra``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from coco_tf.config import Config, ConfigError, load_config
from coco_tf.export.serving import ServingModule
from coco_tf.backbones.registry import get_backbone
from coco_tf.methods.factory import build_model, needs_llm_assets

class ExportError(ValueError):
    """The model directory, checkpoint or export directory cannot be used (the message says which)."""


def best_checkpoint(model_dir: str) -> str:
    """The checkpoint prefix in ``<model_dir>/best`` (raises :class:`ExportError` if none)."""
    best_dir = os.path.join(model_dir, "best")
    path = tf.train.latest_checkpoint(best_dir)
    if path is None:
        raise ExportError(
            f"--model_dir {model_dir}: no checkpoint in {best_dir} (the trainer writes it at the first "
            "validation; train with python -m coco_tf.train --model_dir DIR first)"
        )
    return path


def checkpoint_num_items(path: str) -> int:
    """Catalog size from the item table ``[num_items + 1, d]`` in the checkpoint (shards summed)."""
    rows = [
        shape[0]
        for name, shape in tf.train.list_variables(path)
        if "item_embedding/embeddings" in name and name.endswith("VARIABLE_VALUE") and "OPTIMIZER_SLOT" not in name
    ]
    if not rows:
        raise ExportError(f"{path}: no item_embedding/embeddings variable; not a coco_tf retrieval checkpoint")
    return int(sum(rows)) - 1


class _CheckpointShapedAssets:
    """What ``build_model`` needs from LLM assets, with placeholder values: the checkpoint overwrites them."""

    def __init__(self, cfg: Config, num_items: int):
        from coco_tf.llm.qwen_decoder import QwenBackbone, decoder_config

        self.decoder_config = decoder_config(QwenBackbone.from_preset(cfg.llm.checkpoint or cfg.llm.preset,
                                                                      lora_rank=0))
        d_llm = self.decoder_config["hidden_dim"]
        self.item_text_table = np.zeros([num_items + 1, d_llm], np.float32)
        self.codebook_init = None
        self.shared_init = None
        self.kar_prompts = np.zeros([2, d_llm], np.float32)  # KAR: restored from the checkpoint

    def make_decoder(self, lora_rank=0, lora_alpha=16.0, lora_dropout=0.05, name="llm"):
        from coco_tf.llm.qwen_decoder import QwenBackbone

        decoder = QwenBackbone(
            **self.decoder_config, lora_rank=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout, name=name
        )
        if lora_rank == 0:
            decoder.trainable = False
        return decoder


def _load_dataset(cfg: Config, num_items: int):
    """The training catalog (``data.*`` of config.yaml), checked against the checkpoint's item count."""
    from coco_tf.data.loader import load_dataset

    dataset = load_dataset(cfg.data)
    if dataset.num_items != num_items:
        raise ExportError(f"data.*: the dataset has {dataset.num_items} items, the checkpoint {num_items}")
    return dataset


def _encode_kar_prompts(cfg: Config, model, num_items: int, model_dir: str) -> None:
    """A KAR checkpoint written before its prompt vectors were a variable (``kar_prompt_vectors``):
    encode them again, exactly as in training, with the restored frozen decoder (the base weights)
    and the training run's tokenizer (that of llm.checkpoint or of the in-run pretrained decoder in
    the run's cache, else word-piece of the item texts)."""
    from coco_tf.llm.assets import encode_texts
    from coco_tf.llm.prompts import KAR_PROMPT_TEXTS
    from coco_tf.llm.item_text import item_texts
    from coco_tf.llm.pretrain import resolve_checkpoint
    from coco_tf.llm.tokenizer import catalog_tokenizer

    dataset = _load_dataset(cfg, num_items)
    try:
        checkpoint = resolve_checkpoint(cfg, dataset, cfg.llm.cache_dir or os.path.join(model_dir, "cache"),
                                        train=False)
    except ValueError as e:
        raise ExportError(str(e)) from None
    tokenizer = catalog_tokenizer(
        item_texts(dataset, cfg.llm.item_text_template), checkpoint or None, model.llm.vocabulary_size
    )
    model.prompt_vectors.assign(encode_texts(KAR_PROMPT_TEXTS, model.llm, tokenizer))


def load_config_from_model_dir(model_dir: str, overrides: Sequence[str] = ()) -> Config:
    """``<model_dir>/config.yaml`` plus ``overrides`` (``'export.top_k=10,20'``)."""
    path = os.path.join(model_dir, "config.yaml")
    if not os.path.exists(path):
        raise ExportError(
            f"--model_dir {model_dir}: no config.yaml (expected a directory written by python -m coco_tf.train)"
        )
    return load_config(path, overrides)


def load_trained_model(model_dir: str, overrides: Sequence[str] = (), merge_lora: bool = True) -> Tuple[Config, object]:
    """``(cfg, model)``: the model of ``model_dir`` with its best checkpoint restored.

    ``merge_lora``: fold every LoRA update into its decoder kernel (export); ``False``
    keeps the trained LoRA factors separate (the in-memory reference).
    """
    cfg = load_config_from_model_dir(model_dir, overrides)
    path = best_checkpoint(model_dir)
    num_items = checkpoint_num_items(path)
    assets = None
    if needs_llm_assets(cfg):
        assets = _CheckpointShapedAssets(cfg, num_items)
    attributes = None
    if get_backbone(cfg.model.backbone).uses_attributes:  # item features are constants, not variables
        attributes = _load_dataset(cfg, num_items).attributes
    model = build_model(cfg, num_items, assets, attributes=attributes)
    model({"history": tf.ones([1, 2], tf.int64)}, training=False)  # creates the variables
    status = tf.train.Checkpoint(model=model).restore(path).expect_partial()
    try:
        status.assert_existing_objects_matched()
    except AssertionError as e:
        raise ExportError(f"{path} does not match the model of {model_dir}/config.yaml: {e}") from None
    if cfg.coco.method == "kar" and not any("prompt_vectors" in name for name, _ in tf.train.list_variables(path)):
        _encode_kar_prompts(cfg, model, num_items, model_dir)
    if merge_lora and hasattr(model, "llm") and hasattr(model.llm, "merge_lora"):
        model.llm.merge_lora()
    return cfg, model


def next_version(export_dir: str) -> int:
    """1 + the largest numbered version under ``export_dir`` (1 if none)."""
    if not os.path.isdir(export_dir):
        return 1
    versions = [int(n) for n in os.listdir(export_dir) if n.isdigit()]
    return max(versions, default=0) + 1


def export_saved_model(
    model_dir: str, export_dir: str, version: Optional[int] = None, overrides: Sequence[str] = ()
) -> str:
    """Exports the best checkpoint of ``model_dir``; returns ``<export_dir>/<version>``."""
    cfg, model = load_trained_model(model_dir, overrides, merge_lora=True)
    try:
        module = ServingModule(model, cfg.export.top_k, cfg.data.max_len, cfg.export.jit_compile)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    version = next_version(export_dir) if version is None else int(version)
    if version <= 0:
        raise ExportError(f"--version must be a positive integer, got {version}")
    final = os.path.join(export_dir, str(version))
    if os.path.exists(final):
        raise ExportError(f"--out {export_dir}: version {version} already exists ({final}); pick another --version")
    os.makedirs(export_dir, exist_ok=True)
    tmp = os.path.join(export_dir, f".tmp-{version}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    started = time.time()
    signatures = module.signatures()
    root = tf.Module()  # only what the signatures read; not the Keras model (LoRA factors, task, ...)
    root.serving_variables = module.serving_variables(signatures)
    # No gradients are served (the decoder's SiLU has a custom gradient).
    options = tf.saved_model.SaveOptions(experimental_custom_gradients=False)
    tf.saved_model.save(root, tmp, signatures=signatures, options=options)
    info = {
        "model_dir": os.path.abspath(model_dir),
        "checkpoint": best_checkpoint(model_dir),
        "method": cfg.coco.method,
        "num_items": module.num_items,
        "max_len": module.max_len,
        "embedding_dim": cfg.model.embedding_dim,
        "top_k": module.top_k,
        "jit_compile": module.jit_compile,
        "signatures": sorted(signatures),
        "variables": len(root.serving_variables),
        "export_seconds": round(time.time() - started, 2),
    }
    os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
    with open(os.path.join(tmp, "assets.extra", "export_info.json"), "w") as fh:
        json.dump(info, fh, indent=1)
    os.rename(tmp, final)
    return final
