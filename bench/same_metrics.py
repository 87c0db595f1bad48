"""Do two trees train the same? Three tiny synthetic runs (base, KAR, CoCo; same seed,
``runtime.deterministic=true``, one thread) and a comparison of their metrics.json / history.json.

Used for the layout refactor (issue #19, docs/results.md §10): run it once on the old tree and once
on the new one (``PYTHONPATH`` picks the tree), then compare::

    PYTHONPATH=/path/to/old python bench/same_metrics.py run /tmp/before
    PYTHONPATH=/path/to/new python bench/same_metrics.py run /tmp/after
    python bench/same_metrics.py compare /tmp/before /tmp/after     # exit 1 if any number differs

Each run: 200 users, 100 items, 3 epochs, a one-epoch base stage for kar/coco (so the LLM branch
trains two epochs), CoCo with K = 8.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

METHODS = {
    "base": ["coco.method=base"],
    "kar": ["coco.method=kar"],
    "coco": ["coco.method=coco", "coco.codebook_size=8"],
}
COMMON = ["data.synthetic_num_users=200", "data.synthetic_num_items=100", "train.epochs=3",
          "runtime.deterministic=true", "coco.base_epochs=1"]


def run(out_dir: str) -> None:
    env = dict(os.environ, TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="2")
    for method, overrides in METHODS.items():
        sets = sum((["--set", s] for s in COMMON + overrides), [])
        cmd = [sys.executable, "-m", "coco_tf.train", *sets, "--model_dir", os.path.join(out_dir, method)]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def compare(a_dir: str, b_dir: str) -> int:
    differ = 0
    for method in METHODS:
        a = json.load(open(os.path.join(a_dir, method, "metrics.json")))
        b = json.load(open(os.path.join(b_dir, method, "metrics.json")))
        ha = [h["loss"] for h in json.load(open(os.path.join(a_dir, method, "history.json")))]
        hb = [h["loss"] for h in json.load(open(os.path.join(b_dir, method, "history.json")))]
        same = a["valid"] == b["valid"] and a["test"] == b["test"] and a["best_epoch"] == b["best_epoch"] and ha == hb
        differ += not same
        print(f"{method:5s} {'same' if same else 'DIFFERENT'}  test ndcg@10 {a['test']['ndcg@10']:.6f} / "
              f"{b['test']['ndcg@10']:.6f}  recall@10 {a['test']['recall@10']:.4f} / {b['test']['recall@10']:.4f}  "
              f"epoch losses {ha} / {hb}")
    return 1 if differ else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["run"] and len(sys.argv) == 3:
        run(sys.argv[2])
    elif sys.argv[1:2] == ["compare"] and len(sys.argv) == 4:
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)
