"""Grid results: one CSV row per run, and a markdown table shaped like the paper's Table 1/3.

The table has one row per (backbone, method): mean ± sample std over the seeds
that finished (the value alone for one seed), and the relative improvement of the mean over the same
backbone's ``base`` row, ``(x - base) / base``. Telemetry columns (the last
epoch's M = 1 rate, mean selected prompts m, codebook perplexity) come from
``history.json``. A grid's ``published`` figures follow each backbone's rows as
``paper: <label>`` rows, their Δ relative to the published ``base``.
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Dict, List

from coco_tf.experiments.grid import Grid

METRICS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10", "recall@20", "ndcg@20")
SHORT = {"recall@5": "R@5", "ndcg@5": "N@5", "recall@10": "R@10", "ndcg@10": "N@10", "recall@20": "R@20", "ndcg@20": "N@20"}
TELEMETRY = ("coco/m1_fraction", "coco/mean_selected", "coco/empty_selection", "coco/codebook_perplexity", "coco/codebook_unused")


def collect(grid: Grid) -> List[Dict]:
    """One dict per finished run: labels, test metrics, best epoch, wall time, telemetry."""
    rows = []
    for run in grid.runs():
        if not run.done:
            continue
        with open(os.path.join(run.run_dir, "metrics.json")) as fh:
            m = json.load(fh)
        row = {
            "backbone": run.backbone,
            "method": run.cell,
            "seed": run.seed,
            "sweep_value": "" if run.sweep_value is None else run.sweep_value,
        }
        row.update({k: m["test"][k] for k in METRICS if k in m["test"]})
        row.update({f"valid_{k}": m["valid"][k] for k in METRICS if k in m.get("valid", {})})
        row.update(
            best_epoch=m.get("best_epoch"),
            epochs_run=m.get("epochs_run"),
            examples_per_sec=m.get("examples_per_sec"),
            wall_seconds=m.get("wall_seconds"),
        )
        history_path = os.path.join(run.run_dir, "history.json")
        if os.path.exists(history_path):
            with open(history_path) as fh:
                history = json.load(fh)
            tele = history[-1].get("telemetry", {}) if history else {}
            for key in TELEMETRY:
                row[key.split("/")[1]] = tele.get(key, "")
        rows.append(row)
    return rows


def write_csv(rows: List[Dict], path: str) -> None:
    keys = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def mean_std(values: List[float]):
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def summarize(rows: List[Dict], metrics=("recall@5", "ndcg@5", "recall@10", "ndcg@10")) -> List[Dict]:
    """Per (backbone, method): n, mean/std per metric, relative improvement over ``base``."""
    groups: Dict = {}
    for row in rows:
        groups.setdefault((row["backbone"], row["method"]), []).append(row)
    out = []
    for (backbone, method), group in groups.items():
        s = {"backbone": backbone, "method": method, "n": len(group), "seeds": sorted(r["seed"] for r in group)}
        for k in metrics:
            s[k] = mean_std([r[k] for r in group])
        for k in ("m1_fraction", "mean_selected", "codebook_perplexity"):
            vals = [r[k] for r in group if isinstance(r.get(k), (int, float))]
            s[k] = sum(vals) / len(vals) if vals else None
        s["wall_seconds"] = sum(r["wall_seconds"] or 0 for r in group) / len(group)
        out.append(s)
    for s in out:
        base = next((b for b in out if b["backbone"] == s["backbone"] and b["method"] == "base"), None)
        s["rel"] = {k: ((s[k][0] - base[k][0]) / base[k][0] if base and base[k][0] else None) for k in metrics}
    return out


def markdown_table(summary: List[Dict], metrics=("recall@5", "ndcg@5", "recall@10", "ndcg@10"),
                   published=None) -> str:
    """``published``: backbone -> method label -> metric -> figure (``Grid.published``)."""
    published = published or {}
    head = ["backbone", "method", "seeds"] + [SHORT[k] for k in metrics] + [f"Δ{SHORT[k]}" for k in metrics[:2]]
    head += ["M=1 rate", "mean m", "codebook ppl", "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    backbones = list(dict.fromkeys([s["backbone"] for s in summary] + list(published)))
    for backbone in backbones:
        for s in (s for s in summary if s["backbone"] == backbone):
            cells = [s["backbone"], s["method"], str(s["n"])]
            cells += [f"{s[k][0]:.4f}" if s["n"] == 1 else f"{s[k][0]:.4f} ± {s[k][1]:.4f}" for k in metrics]
            cells += ["–" if s["rel"][k] is None or s["method"] == "base" else f"{100 * s['rel'][k]:+.1f}%" for k in metrics[:2]]
            cells += ["–" if s[k] is None else f"{s[k]:.3g}" for k in ("m1_fraction", "mean_selected", "codebook_perplexity")]
            cells.append(f"{s['wall_seconds']:.0f}")
            lines.append("| " + " | ".join(cells) + " |")
        rows = published.get(backbone, {})
        base = rows.get("base", {})
        for label, figures in rows.items():
            cells = [backbone, f"paper: {label}", "–"]
            cells += [f"{figures[k]:.4f}" if k in figures else "–" for k in metrics]
            cells += [f"{100 * (figures[k] - base[k]) / base[k]:+.1f}%" if label != "base" and k in figures and base.get(k)
                      else "–" for k in metrics[:2]]
            cells += ["–"] * 4
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(grid: Grid) -> Dict[str, str]:
    """Writes ``results.csv`` and ``results.md`` into ``grid.report_dir``; returns their paths."""
    os.makedirs(grid.report_dir, exist_ok=True)
    rows = collect(grid)
    csv_path = os.path.join(grid.report_dir, "results.csv")
    md_path = os.path.join(grid.report_dir, "results.md")
    write_csv(rows, csv_path)
    total = len(grid.runs())
    text = f"# Grid {grid.name}: {len(rows)} of {total} runs finished\n\nTest split, mean ± std over seeds (one seed: its value); Δ = relative to base; wall s: mean wall time of a run.\n\n"
    text += markdown_table(summarize(rows), published=grid.published) if rows else "(no finished runs)\n"
    with open(md_path, "w") as fh:
        fh.write(text)
    return {"csv": csv_path, "markdown": md_path}
