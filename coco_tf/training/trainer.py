"""Single-process trainer: epochs, validation, best-checkpoint test, resume.

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
    history.json     one record per finished epoch (loss, train_seconds, telemetry, validation,
                     wall_seconds: the run's wall time so far, summed over resumes)

``train_seconds`` and ``wall_seconds`` in ``metrics.json`` cover the whole run, summed
over every process that resumed it (the unfinished epoch of a killed process is not
counted); ``examples_per_sec`` is the last process's own training throughput.

An interrupted run started again with the same ``model_dir`` resumes after its
last finished epoch.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Dict, Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras
from absl import logging

from coco_tf.config import Config, dump_config
from coco_tf.data.errors import DataError
from coco_tf.data.loader import load_dataset
from coco_tf.data.pipeline import eval_dataset, train_dataset, training_examples
from coco_tf.data.split import EvalSet, leave_one_out, training_item_mask
from coco_tf.metrics.ranking import RankingMetrics, target_ranks
from coco_tf.models.retrieval_model import build_model, needs_llm_assets

SELECTION_METRIC = "ndcg@10"


def write_json(path: str, obj, indent: int) -> None:
    """Writes ``obj`` to ``path`` through a temporary file and a rename, so a run killed mid-write
    leaves the previous, readable file (a resume reads history.json; the grid reads metrics.json)."""
    with open(path + ".tmp", "w") as fh:
        json.dump(obj, fh, indent=indent)
    os.replace(path + ".tmp", path)


def make_optimizer(cfg: Config) -> keras.optimizers.Optimizer:
    if cfg.train.weight_decay > 0:
        return keras.optimizers.AdamW(learning_rate=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay)
    return keras.optimizers.Adam(learning_rate=cfg.train.learning_rate)


def count_batches(lengths: np.ndarray, batch_size: int, max_len: int, bucket: bool) -> int:
    """Batches per epoch of :func:`train_dataset` (for the progress bar)."""
    if not bucket:
        return int(math.ceil(len(lengths) / batch_size))
    boundaries = [b for b in (3, 5, 8, 12, 20, 30, 40) if b < max_len]
    bucket_ids = np.searchsorted(boundaries, lengths, side="right")
    return int(sum(math.ceil(c / batch_size) for c in np.bincount(bucket_ids) if c))


def load_and_split(cfg: Config, dataset=None):
    """``(dataset, leave-one-out split)`` for both trainers, logging what the data lost:
    skipped input lines and users too short to evaluate (never silently)."""
    dataset = dataset if dataset is not None else load_dataset(cfg.data)
    logging.info("data: %s", dataset.describe())
    if dataset.skipped.total:
        logging.warning(dataset.skipped.summary())
    split = leave_one_out(dataset.sequences)
    if split.train_only_users:
        logging.warning("%d users have fewer than 3 items: used for training only, not evaluated",
                        split.train_only_users)
    return dataset, split


def model_inputs(cfg: Config, dataset, split, model_dir: str) -> Dict:
    """``build_model``'s keyword arguments besides ``cfg`` and ``num_items``, for both trainers.

    kar / coco / ``model.item_text``: the frozen base decoder (pretrained first on the
    catalog text when ``llm.pretrain_epochs > 0``) encodes the item texts once (cached on disk, ``llm.cache_dir`` or ``<model_dir>/cache``) and the
    prompt texts (:func:`coco_tf.llm.assets.build_llm_assets`); the model's decoder
    starts from its weights. ``model.item_text``: ``seen_items``, the training
    split's items (the others are cold, scored by their text). Everything here is
    numpy: the parameter-server trainer builds it on the chief before
    ``strategy.scope()`` and creates the variables from it inside.
    """
    llm_assets = None
    if needs_llm_assets(cfg):
        from coco_tf.llm.assets import build_llm_assets

        llm_assets = build_llm_assets(cfg, dataset, cfg.llm.cache_dir or os.path.join(model_dir, "cache"))
    seen = None
    if cfg.model.item_text:
        seen = training_item_mask(split.train, dataset.num_items)
        logging.info("model.item_text: %d catalog items never occur in training (scored by text)",
                     dataset.num_items - int(seen[1:].sum()))
    return {"llm_assets": llm_assets, "seen_items": seen, "attributes": dataset.attributes}


def apply_gradients(optimizer, grads, variables) -> None:
    """Variables outside this objective (S3Rec's pre-training heads while fine-tuning, a
    [MASK] embedding, a frozen codebook) have no gradient: skipped quietly."""
    optimizer.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])


def train_step(model, optimizer, batch, num_replicas: int = 1):
    """One optimizer step on ``batch``, for both trainers: ``(loss, telemetry)``.

    Models with telemetry (kar, coco: ``compute_loss_and_metrics``) give every loss
    term and their diagnostics as ``{name: scalar}``; the others ``{}``. The loss
    is divided by ``num_replicas`` (replicas in sync under a strategy, whose
    gradients are summed): with the model's per-position ``loss_normalizer`` (or
    its batch mean) that equals ``tf.nn.compute_average_loss`` for the base model.
    """
    with tf.GradientTape() as tape:
        if hasattr(model, "compute_loss_and_metrics"):
            loss, telemetry = model.compute_loss_and_metrics(batch, training=True)
        else:
            loss, telemetry = model.compute_loss(batch, training=True), {}
        if num_replicas != 1:
            loss = loss / num_replicas
    variables = model.trainable_variables
    apply_gradients(optimizer, tape.gradient(loss, variables), variables)
    return loss, telemetry


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
        self._datasets = {}  # id(EvalSet) -> (EvalSet, dataset); the set is kept so its id stays unique

    def _ranks(self, batch):
        user = self.model({"history": batch["history"]}, training=False)
        scores = self.model.score_all(user)
        history = batch["history"] if self.exclude_history else None
        return target_ranks(scores, batch["target"], history)

    def evaluate(self, eval_set: EvalSet) -> Dict[str, float]:
        metrics = RankingMetrics(self.ks)
        key = id(eval_set)
        if key not in self._datasets:  # padded once per split, not at every validation
            self._datasets[key] = (eval_set, eval_dataset(eval_set, self.max_len, self.batch_size))
        for batch in self._datasets[key][1]:
            metrics.update(self._step(batch).numpy())
        return metrics.result()


class EpochEndMixin:
    """Validation, best checkpoint, early stopping and metrics.json, shared by both trainers.

    Needs ``cfg``, ``model``, ``dataset``, ``split``, ``evaluator``, ``writer``, ``epoch``,
    ``best_score``, ``stale_evals``, ``manager``, ``best_manager`` and ``model_dir``.
    """

    def _validate(self, epoch: int, step: int, record: Dict) -> bool:
        """Validates if due; saves the best model; returns whether to stop early."""
        cfg = self.cfg
        if not (epoch % cfg.train.eval_every == 0 or epoch == cfg.train.epochs):
            return False
        valid = self.evaluator.evaluate(self.split.valid)
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
        patience = cfg.train.early_stopping_patience
        return patience > 0 and int(self.stale_evals.numpy()) >= patience

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
        stop = self._validate(epoch, step, record)
        record["wall_seconds"] = self._wall_seconds()
        history.append(record)
        self.manager.save(checkpoint_number=checkpoint_number)
        write_json(self.history_path, history, indent=1)
        self.writer.flush()
        if stop:
            logging.info("early stopping after epoch %d", epoch)
        return stop

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
        self._t0 = t0
        self._wall_before = float(history[-1].get("wall_seconds", 0.0)) if history else 0.0
        return history

    def _wall_seconds(self) -> float:
        """The run's wall time so far, summed over resumes."""
        return round(self._wall_before + time.time() - self._t0, 2)

    def _finish(self, train_seconds: float, train_examples: int, history: list,
                extra: Optional[Dict] = None) -> Dict:
        """Tests the best checkpoint and writes ``metrics.json``; ``history``: every finished epoch's record."""
        if self.best_manager.latest_checkpoint:
            tf.train.Checkpoint(model=self.model).restore(self.best_manager.latest_checkpoint).expect_partial()
            best_epoch = int(self.best_manager.latest_checkpoint.rsplit("-", 1)[-1])
        else:
            best_epoch = int(self.epoch.numpy())
        result = {
            "valid": self.evaluator.evaluate(self.split.valid),
            "test": self.evaluator.evaluate(self.split.test),
            "best_epoch": best_epoch,
            "epochs_run": int(self.epoch.numpy()),
            "examples_per_sec": round(train_examples / train_seconds, 1) if train_seconds else None,
            "train_seconds": round(sum(h.get("train_seconds", 0.0) for h in history), 2),
            "wall_seconds": self._wall_seconds(),
            "dataset": self.dataset.describe(),
            **(extra or {}),
        }
        write_json(os.path.join(self.model_dir, "metrics.json"), result, indent=2)
        return result


class Trainer(EpochEndMixin):
    """Trains ``cfg`` end to end; :meth:`run` returns the metrics.json content."""

    def __init__(self, cfg: Config, dataset=None):
        self.cfg = cfg
        self.model_dir = cfg.runtime.model_dir
        os.makedirs(self.model_dir, exist_ok=True)
        if cfg.runtime.threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(cfg.runtime.threads)
            except RuntimeError:  # already initialised in this process
                pass
        keras.utils.set_random_seed(cfg.train.seed)
        dump_config(cfg, os.path.join(self.model_dir, "config.yaml"))

        self.dataset, self.split = load_and_split(cfg, dataset)
        inputs = model_inputs(cfg, self.dataset, self.split, self.model_dir)
        self.llm_assets = inputs["llm_assets"]
        self.model = build_model(cfg, self.dataset.num_items, **inputs)
        self.optimizer = make_optimizer(cfg)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.best_score = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_score")
        self.stale_evals = tf.Variable(0, dtype=tf.int64, trainable=False, name="stale_evals")
        self.checkpoint = tf.train.Checkpoint(
            model=self.model,
            optimizer=self.optimizer,
            epoch=self.epoch,
            best_score=self.best_score,
            stale_evals=self.stale_evals,
        )
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, os.path.join(self.model_dir, "ckpt"), max_to_keep=cfg.train.keep_checkpoints
        )
        self.best_manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(model=self.model, epoch=self.epoch), os.path.join(self.model_dir, "best"), max_to_keep=1
        )
        self.evaluator = Evaluator(
            self.model, cfg.eval.ks, cfg.data.max_len, cfg.eval.batch_size, cfg.eval.exclude_history
        )
        spec = {
            "history": tf.TensorSpec([None, None], tf.int64),
            "targets": tf.TensorSpec([None, None], tf.int64),
        }
        # Models with telemetry (kar, coco) report {name: scalar} per step (train_step).
        self._train_step = tf.function(lambda batch: train_step(self.model, self.optimizer, batch),
                                       input_signature=[spec])
        self.writer = tf.summary.create_file_writer(os.path.join(self.model_dir, "tensorboard"))

    # ------------------------------------------------------------------ steps

    def pretrain(self, ds, steps_per_epoch: int) -> list:
        """The backbone's self-supervised stage (S3Rec), before fine-tuning.

        Runs ``backbone.pretrain_epochs`` epochs of ``backbone.pretrain_losses``
        with its own Adam (``train.learning_rate``) on the training sequences;
        logs every loss (TensorBoard ``pretrain/<name>``, ``pretrain.json``).
        Skipped for backbones without one and when resuming from a checkpoint.
        """
        backbone = self.model.backbone
        epochs = int(getattr(backbone, "pretrain_epochs", 0) or 0)
        if not epochs or not hasattr(backbone, "pretrain_losses"):
            return []
        cfg = self.cfg
        optimizer = keras.optimizers.Adam(learning_rate=cfg.train.learning_rate)
        variables = backbone.trainable_variables
        optimizer.build(variables)
        spec = {"history": tf.TensorSpec([None, None], tf.int64), "targets": tf.TensorSpec([None, None], tf.int64)}

        @tf.function(input_signature=[spec])
        def step(batch):
            with tf.GradientTape() as tape:
                losses = backbone.pretrain_losses(batch, training=True)
            apply_gradients(optimizer, tape.gradient(losses["total"], variables), variables)
            return losses

        records = []
        for epoch in range(1, epochs + 1):
            bar = keras.utils.Progbar(steps_per_epoch, verbose=1 if cfg.runtime.progress else 0)
            if cfg.runtime.progress:
                print(f"Pre-train epoch {epoch}/{epochs}")
            sums, n, te = {}, 0, time.time()
            for i, batch in enumerate(ds):
                losses = {k: float(v) for k, v in step(batch).items()}
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + v
                n += 1
                bar.update(i + 1, [("loss", losses["total"])])
            record = {"epoch": epoch, **{k: round(v / max(n, 1), 6) for k, v in sums.items()},
                      "seconds": round(time.time() - te, 2)}
            records.append(record)
            logging.info("pre-train epoch %d: %s", epoch, record)
            with self.writer.as_default():
                for k in sums:
                    tf.summary.scalar(f"pretrain/{k}", record[k], step=epoch)
        self.writer.flush()
        write_json(os.path.join(self.model_dir, "pretrain.json"), records, indent=1)
        return records

    def _build(self):
        """Creates model and optimizer variables so that a checkpoint can restore into them."""
        dummy = {"history": tf.ones([1, 2], tf.int64), "targets": tf.ones([1, 2], tf.int64)}
        self.model(dummy, training=False)
        self.optimizer.build(self.model.trainable_variables)
        del dummy

    # ------------------------------------------------------------------ loop

    def run(self) -> Dict:
        cfg = self.cfg
        t0 = time.time()
        self._build()
        if self.manager.latest_checkpoint:
            self.checkpoint.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
            logging.info("resumed from %s (epoch %d)", self.manager.latest_checkpoint, int(self.epoch.numpy()))

        ds = train_dataset(
            self.split.train, cfg.data.max_len, cfg.train.batch_size, cfg.train.seed, cfg.data.bucket_by_length
        )
        hist, _ = training_examples(self.split.train, cfg.data.max_len)
        lengths = np.array([len(h) for h in hist])
        # Every training position weighs the same, whichever batch it lands in.
        self.model.loss_normalizer = float(cfg.train.batch_size * lengths.mean())
        steps_per_epoch = count_batches(lengths, cfg.train.batch_size, cfg.data.max_len, cfg.data.bucket_by_length)
        history = self._load_history(t0)
        if not self.manager.latest_checkpoint:
            self.pretrain(ds, steps_per_epoch)

        train_seconds, train_examples = 0.0, 0
        step = int(self.optimizer.iterations.numpy())
        while int(self.epoch.numpy()) < cfg.train.epochs:
            epoch = int(self.epoch.numpy()) + 1
            bar = keras.utils.Progbar(steps_per_epoch, stateful_metrics=["loss"], verbose=1 if cfg.runtime.progress else 0)
            if cfg.runtime.progress:
                print(f"Epoch {epoch}/{cfg.train.epochs}")
            te = time.time()
            telemetry_sum, telemetry_steps = {}, 0
            for i, batch in enumerate(ds):
                out, telemetry = self._train_step(batch)
                telemetry = {k: float(v) for k, v in telemetry.items()}
                for k, v in telemetry.items():
                    telemetry_sum[k] = telemetry_sum.get(k, 0.0) + v
                telemetry_steps += 1
                loss_value = float(out)
                step += 1
                if step % 50 == 0:
                    with self.writer.as_default():
                        tf.summary.scalar("train/loss", loss_value, step=step)
                        for k, v in telemetry.items():
                            tf.summary.scalar(f"train/{k}", v, step=step)
                bar.update(i + 1, [("loss", loss_value)])
            train_seconds += time.time() - te
            train_examples += len(lengths)
            self.epoch.assign(epoch)
            record = {"epoch": epoch, "loss": loss_value, "train_seconds": round(time.time() - te, 2)}
            self._add_telemetry(record, telemetry_sum, telemetry_steps, step)
            if self._end_epoch(epoch, step, record, history, checkpoint_number=epoch):
                break

        return self._finish(train_seconds, train_examples, history)


def format_table(result: Dict) -> str:
    """The metrics table the CLI prints."""
    keys = list(result["test"])
    ks = sorted({int(k.split("@")[1]) for k in keys})
    head = "| split | " + " | ".join(f"R@{k} | N@{k}" for k in ks) + " |"
    rule = "|---|" + "---|---|" * len(ks)
    rows = [head, rule]
    for split in ("valid", "test"):
        m = result[split]
        rows.append(f"| {split} | " + " | ".join(f"{m[f'recall@{k}']:.4f} | {m[f'ndcg@{k}']:.4f}" for k in ks) + " |")
    return "\n".join(rows)
