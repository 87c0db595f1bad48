"""A process killed while it writes a checkpoint never leaves an unloadable latest checkpoint.

TF's CheckpointManager writes the data and index files first and the ``checkpoint`` state file
last (atomically), so ``latest_checkpoint`` always names a complete checkpoint. The writer here
saves a ~24 MB variable in a loop and is SIGKILLed at several points of its save cycle.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

pytestmark = pytest.mark.slow  # kills a writer process (conftest.py)

WRITER = r"""
import sys, tensorflow as tf
v = tf.Variable(tf.zeros([3000, 2000]))
step = tf.Variable(0, dtype=tf.int64)
manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=v, step=step), sys.argv[1], max_to_keep=2)
if manager.latest_checkpoint:
    tf.train.Checkpoint(v=v, step=step).restore(manager.latest_checkpoint).assert_consumed()
print("ready", flush=True)
while True:
    step.assign_add(1)
    v.assign(tf.fill([3000, 2000], tf.cast(step, tf.float32)))
    manager.save(checkpoint_number=int(step))
"""


def test_kill_during_save_leaves_loadable_latest(tmp_path):
    ckpt_dir = str(tmp_path / "ckpt")
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    last = 0
    for delay in (0.9, 1.3, 1.75, 2.2):
        proc = subprocess.Popen([sys.executable, str(script), ckpt_dir], stdout=subprocess.PIPE, text=True,
                                env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        latest = tf.train.latest_checkpoint(ckpt_dir)
        assert latest is not None
        v = tf.Variable(tf.zeros([3000, 2000]))
        step = tf.Variable(0, dtype=tf.int64)
        tf.train.Checkpoint(v=v, step=step).restore(latest).assert_consumed()
        n = int(step.numpy())
        assert n >= last and int(latest.rsplit("-", 1)[1]) == n
        assert np.all(v.numpy() == n), "restored tensor does not match its step"
        last = n
    assert last >= 2
