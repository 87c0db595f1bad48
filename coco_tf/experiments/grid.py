"""Experiment grids: backbones × methods (× one swept key) × seeds, one run directory each.

A grid file (``configs/grids/<name>.yaml``) names a base config and the axes::

    base_config: configs/beauty_sasrec.yaml     # every run starts from this YAML
    overrides: {data.path: /path/to/amazon-beauty, train.epochs: 15}
    backbones: [sasrec]                         # model.backbone values, or a mapping
                                                # {bert4rec: {model.bert4rec_mask_prob: 0.6}, ...}
    methods:                                    # label -> config overrides
      base: {coco.method: base}
      coco: {coco.method: coco}
    seeds: [42, 43, 44]                         # train.seed values
    sweep: {key: coco.codebook_size, values: [16, 64], methods: [coco]}   # optional
    out_dir: runs/grids/beauty                  # grids may share it: equal cells are one run
    published:                                  # optional: reference figures for the report,
      sasrec: {base: {recall@5: 0.0387, ndcg@5: 0.0249}}   # backbone -> method label -> metric

Runs are ordered seed-major (every method for the first seed, then the next
seed), so a grid cut short still compares every method on the same seeds. Each run is ``python -m coco_tf.train``
in a subprocess writing ``<out_dir>/<backbone>/<method>/seed<k>/``; a run whose
``metrics.json`` exists is skipped, and an interrupted run resumes from its last
checkpoint (the trainer's own resume), so rerunning the same command continues a
grid where it stopped.

Grids that share an ``out_dir`` share their equal cells: a swept run whose resolved
config equals its method's plain config (``coco.codebook_size: 64`` when the method
has 64 anyway) trains in the plain directory ``<method>/seed<k>``, so a sweep reuses
the methods grid's runs. A run directory whose ``config.yaml`` differs from its
cell's config (outside ``runtime`` and ``llm.cache_dir``) is an error before anything
trains. Each grid writes its report under ``<out_dir>/reports/<grid name>/``.

Several grid processes may work on one ``out_dir`` at once (two processes of one
thread each use two cores better than one process of two threads on this size of
model): a run being trained holds an ``flock`` on ``<run_dir>/grid.lock``, shared with
its trainer subprocess, so the lock lasts while either lives; the others skip it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import itertools
import os
import socket
import subprocess
import sys
import time
from typing import Dict, List, Optional, Set, Tuple

import yaml

from coco_tf.config import ConfigError, load_config

GRID_KEYS = ("base_config", "overrides", "backbones", "methods", "seeds", "sweep", "out_dir", "published")
PUBLISHED_METRICS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")


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
    plain_overrides: Optional[Dict[str, object]] = None  # a swept run's overrides without the sweep

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
    # backbone -> method label -> metric -> published figure (report rows "paper: <label>")
    published: Dict[str, Dict[str, Dict[str, float]]] = dataclasses.field(default_factory=dict)
    # (backbone, method label, repr(value)) of swept runs whose resolved config is the plain one
    same_as_plain: Set[Tuple[str, str, str]] = dataclasses.field(default_factory=set)

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
                plain = None
                if value is not None:
                    plain = dict(ov)
                    ov[self.sweep["key"]] = value
                    cell = f"{label}@{self.sweep['key'].split('.')[-1]}={value}"
                    if (backbone, label, repr(value)) not in self.same_as_plain:
                        directory = cell  # else: the plain cell's config, so the plain cell's run
                run_dir = os.path.join(self.out_dir, backbone, directory, f"seed{seed}")
                out.append(Run(backbone, label, seed, ov, run_dir, value, cell, plain))
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
    published = _published(path, raw.get("published"), backbones, methods)
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
        published=published,
    )
    for run in grid.runs():  # fail before training anything: every cell must be a valid config
        try:
            cfg = run_config(grid, run)
        except ConfigError as e:
            raise ConfigError(f"grid file {path}, run {run.backbone}/{run.cell}/seed{run.seed}: {e}") from None
        if run.plain_overrides is not None and cfg.to_dict() == run_config(grid, run, plain=True).to_dict():
            grid.same_as_plain.add((run.backbone, run.method, repr(run.sweep_value)))
    for run in grid.runs():  # a shared out_dir: an existing run directory must hold this cell's config
        recorded = os.path.join(run.run_dir, "config.yaml")
        if os.path.exists(recorded):
            diff = _differences(load_config(recorded), run_config(grid, run))
            if diff:
                raise ConfigError(
                    f"grid file {path}, run {run.backbone}/{run.cell}/seed{run.seed}: {run.run_dir} already "
                    f"holds a run of another config ({'; '.join(diff)}); use another out_dir or remove it")
    return grid


def _published(path: str, raw, backbones, methods) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Validates the optional ``published`` mapping: backbone -> method label -> metric -> number."""
    if raw is None:
        return {}
    shape = "'published' must map backbone -> method label -> {metric: number}"
    if not isinstance(raw, dict):
        _fail(path, shape)
    out = {}
    for backbone, rows in raw.items():
        if backbone not in backbones:
            _fail(path, f"published: unknown backbone {backbone!r}; the grid's backbones: {', '.join(backbones)}")
        if not isinstance(rows, dict):
            _fail(path, shape)
        for label, figures in rows.items():
            if label not in methods:
                _fail(path, f"published.{backbone}: unknown method label {label!r}; labels: {', '.join(methods)}")
            if not isinstance(figures, dict) or not figures:
                _fail(path, shape)
            for metric, value in figures.items():
                if metric not in PUBLISHED_METRICS:
                    _fail(path, f"published.{backbone}.{label}: unknown metric {metric!r}; allowed: {', '.join(PUBLISHED_METRICS)}")
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                    _fail(path, f"published.{backbone}.{label}.{metric}: {value!r} is not a number in [0, 1]")
            out.setdefault(str(backbone), {})[str(label)] = {k: float(v) for k, v in figures.items()}
    return out


def run_config(grid: Grid, run: Run, plain: bool = False):
    """The resolved :class:`~coco_tf.config.Config` of a cell (``plain``: without its sweep value)."""
    overrides = run.plain_overrides if plain else run.overrides
    return load_config(grid.base_config, [f"{k}={_yaml_value(v)}" for k, v in overrides.items()])


def _differences(recorded, wanted) -> List[str]:
    """``key: recorded != wanted`` for every differing key outside ``runtime`` and ``llm.cache_dir``
    (where a run writes, not what it trains)."""
    out = []
    a, b = recorded.to_dict(), wanted.to_dict()
    for section in b:
        if section == "runtime":
            continue
        for key, value in b[section].items():
            if (section, key) != ("llm", "cache_dir") and a[section].get(key) != value:
                out.append(f"{section}.{key}: {a[section].get(key)!r} != {value!r}")
    return out


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


def _take_lock(run_dir: str):
    """``(fd, "")`` holding an exclusive ``flock`` on ``<run_dir>/grid.lock`` (its text: this
    process), or ``(None, owner)`` when another live process holds it. The kernel releases the
    lock when every process holding the fd is gone; the file itself stays."""
    fd = os.open(os.path.join(run_dir, "grid.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        owner = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        return None, owner
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}@{socket.gethostname()}".encode(), 0)
    return fd, ""


def run_grid(grid: Grid, dry_run: bool = False, log=print, only_methods=None) -> List[Run]:
    """Trains every run not done yet (of ``only_methods`` labels, if given), one after the other,
    skipping runs that another grid process is training (``grid.lock`` held).

    Returns the runs that failed."""
    if only_methods:
        unknown = sorted(set(only_methods) - set(grid.methods))
        if unknown:
            raise ConfigError(f"--only_methods: unknown label(s) {', '.join(unknown)}; labels: {', '.join(grid.methods)}")
    runs = [r for r in grid.runs() if not only_methods or r.method in only_methods]
    failed, elsewhere = [], []
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
        fd, owner = _take_lock(run.run_dir)
        if fd is None:
            log(f"{tag}: in progress in another grid process ({owner}), skipped")
            elsewhere.append(run)
            continue
        try:
            if run.done:  # finished by another process since the check above
                log(f"{tag}: done, skipped")
                continue
            started = time.time()
            log(f"{tag}: training (log {os.path.join(run.run_dir, 'train.log')})")
            with open(os.path.join(run.run_dir, "train.log"), "a") as fh:
                # The trainer shares the locked fd: the lock outlives this process if it is killed.
                rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, pass_fds=(fd,))
        finally:
            os.close(fd)
        if rc != 0:
            failed.append(run)
            log(f"{tag}: FAILED (exit {rc}) after {time.time() - started:.0f} s; see train.log")
        else:
            log(f"{tag}: done in {time.time() - started:.0f} s")
    if elsewhere:
        log(f"{len(elsewhere)} run(s) still training in other grid processes: the report leaves them out")
    return failed
