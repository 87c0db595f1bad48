"""Serving latency of exported SavedModels (base SASRec and CoCo with the tiny LLM) on this machine.

    python bench/bench_serving.py                        # trains (once) and exports into --work_dir
    python bench/bench_serving.py --requests 1000 --retrain

For each method the script trains a small model on the synthetic catalog (or
reuses ``<work_dir>/<method>_run`` from an earlier run), exports it with
``coco_tf.export.export_saved_model`` and loads the SavedModel with
``tf.saved_model.load`` (as a server would: no coco_tf objects involved in the
calls). Then, holding ``--lock`` (waits while the file exists; other jobs use it
too):

* latency of one request (``serving_default``, batch 1, T = ``--seq`` random
  catalog ids, top ``export.top_k[0]``): p50 / p99 over ``--requests`` calls
  after ``--warmup`` calls, each timed to the host-side numpy result;
* throughput at batch ``--batch``: examples/s over ``--batch_calls`` calls;
* both exports: plain (what TF Serving runs by default) and ``export.jit_compile=true``
  (XLA; TF Serving needs ``--xla_cpu_compilation_enabled=true``);
* the FLOP floor of one request: the matmul FLOPs of the served graph
  (:func:`served_matmul_flops`, counted from the config) divided by the best
  dense float32 matmul rate measured here (``bench_decoder.matmul_flops_per_second``).

This is the model's own latency in-process, not TF Serving's REST/gRPC path
(which adds JSON or proto (de)serialisation and the network).
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import coco_tf  # noqa: E402,F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench_decoder import matmul_flops_per_second  # noqa: E402
from coco_tf.config import load_config  # noqa: E402
from coco_tf.export import export_saved_model  # noqa: E402
from coco_tf.llm import presets  # noqa: E402

SETTINGS = [
    "data.synthetic_num_users=1000",
    "data.max_len=50",
    "train.epochs=1",
    "runtime.progress=false",
]


def served_matmul_flops(cfg, num_items: int, seq: int) -> dict:
    """Matmul FLOPs of one request (batch 1, ``seq`` items) through the served graph, by part.

    A multiply-add is 2 FLOPs; gathers, norms, softmaxes and activations are not counted.
    """
    d, blocks = cfg.model.embedding_dim, cfg.model.num_blocks
    f = cfg.model.ffn_dim or d
    t = min(seq, cfg.data.max_len)
    parts = {
        # per block: q, k, v, o projections; scores and weighted sum (all T positions); FFN
        "backbone": blocks * (2 * 4 * t * d * d + 2 * 2 * t * t * d + 2 * 2 * t * d * f),
        "index": 2 * num_items * d,
    }
    if cfg.coco.method == "coco":
        llm = presets.get_preset(cfg.llm.preset)
        dd, hq, hkv, hd, inner = (llm["hidden_dim"], llm["num_query_heads"], llm["num_key_value_heads"],
                                  llm["head_dim"], llm["intermediate_dim"])
        p = cfg.coco.num_shared_prompts + cfg.coco.max_prompts  # prompt slots (padded to m_max)
        n = p + t  # decoder length
        parts["projection+codebook"] = 2 * d * dd + 2 * cfg.coco.codebook_size * dd
        parts["decoder"] = llm["num_layers"] * (
            2 * n * dd * hq * hd + 2 * 2 * n * dd * hkv * hd + 2 * n * hq * hd * dd  # q, k, v, o
            + 2 * 2 * n * n * hq * hd  # scores and weighted sum
            + 3 * 2 * n * dd * inner  # SwiGLU
        )
        parts["decoupling"] = 2 * 2 * p * dd * dd + 2 * 2 * n * dd * dd + 2 * 2 * p * n * dd
        mlp = 2 * d
        parts["alignment"] = (2 * p * (d + dd) * mlp + 2 * p * mlp * d  # fusion MLP per prompt row
                              + 2 * 2 * d * d + 2 * 2 * (p + 1) * d * d + 2 * 2 * (p + 1) * d)  # attention
    parts["total"] = sum(parts.values())
    return parts


def prepare(method: str, work_dir: str, retrain: bool):
    """Trains (unless ``<work_dir>/<method>_run/best`` exists) and exports without and with XLA
    (``export.jit_compile``); returns ``(cfg, {name: export path})``."""
    from coco_tf.training.trainer import Trainer

    model_dir = os.path.join(work_dir, f"{method}_run")
    overrides = SETTINGS + [f"coco.method={method}", f"runtime.model_dir={model_dir}"]
    cfg = load_config(overrides=overrides)
    if retrain or tf.train.latest_checkpoint(os.path.join(model_dir, "best")) is None:
        t = time.perf_counter()
        Trainer(cfg).run()
        print(f"{method}: trained in {time.perf_counter() - t:.0f} s", flush=True)
    paths = {}
    for jit in (False, True):
        name = f"{method}+xla" if jit else method
        path = export_saved_model(model_dir, os.path.join(work_dir, f"{name}_export"),
                                  overrides=[f"export.jit_compile={jit}"])
        print(f"{name}: exported {path}", flush=True)
        paths[name] = path
    return cfg, paths


def time_calls(fn, inputs, calls: int, warmup: int):
    for _ in range(warmup):
        fn(history=inputs)["item_ids"].numpy()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn(history=inputs)["item_ids"].numpy()
        times.append(time.perf_counter() - t)
    return np.array(times)


class Lock:
    """Waits while ``path`` exists, then creates it; removes it on exit."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        waited = time.time()
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.write(fd, f"bench_serving.py pid {os.getpid()}\n".encode())
                os.close(fd)
                break
            except FileExistsError:
                time.sleep(5)
        if time.time() - waited > 1:
            print(f"waited {time.time() - waited:.0f} s for {self.path}", flush=True)
        return self

    def __exit__(self, *exc):
        os.remove(self.path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work_dir", default="/tmp/coco_bench_serving")
    parser.add_argument("--methods", default="base,coco")
    parser.add_argument("--seq", type=int, default=50)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batch_calls", type=int, default=50)
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--lock", default="/tmp/coco_bench.lock")
    parser.add_argument("--retrain", action="store_true")
    args = parser.parse_args()

    prepared = {m: prepare(m, args.work_dir, args.retrain) for m in args.methods.split(",")}
    rng = np.random.default_rng(0)
    rows = []
    with Lock(args.lock):
        load_before = os.getloadavg()[0]
        rate = matmul_flops_per_second(args.matmul_size)
        for method, (cfg, paths) in prepared.items():
            num_items = cfg.data.synthetic_num_items
            one = tf.constant(rng.integers(1, num_items + 1, (1, args.seq)), tf.int64)
            many = tf.constant(rng.integers(1, num_items + 1, (args.batch, args.seq)), tf.int64)
            flops = served_matmul_flops(cfg, num_items, args.seq)
            reference = None
            for name, path in paths.items():
                loaded = tf.saved_model.load(path)  # kept alive while its signature runs
                fn = loaded.signatures["serving_default"]
                ids = fn(history=many)["item_ids"].numpy()
                if reference is None:
                    reference = ids
                agree = float((ids == reference).all(axis=1).mean())  # XLA vs plain: same top-k rows
                single = time_calls(fn, one, args.requests, args.warmup) * 1e3
                batch = time_calls(fn, many, args.batch_calls, 5)
                rows.append({
                    "method": name,
                    "p50": float(np.percentile(single, 50)),
                    "p99": float(np.percentile(single, 99)),
                    "mean": float(single.mean()),
                    "throughput": args.batch * len(batch) / float(batch.sum()),
                    "flops": flops,
                    "agree": agree,
                })
        rate = max(rate, matmul_flops_per_second(args.matmul_size))
        load_after = os.getloadavg()[0]
    for row in rows:  # the floor at the best rate seen
        row["floor_us"] = row["flops"]["total"] / rate * 1e6

    print(f"\nT = {args.seq}, {args.requests} single requests after {args.warmup} warm-up; batch {args.batch} x "
          f"{args.batch_calls} calls; best dense float32 matmul {rate / 1e9:.0f} GFLOP/s "
          f"({args.matmul_size}^2); load average {load_before:.2f} before, {load_after:.2f} after; "
          f"{os.cpu_count()} CPUs, TF {tf.__version__}\n")
    print("| model | matmul MFLOP / request | FLOP floor (µs) | p50 (ms) | p99 (ms) | mean (ms) "
          f"| throughput @ batch {args.batch} (examples/s) | top-k rows = plain export |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['flops']['total'] / 1e6:.2f} | {r['floor_us']:.1f} | {r['p50']:.2f} | "
              f"{r['p99']:.2f} | {r['mean']:.2f} | {r['throughput']:,.0f} | {r['agree']:.0%} |")
    for r in rows:
        if r["method"].endswith("+xla"):
            continue
        parts = ", ".join(f"{k} {v / 1e6:.2f}" for k, v in r["flops"].items() if k != "total")
        print(f"\n{r['method']} MFLOP by part: {parts}")
        print(f"{r['method']} examples/s at batch 1 (1 / mean latency): {1e3 / r['mean']:,.0f}")


if __name__ == "__main__":
    main()
