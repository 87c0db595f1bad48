"""Validation of a finished coco.text_score run with its text scale a times each c (docs/results.md §11):
what ``coco.text_scale_grid`` chooses from, for a run trained without it. Validation only by default.

    python bench/text_scale_sweep.py runs/coco 1,1.5,2,2.5 [valid,test]
"""
import sys, json
import coco_tf  # noqa
from coco_tf.experiments.analysis import load_run
from coco_tf.metrics.evaluator import Evaluator
run = load_run(sys.argv[1])
cfg = run.cfg
ev = Evaluator(run.model, cfg.eval.ks, cfg.data.max_len, cfg.eval.batch_size, cfg.eval.exclude_history)
theta = float(run.model.text_query.scale_parameter.numpy())
splits = sys.argv[3].split(",") if len(sys.argv) > 3 else ["valid"]
for c in [float(x) for x in sys.argv[2].split(",")]:
    run.model.text_query.scale_parameter.assign(theta * c)
    for sp in splits:
        m = ev.evaluate(getattr(run.split, sp))
        print(json.dumps({"c": c, "split": sp, "a": round(float(run.model.text_query.scale), 3), **{k: round(v, 4) for k, v in m.items() if k in ("recall@5", "ndcg@5", "ndcg@10")}}), flush=True)
