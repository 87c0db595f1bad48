"""Loads the dataset that ``cfg.data`` describes."""

from __future__ import annotations

from coco_tf.config import DataConfig
from coco_tf.data.amazon_raw import read_amazon_raw
from coco_tf.data.dataset import SequenceDataset
from coco_tf.data.synthetic import generate_synthetic
from coco_tf.data.text_format import read_text_dataset


def load_dataset(cfg: DataConfig) -> SequenceDataset:
    if cfg.source == "synthetic":
        return generate_synthetic(
            num_users=cfg.synthetic_num_users,
            num_items=cfg.synthetic_num_items,
            min_len=cfg.synthetic_min_len,
            max_len=cfg.synthetic_max_len,
            seed=cfg.synthetic_seed,
        )
    if cfg.source == "text":
        return read_text_dataset(cfg.path, on_bad_line=cfg.on_bad_line)
    if cfg.source == "amazon_raw":
        return read_amazon_raw(cfg.path, cfg.category, k=cfg.k_core, on_bad_line=cfg.on_bad_line)
    raise ValueError(f"config key 'data.source': unknown value {cfg.source!r}")  # validated earlier
