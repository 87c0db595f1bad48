"""Training throughput of CoCo (and KAR) against the base model, in one process.

    python bench/bench_coco_speed.py                                   # synthetic catalog
    python bench/bench_coco_speed.py --data_path /path/to/amazon-beauty --config configs/beauty_sasrec.yaml

Builds each method with the same config (tiny LLM), takes the same training
batches (length-bucketed, as in training), warms up, then times the compiled
train step in interleaved blocks (base, kar, coco, base, kar, coco, ...) so
that a busy machine slows every method alike. Prints users (training
examples) per second per method — all blocks' users over all blocks' time — and
the ratio to base. Target from the CoCo issue: coco ÷ base ≥ 0.5.

CoCo's cost depends on its state: the decoder reads S + max_b m_b prompt slots
per batch (``coco.trim_prompt_slots``), and m starts near m_max and decays
during training. ``--restore LABEL=RUN_DIR`` times a trained state: it loads
the latest checkpoint of a training run (``RUN_DIR/ckpt``) into that row
before the warm-up. The table reports the mean m of the timed CoCo steps.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import tensorflow as tf  # noqa: E402

from coco_tf.config import load_config  # noqa: E402
from coco_tf.data.loader import load_dataset  # noqa: E402
from coco_tf.data.pipeline import train_dataset  # noqa: E402
from coco_tf.training.trainer import Trainer  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="YAML config (default: the built-in defaults)")
    ap.add_argument("--data_path", default="", help="dataset directory (sets data.source=text); empty: synthetic")
    ap.add_argument("--methods", default="base,kar,coco")
    ap.add_argument("--steps", type=int, default=20, help="train steps per timed block")
    ap.add_argument("--blocks", type=int, default=5, help="timed blocks per method")
    ap.add_argument("--set", action="append", default=[], help="extra config override key=value")
    ap.add_argument("--variant", action="append", default=[],
                    help="LABEL:key=value,key=value — an extra row (e.g. coco-m8:coco.method=coco,coco.max_prompts=8); "
                         "list LABEL in --methods")
    ap.add_argument("--restore", action="append", default=[],
                    help="LABEL=RUN_DIR: start row LABEL from the latest checkpoint in RUN_DIR/ckpt (a run of the same config)")
    args = ap.parse_args()
    restore = dict(r.split("=", 1) for r in args.restore)

    overrides = ["runtime.progress=false"] + args.set
    if args.data_path:
        overrides += ["data.source=text", f"data.path={args.data_path}"]
    work = tempfile.mkdtemp(prefix="bench_coco_speed_")
    methods = args.methods.split(",")
    cfg0 = load_config(args.config, overrides)
    dataset = load_dataset(cfg0.data)
    trainers, batches = {}, None
    variants = {}
    for v in args.variant:
        label, _, sets = v.partition(":")
        variants[label] = [kv for kv in sets.split(",") if kv]
    for method in methods:
        extra = variants.get(method, [f"coco.method={method}"])
        cfg = load_config(
            args.config,
            overrides + extra + [f"runtime.model_dir={work}/{method}", f"llm.cache_dir={work}/cache"],
        )
        tr = Trainer(cfg, dataset=dataset)
        tr._build()
        if method in restore:
            path = tf.train.latest_checkpoint(os.path.join(restore[method], "ckpt"))
            if path is None:
                sys.exit(f"--restore {method}={restore[method]}: no checkpoint in {restore[method]}/ckpt")
            tr.checkpoint.restore(path).expect_partial()
            print(f"{method}: restored {path}")
        if batches is None:
            ds = train_dataset(tr.split.train, cfg.data.max_len, cfg.train.batch_size, cfg.train.seed,
                               cfg.data.bucket_by_length)
            batches = list(ds.take(args.steps * 2))
        for b in batches:  # warm-up: traces once per signature, fills caches
            tr._train_step(b)
        trainers[method] = tr
    users = sum(int(b["history"].shape[0]) for b in batches[: args.steps])
    rates = {m: [] for m in methods}
    totals = {m: [0, 0.0] for m in methods}  # users, seconds over every block
    selected = {m: [] for m in methods}  # CoCo's mean m per timed block
    for block in range(args.blocks):
        for method in methods:
            step = trainers[method]._train_step
            chunk = batches[(block % 2) * args.steps:(block % 2 + 1) * args.steps]
            n = sum(int(b["history"].shape[0]) for b in chunk)
            t0 = time.perf_counter()
            for b in chunk:
                out = step(b)
            out = tf.nest.map_structure(lambda x: x.numpy(), out)
            dt = time.perf_counter() - t0
            if isinstance(out, tuple) and "coco/mean_selected" in out[1]:
                selected[method].append(float(out[1]["coco/mean_selected"]))
            rates[method].append(n / dt)
            totals[method][0] += n
            totals[method][1] += dt
    overall = {m: totals[m][0] / totals[m][1] for m in methods}
    base = overall.get("base")
    print(f"\n{cfg0.data.source} data, {dataset.describe()}; batch {cfg0.train.batch_size}, "
          f"{args.blocks} blocks x {args.steps} steps, tiny LLM; blocks alternate between two sets of "
          f"length-bucketed batches, so per-block rates differ by batch length\n")
    print("| method | state | mean m | users/s (all blocks) | per-block median | min | max | ÷ base |")
    print("|---|---|---|---|---|---|---|---|")
    for m in methods:
        ratio = f"{overall[m] / base:.2f}" if base else "–"
        state = "restored" if m in restore else "initial"
        mean_m = f"{statistics.mean(selected[m]):.1f}" if selected[m] else "–"
        print(f"| {m} | {state} | {mean_m} | {overall[m]:.0f} | {statistics.median(rates[m]):.0f} | "
              f"{min(rates[m]):.0f} | {max(rates[m]):.0f} | {ratio} |")

if __name__ == "__main__":
    main()
