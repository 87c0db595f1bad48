"""Where a training step's time goes: TF profiler op times grouped by layer scope.

    python bench/profile_train_step.py --method coco --config configs/beauty_sasrec.yaml \
        --data_path /path/to/amazon-beauty

Builds the method's Trainer, warms the compiled train step up on full batches,
profiles ``--steps`` steps with ``tf.profiler`` and prints one table row per
top-level scope (``llm``, ``decoupling``, ``alignment``, ``block_0``, ``Adam``,
...; forward and backward — ``gradient_tape/...`` — apart) with the op time per
step summed over the executor threads (on 2 cores the rows add up to about
twice the wall time). The XLA-compiled full-softmax kernels are one row.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

from coco_tf.config import load_config  # noqa: E402
from coco_tf.data.pipeline import train_dataset  # noqa: E402
from coco_tf.training.trainer import Trainer  # noqa: E402

_EXECUTOR_EVENTS = ("ExecutorState", "ParallelFor", "BlockUntilReady", "ThunkExecutor")


def scope_times(xplane_path: str, steps: int):
    """``{scope: ms per step}`` from a host-side XSpace file."""
    space = xplane_pb2.XSpace()
    with open(xplane_path, "rb") as fh:
        space.ParseFromString(fh.read())
    out = collections.Counter()
    for plane in space.planes:
        if "host" not in plane.name.lower():
            continue
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for ev in line.events:
                name = names.get(ev.metadata_id, "")
                if name.startswith(_EXECUTOR_EVENTS):
                    continue
                if name.startswith("CpuExecutable"):
                    key = "XLA kernels (full softmax)"
                elif ":" not in name:
                    continue  # XLA's inner fusions, already inside CpuExecutable
                else:
                    parts = name.split(":")[0].split("/")
                    backward = parts[0] == "gradient_tape"
                    key = ("bwd " if backward else "fwd ") + (parts[1] if backward else parts[0])
                out[key] += ev.duration_ps / 1e9 / steps
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="coco", help="coco.method: base | kar | coco")
    ap.add_argument("--config", default=None, help="YAML config (default: built-in defaults)")
    ap.add_argument("--data_path", default="", help="dataset directory (sets data.source=text); empty: synthetic")
    ap.add_argument("--steps", type=int, default=20, help="profiled steps")
    ap.add_argument("--rows", type=int, default=15, help="table rows")
    ap.add_argument("--set", action="append", default=[], help="extra config override key=value")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="profile_train_step_")
    overrides = ["runtime.progress=false", f"coco.method={args.method}", f"runtime.model_dir={work}/run",
                 f"llm.cache_dir={work}/cache"] + args.set
    if args.data_path:
        overrides += ["data.source=text", f"data.path={args.data_path}"]
    cfg = load_config(args.config, overrides)
    trainer = Trainer(cfg)
    trainer._build()
    ds = train_dataset(trainer.split.train, cfg.data.max_len, cfg.train.batch_size, cfg.train.seed,
                       cfg.data.bucket_by_length)
    batches = [b for b in ds.take(4 * args.steps) if int(b["history"].shape[0]) == cfg.train.batch_size]
    batches = batches[: args.steps]
    for b in batches:  # warm-up: trace and compile every shape
        trainer._train_step(b)
    tf.profiler.experimental.start(os.path.join(work, "profile"))
    t0 = time.perf_counter()
    for b in batches:
        out = trainer._train_step(b)
    tf.nest.map_structure(lambda x: x.numpy(), out)
    wall = (time.perf_counter() - t0) / len(batches) * 1000
    tf.profiler.experimental.stop()
    path = glob.glob(os.path.join(work, "profile", "**", "*.xplane.pb"), recursive=True)[0]
    times = scope_times(path, len(batches))
    print(f"\n{args.method}: {len(batches)} steps of batch {cfg.train.batch_size}, {wall:.0f} ms/step wall, "
          f"{sum(times.values()):.0f} ms/step op time over all threads\n")
    print("| scope | op ms / step |")
    print("|---|---|")
    for key, ms in times.most_common(args.rows):
        print(f"| {key} | {ms:.1f} |")


if __name__ == "__main__":
    main()
