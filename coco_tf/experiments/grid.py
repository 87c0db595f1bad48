"""Experiment grids: backbones × methods (× one swept key) × seeds, one run directory each.

A grid file (``configs/grids/<name>.yaml``) names a base config and the axes::

    base_config: configs/beauty_sasrec.yaml     # every run starts from this YAML
    overrides: {data.path: ../shared/data/amazon-beauty, train.epochs: 15}
    backbones: [sasrec]                         # model.backbone values, or a mapping
                                                # {bert4rec: {model.bert4rec_mask_prob: 0.6}, ...}
    methods:                                    # label -> config overrides
      base: {coco.method: base}
      coco: {coco.method: coco}
    seeds: [42, 43, 44]                         # train.seed values
    sweep: {key: coco.codebook_size, values: [16, 64], methods: [coco]}   # optional
    out_dir: runs/grids/beauty                  # grids may share it: equal cells are one run

Runs are ordered seed-major (every method for the first seed, then the next
seed), so a grid cut short still compares every method on the same seeds. Each run is ``python -m coco_tf.train``
in a subprocess writing ``<out_dir>/<backbone>/<method>/seed<k>/``; a run whose
``metrics.json`` exists is skipped, and an interrupted run resumes from its last
checkpoint (the trainer's own resume), so rerunning the same command continues a
grid where it stopped.

Grids that share an ``out_dir`` share their equal cells: a swept run whose value is
the one its method has anyway (``coco.codebook_size: 64`` when 64 is the default)
trains in the method's plain directory ``<method>/seed<k>``, so a sweep reuses the
methods grid's runs. Each grid writes its report under ``<out_dir>/reports/<grid name>/``.

Several grid processes may work on one ``out_dir`` at once (two processes of one
thread each use two cores better than one process of two threads on this
size of model): a run being trained holds ``<run_dir>/grid.lock`` (the owner's
pid), the others skip it; a lock whose process is gone is taken over.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import socket
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

import yaml

from coco_tf.config import ConfigError, load_config

_MISSING = object()
GRID_KEYS = ("base_config", "overrides", "backbones", "methods", "seeds", "sweep", "out_dir")


@dataclasses.dataclass
class Run:
    """One cell of the grid: its labels, its ``--set`` overrides and its directory.

    ``method`` is the grid's method label; ``cell`` names the directory and the
    results row: the label, plus ``@<key>=<value>`` for a swept run.
    """

    backbone: str
    method: str
    seed: int
    overrides: Dict[str, object]
    run_dir: str
    sweep_value: Optional[object] = None
    cell: str = ""

    @property
    def done(self) -> bool:
        return os.path.exists(os.path.join(self.run_dir, "metrics.json"))


@dataclasses.dataclass
class Grid:
    path: str
    base_config: str
    overrides: Dict[str, object]
    backbones: Dict[str, Dict[str, object]]  # model.backbone -> its own overrides
    methods: Dict[str, Dict[str, object]]
    seeds: List[int]
    out_dir: str
    sweep: Optional[Dict[str, object]] = None
    # (backbone, method label) -> the swept key's value in that method's config without the sweep
    sweep_defaults: Dict[Tuple[str, str], object] = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        return os.path.splitext(os.path.basename(self.path))[0]

    @property
    def report_dir(self) -> str:
        """``<out_dir>/reports/<grid name>``: results.csv, results.md and plots/ of this grid."""
        return os.path.join(self.out_dir, "reports", self.name)

    def runs(self) -> List[Run]:
        """Every cell, seed-major: all methods for the first seed, then the next seed."""
        out = []
        for seed, backbone, (label, method_overrides) in itertools.product(
            self.seeds, self.backbones, self.methods.items()
        ):
            values = [None]
            if self.sweep and label in self.sweep["methods"]:
                values = list(self.sweep["values"])
            for value in values:
                ov = dict(self.overrides)
                ov["model.backbone"] = backbone
                ov.update(self.backbones[backbone])
                ov.update(method_overrides)
                ov["train.seed"] = seed
                cell = directory = label
                if value is not None:
                    ov[self.sweep["key"]] = value
                    cell = f"{label}@{self.sweep['key'].split('.')[-1]}={value}"
                    if self.sweep_defaults.get((backbone, label), _MISSING) != value:
                        directory = cell  # else: the same config as the plain cell, so the same run
                run_dir = os.path.join(self.out_dir, backbone, directory, f"seed{seed}")
                out.append(Run(backbone, label, seed, ov, run_dir, value, cell))
        return out


def _fail(path: str, msg: str):
    raise ConfigError(f"grid file {path}: {msg}")


def load_grid(path: str, out_dir: Optional[str] = None) -> Grid:
    """Reads and validates a grid file; every run's config is checked before anything trains."""
    if not os.path.exists(path):
        raise ConfigError(f"grid file not found: {path}")
    with open(path) as fh:
        try:
            raw = yaml.safe_load(fh) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"grid file {path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        _fail(path, "expected a mapping of keys " + ", ".join(GRID_KEYS))
    unknown = sorted(set(raw) - set(GRID_KEYS))
    if unknown:
        _fail(path, f"unknown key(s) {', '.join(unknown)}; allowed keys: {', '.join(GRID_KEYS)}")
    for key in ("base_config", "methods", "seeds"):
        if key not in raw:
            _fail(path, f"missing key '{key}'")
    methods = raw["methods"]
    if not isinstance(methods, dict) or not methods or not all(isinstance(v, dict) for v in methods.values()):
        _fail(path, "'methods' must map each label to a mapping of config overrides, e.g. {coco: {coco.method: coco}}")
    seeds = raw["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        _fail(path, "'seeds' must be a non-empty list of integers")
    backbones = raw.get("backbones", ["sasrec"])
    if isinstance(backbones, list):
        backbones = {b: {} for b in backbones}
    if not isinstance(backbones, dict) or not backbones or not all(isinstance(v, dict) for v in backbones.values()):
        _fail(path, "'backbones' must be a non-empty list of model.backbone values, or a mapping of them to overrides")
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        _fail(path, "'overrides' must be a mapping of config keys to values")
    sweep = raw.get("sweep")
    if sweep is not None:
        if not isinstance(sweep, dict) or set(sweep) != {"key", "values", "methods"}:
            _fail(path, "'sweep' must be {key: <config key>, values: [...], methods: [method labels]}")
        missing = [m for m in sweep["methods"] if m not in methods]
        if missing:
            _fail(path, f"sweep.methods names unknown method label(s) {missing}; labels: {', '.join(methods)}")
    base_config = raw["base_config"]
    if not os.path.isabs(base_config) and not os.path.exists(base_config):
        # Relative to the grid file's repository when not found from the working directory.
        candidate = os.path.join(os.path.dirname(os.path.abspath(path)), "..", "..", base_config)
        base_config = os.path.normpath(candidate) if os.path.exists(candidate) else base_config
    grid = Grid(
        path=path,
        base_config=base_config,
        overrides=overrides,
        backbones={str(k): dict(v) for k, v in backbones.items()},
        methods={str(k): dict(v) for k, v in methods.items()},
        seeds=list(seeds),
        out_dir=out_dir or raw.get("out_dir") or os.path.join("runs", "grids", os.path.splitext(os.path.basename(path))[0]),
        sweep=sweep,
    )
    for run in grid.runs():  # fail before training anything: every cell must be a valid config
        try:
            load_config(grid.base_config, [f"{k}={_yaml_value(v)}" for k, v in run.overrides.items()])
        except ConfigError as e:
            raise ConfigError(f"grid file {path}, run {run.backbone}/{run.method}/seed{run.seed}: {e}") from None
        if run.sweep_value is not None and (run.backbone, run.method) not in grid.sweep_defaults:
            plain = {k: v for k, v in run.overrides.items() if k != sweep["key"]}
            cfg = load_config(grid.base_config, [f"{k}={_yaml_value(v)}" for k, v in plain.items()])
            section, _, field = sweep["key"].partition(".")
            grid.sweep_defaults[(run.backbone, run.method)] = getattr(getattr(cfg, section), field)
    return grid


def _yaml_value(v) -> str:
    if isinstance(v, (list, dict)):
        return yaml.safe_dump(v, default_flow_style=True).strip()
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def train_command(grid: Grid, run: Run) -> List[str]:
    cmd = [sys.executable, "-m", "coco_tf.train", "--config", grid.base_config, "--model_dir", run.run_dir]
    for key, value in run.overrides.items():
        cmd += ["--set", f"{key}={_yaml_value(value)}"]
    cmd += ["--set", "runtime.progress=false"]
    return cmd


def _take_lock(run_dir: str) -> Optional[str]:
    """Creates ``<run_dir>/grid.lock`` for this process; returns ``None`` on success, else the
    live owner ("pid@host") that holds it. A lock of a process that is gone is taken over."""
    path = os.path.join(run_dir, "grid.lock")
    me = f"{os.getpid()}@{socket.gethostname()}"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                owner = open(path).read().strip()
            except FileNotFoundError:
                continue  # released meanwhile
            pid, _, host = owner.partition("@")
            if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                os.remove(path)  # stale: its process is gone
                continue
            return owner
        with os.fdopen(fd, "w") as fh:
            fh.write(me)
        return None
    return open(path).read().strip()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_grid(grid: Grid, dry_run: bool = False, log=print, only_methods=None) -> List[Run]:
    """Trains every run not done yet (of ``only_methods`` labels, if given), one after the other,
    skipping runs that another grid process is training (``grid.lock``).

    Returns the runs that failed."""
    if only_methods:
        unknown = sorted(set(only_methods) - set(grid.methods))
        if unknown:
            raise ConfigError(f"--only_methods: unknown label(s) {', '.join(unknown)}; labels: {', '.join(grid.methods)}")
    runs = [r for r in grid.runs() if not only_methods or r.method in only_methods]
    failed = []
    cache = os.path.join(grid.out_dir, "llm_cache")  # the item text table is shared by every run
    for i, run in enumerate(runs, 1):
        tag = f"[{i}/{len(runs)}] {run.backbone}/{run.cell}/seed{run.seed}"
        if run.done:
            log(f"{tag}: done, skipped")
            continue
        cmd = train_command(grid, run) + ["--set", f"llm.cache_dir={cache}"]
        if dry_run:
            log(f"{tag}: " + " ".join(cmd))
            continue
        os.makedirs(run.run_dir, exist_ok=True)
        owner = _take_lock(run.run_dir)
        if owner is not None:
            log(f"{tag}: in progress in another grid process ({owner}), skipped")
            continue
        if run.done:  # finished by another process since the check above
            os.remove(os.path.join(run.run_dir, "grid.lock"))
            log(f"{tag}: done, skipped")
            continue
        started = time.time()
        log(f"{tag}: training (log {os.path.join(run.run_dir, 'train.log')})")
        try:
            with open(os.path.join(run.run_dir, "train.log"), "a") as fh:
                rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT)
        finally:
            os.remove(os.path.join(run.run_dir, "grid.lock"))
        if rc != 0:
            failed.append(run)
            log(f"{tag}: FAILED (exit {rc}) after {time.time() - started:.0f} s; see train.log")
        else:
            log(f"{tag}: done in {time.time() - started:.0f} s")
    return failed
