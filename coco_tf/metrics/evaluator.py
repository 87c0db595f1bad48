"""``Evaluator``: full-ranking evaluation of a model's user vectors against every item.

Each user of an :class:`~coco_tf.data.split.EvalSet` is ranked by ``model.score_all(user)``
``[B, num_items + 1]`` and the rank of the held-out target goes into
:class:`~coco_tf.metrics.ranking.RankingMetrics` (Recall@k, NDCG@k). ``base_only`` ranks by the
backbone's ``h_RS`` (``model.base_user``: the kar/coco base stage).

Example:

>>> evaluator = Evaluator(model, ks=(5, 10, 20), max_len=50, batch_size=256)
>>> evaluator.evaluate(split.valid)          # {"recall@5": ..., "ndcg@10": ...}
"""

from __future__ import annotations

from typing import Dict

import tensorflow as tf

from coco_tf.data.pipeline import eval_dataset
from coco_tf.data.split import EvalSet
from coco_tf.metrics.ranking import RankingMetrics, target_ranks

# The validation metric that picks the best checkpoint (and drives early stopping).
SELECTION_METRIC = "ndcg@10"


class Evaluator:
    """Full-ranking evaluation of a model's user vectors against all items."""

    def __init__(self, model, ks, max_len: int, batch_size: int, exclude_history: bool = False):
        self.model = model
        self.ks = ks
        self.max_len = max_len
        self.batch_size = batch_size
        self.exclude_history = exclude_history
        spec = {
            "history": tf.TensorSpec([None, None], tf.int64),
            "target": tf.TensorSpec([None], tf.int64),
        }
        self._step = tf.function(self._ranks, input_signature=[spec])
        self._base_step = tf.function(lambda b: self._ranks(b, base_only=True), input_signature=[spec])
        self._datasets = {}  # id(EvalSet) -> (EvalSet, dataset); the set is kept so its id stays unique

    def _ranks(self, batch, base_only=False):
        if base_only:  # kar/coco base stage: the backbone's h_RS, the LLM branch not run
            user = self.model.base_user(batch["history"], training=False)
        else:
            user = self.model({"history": batch["history"]}, training=False)
        scores = self.model.score_all(user)
        history = batch["history"] if self.exclude_history else None
        return target_ranks(scores, batch["target"], history)

    def evaluate(self, eval_set: EvalSet, base_only: bool = False) -> Dict[str, float]:
        """Metrics over ``eval_set``; ``base_only``: rank by the backbone's ``h_RS`` (kar/coco)."""
        metrics = RankingMetrics(self.ks)
        step = self._base_step if base_only else self._step
        key = id(eval_set)
        if key not in self._datasets:  # padded once per split, not at every validation
            self._datasets[key] = (eval_set, eval_dataset(eval_set, self.max_len, self.batch_size))
        for batch in self._datasets[key][1]:
            metrics.update(step(batch).numpy())
        return metrics.result()
