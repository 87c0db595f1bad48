"""Reload a finished run and read CoCo's internals for the plots.

:func:`load_run` rebuilds a run's model from its ``config.yaml`` (same seed, so
``restore=False`` gives the initial weights the run started from) and restores
the best checkpoint. :func:`coco_internals` runs the CoCo user tower in
inference mode and returns, per user, the behavioural vector ``h_RS``, the
LLM-output vector (the decoupled pure semantics ``h_pure`` of eq. 5,
mean-pooled over the selected prompt slots) and the number of selected private
prompts ``m``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras

from coco_tf.config import load_config
from coco_tf.data.pipeline import pad_histories
from coco_tf.export.exporter import best_checkpoint
from coco_tf.utils import masked_mean
from coco_tf.methods.factory import build_model
from coco_tf.training.inputs import load_and_split, model_inputs


@dataclasses.dataclass
class LoadedRun:
    cfg: object
    model: object
    dataset: object
    split: object
    restored: bool


def load_run(run_dir: str, restore: bool = True, dataset=None) -> LoadedRun:
    """The model of ``run_dir`` (best checkpoint when ``restore``; its initial weights otherwise)."""
    cfg_path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{run_dir}: no config.yaml (not a coco_tf run directory)")
    cfg = load_config(cfg_path)
    keras.utils.set_random_seed(cfg.train.seed)  # the trainer's order: seed, data, LLM assets, model
    dataset, split = load_and_split(cfg, dataset)
    model = build_model(cfg, dataset.num_items, **model_inputs(cfg, dataset, split, run_dir))
    model({"history": tf.ones([1, 2], tf.int64)}, training=False)
    if restore:
        tf.train.Checkpoint(model=model).restore(best_checkpoint(run_dir)).expect_partial()
    return LoadedRun(cfg, model, dataset, split, restore)


def coco_internals(model, histories: np.ndarray, batch_size: int = 512) -> dict:
    """For a CoCo model and int64 ``histories [U, T]``: ``h_rs [U, d]``, ``llm_out [U, d_llm]``, ``m [U]``."""
    out = {"h_rs": [], "llm_out": [], "m": []}
    for start in range(0, len(histories), batch_size):
        history = tf.constant(histories[start:start + batch_size], tf.int64)
        _, h_rs = model.backbone.user_states(history, training=False)
        branch = model.llm_branch(history, h_rs, training=False)
        h_pure = model.decoupling(branch["prompts"], branch["h_mix"], branch["mix_mask"], training=False)  # [B, P, d_llm]
        pooled = masked_mean(h_pure, branch["prompt_mask"])
        out["h_rs"].append(h_rs.numpy())
        out["llm_out"].append(pooled.numpy())
        out["m"].append(np.asarray(branch["num_selected"]))
    return {k: np.concatenate(v) for k, v in out.items()}


def test_histories(split, max_len: int, limit: Optional[int] = None, seed: int = 0) -> np.ndarray:
    """int64 ``[U, max_len]`` test histories (a random ``limit`` of them), right-padded as in evaluation."""
    hist = split.test.histories
    idx = np.arange(len(hist))
    if limit is not None and limit < len(idx):
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=limit, replace=False))
    return pad_histories([np.asarray(hist[i], np.int64) for i in idx], max_len)


class _BehaviouralOnly:
    """A model view whose user vector is the backbone's ``h_RS`` (no LLM branch), same candidates."""

    def __init__(self, model):
        self.model = model

    def __call__(self, features, training=None):
        return self.model.backbone.user_states(features["history"], training=training)[1]

    def score_all(self, user):
        return self.model.score_all(user)


def branch_metrics(run: LoadedRun, split_name: str = "test") -> dict:
    """Full-ranking metrics of a trained LLM-augmented run with its own user vector
    (``h_aligned`` for CoCo) and with the backbone's ``h_RS`` alone: is the fusion the
    part that helps or hurts?"""
    from coco_tf.metrics.evaluator import Evaluator

    cfg = run.cfg
    eval_set = getattr(run.split, split_name)
    out = {}
    for name, model in (("user_vector", run.model), ("h_rs_only", _BehaviouralOnly(run.model))):
        out[name] = Evaluator(model, cfg.eval.ks, cfg.data.max_len, cfg.eval.batch_size,
                              cfg.eval.exclude_history).evaluate(eval_set)
    return out


def item_train_counts(split, num_items: int) -> np.ndarray:
    """int64 ``[num_items + 1]``: how often each item occurs in the training sequences."""
    counts = np.zeros([num_items + 1], np.int64)
    if split.train:
        np.add.at(counts, np.concatenate([np.asarray(s, np.int64) for s in split.train]), 1)
    return counts


def popularity_buckets(counts: np.ndarray, targets: np.ndarray, boundaries=(5, 20)):
    """``[(label, index array)]``: the eval users whose target item has ``≤ b0``, ``(b0, b1]``, …,
    ``> b_last`` training interactions (``counts`` from :func:`item_train_counts`)."""
    c = counts[np.asarray(targets, np.int64)]
    edges = [-1, *boundaries, np.inf]
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        label = f"<= {hi}" if lo < 0 else (f"> {lo}" if np.isinf(hi) else f"{lo + 1}-{hi}")
        out.append((label, np.nonzero((c > lo) & (c <= hi))[0]))
    return out


def metrics_by_target_popularity(run: LoadedRun, split_name: str = "test", boundaries=(5, 20)) -> dict:
    """Full-ranking metrics of ``run`` on the ``split_name`` users bucketed by how often their target
    item occurs in training: ``{label: {"users": n, metric: value}}`` (and ``"all"``). Where side
    information should help most is the rare items, whose id embeddings train on few examples."""
    from coco_tf.data.split import EvalSet
    from coco_tf.metrics.evaluator import Evaluator

    cfg = run.cfg
    eval_set = getattr(run.split, split_name)
    evaluator = Evaluator(run.model, cfg.eval.ks, cfg.data.max_len, cfg.eval.batch_size, cfg.eval.exclude_history)
    counts = item_train_counts(run.split, run.dataset.num_items)
    out = {"all": dict(users=len(eval_set.targets), **evaluator.evaluate(eval_set))}
    for label, idx in popularity_buckets(counts, eval_set.targets, boundaries):
        if not len(idx):
            out[label] = {"users": 0}
            continue
        subset = EvalSet([eval_set.histories[i] for i in idx], eval_set.targets[idx], eval_set.users[idx])
        out[label] = dict(users=len(idx), **evaluator.evaluate(subset))
    return out
