"""``coco.init_from``: start a kar/coco run from a finished base run's backbone and item table.

Example:

>>> path = warm_start(model, cfg)      # restores <init_from>/best into model; ConfigError on a mismatch
"""

from __future__ import annotations

import os

import tensorflow as tf

from coco_tf.config import Config, ConfigError, load_config


# What must agree between this run and the run that coco.init_from names (the backbone and item table).
WARM_START_KEYS = ("data.max_len", "model.backbone", "model.embedding_dim", "model.num_blocks", "model.num_heads",
                   "model.ffn_dim", "model.item_text", "model.attributes", "llm.preset", "llm.checkpoint")


def warm_start(model, cfg: Config) -> str:
    """Restores ``coco.init_from``'s best checkpoint (else its latest) into ``model``: the backbone,
    the item table and ``model.item_text``'s projection; everything else (the LLM branch and the
    frozen LLM assets) keeps this run's values.
    Returns the checkpoint path; raises ConfigError naming the mismatch when the runs disagree."""
    run_dir = cfg.coco.init_from
    theirs_path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(theirs_path):
        raise ConfigError(f"config key 'coco.init_from': {run_dir!r} is not a run directory (no config.yaml)")
    theirs = load_config(theirs_path)
    for key in WARM_START_KEYS:
        section, name = key.split(".")
        mine, other = getattr(getattr(cfg, section), name), getattr(getattr(theirs, section), name)
        if key in ("model.attributes",) and cfg.model.backbone not in ("fdsa", "s3rec"):
            continue
        if key.startswith("llm.") and not cfg.model.item_text:
            continue
        if mine != other:
            raise ConfigError(f"config key 'coco.init_from': {key} is {other!r} in {theirs_path} but {mine!r} "
                              "here; the backbone must have the same shape")
    path = (tf.train.latest_checkpoint(os.path.join(run_dir, "best"))
            or tf.train.latest_checkpoint(os.path.join(run_dir, "ckpt")))
    if not path:
        raise ConfigError(f"config key 'coco.init_from': {run_dir!r} holds no checkpoint (best/ or ckpt/)")
    shapes = dict(tf.train.list_variables(path))
    table_key = "model/item_embedding/embeddings/.ATTRIBUTES/VARIABLE_VALUE"
    want = [model.num_items + 1, model.embedding_dim]
    if table_key in shapes and list(shapes[table_key]) != want:
        raise ConfigError(f"config key 'coco.init_from': {path} has an item table of {shapes[table_key][0] - 1} "
                          f"items, this catalog has {model.num_items}")
    # Only the backbone, the item table and model.item_text's projection come from the other run,
    # matched by their object paths (model/backbone/..., model/item_embedding, model/text_projection).
    # The frozen LLM assets (item text table, decoder, prompts) stay this run's: they follow this
    # run's llm.* settings (llm.text_table_shuffle, llm.item_text_source, the decoder), which a
    # kar/coco source run may not share.
    parts = {"backbone": model.backbone, "item_embedding": model.item_embedding}
    if getattr(model, "text_projection", None) is not None:
        parts["text_projection"] = model.text_projection
    tf.train.Checkpoint(model=tf.train.Checkpoint(**parts)).restore(path).expect_partial()
    return path
