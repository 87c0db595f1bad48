"""End to end through the Trainer: kar and coco (ablations, fusions, selection rules) train on a
tiny synthetic catalog with the tiny decoder and learn (their losses fall); metrics computed,
telemetry logged."""

import json
import os

import numpy as np
import pytest

from coco_tf.config import load_config
from coco_tf.training.trainer import Trainer
from conftest import tiny_overrides  # noqa: E402  (tests/conftest.py: the tiny config)

TINY = tiny_overrides("train.learning_rate=0.005", "train.loss=in_batch")


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


def _learns(tmp_path, *overrides, epochs=3):
    """Trains with the LLM branch from the first step (no base stage) and checks that it learns:
    the epoch means of the total loss and of the user-level ``L_r`` (the branch's own term) fall
    from the first epoch to the last. Returns the history."""
    _, result = _run(tmp_path, "coco.base_epochs=0", *overrides, epochs=epochs)
    history = _check(tmp_path, result)
    for key in ("loss/total", "loss/rec"):
        values = [h["telemetry"][key] for h in history]
        assert values[-1] < values[0], (key, values)
    return history


def test_kar_learns(tmp_path):
    _learns(tmp_path, "coco.method=kar")
