#!/usr/bin/env bash
# SASRec base on Amazon Beauty: trains with configs/beauty_sasrec.yaml, then prints the test table
# beside the reference figures. Usage:
#   bench/bench_beauty_sasrec.sh [DATA_DIR] [MODEL_DIR] [extra --set overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data/amazon-beauty}
out=${2:-runs/bench_beauty_sasrec}
shift $(( $# > 2 ? 2 : $# ))
rm -rf "$out"
extra=()
for s in "$@"; do extra+=(--set "$s"); done
start=$(date +%s)
python -m coco_tf.train --config configs/beauty_sasrec.yaml --set data.path="$data" \
    --set runtime.progress=false --model_dir "$out" "${extra[@]}"
end=$(date +%s)
python - "$out/metrics.json" "$((end - start))" <<'PY'
import json, sys
m = json.load(open(sys.argv[1])); t = m["test"]
rows = [
    ("coco_tf SASRec (this run)", t["recall@5"], t["ndcg@5"], t["recall@10"], t["ndcg@10"], f"{int(sys.argv[2])} s, best epoch {m['best_epoch']}/{m['epochs_run']}"),
    ("60-line tf_keras SASRec, full softmax (15 ep)", 0.0553, 0.0327, 0.0846, 0.0422, "about 1020 s"),
    ("SASRec full cross-entropy (community)", 0.0538, 0.0320, 0.0851, 0.0421, "published"),
    ("SASRec, CoCo paper Table 1 base", 0.0387, 0.0249, None, None, "published"),
]
print("| model | R@5 | N@5 | R@10 | N@10 | wall |")
print("|---|---|---|---|---|---|")
f = lambda x: "–" if x is None else f"{x:.4f}"
for name, *vals, wall in rows:
    print(f"| {name} | " + " | ".join(f(v) for v in vals) + f" | {wall} |")
print(f"\ntraining users/s: {m['examples_per_sec']}; train seconds {m['train_seconds']}; wall {m['wall_seconds']} s")
PY
