"""Parameter-server training on a real subprocess cluster (2 PS, 2 workers, chief) on loopback.

Each test starts its servers with LocalCluster (python -m coco_tf.training.server per task) and
runs the chief as ``python -m coco_tf.train --set runtime.strategy=ps``.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from coco_tf.training.local_cluster import LocalCluster, chief_command

ROOT = os.path.join(os.path.dirname(__file__), "..")
TINY = [
    "data.synthetic_num_users=300",
    "data.synthetic_num_items=150",
    "data.synthetic_max_len=15",
    "data.max_len=12",
    "model.embedding_dim=32",
    "model.num_blocks=1",
    "model.dropout=0.2",
    "train.batch_size=64",
    "train.learning_rate=0.005",
    "runtime.progress=true",
    # 151 x 32 float32 = 19 KB: small shards so that the item table splits across both PS tasks.
    "runtime.partitioner_min_shard_bytes=4096",
]


def start_chief(overrides, model_dir, cluster):
    return subprocess.Popen(chief_command(TINY + overrides, str(model_dir)), env=cluster.env("chief"), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_line(proc, needle, timeout=120):
    """Reads the chief's output until a line contains ``needle``; returns the lines read."""
    lines, t0 = [], time.time()
    while time.time() - t0 < timeout:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"never saw {needle!r}; output:\n{''.join(lines)[-3000:]}")


def finish(proc, timeout=180):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def test_ps_cluster_trains_with_table_split_across_both_ps(tmp_path):
    with LocalCluster(2, 2, log_dir=str(tmp_path / "logs")) as cluster:
        chief = start_chief(["train.epochs=2", "train.loss=in_batch", "runtime.steps_per_execution=2"],
                            tmp_path, cluster)
        rc, out = finish(chief)
    assert rc == 0, out[-3000:]
    m = json.load(open(tmp_path / "metrics.json"))
    shards = m["cluster"]["item_table_shards"]
    assert len(shards) == 2, shards
    assert sum(s["shape"][0] for s in shards) == 151 and all(s["shape"][1] == 32 for s in shards)
    assert "/job:ps/replica:0/task:0" in shards[0]["device"] and "/job:ps/replica:0/task:1" in shards[1]["device"]
    assert m["epochs_run"] == 2 and m["test"]["recall@10"] > 2 * 10 / 150, m["test"]
    for f in ("config.yaml", "history.json", "ckpt/checkpoint", "best/checkpoint"):
        assert os.path.exists(tmp_path / f), f


def test_worker_killed_mid_run_training_completes(tmp_path):
    with LocalCluster(2, 2, log_dir=str(tmp_path / "logs")) as cluster:
        chief = start_chief(["train.epochs=3", "train.checkpoint_every_steps=2"], tmp_path, cluster)
        wait_for_line(chief, "epoch 1/3 step 2/")
        cluster.kill("worker", 1)
        rc, out = finish(chief)
    assert rc == 0, out[-3000:]
    m = json.load(open(tmp_path / "metrics.json"))
    history = json.load(open(tmp_path / "history.json"))
    assert [h["epoch"] for h in history] == [1, 2, 3]
    steps_per_epoch = history[0]["step"]
    assert m["steps"] == 3 * steps_per_epoch
    assert m["test"]["recall@10"] > 10 / 150


def test_chief_killed_then_relaunch_resumes_from_checkpoint(tmp_path):
    overrides = ["train.epochs=3", "train.checkpoint_every_steps=2"]
    with LocalCluster(2, 2, log_dir=str(tmp_path / "logs")) as cluster:
        chief = start_chief(overrides, tmp_path, cluster)
        seen = wait_for_line(chief, "epoch 2/3 step 4/")
        chief.kill()
        chief.wait()
    last_global = max(int(l.split("(global ")[1].split(")")[0]) for l in seen if "(global " in l)
    # A fresh cluster, as launch/run_cluster.sh would start after a failure.
    with LocalCluster(2, 2, log_dir=str(tmp_path / "logs2")) as cluster:
        rc, out = finish(start_chief(overrides, tmp_path, cluster))
    assert rc == 0, out[-3000:]
    resumed = [l for l in out.splitlines() if l.startswith("resumed from")]
    assert resumed, out[-2000:]
    resumed_step = int(resumed[0].rsplit("step ", 1)[1])
    # At most one checkpoint interval (2 steps) lost: the checkpoint after the last finished chunk.
    assert last_global - 2 <= resumed_step <= last_global
    history = json.load(open(tmp_path / "history.json"))
    assert [h["epoch"] for h in history] == [1, 2, 3]
    steps_per_epoch = history[0]["step"]
    assert [h["step"] for h in history] == [steps_per_epoch, 2 * steps_per_epoch, 3 * steps_per_epoch]
    assert json.load(open(tmp_path / "metrics.json"))["steps"] == 3 * steps_per_epoch


def test_ps_killed_stops_with_clear_message(tmp_path):
    with LocalCluster(2, 2, log_dir=str(tmp_path / "logs")) as cluster:
        chief = start_chief(["train.epochs=20", "train.checkpoint_every_steps=2"], tmp_path, cluster)
        wait_for_line(chief, "epoch 1/20 step 4/")  # ckpt-2 is on disk by then
        cluster.kill("ps", 1)
        rc, out = finish(chief, timeout=120)
    assert rc == 3, out[-3000:]
    assert "cluster error:" in out and "Relaunch the job with the same model_dir to resume from" in out
    assert "ckpt-" in out.split("cluster error:")[1]
