"""``python -m coco_tf.experiments --grid configs/grids/<name>.yaml [--report_only] [--plots]``.

Trains every run of the grid not finished yet (rerun the same command to continue
an interrupted grid), then writes ``<out_dir>/reports/<grid name>/results.csv`` and
``results.md`` (mean ± std over seeds, relative improvement over
``base``) and, with ``--plots``, the PNG figures of
:mod:`coco_tf.experiments.plots`. Exit status: 0 done, 1 some run failed,
2 bad grid file.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from absl import app, flags

from coco_tf.config import ConfigError

FLAGS = flags.FLAGS
flags.DEFINE_string("grid", None, "Grid YAML file (configs/grids/).")
flags.DEFINE_string("out_dir", None, "Where the runs go (overrides the grid's out_dir).")
flags.DEFINE_bool("report_only", False, "Do not train; only write the CSV/markdown (and plots) of finished runs.")
flags.DEFINE_bool("dry_run", False, "Print the training command of every unfinished run and exit.")
flags.DEFINE_list("only_methods", [], "Train only these method labels now (the report still covers the grid).")
flags.DEFINE_bool("plots", False, "Also write the PNG figures (needs matplotlib: pip install -e '.[plots]').")


def main(argv):
    if len(argv) > 1:
        print(f"unexpected arguments: {' '.join(argv[1:])}", file=sys.stderr)
        return 2
    if not FLAGS.grid:
        print("--grid is required (e.g. --grid configs/grids/beauty_methods.yaml)", file=sys.stderr)
        return 2
    from coco_tf.experiments.grid import load_grid, run_grid
    from coco_tf.experiments.report import write_report

    try:
        grid = load_grid(FLAGS.grid, FLAGS.out_dir)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = []
    if not FLAGS.report_only:
        try:
            failed = run_grid(grid, dry_run=FLAGS.dry_run, log=lambda s: print(s, flush=True),
                              only_methods=FLAGS.only_methods)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if FLAGS.dry_run:
            return 0
    paths = write_report(grid)
    print(open(paths["markdown"]).read())
    print(f"wrote {paths['csv']} and {paths['markdown']}")
    if FLAGS.plots:
        from coco_tf.experiments.plots import write_plots

        for path in write_plots(grid):
            print(f"wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    app.run(main)
