"""``TrainerBase``: what both trainers share, everything but how the steps are scheduled.

Setup (:meth:`TrainerBase.__init__`): the seed, ``config.yaml``, the data and its split, the
per-position loss normaliser, the model (through ``build_model``), the bookkeeping variables
and checkpoints, the evaluator and the summary writer; :meth:`TrainerBase._resume_or_start`
restores the latest checkpoint (or starts a new run); validation, the best checkpoint, early
stopping, the kar/coco base stage, ``history.json`` and ``metrics.json`` close every epoch.
:class:`~coco_tf.training.trainer.Trainer` (one process) and
:class:`~coco_tf.training.ps_trainer.PSTrainer` (parameter servers) implement the rest: how the
model and optimizer are made (:meth:`_make_model`) and :meth:`run`.

Layout of ``model_dir``::

    config.yaml      the resolved config
    ckpt/            latest checkpoints (model, optimizer, epoch), keep N; resume point
    best/            the model with the best validation NDCG@10
    tensorboard/     loss every 50 steps, validation metrics every evaluation; for kar/coco
                     also every loss term and the CoCo telemetry (train/..., every 50
                     steps; train_epoch/..., epoch means)
    cache/           the item text table (kar/coco; unless llm.cache_dir is set)
    pretrain.json    per-epoch pre-training losses (backbones with a pre-training stage: s3rec)
    metrics.json     {"valid": {...}, "test": {...}, "examples_per_sec": ..., "wall_seconds": ...}
    history.json     one record per finished epoch (loss: the epoch's mean step loss, train_seconds,
                     telemetry: epoch means of every loss term and diagnostic, validation,
                     wall_seconds: the run's wall time so far, summed over resumes)

``train_seconds`` and ``wall_seconds`` in ``metrics.json`` cover the whole run, summed
over every process that resumed it (the unfinished epoch of a killed process is not
counted); ``examples_per_sec`` is the last process's own training throughput.

An interrupted run started again with the same ``model_dir`` resumes from its
latest checkpoint: the end of its last finished epoch or, with
``train.checkpoint_every_steps``, a step within an epoch. The checkpoint holds
everything that decides the next step: weights, optimizer, the position in the
epoch (each epoch's order is a function of ``(train.seed, epoch)``), the dropout
layers' random generators and the unfinished epoch's loss sums; so on CPU with
``runtime.deterministic=true`` a killed-and-resumed run writes the same
history.json and metrics.json as an uninterrupted one (timings aside). A run
that already finished is left as it is (:attr:`TrainerBase.already_finished`).
"""

from __future__ import annotations

import json
import os
import time
from typing import Dict, Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras
from absl import logging

from coco_tf.config import Config, dump_config
from coco_tf.data.errors import DataError
from coco_tf.metrics.evaluator import SELECTION_METRIC, Evaluator
from coco_tf.training import interrupt
from coco_tf.training.inputs import load_and_split, model_inputs, training_lengths
from coco_tf.training.warm_start import warm_start


def write_json(path: str, obj, indent: int) -> None:
    """Writes ``obj`` to ``path`` through a temporary file and a rename, so a run killed mid-write
    leaves the previous, readable file (a resume reads history.json; the grid reads metrics.json)."""
    try:
        with open(path + ".tmp", "w") as fh:
            json.dump(obj, fh, indent=indent)
    except BaseException:  # disk full, interrupted: drop the partial copy, keep the old file
        if os.path.exists(path + ".tmp"):
            os.remove(path + ".tmp")
        raise
    os.replace(path + ".tmp", path)


def base_stage_epochs(cfg: Config) -> int:
    """The most epochs the kar/coco base stage may take (a stall ends it earlier).

    ``train.epochs - coco.branch_epochs`` (never below half of ``train.epochs``), and at most
    ``coco.base_epochs`` when that is positive (-1: no limit but the stall); 0 for ``base``, with
    ``coco.init_from`` (a trained backbone), or with ``coco.base_epochs=0``."""
    c = cfg.coco
    if c.method == "base" or c.init_from or c.base_epochs == 0:
        return 0
    limit = max(cfg.train.epochs - c.branch_epochs, cfg.train.epochs // 2)
    return limit if c.base_epochs < 0 else min(c.base_epochs, limit)


class TrainerBase:
    """Setup, checkpoints, validation, base stage and the JSON files of one training run.

    Subclasses implement :meth:`_make_model` (``(model, optimizer)`` from ``build_model``'s
    keyword arguments), optionally :meth:`_setup_runtime`, :meth:`_extra_checkpoint_objects`
    and :meth:`_make_step_functions`, and :meth:`run`, which starts with
    :meth:`_resume_or_start` and ends with :meth:`_finish`.

    Example (a subclass):

    >>> trainer = Trainer(load_config(overrides=["train.epochs=2"]))
    >>> trainer.run()["test"]["ndcg@10"]
    """

    def __init__(self, cfg: Config, dataset=None):
        self.cfg = cfg
        self.model_dir = cfg.runtime.model_dir
        os.makedirs(self.model_dir, exist_ok=True)
        keras.utils.set_random_seed(cfg.train.seed)
        self._setup_runtime()
        dump_config(cfg, os.path.join(self.model_dir, "config.yaml"))

        self.dataset, self.split = load_and_split(cfg, dataset)
        # Every training position weighs the same, whichever batch it lands in (the models'
        # loss_normalizer: train.batch_size x the mean training history length).
        self.lengths, self.loss_normalizer = training_lengths(cfg, self.split)
        inputs = model_inputs(cfg, self.dataset, self.split, self.model_dir)
        self.llm_assets = inputs["llm_assets"]
        self.model, self.optimizer = self._make_model(dict(inputs, loss_normalizer=self.loss_normalizer))
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.best_score = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_score")
        self.stale_evals = tf.Variable(0, dtype=tf.int64, trainable=False, name="stale_evals")
        self.base_stage = base_stage_epochs(cfg)
        self.branch_joined = tf.Variable(self.base_stage == 0, trainable=False, name="branch_joined")
        # The steps of the unfinished epoch that the checkpoint includes (0: at an epoch's end).
        self.epoch_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch_step")
        self.already_finished = False
        self.checkpoint = tf.train.Checkpoint(
            model=self.model, optimizer=self.optimizer, epoch=self.epoch, best_score=self.best_score,
            stale_evals=self.stale_evals, branch_joined=self.branch_joined, epoch_step=self.epoch_step,
            **self._extra_checkpoint_objects(),
        )
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, os.path.join(self.model_dir, "ckpt"), max_to_keep=cfg.train.keep_checkpoints
        )
        self.best_manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(model=self.model, epoch=self.epoch), os.path.join(self.model_dir, "best"), max_to_keep=1
        )
        self.evaluator = Evaluator(self.model, cfg.eval.ks, cfg.data.max_len, cfg.eval.batch_size,
                                   cfg.eval.exclude_history)
        self._make_step_functions()
        self.writer = tf.summary.create_file_writer(os.path.join(self.model_dir, "tensorboard"))

    # ------------------------------------------------------------------ subclass hooks

    def _setup_runtime(self) -> None:
        """After the seed, before anything is built: threads, determinism, a cluster."""

    def _make_model(self, model_kwargs: Dict):
        """``(model, optimizer)``; ``model_kwargs``: ``build_model``'s keyword arguments."""
        raise NotImplementedError

    def _extra_checkpoint_objects(self) -> Dict:
        """More trackables for the resume checkpoint (``ckpt/``), by name."""
        return {}

    def _make_step_functions(self) -> None:
        """The (traced) step functions, once the model, optimizer and bookkeeping exist."""

    def run(self) -> Dict:
        """Trains to the end (or resumes); returns the metrics.json content."""
        raise NotImplementedError

    # ------------------------------------------------------------------ resume

    def _restore(self, path: str) -> None:
        """Restores the checkpoint ``path``; one written before exact resume (no ``epoch_step``, no
        random state) still restores its weights, optimizer and epoch, with a warning."""
        names = {name.split("/")[0] for name, _ in tf.train.list_variables(path)}
        if "epoch_step" in names:
            self.checkpoint.restore(path).assert_existing_objects_matched()
            return
        logging.warning("%s predates exact resume: resuming after its epoch with fresh dropout random state "
                        "(the run will not match an uninterrupted one exactly)", path)
        old = {"model": self.model, "optimizer": self.optimizer, "epoch": self.epoch, "best_score": self.best_score,
               "stale_evals": self.stale_evals, "branch_joined": self.branch_joined}
        tf.train.Checkpoint(**{k: v for k, v in old.items() if k in names}).restore(
            path).assert_existing_objects_matched()

    def _on_resume(self, path: str) -> None:
        """Reports the restored checkpoint ``path``."""
        logging.info("resumed from %s (epoch %d, step %d of the next)", path, int(self.epoch.numpy()),
                     int(self.epoch_step.numpy()))

    def _resume_or_start(self) -> Optional[Dict]:
        """Restores the latest checkpoint, if any, else starts a new run (:meth:`_start_run`).
        Returns the saved metrics.json of a run that already finished (nothing else to do), else
        ``None``."""
        latest = self.manager.latest_checkpoint
        if not latest:
            self._start_run()
            return None
        self._restore(latest)
        self._on_resume(latest)
        saved = self._saved_metrics_if_finished()
        if saved is not None:
            self.already_finished = True
        return saved

    # ------------------------------------------------------------------ epoch end

    def _validate(self, epoch: int, step: int, record: Dict) -> bool:
        """Validates if due; saves the best model; returns whether to stop early."""
        cfg = self.cfg
        if not (epoch % cfg.train.eval_every == 0 or epoch == cfg.train.epochs):
            return False
        valid = self.evaluator.evaluate(self.split.valid, base_only=self.in_base_stage())
        record["valid"] = valid
        with self.writer.as_default():
            for k, v in valid.items():
                tf.summary.scalar(f"valid/{k}", v, step=step)
        if valid[SELECTION_METRIC] > float(self.best_score.numpy()):
            self.best_score.assign(valid[SELECTION_METRIC])
            self.stale_evals.assign(0)
            self.best_manager.save(checkpoint_number=epoch)
        else:
            self.stale_evals.assign_add(1)
        if cfg.runtime.progress:
            print(
                "  valid: "
                + "  ".join(f"{k}={v:.4f}" for k, v in valid.items() if k.endswith(("@10", "@5")))
                + f"  (best {SELECTION_METRIC}={float(self.best_score.numpy()):.4f})",
                flush=True,
            )
        return self._out_of_patience()

    def _patience(self) -> int:
        """Evaluations without a better validation NDCG@10 that end the current stage: in a kar/coco
        base stage ``coco.base_patience`` (the branch then joins), once a kar/coco LLM branch trains
        (after the join or ``coco.init_from``) ``coco.branch_patience`` (0: not set), else
        ``train.early_stopping_patience`` (0: never)."""
        cfg = self.cfg
        if self.in_base_stage():
            return cfg.coco.base_patience
        if cfg.coco.method != "base" and cfg.coco.branch_patience > 0:
            return cfg.coco.branch_patience
        return cfg.train.early_stopping_patience

    def _out_of_patience(self) -> bool:
        """Whether the stale evaluations have reached :meth:`_patience` (the stage ends)."""
        patience = self._patience()
        return patience > 0 and int(self.stale_evals.numpy()) >= patience

    def in_base_stage(self) -> bool:
        """Whether the kar/coco base stage is on: the backbone trains alone (``base_stage_epochs``)."""
        return not bool(self.branch_joined.numpy())

    def _start_run(self) -> None:
        """A new run (no checkpoint of its own): ``coco.init_from``'s weights, if set. The warm-started
        model is validated and saved as best checkpoint 0, so that the run's best epoch is never
        below where it started (``metrics.json`` ``best_epoch`` 0: no epoch improved on it)."""
        if not self.cfg.coco.init_from:
            return
        path = warm_start(self.model, self.cfg)
        valid = self.evaluator.evaluate(self.split.valid)
        self.best_score.assign(valid[SELECTION_METRIC])
        self.best_manager.save(checkpoint_number=0)
        self.warm_start_record = {"from": path, "valid": valid}
        logging.info("coco.init_from: started from %s (valid %s)", path, valid)
        if self.cfg.runtime.progress:
            print(f"started from {path} (coco.init_from): valid {SELECTION_METRIC}="
                  f"{valid[SELECTION_METRIC]:.4f}", flush=True)

    def _maybe_join(self, epoch: int, record: Dict) -> None:
        """Ends the base stage when it is due (its epochs are spent, or validation stalled for
        ``coco.base_patience`` evaluations): the best checkpoint so far (a base-stage epoch) is
        restored, the optimizer starts afresh (:meth:`_reset_optimizer`), the LLM branch joins, and
        the full model's validation at that point goes into ``record["branch_joins"]`` (with
        ``coco.zero_init`` it equals the best base epoch's). The branch then trains exactly as after
        ``coco.init_from`` from that checkpoint."""
        cfg = self.cfg
        if not self.in_base_stage():
            return
        if epoch < self.base_stage and not self._out_of_patience():
            return
        best = self.best_manager.latest_checkpoint
        if best:
            tf.train.Checkpoint(model=self.model).restore(best).expect_partial()
        self._reset_optimizer()
        self.branch_joined.assign(True)
        self.stale_evals.assign(0)
        valid = self.evaluator.evaluate(self.split.valid)
        record["branch_joins"] = {"from_epoch": int(best.rsplit("-", 1)[-1]) if best else epoch, "valid": valid}
        logging.info("the LLM branch joins after epoch %d: %s", epoch, record["branch_joins"])
        if cfg.runtime.progress:
            print(f"  base stage done; the LLM branch joins from epoch {record['branch_joins']['from_epoch']} "
                  f"(valid ndcg@10={valid[SELECTION_METRIC]:.4f})", flush=True)

    def _reset_optimizer(self) -> None:
        """Zeroes Adam's moments and step count when the branch joins, as a fresh optimizer after
        ``coco.init_from`` has them. Adam's bias correction uses the *global* step: kept at the base
        stage's ~4,000 steps, it leaves the branch's new variables (zero moments) uncorrected, so
        their updates (for a steady gradient) 3.2x ``train.learning_rate`` at the first step, up to
        6.5x after ten and still 2.5x after one Beauty epoch (175 steps): the branch then overfits
        from its first epoch (docs/results.md §11; the factor after k steps is
        (1 - 0.9^k) / sqrt(1 - 0.999^k))."""
        for v in self.optimizer.variables:
            v.assign(tf.zeros(v.shape, v.dtype))

    def _add_telemetry(self, record: Dict, sums: Dict[str, float], steps: int, step: int) -> None:
        """Epoch means of the step telemetry (kar, coco: ``sums`` over ``steps`` steps) into
        ``record["telemetry"]`` (history.json) and TensorBoard ``train_epoch/<name>``."""
        if not steps or not sums:
            return
        record["telemetry"] = {k: round(v / steps, 6) for k, v in sums.items()}
        with self.writer.as_default():
            for k, v in record["telemetry"].items():
                tf.summary.scalar(f"train_epoch/{k}", v, step=step)

    def _end_epoch(self, epoch: int, step: int, record: Dict, history: list, checkpoint_number: int) -> bool:
        """Validates, appends the epoch to history.json, checkpoints; returns whether to stop early."""
        if getattr(self, "warm_start_record", None) and not history:
            record["warm_start"] = self.warm_start_record
        stop = self._validate(epoch, step, record)
        if self.in_base_stage():  # a stalled base stage hands over to the branch instead of stopping
            stop = False
            self._maybe_join(epoch, record)
        record["wall_seconds"] = self._wall_seconds()
        history.append(record)
        # history.json first: if the checkpoint then fails (disk full, kill), the resumed run drops
        # the record of the epoch it redoes (_load_history); the other order would lose it.
        write_json(self.history_path, history, indent=1)
        self.manager.save(checkpoint_number=checkpoint_number)
        self.writer.flush()
        interrupt.check()  # a Ctrl-C during validation or the save stops here, with the epoch saved
        if stop:
            logging.info("early stopping after epoch %d", epoch)
        return stop

    def _saved_metrics_if_finished(self) -> Optional[Dict]:
        """metrics.json of a run this checkpoint already finished (all epochs, or stopped early,
        and tested), else ``None``: rerunning it must not train, test or rewrite anything."""
        path = os.path.join(self.model_dir, "metrics.json")
        if not self.manager.latest_checkpoint or not os.path.exists(path) or int(self.epoch_step.numpy()):
            return None
        epoch = int(self.epoch.numpy())
        if not (epoch >= self.cfg.train.epochs or self._out_of_patience()):
            return None
        try:
            with open(path) as fh:
                saved = json.load(fh)
        except (OSError, json.JSONDecodeError):
            return None  # unreadable: test again and rewrite it
        return saved if saved.get("epochs_run") == epoch else None

    @property
    def history_path(self) -> str:
        return os.path.join(self.model_dir, "history.json")

    def _load_history(self, t0: float) -> list:
        """The epochs a resumed run already finished (``[]`` when new).

        Starts the run's wall clock: this process counts from ``t0``, on top of the time
        those epochs took.
        """
        history = []
        if os.path.exists(self.history_path):
            with open(self.history_path) as fh:
                try:
                    history = json.load(fh)
                except json.JSONDecodeError as e:
                    raise DataError(self.history_path, f"not valid JSON ({e.msg}); move it aside to resume "
                                    "without the finished epochs' records", line=e.lineno) from None
        # Only the epochs the restored checkpoint includes (a save that failed after its record).
        history = [h for h in history if h.get("epoch", 0) <= int(self.epoch.numpy())]
        self._t0 = t0
        self._wall_before = float(history[-1].get("wall_seconds", 0.0)) if history else 0.0
        return history

    def _wall_seconds(self) -> float:
        """The run's wall time so far, summed over resumes."""
        return round(self._wall_before + time.time() - self._t0, 2)

    def _select_text_scale(self) -> Optional[Dict]:
        """``coco.text_scale_grid``: on the restored best checkpoint, multiply the text query's learnt
        ``a`` by each grid value, keep the one with the best validation NDCG@10 (the first on a tie,
        so a rerun on an already chosen ``a`` keeps it when the grid holds 1.0) and save it as the
        best checkpoint, so that the test and the export rank with it. ``None`` when off."""
        grid = [float(c) for c in self.cfg.coco.text_scale_grid]
        query = getattr(self.model, "text_query", None)
        if query is None or grid == [1.0] or not self.best_manager.latest_checkpoint:
            return None
        learnt = float(query.scale_parameter.numpy())
        learnt_a = float(query.scale)
        scores = []
        for c in grid:
            query.scale_parameter.assign(learnt * c)
            scores.append(self.evaluator.evaluate(self.split.valid)[SELECTION_METRIC])
        best = int(np.argmax(scores))
        query.scale_parameter.assign(learnt * grid[best])
        self.best_manager.save(checkpoint_number=int(self.best_manager.latest_checkpoint.rsplit("-", 1)[-1]))
        logging.info("coco.text_scale_grid: a %.3f x %s -> valid %s %s; kept x%s", learnt_a, grid,
                     SELECTION_METRIC, [round(v, 4) for v in scores], grid[best])
        return {"learnt_a": round(learnt_a, 4), "grid": grid, "multiplier": grid[best],
                "valid_" + SELECTION_METRIC: [round(v, 5) for v in scores]}

    def _finish(self, train_seconds: float, train_examples: int, history: list,
                extra: Optional[Dict] = None) -> Dict:
        """Tests the best checkpoint and writes ``metrics.json``; ``history``: every finished epoch's record."""
        if self.best_manager.latest_checkpoint:
            tf.train.Checkpoint(model=self.model).restore(self.best_manager.latest_checkpoint).expect_partial()
            best_epoch = int(self.best_manager.latest_checkpoint.rsplit("-", 1)[-1])
        else:
            best_epoch = int(self.epoch.numpy())
        extra = dict(extra or {})
        scale = self._select_text_scale()
        if scale is not None:
            extra["text_scale_selection"] = scale
        result = {
            "valid": self.evaluator.evaluate(self.split.valid),
            "test": self.evaluator.evaluate(self.split.test),
            "best_epoch": best_epoch,
            "epochs_run": int(self.epoch.numpy()),
            "examples_per_sec": round(train_examples / train_seconds, 1) if train_seconds else None,
            "train_seconds": round(sum(h.get("train_seconds", 0.0) for h in history), 2),
            "wall_seconds": self._wall_seconds(),
            "dataset": self.dataset.describe(),
            **extra,
        }
        write_json(os.path.join(self.model_dir, "metrics.json"), result, indent=2)
        return result
