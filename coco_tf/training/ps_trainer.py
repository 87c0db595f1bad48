"""Parameter-server trainer (``runtime.strategy=ps``): the chief's side.

Cluster (from ``TF_CONFIG``, see :mod:`coco_tf.training.tf_config`)::

    chief      this process: ClusterCoordinator.schedule / join, checkpoints, evaluation
    ps:0..P-1  variables; large ones (the item table) split across them by the partitioner
    worker:*   run the scheduled train steps on their own data shards
               (``python -m coco_tf.training.server``)

Same model code as :class:`coco_tf.training.trainer.Trainer` and the same
``model_dir`` layout (``config.yaml``, ``ckpt/``, ``best/``, ``history.json``,
``metrics.json``, ``tensorboard/``); the evaluation (:class:`Evaluator`) runs on
the chief between epochs and reads the variables from the PS tasks.

Decisions:

* **Variable partitioning.** ``runtime.ps_partitioner=min_size`` (default):
  ``MinSizePartitioner(partitioner_min_shard_bytes, max_shards=ps_shards or
  #PS)``, so the item table is split across the PS tasks while small dense
  weights stay whole; ``fixed``: ``FixedShardsPartitioner`` splits every
  variable. ``SequentialRetrievalModel.item_table()`` concatenates the shards.
* **Input sharding.** Under ``ParameterServerStrategy`` a per-worker
  ``dataset_fn`` is traced once on the chief and the ``InputContext`` it gets
  always says ``input_pipeline_id=0`` (there is one input pipeline per worker
  and nothing tells them apart). So each dataset creation takes a ticket from a
  counter variable on the PS (``assign_add``); worker ``k`` of the ``N``
  created together reads users ``ticket mod N``, ``+N``, … and shuffles them
  with its own seed, repeated forever. The chief schedules one epoch's worth of
  steps (as many batches as the single-node epoch) per epoch. A worker that
  dies and comes back gets a new ticket: until the run ends one shard may be
  read twice as often and another not at all (logged by the coordinator as a
  worker recovery); everything else stays exact.
* **Loss.** Per-example losses (``reduction=none``) averaged with
  ``tf.nn.compute_average_loss`` inside ``strategy.run`` (DESIGN §7), divided by
  the same constant per-position normaliser as ``Trainer`` (batch size × mean
  history length), so that every position weighs the same in both.
* **Optimizer.** :class:`LazyAdam`: the in_batch loss gives the item table a
  sparse gradient and only those rows are updated; the full-softmax loss's
  gradient is dense (the logits touch every row) and gets Adam's update.
* **Checkpoints.** The chief saves ``ckpt/ckpt-<step>`` at every epoch end and,
  with ``train.checkpoint_every_steps``, within epochs (after ``join()``, so the
  saved state is exactly ``step`` steps). A restarted chief restores the latest
  and continues from that step of that epoch. TF writes the ``checkpoint``
  index file only after the data files, so a kill during a save leaves the
  previous checkpoint as the latest.
* **Failures.** A worker that dies: the coordinator re-runs its steps on the
  other workers and keeps going. A PS that dies (or an unreachable cluster):
  :class:`ClusterFailure` with a message saying to relaunch, which resumes
  from the latest checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from typing import Dict, Optional

os.environ.setdefault("GRPC_FAIL_FAST", "use_caller")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
from absl import logging  # noqa: E402

from coco_tf.config import Config, dump_config  # noqa: E402
from coco_tf.data.loader import load_dataset  # noqa: E402
from coco_tf.data.pipeline import train_dataset, training_examples  # noqa: E402
from coco_tf.data.split import leave_one_out  # noqa: E402
from coco_tf.models.retrieval_model import build_model  # noqa: E402
from coco_tf.training.lazy_adam import LazyAdam  # noqa: E402
from coco_tf.training.trainer import (  # noqa: E402,F401
    SELECTION_METRIC,
    EpochEndMixin,
    Evaluator,
    count_batches,
    format_table,
)

_CLUSTER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError,
                   tf.errors.DeadlineExceededError, tf.errors.InternalError, tf.errors.NotFoundError)


class ClusterFailure(RuntimeError):
    """A parameter server (or the whole cluster) went away: relaunch to resume."""


def make_partitioner(cfg: Config, num_ps: int):
    shards = cfg.runtime.ps_shards or num_ps
    if cfg.runtime.ps_partitioner == "fixed":
        return tf.distribute.experimental.partitioners.FixedShardsPartitioner(shards)
    return tf.distribute.experimental.partitioners.MinSizePartitioner(
        min_shard_bytes=cfg.runtime.partitioner_min_shard_bytes, max_shards=shards
    )


def make_resolver(cluster_resolver=None):
    """The cluster resolver: ``TF_CONFIG`` (validated; this process must be the chief) unless given."""
    if cluster_resolver is None:
        from coco_tf.training.tf_config import TFConfigError, parse

        try:
            parse(os.environ.get("TF_CONFIG", ""))
        except TFConfigError as e:
            raise ClusterFailure(f"runtime.strategy=ps needs a valid TF_CONFIG: {e}") from None
        cluster_resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        if cluster_resolver.task_type != "chief":
            raise ClusterFailure(
                f"runtime.strategy=ps: this process is '{cluster_resolver.task_type}' in TF_CONFIG; only the chief "
                "runs coco_tf.train (ps and worker tasks run python -m coco_tf.training.server)"
            )
    return cluster_resolver


def make_strategy(cfg: Config, cluster_resolver=None) -> tf.distribute.experimental.ParameterServerStrategy:
    """``ParameterServerStrategy`` from ``TF_CONFIG`` (or the given resolver)."""
    cluster_resolver = make_resolver(cluster_resolver)
    num_ps = cluster_resolver.cluster_spec().num_tasks("ps")
    return tf.distribute.experimental.ParameterServerStrategy(
        cluster_resolver, variable_partitioner=make_partitioner(cfg, num_ps)
    )


def make_ps_optimizer(cfg: Config) -> LazyAdam:
    wd = cfg.train.weight_decay or None  # note: decoupled weight decay is dense (every row, every step)
    return LazyAdam(learning_rate=cfg.train.learning_rate, weight_decay=wd)


def make_train_fn(strategy, model, optimizer):
    """``fn(iterator, num_steps) -> mean loss``: ``num_steps`` train steps on one worker."""

    def replica_step(batch):
        with tf.GradientTape() as tape:
            per_example = model.per_example_loss(batch, training=True)
            # Same weighting as Trainer: a constant per-position normaliser when the model has one.
            norm = getattr(model, "loss_normalizer", None)
            # (compute_average_loss wants an integer batch size; this is its sum / (size * replicas).)
            if norm:
                loss = tf.reduce_sum(per_example) / (norm * strategy.num_replicas_in_sync)
            else:
                loss = tf.nn.compute_average_loss(per_example)
        variables = model.trainable_variables
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables))
        return loss

    @tf.function
    def train_fn(iterator, num_steps):
        total = tf.constant(0.0)
        for _ in tf.range(num_steps):
            loss = strategy.run(replica_step, args=(next(iterator),))
            total += strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
        return total / tf.cast(num_steps, tf.float32)

    return train_fn


def table_placement(model) -> list:
    """``[(shape, device), ...]`` of the item table's shards (one entry if unsharded)."""
    emb = model.item_embedding.embeddings
    parts = emb.variables if hasattr(emb, "variables") and isinstance(emb.variables, (list, tuple)) else [emb]
    return [(tuple(v.shape.as_list()), v.device) for v in parts]


def worker_steps_per_epoch(lengths: np.ndarray, num_workers: int, batch_size: int, max_len: int, bucket: bool) -> int:
    """Batches in one pass of every worker over its shard (worker k reads examples k::num_workers)."""
    return sum(count_batches(lengths[k::num_workers], batch_size, max_len, bucket) for k in range(num_workers))


class PSTrainer(EpochEndMixin):
    """Trains ``cfg`` under ParameterServerStrategy; :meth:`run` returns the metrics.json content."""

    def __init__(self, cfg: Config, dataset=None, cluster_resolver=None):
        self.cfg = cfg
        self.model_dir = cfg.runtime.model_dir
        os.makedirs(self.model_dir, exist_ok=True)
        keras.utils.set_random_seed(cfg.train.seed)
        resolver = make_resolver(cluster_resolver)
        spec = resolver.cluster_spec()
        self.strategy = make_strategy(cfg, resolver)
        self.num_workers = spec.num_tasks("worker")
        self.num_ps = spec.num_tasks("ps")
        self.coordinator = tf.distribute.experimental.coordinator.ClusterCoordinator(self.strategy)
        dump_config(cfg, os.path.join(self.model_dir, "config.yaml"))

        self.dataset = dataset if dataset is not None else load_dataset(cfg.data)
        logging.info("data: %s", self.dataset.describe())
        self.split = leave_one_out(self.dataset.sequences)
        with self.strategy.scope():
            self.model = build_model(cfg, self.dataset.num_items, attributes=self.dataset.attributes)
            self.optimizer = make_ps_optimizer(cfg)
            self._tickets = tf.Variable(0, dtype=tf.int64, trainable=False, name="input_shard_tickets")
            self._build()
        # Bookkeeping lives on the chief: it counts the steps it scheduled and saw finish.
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.epoch_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch_step")
        self.best_score = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_score")
        self.stale_evals = tf.Variable(0, dtype=tf.int64, trainable=False, name="stale_evals")
        self.checkpoint = tf.train.Checkpoint(
            model=self.model, optimizer=self.optimizer, epoch=self.epoch, best_score=self.best_score,
            stale_evals=self.stale_evals, step=self.step, epoch_step=self.epoch_step,
        )
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, os.path.join(self.model_dir, "ckpt"), max_to_keep=cfg.train.keep_checkpoints
        )
        self.best_manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(model=self.model, epoch=self.epoch), os.path.join(self.model_dir, "best"), max_to_keep=1
        )
        self.evaluator = Evaluator(self.model, cfg.eval.ks, cfg.data.max_len, cfg.eval.batch_size,
                                   cfg.eval.exclude_history)
        self._train_fn = make_train_fn(self.strategy, self.model, self.optimizer)
        self.writer = tf.summary.create_file_writer(os.path.join(self.model_dir, "tensorboard"))
        logging.info("item table shards: %s", table_placement(self.model))

    def _build(self):
        dummy = {"history": tf.ones([1, 2], tf.int64), "targets": tf.ones([1, 2], tf.int64)}
        self.model(dummy, training=False)
        self.optimizer.build(self.model.trainable_variables)

    def _dataset_fn(self):
        cfg, n, tickets = self.cfg, self.num_workers, self._tickets
        train = self.split.train

        def dataset_fn():
            ticket = tickets.assign_add(1, read_value=True) - 1
            index = ticket % n
            ds = train_dataset(train, cfg.data.max_len, cfg.train.batch_size, cfg.train.seed,
                               cfg.data.bucket_by_length, shard=(n, index))
            return ds.repeat()

        return dataset_fn

    # ------------------------------------------------------------------ loop

    def run(self) -> Dict:
        try:
            return self._run()
        except _CLUSTER_ERRORS as e:
            latest = self.manager.latest_checkpoint
            raise ClusterFailure(
                f"lost the cluster ({type(e).__name__}: {str(e).splitlines()[0][:300]}). A parameter server "
                f"probably died; worker failures are retried, PS failures are not. Relaunch the job with the same "
                f"model_dir to resume from {latest or 'the start (no checkpoint yet)'}."
            ) from None

    def _run(self) -> Dict:
        cfg = self.cfg
        t0 = time.time()
        if self.manager.latest_checkpoint:
            self.checkpoint.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
            logging.info("resumed from %s (epoch %d, step %d)", self.manager.latest_checkpoint,
                         int(self.epoch.numpy()), int(self.step.numpy()))
            print(f"resumed from {self.manager.latest_checkpoint}: epoch {int(self.epoch.numpy())}, "
                  f"step {int(self.step.numpy())}", flush=True)
        hist, _ = training_examples(self.split.train, cfg.data.max_len)
        lengths = np.array([len(h) for h in hist])
        # Every training position weighs the same, whichever batch it lands in (as in Trainer).
        self.model.loss_normalizer = float(cfg.train.batch_size * lengths.mean())
        # One epoch = every worker's shard once. Worker k reads users k::n and batches (and
        # buckets) them on its own, so its batches are counted on its shard: counting the whole
        # dataset in full batches would make an "epoch" cover only part of the data when small
        # shards leave many partial buckets.
        steps_per_epoch = worker_steps_per_epoch(
            lengths, self.num_workers, cfg.train.batch_size, cfg.data.max_len, cfg.data.bucket_by_length
        )
        spe = cfg.runtime.steps_per_execution
        every = cfg.train.checkpoint_every_steps or steps_per_epoch
        per_worker = self.coordinator.create_per_worker_dataset(self._dataset_fn())
        iterator = iter(per_worker)

        history_path = os.path.join(self.model_dir, "history.json")
        history = json.load(open(history_path)) if os.path.exists(history_path) else []
        train_seconds, train_examples = 0.0, 0
        while int(self.epoch.numpy()) < cfg.train.epochs:
            epoch = int(self.epoch.numpy()) + 1
            te = time.time()
            done = int(self.epoch_step.numpy())
            start = done
            loss_value = float("nan")
            while done < steps_per_epoch:
                chunk_end = min(steps_per_epoch, (done // every + 1) * every)
                losses = []
                while done < chunk_end:
                    n = min(spe, chunk_end - done)
                    losses.append(self.coordinator.schedule(self._train_fn, args=(iterator, tf.constant(n))))
                    done += n
                self.coordinator.join()
                loss_value = float(np.mean([r.fetch() for r in losses]))
                self.step.assign_add(chunk_end - int(self.epoch_step.numpy()))
                self.epoch_step.assign(chunk_end)
                step = int(self.step.numpy())
                with self.writer.as_default():
                    tf.summary.scalar("train/loss", loss_value, step=step)
                if cfg.runtime.progress:
                    print(f"epoch {epoch}/{cfg.train.epochs} step {chunk_end}/{steps_per_epoch} "
                          f"(global {step}) loss {loss_value:.4f}", flush=True)
                if chunk_end < steps_per_epoch:
                    self.manager.save(checkpoint_number=step)
            train_seconds += time.time() - te
            train_examples += int(round(len(lengths) * (steps_per_epoch - start) / steps_per_epoch))
            self.epoch.assign(epoch)
            self.epoch_step.assign(0)
            record = {"epoch": epoch, "loss": loss_value, "train_seconds": round(time.time() - te, 2),
                      "step": int(self.step.numpy())}
            step = int(self.step.numpy())
            if self._end_epoch(epoch, step, record, history, history_path, checkpoint_number=step):
                break
        return self._finish(t0, train_seconds, train_examples)

    def _finish(self, t0: float, train_seconds: float, train_examples: int) -> Dict:
        cluster = {"ps": self.num_ps, "workers": self.num_workers,
                   "item_table_shards": [{"shape": list(s), "device": d} for s, d in table_placement(self.model)]}
        return super()._finish(t0, train_seconds, train_examples,
                               extra={"steps": int(self.step.numpy()), "cluster": cluster})
