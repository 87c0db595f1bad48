"""End to end: train on a tiny synthetic catalog, resume, CLI."""

import json
import os
import subprocess
import sys

import pytest

from coco_tf.config import load_config
from coco_tf.data.errors import DataError
from coco_tf.training.trainer import Trainer
from conftest import tiny_overrides  # noqa: E402  (tests/conftest.py: the tiny config)

TINY = tiny_overrides(
    "data.synthetic_num_users=600", "data.synthetic_num_items=150", "data.synthetic_max_len=15", "data.max_len=12",
    "model.embedding_dim=32", "model.dropout=0.2", "train.learning_rate=0.005", drop=("model.num_blocks", "coco.", "llm."),
)


@pytest.mark.parametrize("loss", ["full_softmax", "in_batch"])
def test_tiny_run_beats_random_by_far(tmp_path, loss):
    cfg = load_config(overrides=TINY + ["train.epochs=6", f"train.loss={loss}", f"runtime.model_dir={tmp_path}"])
    result = Trainer(cfg).run()
    random_recall10 = 10 / 150
    assert result["test"]["recall@10"] > 3 * random_recall10, result["test"]
    with open(tmp_path / "metrics.json") as fh:
        saved = json.load(fh)
    assert set(saved["valid"]) == {f"{m}@{k}" for m in ("recall", "ndcg") for k in (5, 10, 20)}
    assert saved["test"] == result["test"]
    assert saved["examples_per_sec"] > 0 and saved["wall_seconds"] > 0
    assert os.path.exists(tmp_path / "config.yaml")
    assert any(f.startswith("events") for f in os.listdir(tmp_path / "tensorboard"))


@pytest.mark.slow  # stops and resumes a run
def test_resume_continues_from_last_checkpoint(tmp_path):
    base = TINY + [f"runtime.model_dir={tmp_path}"]
    first = Trainer(load_config(overrides=base + ["train.epochs=2"]))
    first.run()
    steps_after_2 = int(first.optimizer.iterations.numpy())
    second = Trainer(load_config(overrides=base + ["train.epochs=3"]))
    result = second.run()
    history = json.load(open(tmp_path / "history.json"))
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert result["epochs_run"] == 3
    # Step count continues: epoch 3 added one epoch's steps on top of the restored count.
    assert int(second.optimizer.iterations.numpy()) == steps_after_2 * 3 // 2
    # Times cover the whole run, not only the resuming process.
    walls = [h["wall_seconds"] for h in history]
    assert walls == sorted(walls) and walls[0] > 0
    assert result["wall_seconds"] >= walls[-1] > walls[1]
    assert result["train_seconds"] == pytest.approx(sum(h["train_seconds"] for h in history), abs=0.02)
    assert result["train_seconds"] > history[-1]["train_seconds"]
    assert not os.path.exists(tmp_path / "history.json.tmp")
    # A history.json cut short (a run killed mid-write before the write-then-rename) names the file.
    text = (tmp_path / "history.json").read_text()
    (tmp_path / "history.json").write_text(text[: len(text) // 2])
    with pytest.raises(DataError, match=r"history\.json:\d+: not valid JSON"):
        Trainer(load_config(overrides=base + ["train.epochs=4"])).run()


def run_cli(*args, cwd=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "coco_tf.train", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


@pytest.mark.slow  # subprocesses
def test_cli_config_errors_are_clear(tmp_path):
    proc = run_cli("--set", "train.lr=1", "--model_dir", str(tmp_path))
    assert proc.returncode == 2
    assert "unknown config key 'train.lr'" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow  # subprocesses
def test_cli_data_errors_name_file_and_line(tmp_path):
    (tmp_path / "items.tsv").write_text("item_id\ttitle\n1\tA\n")
    (tmp_path / "sequences.txt").write_text("u1 1 1 1\nu2 1 7\n")
    proc = run_cli("--set", "data.source=text", "--set", f"data.path={tmp_path}", "--model_dir", str(tmp_path / "m"))
    assert proc.returncode == 2
    assert "sequences.txt:2: item id 7 is not in items.tsv" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow  # subprocesses
def test_cli_trains_and_prints_table(tmp_path):
    proc = run_cli(*sum((["--set", s] for s in TINY + ["train.epochs=1"]), []), "--model_dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| test |" in proc.stdout
    assert json.load(open(tmp_path / "metrics.json"))["test"]["recall@5"] >= 0
