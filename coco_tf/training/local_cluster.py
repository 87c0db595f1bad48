"""Start ps and worker servers on this host as subprocesses (tests, benchmarks).

    with LocalCluster(num_ps=2, num_workers=2, log_dir="runs/x/logs") as cluster:
        subprocess.run([sys.executable, "-m", "coco_tf.train", "--set", "runtime.strategy=ps", ...],
                       env=cluster.env("chief"))

``launch/run_cluster.sh`` does the same from the shell. Every process gets its
own ``TF_CONFIG`` (same cluster, its own task) and listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Dict, List, Optional

from coco_tf.training.tf_config import make_cluster, make_tf_config


class LocalCluster:
    def __init__(self, num_ps: int = 2, num_workers: int = 2, log_dir: Optional[str] = None,
                 host: str = "127.0.0.1", extra_env: Optional[Dict[str, str]] = None):
        self.cluster = make_cluster(num_ps, num_workers, host)
        self.log_dir = log_dir
        self.extra_env = dict(extra_env or {})
        self.procs: Dict[str, subprocess.Popen] = {}

    def env(self, task_type: str, index: int = 0) -> Dict[str, str]:
        env = dict(os.environ, **self.extra_env)
        env["TF_CONFIG"] = json.dumps(make_tf_config(self.cluster, task_type, index))
        env.setdefault("TF_USE_LEGACY_KERAS", "1")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env.setdefault("GRPC_FAIL_FAST", "use_caller")
        return env

    def start(self) -> "LocalCluster":
        if self.log_dir:
            os.makedirs(self.log_dir, exist_ok=True)
        for job in ("ps", "worker"):
            for i in range(len(self.cluster[job])):
                self.start_task(job, i)
        return self

    def start_task(self, job: str, index: int) -> subprocess.Popen:
        out = subprocess.DEVNULL
        if self.log_dir:
            out = open(os.path.join(self.log_dir, f"{job}-{index}.log"), "ab")
        proc = subprocess.Popen([sys.executable, "-m", "coco_tf.training.server"], env=self.env(job, index),
                                stdout=out, stderr=subprocess.STDOUT)
        self.procs[f"{job}:{index}"] = proc
        return proc

    def pid(self, job: str, index: int) -> int:
        return self.procs[f"{job}:{index}"].pid

    def kill(self, job: str, index: int, sig=signal.SIGKILL) -> None:
        proc = self.procs[f"{job}:{index}"]
        if proc.poll() is None:
            proc.send_signal(sig)
            proc.wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def chief_command(overrides: List[str], model_dir: str) -> List[str]:
    args = [sys.executable, "-m", "coco_tf.train", "--set", "runtime.strategy=ps", "--model_dir", model_dir]
    for o in overrides:
        args += ["--set", o]
    return args
