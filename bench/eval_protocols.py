"""Ranks finished runs both ways: the best checkpoint's valid/test R@5, N@5, N@10 with the history kept and
excluded (``eval.exclude_history``), one JSON line per run.

    python bench/eval_protocols.py runs/base_s42 [RUN_DIR ...]
"""
import sys, json
import coco_tf  # noqa (Keras 2 before tensorflow)
from coco_tf.experiments.analysis import load_run
from coco_tf.metrics.evaluator import Evaluator
for run_dir in sys.argv[1:]:
    run = load_run(run_dir)
    cfg = run.cfg
    out = {}
    for excl in (False, True):
        ev = Evaluator(run.model, cfg.eval.ks, cfg.data.max_len, cfg.eval.batch_size, excl)
        for split in ("valid", "test"):
            m = ev.evaluate(getattr(run.split, split))
            out[f"{split}{'_excl' if excl else ''}"] = {k: round(v, 4) for k, v in m.items() if k in ("recall@5", "ndcg@5", "ndcg@10")}
    print(run_dir, json.dumps(out), flush=True)
