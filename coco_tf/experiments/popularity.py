"""``python -m coco_tf.experiments.popularity RUN_DIR [RUN_DIR ...] [--split valid] [--boundaries 5,20]``.

Reloads each finished run's best checkpoint and prints its metrics on the eval users bucketed by
the training count of their target item (rare items are where item text should help most; the
shuffled-text control says whether it does). Writes ``<RUN_DIR>/popularity_<split>.json``.
Exit status 0, or 2 for a directory that is not a finished run.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_enum("split", "valid", ["valid", "test"], "Which eval split to bucket.")
flags.DEFINE_list("boundaries", ["5", "20"], "Bucket edges on the target item's training count.")
flags.DEFINE_list("metrics", ["recall@5", "ndcg@5", "ndcg@10"], "Metrics to print.")


def main(argv):
    runs = argv[1:]
    if not runs:
        print("give one or more run directories", file=sys.stderr)
        return 2
    from coco_tf.experiments.analysis import load_run, metrics_by_target_popularity

    boundaries = tuple(int(b) for b in FLAGS.boundaries)
    print("| run | bucket | users | " + " | ".join(FLAGS.metrics) + " |")
    print("|---|---|---|" + "---|" * len(FLAGS.metrics))
    for run_dir in runs:
        try:
            run = load_run(run_dir)
        except FileNotFoundError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        result = metrics_by_target_popularity(run, FLAGS.split, boundaries)
        with open(os.path.join(run_dir, f"popularity_{FLAGS.split}.json"), "w") as fh:
            json.dump(result, fh, indent=1)
        for label, row in result.items():
            values = " | ".join(f"{row[m]:.4f}" if m in row else "–" for m in FLAGS.metrics)
            print(f"| {os.path.basename(os.path.normpath(run_dir))} | {label} | {row['users']} | {values} |", flush=True)
    return 0


if __name__ == "__main__":
    app.run(main)
