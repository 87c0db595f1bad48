"""Domain-adaptive pretraining: causal LM on the catalog's own item text.

Usage::

    python -m coco_tf.llm.pretrain --config configs/beauty_sasrec.yaml \\
        --set data.path=/work/shared/data/amazon-beauty --set llm.pretrain_epochs=10 \\
        --set "llm.item_text_template={title} | {categories}" --out /work/ckpt/beauty_tiny

Next-token cross-entropy (``coco_tf.llm.causal_lm``: tied LM head, a separate one
where the preset unties it) over the item texts of ``data.*`` rendered with
``llm.item_text_template`` (item metadata only, never user sequences), minus a
fixed held-out 5% of items (``coco_tf.llm.corpus``) used for the held-out loss.

* Decoder: ``llm.checkpoint`` if set, else the random ``llm.preset`` (seed
  ``train.seed``). Presets train every weight; a checkpoint trains LoRA on q, v
  (``llm.lora_rank``/``lora_alpha``/``lora_dropout``) and writes the merged
  weights, or every weight with ``llm.pretrain_train_all=true``.
* Tokenizer: the checkpoint's own (its files are copied), else word-piece learned
  from the item texts (``coco_tf.llm.tokenizer.catalog_tokenizer``), saved into
  ``--out`` so every reader of the directory tokenises the same.
* Adam, ``llm.pretrain_learning_rate`` with cosine decay to 10% over the run
  (:class:`ResumableCosineDecay`: a rerun with more epochs continues from the
  rate it reached and decays over the new remainder, it never jumps back up),
  gradient norm clipped at 1, ``llm.pretrain_batch_size`` texts per step of at
  most 32 tokens, at most ``llm.pretrain_epochs`` epochs, stopping when the held-out
  loss has not improved for ``llm.pretrain_patience`` epochs; the decoder written is
  the epoch with the lowest held-out loss (on Beauty, ``small`` overfits the 11.5k
  texts after 8 epochs: docs/results.md §8). ``llm.pretrain_dropout`` regularises.

``--out`` is a converted decoder directory (``config.json`` + ``weights.h5`` +
``tokenizer/``, the format of ``python -m coco_tf.llm.convert``), so
``--set llm.checkpoint=DIR`` works for every consumer, plus::

    train_ckpt/            optimizer + weights + step (tf.train.CheckpointManager): a rerun
                           with the same --out continues from the saved step
    best_ckpt/             the weights of the epoch with the lowest held-out loss
    heldout_by_epoch.json  held-out loss per epoch (the early-stopping state)
    tensorboard/           train/loss (every 10 steps), heldout/loss and heldout/perplexity
                           (every epoch)
    lr_schedule.json       the cosine segment the learning rate follows (start step and rate, end step)
    probes_before.json     the probes of the starting decoder (computed once)
    pretrain_report.json   settings, timing and the probes before / after / TF-IDF

In-run pretraining: with ``llm.checkpoint`` empty and ``llm.pretrain_epochs > 0``,
:func:`resolve_checkpoint` (called by ``build_llm_assets``) pretrains into
``<cache_dir>/pretrained_decoder_<hash>`` (keyed by the texts, preset and
settings) once and reuses it after.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from typing import Dict, Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras
from absl import logging

from coco_tf.config import ConfigError
from coco_tf.llm.corpus import split_corpus
from coco_tf.llm.item_text import check_texts, item_texts
from coco_tf.llm.source import build_source_backbone, source_dropout

SEQUENCE_LENGTH = 32      # tokens per text (the item text table's default)
CHECKPOINT_EVERY_STEPS = 200
TRAIN_LOG_EVERY_STEPS = 10
REPORT_FILE = "pretrain_report.json"
HELDOUT_FILE = "heldout_by_epoch.json"
SCHEDULE_FILE = "lr_schedule.json"
FLOOR_FRACTION = 0.1      # the cosine ends at 10% of llm.pretrain_learning_rate
BEFORE_FILE = "probes_before.json"
PRETRAIN_FORMAT = 1


def _settings(cfg, train_all: bool) -> Dict:
    return {
        "format": PRETRAIN_FORMAT,
        "source": cfg.llm.checkpoint or cfg.llm.preset,
        "item_text_template": cfg.llm.item_text_template,
        "epochs": cfg.llm.pretrain_epochs,
        "batch_size": cfg.llm.pretrain_batch_size,
        "learning_rate": cfg.llm.pretrain_learning_rate,
        "train_all": train_all,
        "lora_rank": 0 if train_all else cfg.llm.lora_rank,
        "lora_alpha": cfg.llm.lora_alpha,
        "seed": cfg.train.seed,
        "sequence_length": SEQUENCE_LENGTH,
        "patience": cfg.llm.pretrain_patience,
        "dropout": cfg.llm.pretrain_dropout,
    }


def _epochs_since_best(heldout_losses) -> int:
    """Epochs after the one with the lowest held-out loss (0: the newest is the best)."""
    if not heldout_losses:
        return 0
    losses = [e["heldout_loss"] for e in heldout_losses]
    return len(losses) - 1 - int(np.argmin(losses))


def _batch_arrays(ids: np.ndarray, mask: np.ndarray):
    """Cut the padded tail shared by the whole batch (lengths rounded up to 8: few traces)."""
    length = int(mask.sum(axis=1).max())
    length = min(ids.shape[1], max(8, int(math.ceil(length / 8.0)) * 8))
    return tf.constant(ids[:, :length]), tf.constant(mask[:, :length])


def _copy_tokenizer(cfg, tokenizer, out_dir):
    from coco_tf.llm.convert import _copy_tokenizer_files
    from coco_tf.llm.tokenizer import save_tokenizer

    if cfg.llm.checkpoint and tokenizer.kind == "qwen_bpe":
        if _copy_tokenizer_files(cfg.llm.checkpoint, out_dir):
            return
    save_tokenizer(tokenizer, out_dir)


class ResumableCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Cosine decay from ``start_lr`` at ``start_step`` to ``floor`` at ``end_step``, flat after.

    With ``start_step=0, start_lr=peak`` it equals
    ``keras.optimizers.schedules.CosineDecay(peak, end_step, alpha=floor / peak)``.
    The three segment values are variables, set after a checkpoint restore by
    :func:`schedule_segment`, so a resume for a longer run continues from the
    rate reached instead of recomputing the curve for the new total.

    Example::

        schedule = ResumableCosineDecay(peak=2e-3, floor=2e-4, end_step=1440)
        schedule(0)     # 2e-3
        schedule(1440)  # 2e-4
    """

    def __init__(self, peak, floor, end_step, start_step=0, start_lr=None):
        self.peak = float(peak)
        self.floor = float(floor)
        self.start_step = tf.Variable(float(start_step), trainable=False, name="schedule_start_step")
        self.start_lr = tf.Variable(float(peak if start_lr is None else start_lr), trainable=False,
                                    name="schedule_start_lr")
        self.end_step = tf.Variable(float(end_step), trainable=False, name="schedule_end_step")

    def set_segment(self, segment: Dict):
        self.start_step.assign(float(segment["start_step"]))
        self.start_lr.assign(float(segment["start_lr"]))
        self.end_step.assign(float(segment["end_step"]))

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        span = tf.maximum(self.end_step - self.start_step, 1.0)
        progress = tf.clip_by_value((step - self.start_step) / span, 0.0, 1.0)
        return self.floor + (self.start_lr - self.floor) * 0.5 * (1.0 + tf.cos(math.pi * progress))

    def get_config(self):
        return {"peak": self.peak, "floor": self.floor, "end_step": float(self.end_step.numpy()),
                "start_step": float(self.start_step.numpy()), "start_lr": float(self.start_lr.numpy())}


def schedule_segment(previous: Optional[Dict], step: int, total_steps: int, peak: float, floor: float) -> Dict:
    """The cosine segment a (possibly resumed) run follows; ``previous`` is the saved one or None.

    A fresh run decays ``peak -> floor`` over ``[0, total_steps]``. A resume with the
    same total keeps its segment; one with another total starts a new segment at
    ``step`` from the rate the saved segment gives there, ending at ``total_steps``.
    """
    if previous is None:
        return {"start_step": 0, "start_lr": peak, "end_step": total_steps, "floor": floor}
    if int(previous["end_step"]) == total_steps or step >= total_steps:
        return previous
    old = ResumableCosineDecay(peak, previous.get("floor", floor), previous["end_step"], previous["start_step"],
                               previous["start_lr"])
    return {"start_step": step, "start_lr": float(old(step).numpy()), "end_step": total_steps,
            "floor": previous.get("floor", floor)}


@dataclasses.dataclass
class PretrainResult:
    report: Dict       # what pretrain_report.json holds
    backbone: object   # the trained QwenBackbone in memory (LoRA merged), as written to out_dir
    tokenizer: object  # the TitleTokenizer saved into out_dir


def pretrain(cfg, catalog, out_dir: str, verbose: int = 1) -> PretrainResult:
    """Pretrains the decoder of ``cfg.llm`` on ``catalog``'s item text into ``out_dir``.

    Args:
        cfg: the resolved config (``llm.*``, ``train.seed``, ``coco.codebook_size``).
        catalog: a ``SequenceDataset`` (or a title list; then only ``{title}`` renders).
        out_dir: output directory (created; an existing one is resumed).
        verbose: 1 progress bar and the probe table, 0 silent.
    """
    from coco_tf.llm import probe
    from coco_tf.llm.causal_lm import CausalLM
    from coco_tf.llm.tokenizer import build_tokenizer, catalog_tokenizer

    if cfg.llm.pretrain_epochs <= 0:
        raise ConfigError(
            f"config key 'llm.pretrain_epochs': must be > 0 to pretrain, got {cfg.llm.pretrain_epochs} "
            "(e.g. --set llm.pretrain_epochs=10)"
        )
    started = time.time()
    texts = item_texts(catalog, cfg.llm.item_text_template)
    try:
        check_texts(texts, f"config key 'llm.item_text_template' ({cfg.llm.item_text_template!r})")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    split = split_corpus(texts)
    if len(split.train_ids) == 0:
        raise ConfigError("pretraining corpus is empty: no item outside the held-out 5% has text")

    train_all = not cfg.llm.checkpoint or cfg.llm.pretrain_train_all
    settings = _settings(cfg, train_all)
    backbone = build_source_backbone(
        cfg,
        lora_rank=0 if train_all else cfg.llm.lora_rank,
        lora_alpha=cfg.llm.lora_alpha,
        lora_dropout=0.0 if train_all else cfg.llm.lora_dropout,
        dropout=cfg.llm.pretrain_dropout,
    )
    written_dropout = source_dropout(cfg) if cfg.llm.pretrain_dropout else None
    os.makedirs(out_dir, exist_ok=True)
    from coco_tf.llm.tokenizer import WORD_PIECE_FILE

    saved_tokenizer = os.path.isfile(os.path.join(out_dir, "tokenizer", WORD_PIECE_FILE)) or os.path.isfile(
        os.path.join(out_dir, "tokenizer", "vocab.json"))
    if saved_tokenizer and tf.train.latest_checkpoint(os.path.join(out_dir, "train_ckpt")):
        tokenizer = build_tokenizer(checkpoint_dir=out_dir)  # resume: the saved vocabulary
    else:
        tokenizer = catalog_tokenizer(texts, cfg.llm.checkpoint or None, backbone.vocabulary_size)
        _copy_tokenizer(cfg, tokenizer, out_dir)
    lm = CausalLM(backbone)

    train_ids, train_mask = tokenizer.encode_with_end([texts[i] for i in split.train_ids], SEQUENCE_LENGTH)
    held_texts = [texts[i] for i in split.heldout_ids]
    too_big = int(train_ids[train_mask.astype(bool)].max(initial=0))
    if too_big >= backbone.vocabulary_size:
        raise ConfigError(
            f"tokenizer ids reach {too_big}, beyond the decoder vocabulary ({backbone.vocabulary_size})"
        )

    batch_size = cfg.llm.pretrain_batch_size
    steps_per_epoch = int(math.ceil(len(train_ids) / batch_size))
    total_steps = steps_per_epoch * cfg.llm.pretrain_epochs
    peak = cfg.llm.pretrain_learning_rate
    schedule = ResumableCosineDecay(peak, FLOOR_FRACTION * peak, total_steps)
    optimizer = keras.optimizers.Adam(learning_rate=schedule, global_clipnorm=1.0)
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="pretrain_step")
    checkpoint = tf.train.Checkpoint(lm=lm, optimizer=optimizer, step=step)
    manager = tf.train.CheckpointManager(checkpoint, os.path.join(out_dir, "train_ckpt"), max_to_keep=2)
    before_path = os.path.join(out_dir, BEFORE_FILE)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        logging.info("pretrain: resumed %s at step %d", manager.latest_checkpoint, int(step.numpy()))
    schedule_path = os.path.join(out_dir, SCHEDULE_FILE)
    previous_segment = None
    if os.path.isfile(schedule_path):
        with open(schedule_path) as f:
            previous_segment = json.load(f)
    elif int(step.numpy()) > 0:
        # A directory written before lr_schedule.json existed: its cosine ran over the steps it finished with.
        report_file = os.path.join(out_dir, REPORT_FILE)
        planned = total_steps
        if os.path.isfile(report_file):
            with open(report_file) as f:
                planned = int(json.load(f).get("steps", total_steps))
        previous_segment = schedule_segment(None, 0, planned, peak, FLOOR_FRACTION * peak)
    segment = schedule_segment(previous_segment, int(step.numpy()), total_steps, peak, FLOOR_FRACTION * peak)
    if previous_segment is not None and segment != previous_segment:
        logging.info("pretrain: %d -> %d steps; the learning rate continues from %.3g and decays over the rest",
                     int(previous_segment["end_step"]), total_steps, segment["start_lr"])
    schedule.set_segment(segment)
    with open(schedule_path, "w") as f:
        json.dump(segment, f, indent=2)
    if int(step.numpy()) == 0 or not os.path.isfile(before_path):
        if int(step.numpy()) > 0:
            raise ValueError(f"{before_path} is missing from a resumed run; start again in a new --out")
        before = probe.run_probes(cfg, catalog, backbone, tokenizer, lm)
        with open(before_path, "w") as f:
            json.dump(before, f, indent=2)
    with open(before_path) as f:
        before = json.load(f)

    variables = lm.trainable_variables

    @tf.function(reduce_retracing=True)
    def train_step(ids, mask):
        with tf.GradientTape() as tape:
            nll, count = lm.token_nll(ids, mask, training=True)
            loss = nll / tf.maximum(count, 1.0)
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables))
        step.assign_add(1)
        return loss

    writer = tf.summary.create_file_writer(os.path.join(out_dir, "tensorboard"))
    first = int(step.numpy())
    train_started = time.time()
    progbar = keras.utils.Progbar(total_steps, verbose=verbose, unit_name="step",
                                  stateful_metrics=["loss"])
    if first and verbose:
        progbar.update(first)
    heldout_path = os.path.join(out_dir, HELDOUT_FILE)
    heldout_losses = []
    if os.path.isfile(heldout_path):
        with open(heldout_path) as f:
            heldout_losses = json.load(f)
    elif os.path.isfile(os.path.join(out_dir, REPORT_FILE)):  # written before heldout_by_epoch.json existed
        with open(os.path.join(out_dir, REPORT_FILE)) as f:
            heldout_losses = json.load(f).get("heldout_by_epoch", [])
    best_manager = tf.train.CheckpointManager(tf.train.Checkpoint(lm=lm), os.path.join(out_dir, "best_ckpt"),
                                              max_to_keep=1)
    patience = cfg.llm.pretrain_patience if held_texts else 0  # no held-out texts: nothing to stop on
    for epoch in range(first // steps_per_epoch, cfg.llm.pretrain_epochs):
        if patience and _epochs_since_best(heldout_losses) >= patience:
            logging.info("pretrain: held-out loss has not improved for %d epochs; stopping", patience)
            break
        order = np.random.default_rng(cfg.train.seed + epoch).permutation(len(train_ids))
        for b in range(first - epoch * steps_per_epoch if epoch == first // steps_per_epoch else 0,
                       steps_per_epoch):
            rows = order[b * batch_size:(b + 1) * batch_size]
            loss = float(train_step(*_batch_arrays(train_ids[rows], train_mask[rows])))
            current = int(step.numpy())
            if current % TRAIN_LOG_EVERY_STEPS == 0:
                with writer.as_default():
                    tf.summary.scalar("train/loss", loss, step=current)
            if current % CHECKPOINT_EVERY_STEPS == 0:
                manager.save(checkpoint_number=current)
            progbar.update(current, values=[("loss", loss)])
        current = int(step.numpy())
        held_ppl = probe.perplexity(lm, tokenizer, held_texts) if held_texts else float("nan")
        heldout_losses.append({"epoch": epoch + 1, "step": current, "heldout_loss": math.log(held_ppl)})
        if held_texts and _epochs_since_best(heldout_losses) == 0:
            best_manager.save(checkpoint_number=current)
        with writer.as_default():
            tf.summary.scalar("heldout/loss", math.log(held_ppl), step=current)
            tf.summary.scalar("heldout/perplexity", held_ppl, step=current)
        writer.flush()
        manager.save(checkpoint_number=current)
        tmp = heldout_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(heldout_losses, f, indent=2)
        os.replace(tmp, heldout_path)
    train_seconds = time.time() - train_started
    best_epoch = None
    if heldout_losses and best_manager.latest_checkpoint:
        best = min(heldout_losses, key=lambda e: e["heldout_loss"])
        best_epoch = best["epoch"]
        tf.train.Checkpoint(lm=lm).restore(best_manager.latest_checkpoint).assert_existing_objects_matched()
        logging.info("pretrain: writing the epoch-%d decoder (held-out loss %.4f)", best_epoch, best["heldout_loss"])
    if written_dropout is not None:
        backbone.dropout = written_dropout
    trained_steps = int(step.numpy()) - first

    if backbone.lora_rank > 0:
        backbone.merge_lora()
    source = {"kind": "pretrain", "settings": settings, "num_train_texts": int(len(split.train_ids)),
              "num_heldout_texts": int(len(split.heldout_ids))}
    backbone.save_pretrained(out_dir, source=source)
    after = probe.run_probes(cfg, catalog, backbone, tokenizer, lm)
    tfidf = probe.tfidf_probes(catalog, cfg.llm.item_text_template)
    previous = {}
    report_path = os.path.join(out_dir, REPORT_FILE)
    if os.path.isfile(report_path):
        with open(report_path) as f:
            previous = json.load(f)
    report = {
        "settings": settings,
        "decoder": {k: v for k, v in backbone.get_config().items() if k not in ("name", "trainable")},
        "tokenizer": tokenizer.kind,
        "num_train_texts": int(len(split.train_ids)),
        "num_heldout_texts": int(len(split.heldout_ids)),
        "steps": int(step.numpy()),
        "steps_per_epoch": steps_per_epoch,
        "steps_this_process": trained_steps,
        "train_seconds_this_process": round(train_seconds, 2),
        "train_seconds": round(previous.get("train_seconds", 0.0) + train_seconds, 2),
        "steps_per_second": round(trained_steps / train_seconds, 3) if trained_steps else None,
        "wall_seconds_this_process": round(time.time() - started, 2),
        "heldout_by_epoch": heldout_losses,
        "best_epoch": best_epoch,
        "probes": {"before": before, "after": after, "tfidf": tfidf},
    }
    tmp = report_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2)
    os.replace(tmp, report_path)
    if verbose:
        print(probe.format_table({"before (" + settings["source"] + ")": before, "after": after,
                                  "TF-IDF (titles)": tfidf}), flush=True)
    return PretrainResult(report, backbone, tokenizer)


def cache_key(cfg, texts) -> str:
    """SHA-256 of the in-run pretraining inputs: settings, preset shape and every item text."""
    from coco_tf.llm import presets

    h = hashlib.sha256()
    h.update(json.dumps(_settings(cfg, True), sort_keys=True).encode())
    h.update(json.dumps(presets.get_preset(cfg.llm.preset), sort_keys=True).encode())
    h.update(json.dumps(cfg.coco.codebook_size).encode())
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def resolve_checkpoint(cfg, catalog, cache_dir: Optional[str], train: bool = True) -> str:
    """The decoder directory a run reads: ``llm.checkpoint``, the in-run pretrained one, or ``""`` (random preset).

    With ``llm.checkpoint`` empty and ``llm.pretrain_epochs > 0`` the preset is
    pretrained on ``catalog`` into ``<cache_dir>/pretrained_decoder_<key>`` once
    (a finished directory has ``pretrain_report.json``; an interrupted one is
    resumed). ``train=False`` raises instead of pretraining (export).
    """
    if cfg.llm.checkpoint or cfg.llm.pretrain_epochs <= 0:
        return cfg.llm.checkpoint
    texts = item_texts(catalog, cfg.llm.item_text_template)
    if not cache_dir:
        import tempfile

        cache_dir = tempfile.mkdtemp(prefix="coco_tf_pretrain_")
    out_dir = os.path.join(cache_dir, f"pretrained_decoder_{cache_key(cfg, texts)[:16]}")
    if os.path.isfile(os.path.join(out_dir, REPORT_FILE)):
        logging.info("pretrained decoder: cache hit %s", out_dir)
        return out_dir
    if not train:
        raise ValueError(
            f"llm.pretrain_epochs={cfg.llm.pretrain_epochs}: the in-run pretrained decoder {out_dir} is missing "
            "(train the run first, or set llm.checkpoint)"
        )
    logging.info("pretrained decoder: pretraining %s on the catalog text into %s", cfg.llm.preset, out_dir)
    pretrain(cfg, catalog, out_dir, verbose=1 if cfg.runtime.progress else 0)
    return out_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coco_tf.llm.pretrain",
                                     description="Causal-LM pretraining of the decoder on the catalog's item text.")
    parser.add_argument("--config", default=None, help="YAML config (data.*, llm.*)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="dotted.key=value")
    parser.add_argument("--out", required=True, help="output directory (a rerun with the same one resumes)")
    args = parser.parse_args(argv)
    from coco_tf.config import load_config
    from coco_tf.data.errors import DataError
    from coco_tf.data.loader import load_dataset

    try:
        cfg = load_config(args.config, args.overrides)
        if cfg.runtime.threads:
            tf.config.threading.set_intra_op_parallelism_threads(cfg.runtime.threads)
        catalog = load_dataset(cfg.data)
        report = pretrain(cfg, catalog, args.out, verbose=1 if cfg.runtime.progress else 0).report
    except (ConfigError, DataError, ValueError, OSError) as e:
        print(f"pretrain: error: {e}", file=sys.stderr)
        return 2
    print(f"Pretrained decoder written to {args.out} ({report['steps']} steps, "
          f"{report['train_seconds']:.0f} s training); report: {os.path.join(args.out, REPORT_FILE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
