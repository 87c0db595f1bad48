"""``python -m coco_tf.training.server``: run this process's ps or worker task.

Reads ``TF_CONFIG`` (validated first; a bad one stops with a message naming the
problem, exit status 2), starts a ``tf.distribute.Server`` for the task and
blocks in ``join()``. The chief does not use this: it runs
``python -m coco_tf.train --set runtime.strategy=ps``.

Each server gets ``inter_op_parallelism_threads >= num_workers + 1``: with
fewer, closures from several workers queue behind each other and the cluster
can hang on a 2-core host (docs/design.md §9).

TF's gRPC has no authentication or encryption: anyone who can reach a server's
port can read and write its variables and run ops on it. Bind cluster ports on
loopback (the launcher's default) or a private network only.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("GRPC_FAIL_FAST", "use_caller")

from coco_tf.training.tf_config import TFConfigError, describe, parse  # noqa: E402


def server_config(num_workers: int, threads: int = 0):
    import tensorflow as tf

    cfg = tf.compat.v1.ConfigProto()
    cfg.inter_op_parallelism_threads = max(num_workers + 1, 4)
    if threads:
        cfg.intra_op_parallelism_threads = threads
    return cfg


def main() -> int:
    try:
        tf_config = parse(os.environ.get("TF_CONFIG", ""))
    except TFConfigError as e:
        print(f"TF_CONFIG error: {e}", file=sys.stderr)
        return 2
    task = tf_config["task"]
    if task["type"] not in ("ps", "worker"):
        print(
            f"TF_CONFIG error: this process is '{task['type']}'; python -m coco_tf.training.server runs ps and "
            "worker tasks (the chief runs python -m coco_tf.train --set runtime.strategy=ps)",
            file=sys.stderr,
        )
        return 2
    import tensorflow as tf

    cluster = tf.train.ClusterSpec(tf_config["cluster"])
    server = tf.distribute.Server(
        cluster,
        job_name=task["type"],
        task_index=task["index"],
        protocol=tf_config.get("rpc_layer", "grpc"),
        config=server_config(len(tf_config["cluster"]["worker"]), int(os.environ.get("COCO_TF_THREADS", "0"))),
        start=True,
    )
    print(f"server up: {describe(tf_config)} (pid {os.getpid()})", flush=True)
    server.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
