"""Forward throughput of QwenBackbone on this machine, beside its FLOP floor.

    python bench/bench_decoder.py                       # tiny + qwen3_0.6b, batch 1 x seq 64
    python bench/bench_decoder.py --presets tiny --batch 8 --seq 128

For each preset a decoder with random weights (float32, no LoRA) runs a
``tf.function``-compiled forward pass on random token ids; the median of
``--repeats`` timed calls (after warm-up) is shown beside the best one, and the
best gives tokens/second (the machine is shared: the best run is the least
disturbed one). The floor is the time the pass's matmul FLOPs would take at the
best dense-matmul rate seen (a ``--matmul-size`` square float32 ``tf.matmul``,
measured before and after every preset):

    floor FLOPs = 2 x P x tokens  +  4 x layers x batch x seq^2 x heads x head_dim

with P the parameters that take part in matmuls (all but the token embedding,
which is a gather; the backbone has no LM head) and the second term the
attention scores and weighted sum. ``floor tokens/s = tokens / floor time``;
"efficiency" is measured over floor tokens/s.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import coco_tf  # noqa: E402,F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from coco_tf.llm import presets  # noqa: E402
from coco_tf.llm.qwen_decoder import QwenBackbone  # noqa: E402


def matmul_flops_per_second(n=4096, repeats=10):
    """Best observed dense float32 matmul rate (FLOP/s) over ``repeats`` runs."""
    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n])
    fn = tf.function(lambda x, y: tf.reduce_sum(tf.matmul(x, y)))
    fn(a, b).numpy()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(a, b).numpy()
        times.append(time.perf_counter() - t)
    return 2.0 * n**3 / min(times)


def _load_average():
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def bench_preset(name, batch, seq, repeats, warmup, num_layers=None):
    config = presets.get_preset(name)
    if num_layers:
        config["num_layers"] = num_layers
    t = time.perf_counter()
    backbone = QwenBackbone(**config)
    build_s = time.perf_counter() - t
    total_params = backbone.count_params()
    matmul_params = total_params - config["vocabulary_size"] * config["hidden_dim"]
    ids = tf.constant(
        np.random.default_rng(0).integers(1, config["vocabulary_size"], (batch, seq)), tf.int32
    )
    mask = tf.ones([batch, seq], tf.int32)
    fn = tf.function(lambda i, m: backbone({"token_ids": i, "padding_mask": m}))
    for _ in range(warmup):
        fn(ids, mask).numpy()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(ids, mask).numpy()
        times.append(time.perf_counter() - t)
    seconds = min(times)
    tokens = batch * seq
    flops = 2.0 * matmul_params * tokens + 4.0 * config["num_layers"] * batch * seq * seq * (
        config["num_query_heads"] * config["head_dim"]
    )
    return {
        "preset": name + (f" ({num_layers} layers)" if num_layers else ""),
        "params": total_params,
        "matmul_params": matmul_params,
        "batch": batch,
        "seq": seq,
        "seconds": seconds,
        "median_seconds": statistics.median(times),
        "tokens_per_s": tokens / seconds,
        "flops": flops,
        "build_s": build_s,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="tiny,qwen3_0.6b")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--num-layers", type=int, default=None, help="override the layer count (say so when reporting)")
    parser.add_argument("--matmul-size", type=int, default=4096)
    args = parser.parse_args(argv)

    load_before = _load_average()
    results = []
    rates = [matmul_flops_per_second(args.matmul_size)]
    for name in args.presets.split(","):
        results.append(
            bench_preset(name.strip(), args.batch, args.seq, args.repeats, args.warmup, args.num_layers)
        )
        rates.append(matmul_flops_per_second(args.matmul_size))
    # Best rate seen before/after every preset: the least disturbed figure on a shared machine.
    rate = max(rates)
    print(
        f"dense matmul ({args.matmul_size}^2 float32): best {rate / 1e9:.1f} GFLOP/s "
        f"(samples: {', '.join(f'{r / 1e9:.0f}' for r in rates)})"
    )
    print(
        f"1-minute load average before / after: {load_before} / {_load_average()} on "
        f"{os.cpu_count()} CPUs (this benchmark itself adds up to one per CPU)"
    )
    print()
    print(
        "| preset | parameters | batch x seq | forward ms (best / median) | tokens/s (best) "
        "| floor tokens/s | best / floor |"
    )
    print("|" + "---|" * 7)
    for r in results:
        floor_tps = r["batch"] * r["seq"] / (r["flops"] / rate)
        print(
            f"| {r['preset']} | {r['params']:,} | {r['batch']} x {r['seq']} | "
            f"{r['seconds'] * 1e3:,.1f} / {r['median_seconds'] * 1e3:,.1f} | "
            f"{r['tokens_per_s']:,.0f} | {floor_tps:,.0f} | {r['tokens_per_s'] / floor_tps:.0%} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
