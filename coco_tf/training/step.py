"""One optimizer step, shared by both trainers: :func:`train_step` on the model's loss contract.

Every model of ``coco_tf.methods`` gives ``compute_loss_and_metrics(features, training)``
→ ``(loss, {name: scalar})``; the kar/coco base stage uses ``base_loss_and_metrics`` (the
backbone's objective alone). Also the optimizer (:func:`make_optimizer`) and
:func:`generator_rng` (dropout random state that checkpoints can hold).

Example:

>>> loss, telemetry = train_step(model, make_optimizer(cfg), batch)
"""

from __future__ import annotations

import contextlib

import tensorflow as tf
import tf_keras as keras

from coco_tf.config import Config


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


def apply_gradients(optimizer, grads, variables) -> None:
    """Variables outside this objective (S3Rec's pre-training heads while fine-tuning, a
    [MASK] embedding, a frozen codebook) have no gradient: skipped quietly."""
    optimizer.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])


def train_step(model, optimizer, batch, num_replicas: int = 1, base_only: bool = False):
    """One optimizer step on ``batch``, for both trainers: ``(loss, telemetry)``.

    The loss and ``telemetry`` (``{name: scalar}``: every loss term and the diagnostics of
    kar / coco, ``{}`` for the plain model) are the model's ``compute_loss_and_metrics``;
    ``base_only`` (kar/coco base stage): its ``base_loss_and_metrics``, the backbone's own
    objective (the LLM branch's variables get no gradient). The loss is divided by
    ``num_replicas`` (replicas in sync under a strategy, whose gradients are summed): with the
    model's per-position ``loss_normalizer`` (or its batch mean) that equals
    ``tf.nn.compute_average_loss`` for the base model.
    """
    with tf.GradientTape() as tape:
        if base_only:
            loss, telemetry = model.base_loss_and_metrics(batch, training=True)
        else:
            loss, telemetry = model.compute_loss_and_metrics(batch, training=True)
        if num_replicas != 1:
            loss = loss / num_replicas
    variables = model.trainable_variables
    apply_gradients(optimizer, tape.gradient(loss, variables), variables)
    return loss, telemetry
