"""TF_CONFIG: build one, validate one (standard library only).

The contract every launcher shares (``launch/run_cluster.sh``, docker-compose,
the Kubeflow TFJob)::

    TF_CONFIG = {"cluster": {"chief": ["host:port"],
                             "ps":     ["host:port", ...],
                             "worker": ["host:port", ...]},
                 "task": {"type": "chief" | "ps" | "worker", "index": i}}

Exactly one chief (the coordinator: schedules steps, checkpoints, evaluates),
at least one ps and one worker. :func:`validate` raises :class:`TFConfigError`
naming what is wrong; it is used by ``python launch/tf_config.py validate``,
by ``python -m coco_tf.training.server`` and by the PS trainer before
TensorFlow ever sees the cluster.

This module imports nothing from TensorFlow or ``coco_tf`` so that the launch
scripts can load it by path in a fraction of a second.
"""

from __future__ import annotations

import json
import socket
from typing import Dict, List, Optional

TASK_TYPES = ("chief", "ps", "worker")


class TFConfigError(ValueError):
    """A TF_CONFIG is malformed or describes an inconsistent cluster."""


def free_ports(n: int, host: str = "127.0.0.1") -> List[int]:
    """``n`` distinct ports that were free a moment ago (bound together, then released)."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def make_cluster(num_ps: int, num_workers: int, host: str = "127.0.0.1", ports: Optional[List[int]] = None) -> Dict:
    """``{"chief": [...], "ps": [...], "worker": [...]}`` on ``host`` with free ports."""
    if num_ps < 1 or num_workers < 1:
        raise TFConfigError(f"need at least one ps and one worker, got ps={num_ps} workers={num_workers}")
    ports = ports or free_ports(1 + num_ps + num_workers, host)
    addr = [f"{host}:{p}" for p in ports]
    return {"chief": addr[:1], "ps": addr[1 : 1 + num_ps], "worker": addr[1 + num_ps :]}


def make_tf_config(cluster: Dict, task_type: str, index: int) -> Dict:
    cfg = {"cluster": cluster, "task": {"type": task_type, "index": index}}
    validate(cfg)
    return cfg


def parse(text: str, source: str = "TF_CONFIG") -> Dict:
    if not text or not text.strip():
        raise TFConfigError(f"{source} is empty or not set")
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise TFConfigError(f"{source} is not valid JSON: {e}") from None
    validate(cfg, source)
    return cfg


def validate(cfg, source: str = "TF_CONFIG") -> Dict:
    """Raises :class:`TFConfigError` naming the first problem; returns ``cfg``."""
    if not isinstance(cfg, dict):
        raise TFConfigError(f"{source}: expected a JSON object, got {type(cfg).__name__}")
    unknown = set(cfg) - {"cluster", "task", "environment", "rpc_layer"}
    if unknown:
        raise TFConfigError(f"{source}: unknown top-level key(s): {', '.join(sorted(unknown))}")
    if "cluster" not in cfg:
        raise TFConfigError(f"{source}: missing 'cluster' (a mapping of task type to a list of host:port)")
    cluster = cfg["cluster"]
    if not isinstance(cluster, dict):
        raise TFConfigError(f"{source}: 'cluster' must be a mapping of task type to a list of host:port, "
                            f"got {type(cluster).__name__}")
    if not cluster:
        raise TFConfigError(f"{source}: 'cluster' is empty; it needs 'chief', 'ps' and 'worker' lists of host:port")
    for job, addrs in cluster.items():
        if job not in TASK_TYPES + ("evaluator",):
            raise TFConfigError(f"{source}: unknown task type '{job}' in cluster; allowed: {', '.join(TASK_TYPES)}")
        if not isinstance(addrs, list) or not addrs:
            raise TFConfigError(f"{source}: cluster['{job}'] must be a non-empty list of host:port strings")
        for a in addrs:
            host, sep, port = str(a).rpartition(":")
            if not isinstance(a, str) or not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise TFConfigError(f"{source}: cluster['{job}'] has a bad address {a!r} (expected host:port)")
    if "chief" not in cluster:
        raise TFConfigError(f"{source}: cluster has no 'chief' (the coordinator); parameter-server training needs one")
    if len(cluster["chief"]) != 1:
        raise TFConfigError(f"{source}: cluster['chief'] must list exactly one address, got {len(cluster['chief'])}")
    for job in ("ps", "worker"):
        if job not in cluster:
            raise TFConfigError(f"{source}: cluster has no '{job}' tasks; parameter-server training needs at least one")
    seen = {}
    for job, addrs in cluster.items():
        for i, a in enumerate(addrs):
            if a in seen:
                raise TFConfigError(f"{source}: duplicate address {a} ({seen[a]} and {job}:{i})")
            seen[a] = f"{job}:{i}"
    task = cfg.get("task")
    if not isinstance(task, dict):
        raise TFConfigError(f"{source}: missing 'task' ({{\"type\": ..., \"index\": ...}})")
    ttype = task.get("type")
    if ttype is None:
        raise TFConfigError(f"{source}: missing task type ('task': {{'type': ...}})")
    if ttype not in cluster:
        raise TFConfigError(
            f"{source}: task type '{ttype}' is not in the cluster (task types: {', '.join(cluster)})"
        )
    index = task.get("index")
    if not isinstance(index, int) or isinstance(index, bool):
        raise TFConfigError(f"{source}: task index must be an integer, got {index!r}")
    if not 0 <= index < len(cluster[ttype]):
        raise TFConfigError(
            f"{source}: task index {index} out of range for '{ttype}' ({len(cluster[ttype])} task(s): "
            f"0..{len(cluster[ttype]) - 1})"
        )
    return cfg


def unreachable(cluster: Dict, timeout: float, jobs=("ps", "worker"), interval: float = 0.5) -> List[str]:
    """The ``jobs`` tasks of ``cluster`` whose address did not accept a TCP connection within ``timeout`` s.

    Each address is tried again every ``interval`` seconds until it accepts or the time is up; returns
    ``["ps:1 at host:port", ...]`` (empty when every task answered). A plain connect and close: nothing
    is sent, so a TF server does not notice.
    """
    import time

    pending = [(f"{job}:{i}", a) for job in jobs for i, a in enumerate(cluster.get(job, []))]
    deadline = time.monotonic() + timeout
    while pending:
        still = []
        for name, addr in pending:
            host, _, port = addr.rpartition(":")
            host = host.strip("[]")
            try:
                with socket.create_connection((host, int(port)), timeout=max(0.1, min(2.0, timeout))):
                    pass
            except OSError:
                still.append((name, addr))
        pending = still
        if not pending or time.monotonic() + interval > deadline:
            break
        time.sleep(interval)
    return [f"{name} at {addr}" for name, addr in pending]


def describe(cfg: Dict) -> str:
    c = cfg["cluster"]
    t = cfg["task"]
    return (
        f"{t['type']}:{t['index']} at {c[t['type']][t['index']]} in a cluster of "
        + ", ".join(f"{len(c[j])} {j}" for j in TASK_TYPES if j in c)
    )
