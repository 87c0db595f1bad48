"""A 5,000,000 x 64 item table sharded over 2 PS: steps/s for 1, 2, 4 workers and PS peak memory.

    python bench/bench_ps_embedding.py [--items 5000000] [--dim 64] [--steps 200] [--workers 1,2,4]
                                       [--adam_workers 2 --adam_steps 30]

For each worker count it starts a fresh loopback cluster (2 PS + N workers, LocalCluster), runs a
chief that builds the SASRec retrieval model with ``train.loss=in_batch`` (the table's gradient is
sparse) and :class:`LazyAdam`, trains ``--steps`` steps on random histories (batch 32, length 20)
after 20 warm-up steps, and reads each PS process's peak resident memory (``VmHWM`` in
/proc/<pid>/status) when the chief is done. ``--adam_workers`` adds a row with tf_keras ``Adam``
(decays every row's moments every step) for comparison. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def vm_hwm_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def chief(args) -> None:
    import coco_tf  # noqa: F401
    import tensorflow as tf
    import tf_keras as keras

    from coco_tf.config import load_config
    from coco_tf.methods.factory import build_model
    from coco_tf.training.ps_trainer import make_ps_optimizer, make_strategy, make_train_fn, table_placement

    cfg = load_config(overrides=[
        "runtime.strategy=ps", "train.loss=in_batch", f"model.embedding_dim={args.dim}", "model.num_blocks=2",
        f"data.max_len={args.seq_len}", f"runtime.steps_per_execution={args.steps_per_execution}",
    ])
    strategy = make_strategy(cfg)
    coordinator = tf.distribute.experimental.coordinator.ClusterCoordinator(strategy)
    t0 = time.time()
    with strategy.scope():
        model = build_model(cfg, args.items)
        optimizer = make_ps_optimizer(cfg) if args.optimizer == "lazy_adam" else keras.optimizers.Adam(1e-3)
        model({"history": tf.ones([1, 2], tf.int64)}, training=False)
        optimizer.build(model.trainable_variables)
    build_s = time.time() - t0
    train_fn = make_train_fn(strategy, model, optimizer)
    n, b, t = args.items, args.batch, args.seq_len

    def dataset_fn():
        def batch(_):
            h = tf.random.uniform([b, t], 1, n + 1, tf.int64)
            return {"history": h, "targets": tf.random.uniform([b, t], 1, n + 1, tf.int64)}

        return tf.data.Dataset.range(1).repeat().map(batch).prefetch(2)

    it = iter(coordinator.create_per_worker_dataset(dataset_fn))
    spe = args.steps_per_execution

    def run(steps):
        for _ in range(steps // spe):
            coordinator.schedule(train_fn, args=(it, tf.constant(spe)))
        coordinator.join()

    run(20 if args.steps >= 100 else 4)
    t0 = time.time()
    run(args.steps)
    secs = time.time() - t0
    print(json.dumps({"steps_per_s": args.steps / secs, "seconds": secs, "build_s": build_s,
                      "shards": [[list(s), d] for s, d in table_placement(model)]}), flush=True)


def orchestrate(args) -> None:
    from coco_tf.training.local_cluster import LocalCluster

    rows = []
    plan = [(w, "lazy_adam", args.steps) for w in map(int, args.workers.split(","))]
    if args.adam_workers:
        plan.append((args.adam_workers, "adam", args.adam_steps))
    for workers, opt, steps in plan:
        log_dir = os.path.join(args.log_dir, f"w{workers}_{opt}")
        with LocalCluster(2, workers, log_dir=log_dir) as cluster:
            cmd = [sys.executable, os.path.abspath(__file__), "--chief", "--items", str(args.items),
                   "--dim", str(args.dim), "--steps", str(steps), "--batch", str(args.batch),
                   "--seq_len", str(args.seq_len), "--optimizer", opt,
                   "--steps_per_execution", str(args.steps_per_execution)]
            proc = subprocess.run(cmd, env=cluster.env("chief"), capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
                raise SystemExit(f"chief failed for {workers} workers ({opt})")
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            ps_mb = [vm_hwm_mb(cluster.pid("ps", i)) for i in range(2)]
        rows.append((workers, opt, steps, result, ps_mb))
        print(f"# {workers} workers, {opt}: {result}", file=sys.stderr, flush=True)
    print(f"item table {args.items:,} x {args.dim} float32 ({args.items * args.dim * 4 / 2**30:.2f} GiB; "
          f"+2 Adam slots), 2 PS, batch {args.batch} x length {args.seq_len}, in_batch loss, "
          f"steps_per_execution {args.steps_per_execution}")
    print("| workers | optimizer | steps | steps/s | s/step | table shards (rows) | PS peak RSS (VmHWM) | build s |")
    print("|---|---|---|---|---|---|---|---|")
    for workers, opt, steps, r, ps_mb in rows:
        shards = ", ".join(f"{s[0][0]:,} on {s[1].split('/job:')[1].split('/device')[0]}" for s in r["shards"])
        print(f"| {workers} | {opt} | {steps} | {r['steps_per_s']:.1f} | {1 / r['steps_per_s']:.3f} | {shards} | "
              + " / ".join(f"{m:,.0f} MB" for m in ps_mb) + f" | {r['build_s']:.1f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chief", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--items", type=int, default=5_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq_len", type=int, default=20)
    p.add_argument("--workers", default="1,2,4")
    p.add_argument("--optimizer", default="lazy_adam", choices=("lazy_adam", "adam"))
    p.add_argument("--adam_workers", type=int, default=0)
    p.add_argument("--adam_steps", type=int, default=30)
    p.add_argument("--steps_per_execution", type=int, default=1)
    p.add_argument("--log_dir", default="/tmp/bench_ps_embedding")
    args = p.parse_args()
    chief(args) if args.chief else orchestrate(args)


if __name__ == "__main__":
    main()
