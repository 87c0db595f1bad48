"""PNG figures of a grid (``python -m coco_tf.experiments --grid G --plots``; needs matplotlib).

For each backbone with a finished ``coco`` run (the first seed):

* ``tsne_<backbone>.png``: t-SNE of behavioural vectors ``h_RS`` and LLM-output
  vectors (decoupled ``h_pure``, pooled over the selected prompts) of the same
  test users, at the run's initial weights and at its best checkpoint — the
  paper's discrepancy picture (two clouds apart before, closer after);
  both sets are L2-normalised first, and the title gives the mean cosine
  between a user's two vectors (drawn when ``model.embedding_dim`` equals the
  LLM width, as in the Beauty grid: otherwise the two are not one space);
* ``m_hist_<backbone>.png``: histogram of the number of selected private prompts
  ``m`` per test user, before and after training;

and for a grid with a ``sweep``: ``sweep_<key>.png``, test R@5 / N@5 (mean ± std
over seeds) against the swept value, with the base mean as a line.
"""

from __future__ import annotations

import os
from typing import List

import numpy as np

from coco_tf.experiments.analysis import coco_internals, load_run, test_histories
from coco_tf.experiments.grid import Grid
from coco_tf.experiments.report import collect, mean_std
from coco_tf.experiments.tsne import tsne


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - depends on the environment
        raise SystemExit("--plots needs matplotlib: pip install -e '.[plots]'") from None
    return plt


def _unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def coco_figures(run_dir: str, out_dir: str, tag: str, num_users: int = 400) -> List[str]:
    """t-SNE and m-histogram PNGs for one CoCo run directory; returns the paths."""
    plt = _pyplot()
    states, dataset = {}, None
    for when, restore in (("initial", False), ("trained", True)):
        run = load_run(run_dir, restore=restore, dataset=dataset)
        dataset = run.dataset
        hist = test_histories(run.split, run.cfg.data.max_len, limit=num_users)
        states[when] = coco_internals(run.model, hist)
    paths = []
    d, d_llm = states["initial"]["h_rs"].shape[1], states["initial"]["llm_out"].shape[1]
    if d != d_llm:
        print(f"{tag}: no t-SNE figure: h_RS has {d} dimensions and the LLM output {d_llm} (not one space)")
    else:
        fig, axes = plt.subplots(1, 2, figsize=(11, 5))
        for ax, (when, s) in zip(axes, states.items()):
            a, b = _unit(s["h_rs"]), _unit(s["llm_out"])
            y = tsne(np.concatenate([a, b]), seed=0)
            n = len(a)
            ax.scatter(y[:n, 0], y[:n, 1], s=5, alpha=0.6, label="behavioural h_RS")
            ax.scatter(y[n:, 0], y[n:, 1], s=5, alpha=0.6, label="LLM output (pooled h_pure)")
            ax.set_title(f"{when}: mean cos(h_RS, LLM) = {np.mean(np.sum(a * b, axis=1)):.3f}")
            ax.set_xticks([]), ax.set_yticks([])
        axes[0].legend(loc="best", markerscale=3)
        fig.suptitle(f"{tag}: t-SNE of {n} test users")
        path = os.path.join(out_dir, f"tsne_{tag}.png")
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    fig, ax = plt.subplots(figsize=(6, 4))
    top = int(max(s["m"].max() for s in states.values()))
    bins = np.arange(0, top + 2) - 0.5
    for when, s in states.items():
        ax.hist(s["m"], bins=bins, alpha=0.6, label=f"{when} (mean {s['m'].mean():.1f})")
    ax.set_xlabel("selected private prompts m")
    ax.set_ylabel("test users")
    ax.legend()
    ax.set_title(f"{tag}: prompts selected per user")
    path = os.path.join(out_dir, f"m_hist_{tag}.png")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    paths.append(path)
    return paths


def sweep_figure(grid: Grid, out_dir: str) -> str:
    plt = _pyplot()
    rows = collect(grid)
    key = grid.sweep["key"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("recall@5", "ndcg@5")):
        for method in grid.sweep["methods"]:
            xs, ms, ss = [], [], []
            for value in grid.sweep["values"]:
                vals = [r[metric] for r in rows if r["sweep_value"] == value and r["method"].startswith(method + "@")]
                if vals:
                    m, s = mean_std(vals)
                    xs.append(value), ms.append(m), ss.append(s)
            if xs:
                ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, label=method)
        base = [r[metric] for r in rows if r["method"] == "base"]
        if base:
            ax.axhline(np.mean(base), color="grey", linestyle="--", label="base")
        values = [v for v in grid.sweep["values"] if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if values and min(values) > 0 and max(values) / min(values) >= 4:  # K = 16..128: evenly spaced
            ax.set_xscale("log", base=2)
            ax.set_xticks(values, [str(v) for v in values])
        ax.set_xlabel(key)
        ax.set_ylabel(f"test {metric}")
        ax.legend()
    path = os.path.join(out_dir, f"sweep_{key.split('.')[-1]}.png")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def write_plots(grid: Grid) -> List[str]:
    out_dir = os.path.join(grid.report_dir, "plots")
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for backbone in grid.backbones:
        coco_runs = [r for r in grid.runs() if r.backbone == backbone and r.method == "coco" and r.done]
        # The plain coco cell when there is one, else the first swept one.
        run = next((r for r in coco_runs if r.sweep_value is None), coco_runs[0] if coco_runs else None)
        if run is not None:
            paths += coco_figures(run.run_dir, out_dir, backbone)
    if grid.sweep:
        paths.append(sweep_figure(grid, out_dir))
    return paths
