"""What both trainers build before the model: the data split, the per-position loss
normaliser and ``build_model``'s numpy inputs (the LLM assets, the seen-item mask, the item
attributes).

Example:

>>> dataset, split = load_and_split(cfg)
>>> lengths, normalizer = training_lengths(cfg, split)
>>> model = build_model(cfg, dataset.num_items, loss_normalizer=normalizer,
...                     **model_inputs(cfg, dataset, split, model_dir))
"""

from __future__ import annotations

import os
from typing import Dict, Tuple

import numpy as np
from absl import logging

from coco_tf.config import Config
from coco_tf.data.loader import load_dataset
from coco_tf.data.pipeline import training_examples
from coco_tf.data.split import leave_one_out, training_item_mask
from coco_tf.methods.factory import needs_llm_assets


def load_and_split(cfg: Config, dataset=None):
    """``(dataset, leave-one-out split)`` for both trainers, logging what the data lost:
    skipped input lines and users too short to evaluate (never silently)."""
    dataset = dataset if dataset is not None else load_dataset(cfg.data)
    logging.info("data: %s", dataset.describe())
    if dataset.skipped.total:
        logging.warning(dataset.skipped.summary())
    split = leave_one_out(dataset.sequences)
    if split.train_only_users:
        logging.warning("%d users have fewer than 3 items: used for training only, not evaluated",
                        split.train_only_users)
    return dataset, split


def training_lengths(cfg: Config, split) -> Tuple[np.ndarray, float]:
    """``(lengths [N], loss_normalizer)``: the history length of every training example and the
    models' per-position loss normaliser, ``train.batch_size`` × their mean, so that every
    training position weighs the same whichever batch it lands in."""
    hist, _ = training_examples(split.train, cfg.data.max_len)
    lengths = np.array([len(h) for h in hist])
    return lengths, float(cfg.train.batch_size * lengths.mean())


def model_inputs(cfg: Config, dataset, split, model_dir: str) -> Dict:
    """``build_model``'s keyword arguments besides ``cfg`` and ``num_items``, for both trainers.

    kar / coco / ``model.item_text``: the frozen base decoder (pretrained first on the
    catalog text when ``llm.pretrain_epochs > 0``) encodes the item texts once (cached on disk, ``llm.cache_dir`` or ``<model_dir>/cache``) and the
    prompt texts (:func:`coco_tf.llm.assets.build_llm_assets`); the model's decoder
    starts from its weights. ``model.item_text``: ``seen_items``, the training
    split's items (the others are cold, scored by their text). Everything here is
    numpy: the parameter-server trainer builds it on the chief before
    ``strategy.scope()`` and creates the variables from it inside.
    """
    llm_assets = None
    if needs_llm_assets(cfg):
        from coco_tf.llm.assets import build_llm_assets

        llm_assets = build_llm_assets(cfg, dataset, cfg.llm.cache_dir or os.path.join(model_dir, "cache"))
        if cfg.llm.text_table_shuffle:
            llm_assets.item_text_table = shuffle_item_rows(llm_assets.item_text_table)
            logging.info("llm.text_table_shuffle: item text table rows permuted across items (control run)")
    seen = None
    if cfg.model.item_text:
        seen = training_item_mask(split.train, dataset.num_items)
        logging.info("model.item_text: %d catalog items never occur in training (scored by text)",
                     dataset.num_items - int(seen[1:].sum()))
    return {"llm_assets": llm_assets, "seen_items": seen, "attributes": dataset.attributes}


def shuffle_item_rows(table: np.ndarray, seed: int = 0) -> np.ndarray:
    """``table`` ``[num_items + 1, d]`` with rows 1.. permuted (fixed ``seed``; row 0, padding, kept):
    every item carries another item's text vector, and the table's statistics are unchanged."""
    perm = np.random.default_rng(seed).permutation(np.arange(1, table.shape[0]))
    return np.concatenate([table[:1], table[perm]], axis=0)
