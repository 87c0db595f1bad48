"""The experiment grid end to end on a tiny synthetic catalog: runs in subprocesses, skips
finished runs, writes the CSV / markdown table (mean ± std, Δ over base) and the PNG plots;
bad grid files fail before anything trains, naming the file and the key."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from coco_tf.config import ConfigError, load_config
from coco_tf.experiments.analysis import (branch_metrics, item_train_counts, load_run, metrics_by_target_popularity,
                                          popularity_buckets)
from coco_tf.experiments.grid import load_grid
from coco_tf.experiments.report import markdown_table, mean_std, summarize
from coco_tf.experiments.tsne import kl_divergence, tsne

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GRID = """
base_config: {base}
overrides:
  data.synthetic_num_users: 120
  data.synthetic_num_items: 50
  data.synthetic_max_len: 8
  data.max_len: 6
  model.embedding_dim: 64   # = the tiny LLM's width: the t-SNE puts both vector sets in one space
  model.num_blocks: 1
  train.epochs: 1
  train.batch_size: 64
  train.loss: in_batch
  coco.codebook_size: 8
  coco.max_prompts: 3
  llm.lora_rank: 2
methods:
  base: {{coco.method: base}}
  coco: {{coco.method: coco}}
seeds: [1, 2]
sweep: {{key: coco.threshold, values: [0.2], methods: [coco]}}
published: {{sasrec: {{base: {{recall@5: 0.0387, ndcg@5: 0.0249}}}}}}
"""


def _write(tmp_path, text, name="grid.yaml"):
    base = tmp_path / "base.yaml"
    base.write_text("runtime:\n  progress: false\n")
    path = tmp_path / name
    path.write_text(text.format(base=base))
    return str(path)


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "coco_tf.experiments", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=900)


@pytest.mark.slow  # subprocesses
def test_grid_trains_reports_skips_and_plots(tmp_path):
    grid_path = _write(tmp_path, GRID)
    out = tmp_path / "out"
    res = _cli("--grid", grid_path, "--out_dir", str(out), "--plots")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = out / "reports" / "grid"
    rows = list(csv.DictReader(open(report / "results.csv")))
    assert sorted((r["method"], r["seed"]) for r in rows) == [
        ("base", "1"), ("base", "2"), ("coco@threshold=0.2", "1"), ("coco@threshold=0.2", "2")]
    coco_rows = [r for r in rows if r["method"].startswith("coco")]
    assert all(0.0 <= float(r["m1_fraction"]) <= 1.0 for r in coco_rows)
    table = (report / "results.md").read_text()
    assert "4 of 4 runs finished" in table and "| sasrec | coco@threshold=0.2 | 2 |" in table
    assert "| sasrec | paper: base | – | 0.0387 | 0.0249 |" in table
    for name in ("tsne_sasrec.png", "m_hist_sasrec.png", "sweep_threshold.png"):
        png = report / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    # load_run restores the best checkpoint: its test metrics are the run's own metrics.json.
    run_dir = out / "sasrec" / "coco@threshold=0.2" / "seed1"
    both = branch_metrics(load_run(str(run_dir)))
    recorded = json.load(open(run_dir / "metrics.json"))["test"]
    for k in ("recall@10", "ndcg@10"):
        assert both["user_vector"][k] == pytest.approx(recorded[k], abs=1e-6)
        assert 0.0 <= both["h_rs_only"][k] <= 1.0
    # Popularity buckets partition the test users; per-user means recombine to the whole.
    buckets = metrics_by_target_popularity(load_run(str(run_dir)), "test", boundaries=(5, 20))
    assert buckets["all"]["recall@10"] == pytest.approx(recorded["recall@10"], abs=1e-6)
    parts = [v for k, v in buckets.items() if k != "all" and v["users"]]
    assert sum(v["users"] for v in parts) == buckets["all"]["users"]
    assert sum(v["users"] * v["recall@10"] for v in parts) / buckets["all"]["users"] == pytest.approx(
        recorded["recall@10"], abs=1e-6)
    # The offline text probe: λ = 0 is the run itself, ranked as the Evaluator ranks it (history kept
    # or excluded); one-hot "texts" score only the history's own items, so with --no_self every λ
    # ranks as λ = 0.
    from coco_tf.experiments.text_probe import probe
    from coco_tf.metrics.evaluator import Evaluator

    run = load_run(str(run_dir))
    one_hot = np.eye(run.dataset.num_items + 1, dtype=np.float32)
    assert probe(run, one_hot, "test")[(1, 0.5, 0.0)]["R@10"] == pytest.approx(recorded["recall@10"], abs=1e-6)
    excluded = Evaluator(run.model, run.cfg.eval.ks, run.cfg.data.max_len, 64, exclude_history=True)
    assert probe(run, one_hot, "test", exclude_history=True)[(1, 0.5, 0.0)]["R@10"] == pytest.approx(
        excluded.evaluate(run.split.test)["recall@10"], abs=1e-6)
    no_self = probe(run, one_hot, "test", no_self=True)
    assert all(v == no_self[(1, 0.5, 0.0)] for v in no_self.values())
    # A second call trains nothing: every run has its metrics.json.
    again = _cli("--grid", grid_path, "--out_dir", str(out))
    assert again.returncode == 0 and again.stdout.count("done, skipped") == 4, again.stdout


def test_text_probe_history_query_against_numpy():
    """The probe's q_u: the newest L valid rows (padding anywhere), weighted ρ^k from the newest, normalised."""
    from coco_tf.experiments.text_probe import history_query

    rng = np.random.default_rng(3)
    rows = rng.normal(size=(9, 5)).astype(np.float32)
    padded = np.array([[0, 0, 4, 2, 7], [3, 0, 5, 0, 0]], np.int64)
    for window, decay in ((3, 1.0), (2, 0.7), (5, 0.5)):
        got = history_query(padded, rows, window, decay)
        for u, ids in enumerate(([4, 2, 7], [3, 5])):
            newest = ids[::-1][:window]
            want = sum(decay ** k * rows[i] for k, i in enumerate(newest))
            np.testing.assert_allclose(got[u], want / np.linalg.norm(want), rtol=1e-5, atol=1e-6)


def test_grids_sharing_out_dir_share_equal_cells_and_keep_their_own_reports(tmp_path):
    """A swept value equal to the method's own config value is the plain cell's run (one run, not
    two); other values get their own directories; each grid reports under its own name."""
    methods = load_grid(_write(tmp_path, "base_config: {base}\nmethods: {{coco: {{coco.method: coco}}}}\n"
                                         "seeds: [1]\n", "methods.yaml"), str(tmp_path / "out"))
    sweep = load_grid(_write(tmp_path, "base_config: {base}\nmethods: {{coco: {{coco.method: coco}}}}\nseeds: [1]\n"
                                       "sweep: {{key: coco.codebook_size, values: [16, 64], methods: [coco]}}\n",
                             "sweep.yaml"), str(tmp_path / "out"))
    assert load_config().coco.codebook_size == 64  # the default the sweep's second value equals
    (plain,) = methods.runs()
    k16, k64 = sweep.runs()
    assert (k16.cell, k64.cell) == ("coco@codebook_size=16", "coco@codebook_size=64")
    assert k64.run_dir == plain.run_dir and k16.run_dir != plain.run_dir
    assert k16.overrides["coco.codebook_size"] == 16 and "coco.codebook_size" not in plain.overrides
    assert methods.report_dir != sweep.report_dir and sweep.report_dir.endswith(os.path.join("reports", "sweep"))
    # The plain value is the method's own, not the base default: a method with K = 32 shares its 32 cell.
    own = load_grid(_write(tmp_path, "base_config: {base}\nmethods: {{k32: {{coco.method: coco, coco.codebook_size: 32}}}}\n"
                                     "seeds: [1]\nsweep: {{key: coco.codebook_size, values: [32, 64], methods: [k32]}}\n",
                           "own.yaml"), str(tmp_path / "out"))
    k32, k64 = own.runs()
    assert k32.run_dir.endswith(os.path.join("k32", "seed1"))
    assert k64.run_dir.endswith(os.path.join("k32@codebook_size=64", "seed1"))


def test_a_run_directory_of_another_config_is_an_error(tmp_path):
    from coco_tf.config import dump_config

    text = "base_config: {base}\nmethods: {{coco: {{coco.method: coco}}}}\nseeds: [1]\n"
    grid = load_grid(_write(tmp_path, text), str(tmp_path / "out"))
    (run,) = grid.runs()
    os.makedirs(run.run_dir)
    cfg = load_config(overrides=["coco.method=coco", "train.seed=1", "runtime.progress=false", "llm.cache_dir=/x"])
    dump_config(cfg, os.path.join(run.run_dir, "config.yaml"))
    load_grid(_write(tmp_path, text), str(tmp_path / "out"))  # runtime / llm.cache_dir differ: the same run
    cfg.coco.threshold = 0.6
    dump_config(cfg, os.path.join(run.run_dir, "config.yaml"))
    with pytest.raises(ConfigError, match=r"already holds a run of another config \(coco.threshold: 0.6 != 0.45\)"):
        load_grid(_write(tmp_path, text), str(tmp_path / "out"))


def test_grid_processes_skip_runs_another_live_process_holds(tmp_path, monkeypatch):
    """Two grid processes on one out_dir: a run whose grid.lock another live process has flocked
    is skipped; a lock file nobody holds (its process gone) is taken; the trainer subprocess
    shares the held lock; nothing stays locked after the runs."""
    import fcntl

    from coco_tf.experiments import grid as grid_mod

    grid = load_grid(_write(tmp_path, "base_config: {base}\nmethods: {{base: {{}}}}\nseeds: [1, 2, 3]\n"),
                     str(tmp_path / "out"))
    held, stale, free = grid.runs()
    for run in (held, stale):
        os.makedirs(run.run_dir)
    (open(os.path.join(stale.run_dir, "grid.lock"), "w")).write("999999@gone")  # no flock on it
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
         "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'holder'); print('locked', flush=True); time.sleep(60)",
         os.path.join(held.run_dir, "grid.lock")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"

    def lockable(run_dir):
        fd = os.open(os.path.join(run_dir, "grid.lock"), os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    trained = []

    def fake_train(cmd, stdout, stderr, pass_fds=()):
        run_dir = cmd[cmd.index("--model_dir") + 1]
        assert len(pass_fds) == 1 and not lockable(run_dir)  # held while the trainer runs, fd passed on
        trained.append(run_dir)
        open(os.path.join(run_dir, "metrics.json"), "w").write("{}")
        return 0

    monkeypatch.setattr(grid_mod.subprocess, "call", fake_train)
    lines = []
    try:
        assert grid_mod.run_grid(grid, log=lines.append) == []
    finally:
        holder.kill()
        holder.wait()
    assert trained == [stale.run_dir, free.run_dir]
    assert any("(holder), skipped" in line for line in lines) and "1 run(s) still training" in lines[-1], lines
    assert lockable(stale.run_dir) and lockable(free.run_dir) and not held.done
    # Its holder gone, the next call trains the held run too.
    assert grid_mod.run_grid(grid, log=lines.append) == [] and trained[-1] == held.run_dir


@pytest.mark.slow  # subprocesses
def test_run_grids_streams_train_every_run_once(tmp_path):
    """launch/run_grids.sh --streams 2: two grid processes on one out_dir; each run trains in exactly
    one of them (the other skips it), and both grids' reports are written."""
    text = GRID.replace("  coco: {{coco.method: coco}}\n", "").replace(
        "sweep: {{key: coco.threshold, values: [0.2], methods: [coco]}}\n", "")
    grid_a, grid_b = _write(tmp_path, text, "a.yaml"), _write(tmp_path, text, "b.yaml")
    out = tmp_path / "out"
    script = os.path.join(REPO, "launch", "run_grids.sh")
    bad = subprocess.run(["bash", script, "--streams", "0", grid_a], capture_output=True, text=True)
    assert bad.returncode == 2 and "--streams must be a positive integer" in bad.stderr
    res = subprocess.run(["bash", script, "--streams", "2", "--out_dir", str(out), grid_a, grid_b],
                         capture_output=True, text=True, timeout=900, env=dict(os.environ, PYTHON=sys.executable))
    logs = [(out / "streams" / f"{i}.log").read_text() for i in (1, 2)]
    assert res.returncode == 0, res.stdout + res.stderr + "".join(logs)[-3000:]
    started = [line for log in logs for line in log.splitlines() if ": training (log" in line]
    assert sorted(line.split("] ")[1].split(":")[0] for line in started) == ["sasrec/base/seed1", "sasrec/base/seed2"]
    for seed in (1, 2):
        assert (out / "sasrec" / "base" / f"seed{seed}" / "metrics.json").exists()
    for name in ("a", "b"):
        assert "2 of 2 runs finished" in (out / "reports" / name / "results.md").read_text()


def test_summary_mean_std_and_relative_improvement_by_hand():
    rows = [
        {"backbone": "sasrec", "method": "base", "seed": 1, "recall@5": 0.10, "ndcg@5": 0.05, "recall@10": 0.2,
         "ndcg@10": 0.1, "wall_seconds": 10},
        {"backbone": "sasrec", "method": "base", "seed": 2, "recall@5": 0.12, "ndcg@5": 0.07, "recall@10": 0.2,
         "ndcg@10": 0.1, "wall_seconds": 10},
        {"backbone": "sasrec", "method": "coco", "seed": 1, "recall@5": 0.121, "ndcg@5": 0.06, "recall@10": 0.2,
         "ndcg@10": 0.1, "wall_seconds": 20, "m1_fraction": 0.4},
    ]
    s = {x["method"]: x for x in summarize(rows)}
    assert s["base"]["recall@5"][0] == pytest.approx(0.11)
    assert s["base"]["recall@5"][1] == pytest.approx(np.std([0.10, 0.12], ddof=1))
    assert s["coco"]["rel"]["recall@5"] == pytest.approx((0.121 - 0.11) / 0.11)
    assert s["coco"]["rel"]["ndcg@5"] == pytest.approx(0.0)
    assert mean_std([1.0]) == (1.0, 0.0)
    table = markdown_table(summarize(rows))
    assert "+10.0%" in table and "0.1100 ± 0.0141" in table
    # One seed: the value alone, no zero spread.
    coco_row = next(line for line in table.splitlines() if "| coco |" in line)
    assert coco_row.startswith("| sasrec | coco | 1 | 0.1210 | 0.0600 |") and "±" not in coco_row
    # Published rows follow their backbone's rows; their Δ is against the published base.
    published = {"sasrec": {"base": {"recall@5": 0.0387, "ndcg@5": 0.0249}, "coco": {"recall@5": 0.0414, "ndcg@5": 0.0265}}}
    lines = markdown_table(summarize(rows), published=published).splitlines()
    paper_coco = next(line for line in lines if "paper: coco" in line)
    assert lines.index(paper_coco) == len(lines) - 1
    assert f"{100 * (0.0414 - 0.0387) / 0.0387:+.1f}%" in paper_coco  # +7.0%, the paper's +6.98%
    assert f"{100 * (0.0265 - 0.0249) / 0.0249:+.1f}%" in paper_coco
    assert "| sasrec | paper: base | – | 0.0387 | 0.0249 | – | – | – | – |" in "\n".join(lines)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("base_config: {base}\nmethods: {{b: {{coco.method: base}}}}\nseeds: [1]\nepochs: 3\n", "unknown key(s) epochs"),
        ("base_config: {base}\nmethods: {{b: {{coco.method: bert}}}}\nseeds: [1]\n", "coco.method"),
        ("base_config: {base}\nmethods: {{b: {{coco.method: base}}}}\nseeds: [one]\n", "'seeds'"),
        ("base_config: {base}\nmethods: [base]\nseeds: [1]\n", "'methods'"),
        ("base_config: {base}\nmethods: {{b: {{}}}}\nseeds: [1]\nsweep: {{key: coco.threshold, values: [1], methods: [c]}}\n",
         "unknown method label"),
        ("base_config: {base}\nmethods: {{b: {{}}\n", "not valid YAML"),
        ("base_config: {base}\nmethods: {{b: {{}}}}\nseeds: [1]\npublished: {{fdsa: {{b: {{recall@5: 0.1}}}}}}\n",
         "published: unknown backbone 'fdsa'"),
        ("base_config: {base}\nmethods: {{b: {{}}}}\nseeds: [1]\npublished: {{sasrec: {{c: {{recall@5: 0.1}}}}}}\n",
         "published.sasrec: unknown method label 'c'"),
        ("base_config: {base}\nmethods: {{b: {{}}}}\nseeds: [1]\npublished: {{sasrec: {{b: {{mrr: 0.1}}}}}}\n",
         "unknown metric 'mrr'"),
        ("base_config: {base}\nmethods: {{b: {{}}}}\nseeds: [1]\npublished: {{sasrec: {{b: {{recall@5: 5}}}}}}\n",
         "not a number in [0, 1]"),
    ],
)
def test_bad_grid_files_name_file_and_key(tmp_path, text, expected):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_grid(path)
    assert str(path) in str(e.value) and expected in str(e.value)


def test_tsne_keeps_clusters_apart():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    x = rng.normal(size=(3, 10))[labels] * 6 + rng.normal(size=(120, 10))
    y = tsne(x, perplexity=15, iterations=300, seed=0)
    d = ((y[:, None] - y[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (labels[d.argmin(1)] == labels).mean() > 0.95
    assert kl_divergence(x, y, 15) < 0.5 * kl_divergence(x, rng.normal(size=(120, 2)), 15)


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(REPO, "configs", "grids"))))
def test_shipped_grid_files_load(tmp_path, name):
    """Every grid in configs/grids/ validates (every cell a valid config, `published` well formed)
    without the dataset on disk: load_grid parses configs, it does not read data."""
    grid = load_grid(os.path.join(REPO, "configs", "grids", name), out_dir=str(tmp_path))
    assert grid.runs() and set(grid.published) <= set(grid.backbones)
    for backbone, rows in grid.published.items():
        assert "base" in rows, f"{name}: published.{backbone} has no base row to compare against"


def test_popularity_buckets_by_hand():
    class _Split:
        train = [np.array([1, 2, 2, 3]), np.array([2, 2, 2, 3])]

    counts = item_train_counts(_Split, num_items=4)
    np.testing.assert_array_equal(counts, [0, 1, 5, 2, 0])
    buckets = dict(popularity_buckets(counts, np.array([4, 2, 1, 3, 2]), boundaries=(1, 4)))
    assert list(buckets) == ["<= 1", "2-4", "> 4"]
    np.testing.assert_array_equal(buckets["<= 1"], [0, 2])  # items 4 (0 interactions) and 1 (1)
    np.testing.assert_array_equal(buckets["2-4"], [3])
    np.testing.assert_array_equal(buckets["> 4"], [1, 4])
