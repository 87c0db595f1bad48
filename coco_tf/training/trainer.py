"""``Trainer``: single-process training, the step loop (setup and epoch end: ``training/base.py``).

One epoch is one pass over the training examples in the order of ``(train.seed, epoch)``
(``data.pipeline.train_dataset``), one :func:`~coco_tf.training.step.train_step` per batch;
``train.checkpoint_every_steps`` checkpoints within the epoch (with its partial loss sums, so a
resumed run writes the same history.json). The ``model_dir`` layout and the resume contract
are in :mod:`coco_tf.training.base`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Dict

import tensorflow as tf
import tf_keras as keras
from absl import logging

from coco_tf.data.pipeline import count_batches, train_dataset
from coco_tf.methods.factory import build_model
from coco_tf.training import interrupt
from coco_tf.training.base import TrainerBase, write_json
from coco_tf.training.step import apply_gradients, generator_rng, make_optimizer, train_step


class Trainer(TrainerBase):
    """Trains ``cfg`` in this process; :meth:`run` returns the metrics.json content.

    Setup, checkpoints and the epoch end are :class:`~coco_tf.training.base.TrainerBase`'s; this
    class runs the steps: each epoch's batches in its ``(train.seed, epoch)`` order, one traced
    step each, a checkpoint every ``train.checkpoint_every_steps``, and the backbone's
    self-supervised stage (S3Rec) first.

    Example:

    >>> result = Trainer(load_config(overrides=["train.epochs=2"])).run()
    >>> result["test"]["ndcg@10"]
    """

    def _setup_runtime(self) -> None:
        cfg = self.cfg
        if cfg.runtime.threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(cfg.runtime.threads)
            except RuntimeError:  # already initialised in this process
                pass
        if cfg.runtime.deterministic:
            tf.config.experimental.enable_op_determinism()

    def _make_model(self, model_kwargs: Dict):
        # Dropout layers built here draw from a tf.random.Generator each (seeded from train.seed),
        # whose state goes into every checkpoint (``_build``): a resumed run draws the masks the
        # uninterrupted one would have drawn. (Only for this model: the flag is global in Keras.)
        with generator_rng():
            model = build_model(self.cfg, self.dataset.num_items, **model_kwargs)
        return model, make_optimizer(self.cfg)

    def _extra_checkpoint_objects(self) -> Dict:
        # A checkpoint within an epoch (train.checkpoint_every_steps): as JSON, the loss / telemetry
        # sums of the epoch's steps done, so the epoch's means cover all its steps.
        self.epoch_partial = tf.Variable("", dtype=tf.string, trainable=False, name="epoch_partial")
        return {"epoch_partial": self.epoch_partial}

    def _make_step_functions(self) -> None:
        spec = {
            "history": tf.TensorSpec([None, None], tf.int64),
            "targets": tf.TensorSpec([None, None], tf.int64),
        }
        # kar and coco report {name: scalar} per step (train_step).
        self._train_step = tf.function(lambda batch: train_step(self.model, self.optimizer, batch),
                                       input_signature=[spec])
        self._base_train_step = tf.function(lambda batch: train_step(self.model, self.optimizer, batch,
                                                                     base_only=True), input_signature=[spec])

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
                interrupt.check()
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

    # ------------------------------------------------------------------ loop

    def run(self) -> Dict:
        cfg = self.cfg
        t0 = time.time()
        self._build()
        saved = self._resume_or_start()
        if saved is not None:
            return saved

        ds = train_dataset(
            self.split.train, cfg.data.max_len, cfg.train.batch_size, cfg.train.seed, cfg.data.bucket_by_length
        )
        lengths = self.lengths
        steps_per_epoch = count_batches(lengths, cfg.train.batch_size, cfg.data.max_len, cfg.data.bucket_by_length)
        history = self._load_history(t0)
        if not self.manager.latest_checkpoint:
            self.pretrain(ds, steps_per_epoch)

        train_seconds, train_examples = 0.0, 0
        # Training steps so far (TensorBoard, checkpoint numbers); not the optimizer's count, which
        # restarts when the kar/coco branch joins (_reset_optimizer).
        step = int(self.epoch.numpy()) * steps_per_epoch + int(self.epoch_step.numpy())
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
                interrupt.check()
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
