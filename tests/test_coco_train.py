"""End to end through the Trainer: kar and coco (ablations, fusions, selection rules) train a
few steps on a tiny synthetic catalog with the tiny decoder; losses finite, metrics computed,
telemetry logged."""

import json
import os

import numpy as np
import pytest

from coco_tf.config import load_config
from coco_tf.training.trainer import Trainer

TINY = [
    "data.synthetic_num_users=160",
    "data.synthetic_num_items=60",
    "data.synthetic_max_len=10",
    "data.max_len=8",
    "model.embedding_dim=16",
    "model.num_blocks=1",
    "model.dropout=0.1",
    "train.batch_size=64",
    "train.learning_rate=0.005",
    "train.loss=in_batch",
    "coco.codebook_size=8",
    "coco.max_prompts=3",
    "coco.threshold=0.2",
    "llm.lora_rank=4",
    "runtime.progress=false",
]


def _run(tmp_path, *overrides, epochs=2):
    cfg = load_config(overrides=TINY + [f"train.epochs={epochs}", f"runtime.model_dir={tmp_path}", *overrides])
    trainer = Trainer(cfg)
    return trainer, trainer.run()


def _check(tmp_path, result):
    assert set(result["test"]) == {f"{m}@{k}" for m in ("recall", "ndcg") for k in (5, 10, 20)}
    assert all(np.isfinite(v) for v in result["test"].values())
    history = json.load(open(tmp_path / "history.json"))
    for record in history:
        assert np.isfinite(record["loss"])
        assert all(np.isfinite(v) for v in record["telemetry"].values())
    return history


def test_coco_trains_loss_decreases_and_logs_telemetry(tmp_path):
    trainer, result = _run(tmp_path, "coco.method=coco", "coco.base_epochs=0", epochs=3)
    history = _check(tmp_path, result)
    t = [h["telemetry"] for h in history]
    assert t[-1]["loss/total"] < t[0]["loss/total"], t
    for key in ("loss/rec", "loss/aux", "loss/ortho", "loss/vq", "coco/m1_fraction", "coco/mean_selected",
                "coco/codebook_perplexity", "coco/codebook_unused"):
        assert key in t[0]
    assert 0.0 <= t[0]["coco/m1_fraction"] <= 1.0
    assert any(f.startswith("item_text_table_") for f in os.listdir(tmp_path / "cache"))
    assert any(f.startswith("events") for f in os.listdir(tmp_path / "tensorboard"))
    # The model's decoder starts from the weights that encoded the item text table.
    assert trainer.model.llm.lora_variables


def test_kar_trains(tmp_path):
    _, result = _run(tmp_path, "coco.method=kar", epochs=1)
    _check(tmp_path, result)
