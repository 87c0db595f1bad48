"""A run SIGKILLed between epochs and inside an epoch, then resumed, writes the same history.json and
metrics.json as an uninterrupted run (CPU, runtime.deterministic=true); timings aside.

Each run is its own process (a resumed process starts with fresh TensorFlow state, as after a real
crash). The kill is deterministic: the process SIGKILLs itself just before a given global step, so
steps after the last checkpoint are lost and must be redone identically.
"""

import json
import os
import subprocess
import sys

import pytest

from test_reliability import TINY as RELIABILITY_TINY  # noqa: E402

pytestmark = pytest.mark.slow  # kills and resumes training subprocesses (conftest.py)

ROOT = os.path.join(os.path.dirname(__file__), "..")

# The reliability tests' tiny catalog and model, plus what exact resume needs (later keys win).
TINY = RELIABILITY_TINY + [
    "model.dropout=0.3",
    "train.learning_rate=0.005",
    "train.epochs=4",
    "train.checkpoint_every_steps=3",
    "runtime.deterministic=true",
    "runtime.threads=1",
]

RUN = r"""
import json, os, signal, sys
import coco_tf
from coco_tf.config import load_config
from coco_tf.training.trainer import Trainer

model_dir, kill_before = sys.argv[1], int(sys.argv[2])
trainer = Trainer(load_config(overrides=json.loads(sys.argv[3]) + [f"runtime.model_dir={model_dir}"]))
step_fn = trainer._train_step

def step(batch):
    if kill_before and int(trainer.optimizer.iterations.numpy()) + 1 == kill_before:
        print("killing", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    return step_fn(batch)

trainer._train_step = step
result = trainer.run()
print("steps_per_epoch", int(trainer.optimizer.iterations.numpy()) // result["epochs_run"], flush=True)
"""

TIMING = {"train_seconds", "wall_seconds", "examples_per_sec", "seconds"}


def _run(model_dir, kill_before=0):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_NUM_INTRAOP_THREADS="1", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", RUN, str(model_dir), str(kill_before), json.dumps(TINY)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    if kill_before:
        assert proc.returncode == -9 and "killing" in proc.stdout, proc.stderr[-3000:]
        return None
    assert proc.returncode == 0, proc.stderr[-3000:]
    return int(proc.stdout.split("steps_per_epoch")[1].split()[0])


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _records(model_dir):
    return {name: _strip(json.load(open(os.path.join(model_dir, name)))) for name in ("history.json", "metrics.json")}


def test_killed_and_resumed_run_matches_uninterrupted(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    spe = _run(straight)
    assert spe > 6  # several mid-epoch checkpoints per epoch (every 3 steps)
    # Between epochs: killed before the first step of epoch 2 (epoch 1 is checkpointed and recorded).
    _run(resumed, kill_before=spe + 1)
    assert [h["epoch"] for h in json.load(open(resumed / "history.json"))] == [1]
    # Inside an epoch: killed in epoch 3, two steps after its checkpoint at epoch step 3 (those two
    # steps are lost and redone).
    _run(resumed, kill_before=2 * spe + 6)
    assert [h["epoch"] for h in json.load(open(resumed / "history.json"))] == [1, 2]
    assert _run(resumed) == spe
    a, b = _records(straight), _records(resumed)
    assert a["history.json"] == b["history.json"]
    assert a["metrics.json"] == b["metrics.json"]
