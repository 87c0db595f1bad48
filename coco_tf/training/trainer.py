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
that already finished is left as it is (:attr:`Trainer.already_finished`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from typing import Dict, Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras
from absl import logging

from coco_tf.config import Config, ConfigError, dump_config, load_config
from coco_tf.data.errors import DataError
from coco_tf.data.loader import load_dataset
from coco_tf.data.pipeline import eval_dataset, train_dataset, training_examples
from coco_tf.data.split import EvalSet, leave_one_out, training_item_mask
from coco_tf.metrics.ranking import RankingMetrics, target_ranks
from coco_tf.methods.retrieval_model import build_model, needs_llm_assets

SELECTION_METRIC = "ndcg@10"


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


@contextlib.contextmanager
def generator_rng():
    """Keras layers made inside draw their random numbers from a ``tf.random.Generator`` (state in
    a variable, so it can be checkpointed) instead of stateful random ops; the flag is global in
    Keras and is put back afterwards."""
    was = keras.backend.experimental.is_tf_random_generator_enabled()
    keras.backend.experimental.enable_tf_random_generator()
    try:
        yield
    finally:
        if not was:
            keras.backend.experimental.disable_tf_random_generator()


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
        if cfg.llm.text_table_shuffle:
            llm_assets.item_text_table = shuffle_item_rows(llm_assets.item_text_table)
            logging.info("llm.text_table_shuffle: item text table rows permuted across items (control run)")
    seen = None
    if cfg.model.item_text:
        seen = training_item_mask(split.train, dataset.num_items)
        logging.info("model.item_text: %d catalog items never occur in training (scored by text)",
                     dataset.num_items - int(seen[1:].sum()))
    return {"llm_assets": llm_assets, "seen_items": seen, "attributes": dataset.attributes}


def shuffle_item_rows(table: np.ndarray, seed: int = 0) -> np.ndarray:
    """``table`` ``[num_items + 1, d]`` with rows 1.. permuted (fixed ``seed``; row 0, padding, kept):
    every item carries another item's text vector, and the table's statistics are unchanged."""
    perm = np.random.default_rng(seed).permutation(np.arange(1, table.shape[0]))
    return np.concatenate([table[:1], table[perm]], axis=0)


def base_stage_epochs(cfg: Config) -> int:
    """Epochs of the kar/coco base stage: ``coco.base_epochs``, at most half of ``train.epochs``;
    0 for ``base``, with ``coco.init_from`` (a trained backbone), or when switched off."""
    if cfg.coco.method == "base" or cfg.coco.init_from:
        return 0
    return min(cfg.coco.base_epochs, cfg.train.epochs // 2)


# What must agree between this run and the run that coco.init_from names (the backbone and item table).
WARM_START_KEYS = ("data.max_len", "model.backbone", "model.embedding_dim", "model.num_blocks", "model.num_heads",
                   "model.ffn_dim", "model.item_text", "model.attributes", "llm.preset", "llm.checkpoint")


def warm_start(model, cfg: Config) -> str:
    """Restores ``coco.init_from``'s best checkpoint (else its latest) into ``model``: every variable
    the two models share by name (the backbone, the item table, ``model.item_text``'s projection).
    Returns the checkpoint path; raises ConfigError naming the mismatch when the runs disagree."""
    run_dir = cfg.coco.init_from
    theirs_path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(theirs_path):
        raise ConfigError(f"config key 'coco.init_from': {run_dir!r} is not a run directory (no config.yaml)")
    theirs = load_config(theirs_path)
    for key in WARM_START_KEYS:
        section, name = key.split(".")
        mine, other = getattr(getattr(cfg, section), name), getattr(getattr(theirs, section), name)
        if key in ("model.attributes",) and cfg.model.backbone not in ("fdsa", "s3rec"):
            continue
        if key.startswith("llm.") and not cfg.model.item_text:
            continue
        if mine != other:
            raise ConfigError(f"config key 'coco.init_from': {key} is {other!r} in {theirs_path} but {mine!r} "
                              "here; the backbone must have the same shape")
    path = (tf.train.latest_checkpoint(os.path.join(run_dir, "best"))
            or tf.train.latest_checkpoint(os.path.join(run_dir, "ckpt")))
    if not path:
        raise ConfigError(f"config key 'coco.init_from': {run_dir!r} holds no checkpoint (best/ or ckpt/)")
    shapes = dict(tf.train.list_variables(path))
    table_key = "model/item_embedding/embeddings/.ATTRIBUTES/VARIABLE_VALUE"
    want = [model.num_items + 1, model.embedding_dim]
    if table_key in shapes and list(shapes[table_key]) != want:
        raise ConfigError(f"config key 'coco.init_from': {path} has an item table of {shapes[table_key][0] - 1} "
                          f"items, this catalog has {model.num_items}")
    tf.train.Checkpoint(model=model).restore(path).expect_partial()
    return path


def apply_gradients(optimizer, grads, variables) -> None:
    """Variables outside this objective (S3Rec's pre-training heads while fine-tuning, a
    [MASK] embedding, a frozen codebook) have no gradient: skipped quietly."""
    optimizer.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])


def train_step(model, optimizer, batch, num_replicas: int = 1, base_only: bool = False):
    """One optimizer step on ``batch``, for both trainers: ``(loss, telemetry)``.

    ``base_only`` (kar/coco base stage): the backbone's own objective
    (``base_loss_and_metrics``); the LLM branch's variables get no gradient.

    Models with telemetry (kar, coco: ``compute_loss_and_metrics``) give every loss
    term and their diagnostics as ``{name: scalar}``; the others ``{}``. The loss
    is divided by ``num_replicas`` (replicas in sync under a strategy, whose
    gradients are summed): with the model's per-position ``loss_normalizer`` (or
    its batch mean) that equals ``tf.nn.compute_average_loss`` for the base model.
    """
    with tf.GradientTape() as tape:
        if base_only:
            loss, telemetry = model.base_loss_and_metrics(batch, training=True)
        elif hasattr(model, "compute_loss_and_metrics"):
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
        patience = cfg.train.early_stopping_patience
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
        restored, the LLM branch joins, and the full model's validation at that point goes into
        ``record["branch_joins"]`` (with ``coco.zero_init`` it equals the best base epoch's)."""
        cfg = self.cfg
        if not self.in_base_stage():
            return
        if epoch < self.base_stage and int(self.stale_evals.numpy()) < cfg.coco.base_patience:
            return
        best = self.best_manager.latest_checkpoint
        if best:
            tf.train.Checkpoint(model=self.model).restore(best).expect_partial()
        self.branch_joined.assign(True)
        self.stale_evals.assign(0)
        valid = self.evaluator.evaluate(self.split.valid)
        record["branch_joins"] = {"from_epoch": int(best.rsplit("-", 1)[-1]) if best else epoch, "valid": valid}
        logging.info("the LLM branch joins after epoch %d: %s", epoch, record["branch_joins"])
        if cfg.runtime.progress:
            print(f"  base stage done; the LLM branch joins from epoch {record['branch_joins']['from_epoch']} "
                  f"(valid ndcg@10={valid[SELECTION_METRIC]:.4f})", flush=True)

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
        if stop:
            logging.info("early stopping after epoch %d", epoch)
        return stop

    def _saved_metrics_if_finished(self) -> Optional[Dict]:
        """metrics.json of a run this checkpoint already finished (all epochs, or stopped early,
        and tested), else ``None``: rerunning it must not train, test or rewrite anything."""
        path = os.path.join(self.model_dir, "metrics.json")
        if not self.manager.latest_checkpoint or not os.path.exists(path) or int(self.epoch_step.numpy()):
            return None
        epoch, patience = int(self.epoch.numpy()), self.cfg.train.early_stopping_patience
        if not (epoch >= self.cfg.train.epochs or (patience > 0 and int(self.stale_evals.numpy()) >= patience)):
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
        if cfg.runtime.deterministic:
            tf.config.experimental.enable_op_determinism()
        dump_config(cfg, os.path.join(self.model_dir, "config.yaml"))

        self.dataset, self.split = load_and_split(cfg, dataset)
        inputs = model_inputs(cfg, self.dataset, self.split, self.model_dir)
        self.llm_assets = inputs["llm_assets"]
        # Dropout layers built here draw from a tf.random.Generator each (seeded from train.seed),
        # whose state goes into every checkpoint (``_build``): a resumed run draws the masks the
        # uninterrupted one would have drawn. (Only for this model: the flag is global in Keras.)
        with generator_rng():
            self.model = build_model(cfg, self.dataset.num_items, **inputs)
        self.optimizer = make_optimizer(cfg)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.best_score = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_score")
        self.stale_evals = tf.Variable(0, dtype=tf.int64, trainable=False, name="stale_evals")
        self.base_stage = base_stage_epochs(cfg)
        self.branch_joined = tf.Variable(self.base_stage == 0, trainable=False, name="branch_joined")
        # A checkpoint within an epoch (train.checkpoint_every_steps): the steps of the epoch done
        # and, as JSON, their loss / telemetry sums, so the epoch's means cover all its steps.
        self.epoch_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch_step")
        self.epoch_partial = tf.Variable("", dtype=tf.string, trainable=False, name="epoch_partial")
        self.already_finished = False
        self.checkpoint = tf.train.Checkpoint(
            model=self.model,
            optimizer=self.optimizer,
            epoch=self.epoch,
            best_score=self.best_score,
            stale_evals=self.stale_evals,
            branch_joined=self.branch_joined,
            epoch_step=self.epoch_step,
            epoch_partial=self.epoch_partial,
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
        self._base_train_step = tf.function(lambda batch: train_step(self.model, self.optimizer, batch,
                                                                     base_only=True), input_signature=[spec])
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
        with generator_rng():  # layers that make their dropout at the first call (attention)
            self.model(dummy, training=False)
        self.optimizer.build(self.model.trainable_variables)
        del dummy
        # Keras leaves the dropout layers' generators out of checkpoints; this one holds them
        # (in the model's submodule order, the same in every process building this config).
        self.checkpoint.dropout_rng = [
            m._random_generator._generator for m in self.model.submodules
            if getattr(getattr(m, "_random_generator", None), "_generator", None) is not None
        ]

    def _restore(self, path: str) -> None:
        """Restores the latest checkpoint; one written before exact resume (no ``epoch_step``, no
        random state) still restores its weights, optimizer and epoch, with a warning."""
        names = {name.split("/")[0] for name, _ in tf.train.list_variables(path)}
        if "epoch_step" in names:
            self.checkpoint.restore(path).assert_existing_objects_matched()
            return
        logging.warning("%s predates exact resume: resuming after its epoch with fresh dropout random state "
                        "(the run will not match an uninterrupted one exactly)", path)
        old = {"model": self.model, "optimizer": self.optimizer, "epoch": self.epoch, "best_score": self.best_score,
               "stale_evals": self.stale_evals, "branch_joined": getattr(self, "branch_joined", None)}
        tf.train.Checkpoint(**{k: v for k, v in old.items() if k in names and v is not None}).restore(
            path).assert_existing_objects_matched()

    # ------------------------------------------------------------------ loop

    def run(self) -> Dict:
        cfg = self.cfg
        t0 = time.time()
        self._build()
        if self.manager.latest_checkpoint:
            self._restore(self.manager.latest_checkpoint)
            logging.info("resumed from %s (epoch %d, step %d of the next)", self.manager.latest_checkpoint,
                         int(self.epoch.numpy()), int(self.epoch_step.numpy()))
            saved = self._saved_metrics_if_finished()
            if saved is not None:
                self.already_finished = True
                return saved
        else:
            self._start_run()

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
        every = cfg.train.checkpoint_every_steps
        while int(self.epoch.numpy()) < cfg.train.epochs:
            epoch = int(self.epoch.numpy()) + 1
            # The bar shows the epoch's running mean loss (Progbar averages non-stateful metrics).
            bar = keras.utils.Progbar(steps_per_epoch, verbose=1 if cfg.runtime.progress else 0)
            if cfg.runtime.progress:
                print(f"Epoch {epoch}/{cfg.train.epochs}")
            te = time.time()
            start = int(self.epoch_step.numpy())  # > 0: resumed from a checkpoint within this epoch
            partial = json.loads(self.epoch_partial.numpy().decode() or "{}") if start else {}
            loss_sum, telemetry_sum = partial.get("loss_sum", 0.0), partial.get("telemetry_sum", {})
            telemetry_steps, seconds_before = start, partial.get("train_seconds", 0.0)
            step_fn = self._base_train_step if self.in_base_stage() else self._train_step
            epoch_ds = train_dataset(self.split.train, cfg.data.max_len, cfg.train.batch_size, cfg.train.seed,
                                     cfg.data.bucket_by_length, epoch=epoch)
            for i, batch in enumerate(epoch_ds.skip(start) if start else epoch_ds, start=start):
                out, telemetry = step_fn(batch)
                telemetry = {k: float(v) for k, v in telemetry.items()}
                for k, v in telemetry.items():
                    telemetry_sum[k] = telemetry_sum.get(k, 0.0) + v
                telemetry_steps += 1
                loss_value = float(out)
                loss_sum += loss_value
                step += 1
                if step % 50 == 0:
                    with self.writer.as_default():
                        tf.summary.scalar("train/loss", loss_value, step=step)
                        for k, v in telemetry.items():
                            tf.summary.scalar(f"train/{k}", v, step=step)
                bar.update(i + 1, [("loss", loss_value)])
                if every and (i + 1) % every == 0 and i + 1 < steps_per_epoch:
                    self.epoch_step.assign(i + 1)
                    self.epoch_partial.assign(json.dumps({
                        "loss_sum": loss_sum, "telemetry_sum": telemetry_sum,
                        "train_seconds": seconds_before + time.time() - te}))
                    self.manager.save(checkpoint_number=step)
            train_seconds += time.time() - te
            train_examples += int(round(len(lengths) * (steps_per_epoch - start) / steps_per_epoch))
            self.epoch.assign(epoch)
            self.epoch_step.assign(0)
            self.epoch_partial.assign("")
            record = {"epoch": epoch, "loss": round(loss_sum / max(telemetry_steps, 1), 6),
                      "train_seconds": round(seconds_before + time.time() - te, 2)}
            self._add_telemetry(record, telemetry_sum, telemetry_steps, step)
            # With checkpoints within epochs they are numbered by step (as in the PS trainer).
            if self._end_epoch(epoch, step, record, history, checkpoint_number=step if every else epoch):
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
