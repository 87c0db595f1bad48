"""Experiment grids (``python -m coco_tf.experiments --grid configs/grids/<name>.yaml``)."""

from coco_tf.experiments.grid import Grid, Run, load_grid, run_grid  # noqa: F401
