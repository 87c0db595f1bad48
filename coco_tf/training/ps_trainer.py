"""Parameter-server trainer (``runtime.strategy=ps``): the chief's side.

Cluster (from ``TF_CONFIG``, see :mod:`coco_tf.training.tf_config`)::

    chief      this process: ClusterCoordinator.schedule / join, checkpoints, evaluation
    ps:0..P-1  variables; large ones (the item table) split across them by the partitioner
    worker:*   run the scheduled train steps on their own data shards
               (``python -m coco_tf.training.server``)

Same setup as :class:`coco_tf.training.trainer.Trainer` (:class:`~coco_tf.training.base.TrainerBase`:
every ``coco.method``: base, kar, coco with each ablation, fusion and selection rule;
``model.item_text``), the same train step (:func:`~coco_tf.training.step.train_step`) and the same
``model_dir`` layout (``config.yaml``, ``ckpt/``, ``best/``, ``cache/``,
``history.json``, ``metrics.json``, ``tensorboard/``); the evaluation
(:class:`Evaluator`) runs on the chief between epochs and reads the variables from
the PS tasks.

Decisions:

* **LLM-augmented models.** :func:`~coco_tf.training.inputs.model_inputs` (shared
  with ``Trainer``) builds the numpy inputs on the chief before ``strategy.scope()``:
  the item text table (encoded once by the frozen base decoder, cached in
  ``cache/``), the base decoder weights, the codebook / shared-prompt / KAR prompt
  encodings and the training-item mask. ``build_model`` then runs inside the scope,
  so every variable made from them — the decoder and its LoRA factors, the
  codebook, the frozen item text table (non-trainable; split across the PS tasks
  by the partitioner like the item table) and the seen-item mask — lives on the
  PS tasks. Nothing assigns a variable inside ``call`` (the VQ codebook learns by
  gradients; ``merge_lora`` runs only at export), so asynchronous updates from the
  workers are safe. The contradiction decision (eq. 8) and the gradient mask
  (eq. 9) are ops of the step function and run unchanged on the workers: with M
  forced to 1 for every example, LoRA's B factors stay exactly zero after a PS
  epoch; with the real decision they move.
* **Telemetry.** The scheduled function returns one float32 vector: the sums over
  its ``steps_per_execution`` steps of the loss and, for kar / coco, of every
  telemetry scalar of ``compute_loss_and_metrics`` (loss terms, ``coco/m1_fraction``,
  ``coco/mean_selected``, codebook perplexity / unused, ...; names found by one
  eager forward pass at build time). After ``join()`` the chief fetches one tensor
  per scheduled function, logs the chunk means to TensorBoard ``train/<name>`` and
  the epoch means to ``history.json`` (``telemetry``) and ``train_epoch/<name>``,
  as ``Trainer`` does.

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
* **Loss.** The model's own loss (``compute_loss_and_metrics``; per-example losses with
  ``reduction=none``, docs/design.md §7) with the same constant per-position normaliser as
  ``Trainer`` (its ``loss_normalizer`` constructor argument: batch size × mean history length), so that every position weighs the same in both,
  divided by the replicas in sync inside ``strategy.run`` (for the base model this
  is ``tf.nn.compute_average_loss`` with that normaliser).
* **Optimizer.** :class:`LazyAdam`: the in_batch loss gives the item table a
  sparse gradient and only those rows are updated; the full-softmax loss's
  gradient is dense (the logits touch every row) and gets Adam's update. So do
  the decoder, LoRA and codebook weights. Variables without a gradient in the
  objective (a frozen codebook, a frozen decoder) are skipped.
* **Checkpoints.** The chief saves ``ckpt/ckpt-<step>`` at every epoch end and,
  with ``train.checkpoint_every_steps``, within epochs (after ``join()``, so the
  saved state is exactly ``step`` steps). A restarted chief restores the latest
  and continues from that step of that epoch. TF writes the ``checkpoint``
  index file only after the data files, so a kill during a save leaves the
  previous checkpoint as the latest.
* **Failures.** A bad ``TF_CONFIG`` (or one whose task is not the chief):
  ``TFConfigError``, exit 2. Before building the strategy the chief checks
  that every ps and worker address accepts a TCP connection, retrying for
  ``runtime.cluster_connect_timeout`` seconds: an unreachable task is a
  :class:`ClusterFailure` naming each one (exit 3) instead of a silent wait.
  A worker that dies: the coordinator re-runs its steps on the other workers
  and keeps going. A PS that dies: :class:`ClusterFailure` (exit 3) with a
  message saying to relaunch, which resumes from the latest checkpoint.
"""

from __future__ import annotations

import os
import time
from typing import Dict

os.environ.setdefault("GRPC_FAIL_FAST", "use_caller")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import logging  # noqa: E402

from coco_tf.config import Config  # noqa: E402
from coco_tf.data.pipeline import count_batches, train_dataset  # noqa: E402
from coco_tf.methods.factory import build_model  # noqa: E402
from coco_tf.training import interrupt  # noqa: E402
from coco_tf.training.base import TrainerBase  # noqa: E402
from coco_tf.training.lazy_adam import LazyAdam  # noqa: E402
from coco_tf.training.step import train_step  # noqa: E402
from coco_tf.utils import variable_shards  # noqa: E402

_CLUSTER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError,
                   tf.errors.DeadlineExceededError, tf.errors.InternalError, tf.errors.NotFoundError)


class ClusterFailure(RuntimeError):
    """A parameter server (or the whole cluster) went away, or never answered: exit 3, relaunch to resume."""


def make_partitioner(cfg: Config, num_ps: int):
    shards = cfg.runtime.ps_shards or num_ps
    if cfg.runtime.ps_partitioner == "fixed":
        return tf.distribute.experimental.partitioners.FixedShardsPartitioner(shards)
    return tf.distribute.experimental.partitioners.MinSizePartitioner(
        min_shard_bytes=cfg.runtime.partitioner_min_shard_bytes, max_shards=shards
    )


def make_resolver(cluster_resolver=None):
    """The cluster resolver: ``TF_CONFIG`` (validated; this process must be the chief) unless given.

    Raises :class:`~coco_tf.training.tf_config.TFConfigError` (exit 2) for a bad ``TF_CONFIG``.
    """
    if cluster_resolver is None:
        from coco_tf.training.tf_config import TFConfigError, parse

        try:
            parse(os.environ.get("TF_CONFIG", ""))
        except TFConfigError as e:
            raise TFConfigError(f"runtime.strategy=ps needs a valid TF_CONFIG: {e}") from None
        cluster_resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        if cluster_resolver.task_type != "chief":
            raise TFConfigError(
                f"runtime.strategy=ps: this process is '{cluster_resolver.task_type}' in TF_CONFIG; only the chief "
                "runs coco_tf.train (ps and worker tasks run python -m coco_tf.training.server)"
            )
    return cluster_resolver


def check_reachable(cfg: Config, cluster_resolver) -> None:
    """Raises :class:`ClusterFailure` naming every ps / worker task whose address accepted no TCP
    connection within ``runtime.cluster_connect_timeout`` seconds (0: no check). Without it the
    strategy's first RPC to an absent task would wait for minutes without a word."""
    timeout = cfg.runtime.cluster_connect_timeout
    if not timeout:
        return
    from coco_tf.training.tf_config import unreachable

    cluster = cluster_resolver.cluster_spec().as_dict()
    cluster = {job: list(addrs.values()) if isinstance(addrs, dict) else list(addrs) for job, addrs in cluster.items()}
    missing = unreachable(cluster, timeout)
    if missing:
        raise ClusterFailure(
            f"could not reach {len(missing)} task(s) within runtime.cluster_connect_timeout={timeout:g} s: "
            f"{'; '.join(missing)}. Start them (python -m coco_tf.training.server with their TF_CONFIG) or fix "
            "the addresses in TF_CONFIG, then run this command again."
        )


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


def make_train_fn(strategy, model, optimizer, names=("loss",), base_only: bool = False):
    """``fn(iterator, num_steps) -> float32 [len(names)]``: ``num_steps`` train steps on one worker.

    Each step is :func:`coco_tf.training.step.train_step` (the local trainer's step:
    same loss, same gradient masking, same telemetry) inside ``strategy.run``. The
    result is the *sum* over the steps of ``names``: ``"loss"`` (summed over the
    worker's replicas) and the model's telemetry scalars (kar, coco; averaged over
    the replicas), stacked into one vector so that the chief fetches a single
    tensor per scheduled function and divides by the steps itself. ``base_only``: the
    kar/coco base stage's step (the backbone's objective alone).
    """
    names = tuple(names)

    def replica_step(batch):
        return train_step(model, optimizer, batch, strategy.num_replicas_in_sync, base_only=base_only)

    def one_step(batch):
        loss, telemetry = strategy.run(replica_step, args=(batch,))
        values = {"loss": strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)}
        for k, v in telemetry.items():
            values[k] = strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
        missing = set(names) - set(values)
        if missing:
            raise ValueError(f"the train step has no {sorted(missing)}; it reports {sorted(values)}")
        return tf.stack([tf.cast(values[k], tf.float32) for k in names])

    @tf.function
    def train_fn(iterator, num_steps):
        total = tf.zeros([len(names)], tf.float32)
        for _ in tf.range(num_steps):
            total += one_step(next(iterator))
        return total

    return train_fn


def table_placement(model) -> list:
    """``[(shape, device), ...]`` of the item table's shards (one entry if unsharded)."""
    return [(tuple(v.shape.as_list()), v.device) for v in variable_shards(model.item_embedding.embeddings)]


def worker_steps_per_epoch(lengths: np.ndarray, num_workers: int, batch_size: int, max_len: int, bucket: bool) -> int:
    """Batches in one pass of every worker over its shard (worker k reads examples k::num_workers)."""
    return sum(count_batches(lengths[k::num_workers], batch_size, max_len, bucket) for k in range(num_workers))


class PSTrainer(TrainerBase):
    """Trains ``cfg`` under ParameterServerStrategy; :meth:`run` returns the metrics.json content.

    Setup, checkpoints and the epoch end are :class:`~coco_tf.training.base.TrainerBase`'s; this
    class makes the model in the strategy's scope (its variables on the PS tasks) and schedules
    the steps on the workers.

    Example (``TF_CONFIG`` names this process the chief; ``launch/run_cluster.sh``):

    >>> PSTrainer(load_config(overrides=["runtime.strategy=ps"])).run()
    """

    def __init__(self, cfg: Config, dataset=None, cluster_resolver=None):
        self._cluster_resolver = cluster_resolver
        super().__init__(cfg, dataset)
        logging.info("item table shards: %s", table_placement(self.model))

    def _setup_runtime(self) -> None:
        resolver = make_resolver(self._cluster_resolver)
        check_reachable(self.cfg, resolver)
        spec = resolver.cluster_spec()
        self.strategy = make_strategy(self.cfg, resolver)
        self.num_workers = spec.num_tasks("worker")
        self.num_ps = spec.num_tasks("ps")
        self.coordinator = tf.distribute.experimental.coordinator.ClusterCoordinator(self.strategy)

    def _make_model(self, model_kwargs: Dict):
        # kar / coco / model.item_text: model_kwargs holds numpy arrays (item text table, base
        # decoder weights, prompt encodings), built on the chief; every variable made from them
        # (the decoder, LoRA, codebook, the frozen text table) is created in the scope, on the PS.
        with self.strategy.scope():
            self.model = build_model(self.cfg, self.dataset.num_items, **model_kwargs)
            self.optimizer = make_ps_optimizer(self.cfg)
            self._tickets = tf.Variable(0, dtype=tf.int64, trainable=False, name="input_shard_tickets")
            self._build()
        return self.model, self.optimizer

    def _extra_checkpoint_objects(self) -> Dict:
        # Bookkeeping lives on the chief: it counts the steps it scheduled and saw finish.
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        return {"step": self.step}

    def _make_step_functions(self) -> None:
        self._train_fn = make_train_fn(self.strategy, self.model, self.optimizer, self._names)
        self._base_names = ["loss", "loss/aux", "loss/total"]
        self._base_train_fn = (make_train_fn(self.strategy, self.model, self.optimizer, self._base_names,
                                             base_only=True) if self.base_stage else None)

    def _on_resume(self, path: str) -> None:
        logging.info("resumed from %s (epoch %d, step %d)", path, int(self.epoch.numpy()), int(self.step.numpy()))
        print(f"resumed from {path}: epoch {int(self.epoch.numpy())}, step {int(self.step.numpy())}", flush=True)

    def _build(self):
        """In the scope: creates the model's and optimizer's variables (on the PS tasks) and
        finds what the step function reports (``self._names``: loss, then the telemetry).

        The telemetry names come from one eager forward pass of the training objective on
        a one-user batch (the step function needs them before its loop, to sum them over
        ``steps_per_execution``); tracing it instead costs seconds more on a small machine.
        """
        dummy = {"history": tf.ones([1, 2], tf.int64), "targets": tf.ones([1, 2], tf.int64)}
        self.model(dummy, training=False)
        telemetry = self.model.compute_loss_and_metrics(dummy, training=False)[1]
        self._names = ["loss"] + sorted(telemetry)
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
        saved = self._resume_or_start()
        if saved is not None:
            return saved
        lengths = self.lengths
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

        history = self._load_history(t0)
        train_seconds, train_examples = 0.0, 0
        while int(self.epoch.numpy()) < cfg.train.epochs:
            epoch = int(self.epoch.numpy()) + 1
            te = time.time()
            done = int(self.epoch_step.numpy())
            start = done
            loss_value = float("nan")
            base = self.in_base_stage()
            train_fn, names = (self._base_train_fn, self._base_names) if base else (self._train_fn, self._names)
            epoch_sums = np.zeros(len(names))  # this process's steps of the epoch (resume: the rest)
            while done < steps_per_epoch:
                chunk_end = min(steps_per_epoch, (done // every + 1) * every)
                sums = []  # one RemoteValue (a [len(names)] vector of step sums) per scheduled function
                while done < chunk_end:
                    n = min(spe, chunk_end - done)
                    sums.append(self.coordinator.schedule(train_fn, args=(iterator, tf.constant(n))))
                    done += n
                self.coordinator.join()
                interrupt.check()  # a deferred Ctrl-C stops here, after the scheduled steps finished
                chunk_steps = chunk_end - int(self.epoch_step.numpy())
                chunk_sums = np.sum([r.fetch() for r in sums], axis=0)
                epoch_sums += chunk_sums
                chunk_means = dict(zip(names, (chunk_sums / chunk_steps).tolist()))
                loss_value = float(epoch_sums[0] / (chunk_end - start))  # the epoch's running mean
                self.step.assign_add(chunk_steps)
                self.epoch_step.assign(chunk_end)
                step = int(self.step.numpy())
                with self.writer.as_default():
                    for k, v in chunk_means.items():
                        tf.summary.scalar(f"train/{k}", v, step=step)
                if cfg.runtime.progress:
                    print(f"epoch {epoch}/{cfg.train.epochs} step {chunk_end}/{steps_per_epoch} "
                          f"(global {step}) loss {loss_value:.4f}", flush=True)
                if chunk_end < steps_per_epoch:
                    self.manager.save(checkpoint_number=step)
            train_seconds += time.time() - te
            train_examples += int(round(len(lengths) * (steps_per_epoch - start) / steps_per_epoch))
            self.epoch.assign(epoch)
            self.epoch_step.assign(0)
            record = {"epoch": epoch, "loss": round(float(epoch_sums[0] / max(done - start, 1)), 6),
                      "train_seconds": round(time.time() - te, 2),
                      "step": int(self.step.numpy())}
            step = int(self.step.numpy())
            self._add_telemetry(record, dict(zip(names[1:], epoch_sums[1:].tolist())), done - start, step)
            if self._end_epoch(epoch, step, record, history, checkpoint_number=step):
                break
        return self._finish(train_seconds, train_examples, history)

    def _finish(self, train_seconds: float, train_examples: int, history: list) -> Dict:
        cluster = {"ps": self.num_ps, "workers": self.num_workers,
                   "item_table_shards": [{"shape": list(s), "device": d} for s, d in table_placement(self.model)]}
        return super()._finish(train_seconds, train_examples, history,
                               extra={"steps": int(self.step.numpy()), "cluster": cluster})
