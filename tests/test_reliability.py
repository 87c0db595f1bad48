"""What a new user meets when something is wrong (issue #20): every exit code of ``coco_tf.train``
and ``launch/run_cluster.sh``, an unreachable cluster failing fast, a finished run left intact,
epoch-mean losses, and a quiet start on a machine without a GPU.

Exit codes (train --help, launch/run_cluster.sh, README "Failure behaviour"): 0 done or already
finished, 2 bad config / data / TF_CONFIG (and bad run_cluster.sh arguments), 3 cluster failure or
unreachable cluster. Exit 2 for a bad config key and for bad data: tests/test_train_e2e.py.
"""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from coco_tf.config import load_config
from coco_tf.training.tf_config import free_ports, make_cluster, make_tf_config, unreachable
from coco_tf.training.trainer import Trainer
from conftest import tiny_overrides  # noqa: E402  (tests/conftest.py: the tiny config)

ROOT = os.path.join(os.path.dirname(__file__), "..")
TINY = tiny_overrides(
    "data.synthetic_num_users=300", "data.synthetic_num_items=120", "data.synthetic_max_len=15", "data.max_len=12",
    "model.dropout=0.2", "train.batch_size=32", drop=("model.num_blocks", "train.learning_rate", "coco.", "llm."),
)


def run_cli(*args, env=None, timeout=300):
    env = dict(os.environ if env is None else env, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "coco_tf.train", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)


def _sets(overrides):
    return sum((["--set", s] for s in overrides), [])


# ----------------------------------------------------------------- unreachable cluster: exit 3


def test_unreachable_lists_tasks_that_never_accept():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        up = f"127.0.0.1:{listener.getsockname()[1]}"
        down = f"127.0.0.1:{free_ports(1)[0]}"
        cluster = {"chief": ["127.0.0.1:1"], "ps": [up], "worker": [up.replace("127.0.0.1", "localhost"), down]}
        t0 = time.monotonic()
        assert unreachable(cluster, timeout=1.0, interval=0.2) == [f"worker:1 at {down}"]
        assert 0.8 < time.monotonic() - t0 < 10
        assert unreachable({"ps": [up], "worker": [up]}, timeout=5.0) == []
    finally:
        listener.close()


@pytest.mark.slow  # subprocesses
def test_chief_fails_fast_on_unreachable_cluster(tmp_path):
    cluster = make_cluster(2, 1)  # free loopback ports nobody listens on
    env = dict(os.environ, TF_CONFIG=json.dumps(make_tf_config(cluster, "chief", 0)))
    t0 = time.monotonic()
    proc = run_cli(*_sets(TINY + ["runtime.strategy=ps", "runtime.cluster_connect_timeout=2"]),
                   "--model_dir", str(tmp_path), env=env, timeout=120)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert time.monotonic() - t0 < 90
    err = proc.stderr
    assert "runtime.cluster_connect_timeout=2 s" in err
    for name, addr in (("ps:0", cluster["ps"][0]), ("ps:1", cluster["ps"][1]), ("worker:0", cluster["worker"][0])):
        assert f"{name} at {addr}" in err
    assert "Traceback" not in err


# ----------------------------------------------------------------- bad TF_CONFIG: exit 2


@pytest.mark.slow  # subprocesses
@pytest.mark.parametrize(
    "tf_config, message",
    [
        ({"cluster": {}, "task": {"type": "chief", "index": 0}}, "'cluster' is empty"),
        (make_tf_config(make_cluster(1, 1, ports=[1001, 1002, 1003]), "worker", 0), "only the chief runs coco_tf.train"),
    ],
)
def test_bad_tf_config_exits_2(tmp_path, tf_config, message):
    env = dict(os.environ, TF_CONFIG=json.dumps(tf_config))
    proc = run_cli("--set", "runtime.strategy=ps", "--model_dir", str(tmp_path), env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "TF_CONFIG error:" in proc.stderr and message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_cluster_argument_errors_exit_2():
    script = os.path.join(ROOT, "launch", "run_cluster.sh")

    def run(*args):
        return subprocess.run(["bash", script, *args], capture_output=True, text=True, timeout=30)

    proc = run("--workers")
    assert proc.returncode == 2 and "--workers needs a value" in proc.stderr and "unbound" not in proc.stderr
    proc = run("--workers", "abc")
    assert proc.returncode == 2 and "got 'abc'" in proc.stderr
    usage = run("--help")
    assert usage.returncode == 0 and "Exit status" in usage.stdout and "set -euo" not in usage.stdout


# ----------------------------------------------------------------- a finished run: exit 0, untouched


@pytest.mark.slow  # subprocesses
def test_rerun_of_finished_run_leaves_it_intact(tmp_path):
    overrides = TINY + ["train.epochs=2", f"runtime.model_dir={tmp_path}"]
    Trainer(load_config(overrides=overrides)).run()
    before = {name: (tmp_path / name).read_bytes() for name in ("metrics.json", "history.json")}
    ckpts = sorted(os.listdir(tmp_path / "ckpt"))
    proc = run_cli(*_sets(overrides))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "already finished" in proc.stdout and f"{tmp_path}/metrics.json" in proc.stdout
    assert "None" not in proc.stdout
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert sorted(os.listdir(tmp_path / "ckpt")) == ckpts
    # More epochs asked for: not finished, training continues.
    result = Trainer(load_config(overrides=overrides[:-2] + ["train.epochs=3", f"runtime.model_dir={tmp_path}"])).run()
    assert result["epochs_run"] == 3 and result["examples_per_sec"] > 0


# ----------------------------------------------------------------- epoch means


def test_history_loss_is_the_epoch_mean_of_step_losses(tmp_path):
    trainer = Trainer(load_config(overrides=TINY + ["train.epochs=2", "train.checkpoint_every_steps=4",
                                                    f"runtime.model_dir={tmp_path}"]))
    losses, step_fn = [], trainer._train_step

    def step(batch):
        loss, telemetry = step_fn(batch)
        losses.append(float(loss))
        return loss, telemetry

    trainer._train_step = step
    trainer.run()
    history = json.load(open(tmp_path / "history.json"))
    per_epoch = len(losses) // 2
    for i, record in enumerate(history):
        epoch_losses = losses[i * per_epoch : (i + 1) * per_epoch]
        assert record["loss"] == pytest.approx(sum(epoch_losses) / len(epoch_losses), abs=2e-6)
        assert record["loss"] != pytest.approx(epoch_losses[-1], abs=1e-6)


# ----------------------------------------------------------------- start-up noise


@pytest.mark.slow  # subprocesses
@pytest.mark.skipif(os.path.exists("/proc/driver/nvidia/version"), reason="a machine with an NVIDIA driver")
def test_cpu_machine_start_is_quiet():
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES")}
    env["PYTHONPATH"] = ROOT
    code = "import coco_tf, sys, tensorflow as tf; tf.constant(1); print('ok'); print('real error', file=sys.stderr)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok"
    assert "cuInit" not in proc.stderr and "E0000" not in proc.stderr
    assert proc.stderr.strip() == "real error"


# ----------------------------------------------------------------- disk full: exit 4, resumable


def test_write_json_failure_keeps_previous_file(tmp_path, monkeypatch):
    import errno

    from coco_tf.training import base as trainer_module

    path = str(tmp_path / "history.json")
    trainer_module.write_json(path, [{"epoch": 1}], indent=1)

    def full(obj, fh, **kw):
        fh.write('[{"epo')
        raise OSError(errno.ENOSPC, "No space left on device", path + ".tmp")

    monkeypatch.setattr(trainer_module.json, "dump", full)
    with pytest.raises(OSError):
        trainer_module.write_json(path, [{"epoch": 1}, {"epoch": 2}], indent=1)
    assert json.load(open(path)) == [{"epoch": 1}] and not os.path.exists(path + ".tmp")


def _mount_tmpfs(path, size):
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    os.makedirs(path, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.slow  # subprocesses
def test_disk_full_while_checkpointing_exits_4_and_resumes(tmp_path):
    mnt = tmp_path / "small"
    if not _mount_tmpfs(mnt, "300k"):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        model_dir = mnt / "run"
        overrides = TINY + ["train.epochs=6"]
        proc = run_cli(*_sets(overrides), "--model_dir", str(model_dir))
        assert proc.returncode == 4, proc.stderr[-2000:]
        assert "write error: could not write to" in proc.stderr and "No space left on device" in proc.stderr
        assert "Traceback" not in proc.stderr
        import tensorflow as tf

        latest = tf.train.latest_checkpoint(str(model_dir / "ckpt"))
        assert latest is not None
        done = [h["epoch"] for h in json.load(open(model_dir / "history.json"))]
        assert done and done == list(range(1, len(done) + 1)) and len(done) < 6
        subprocess.run(["mount", "-o", "remount,size=8m", str(mnt)], check=True)
        proc = run_cli(*_sets(overrides), "--model_dir", str(model_dir))
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert [h["epoch"] for h in json.load(open(model_dir / "history.json"))] == [1, 2, 3, 4, 5, 6]
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


# ----------------------------------------------------------------- Ctrl-C: exit 130; old checkpoints


@pytest.mark.slow  # subprocesses
def test_ctrl_c_exits_130_saying_how_to_resume(tmp_path):
    import signal

    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "coco_tf.train", *_sets(TINY + ["train.epochs=500"]),
                             "--model_dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT,
                            # A background job (`cmd &` in a script, as CI may run pytest) inherits SIGINT
                            # ignored, and Python then keeps ignoring it: give the trainer a terminal's default.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        t0 = time.time()
        # Interrupt in the training loop proper: after the first epoch's checkpoint (on a loaded machine a
        # signal during the first tf.function trace took over 60 s to surface).
        while not (tmp_path / "ckpt" / "checkpoint").exists() and time.time() - t0 < 180 and proc.poll() is None:
            time.sleep(0.2)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted: run the same command again to resume" in err and "Traceback" not in err


@pytest.mark.slow  # stops and resumes a run
def test_checkpoint_from_before_exact_resume_still_resumes(tmp_path):
    import tensorflow as tf

    overrides = TINY + [f"runtime.model_dir={tmp_path}"]
    old = Trainer(load_config(overrides=overrides + ["train.epochs=1"]))
    old._build()
    old.epoch.assign(1)
    manager = tf.train.CheckpointManager(  # the checkpoint layout before issue #20
        tf.train.Checkpoint(model=old.model, optimizer=old.optimizer, epoch=old.epoch,
                            best_score=old.best_score, stale_evals=old.stale_evals),
        str(tmp_path / "ckpt"), max_to_keep=3)
    manager.save(checkpoint_number=1)
    result = Trainer(load_config(overrides=overrides + ["train.epochs=2"])).run()
    assert result["epochs_run"] == 2
    assert [h["epoch"] for h in json.load(open(tmp_path / "history.json"))] == [2]


def test_first_ctrl_c_is_deferred_to_the_next_check_and_a_second_one_is_not():
    import signal

    from coco_tf.training import interrupt

    before = signal.getsignal(signal.SIGINT)
    with interrupt.deferred():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs between bytecodes; nothing was raised here
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # the second one raises at once
            time.sleep(1.0)
    interrupt.check()  # outside: the request is cleared and the previous handler is back
    assert signal.getsignal(signal.SIGINT) is before
