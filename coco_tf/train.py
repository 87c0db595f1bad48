"""``python -m coco_tf.train``: train, validate every epoch, test the best checkpoint.

With no arguments it trains SASRec on the built-in synthetic catalog and writes
``runs/default/`` (checkpoints, TensorBoard events, config.yaml, metrics.json).

    python -m coco_tf.train --config configs/beauty_sasrec.yaml \\
        --set data.path=/path/to/amazon-beauty --model_dir runs/beauty

Flags:
  --config PATH        YAML overrides of the defaults (see configs/).
  --set KEY=VALUE      override one key, repeatable (e.g. --set train.epochs=5).
  --model_dir DIR      output directory (same as --set runtime.model_dir=DIR).

With ``--set runtime.strategy=ps`` this process is the chief of a
parameter-server cluster described by ``TF_CONFIG`` (ps and worker tasks run
``python -m coco_tf.training.server``); ``launch/run_cluster.sh`` starts them
all. Exit status: 0 done (or already finished: a rerun of a finished run
changes nothing), 2 bad config/data/TF_CONFIG, 3 the cluster failed or could
not be reached within runtime.cluster_connect_timeout (relaunch with the same
model_dir to resume from the latest checkpoint), 4 the output directory could
not be written (disk full, no permission: the latest checkpoint and the JSON
files are still the previous, complete ones; free space and rerun to resume),
130 interrupted (Ctrl-C; rerun to resume).
"""

from __future__ import annotations

import errno
import sys

import coco_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app, flags, logging

from coco_tf.config import ConfigError, load_config
from coco_tf.data.errors import DataError
from coco_tf.training.tf_config import TFConfigError

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "YAML file of config overrides.")
flags.DEFINE_multi_string("set", [], "Override a config key: dotted.key=value (repeatable).")
flags.DEFINE_string("model_dir", None, "Output directory (overrides runtime.model_dir).")


_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM)


def write_failure(e: BaseException):
    """A one-line message if ``e`` is a failure to write the output directory (disk full, quota,
    permission, read-only), else ``None``."""
    if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS:
        return f"{e.strerror}: {e.filename}" if e.filename else str(e)
    import tensorflow as tf

    text = str(getattr(e, "message", e))
    if isinstance(e, (tf.errors.ResourceExhaustedError, tf.errors.PermissionDeniedError)) or (
        isinstance(e, tf.errors.OpError) and ("No space left" in text or "Read-only file system" in text)
    ):
        if "No space left" in text or "Permission denied" in text or "Read-only" in text:
            return text.split("[Op:")[0].split("}}")[-1].strip()
    return None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])} (use --set key=value)")
    overrides = list(FLAGS.set)
    if FLAGS.model_dir:
        overrides.append(f"runtime.model_dir={FLAGS.model_dir}")
    try:
        cfg = load_config(FLAGS.config, overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2

    from coco_tf.metrics.ranking import format_table
    from coco_tf.training.trainer import Trainer

    import tensorflow as tf

    logging.set_verbosity(logging.INFO)
    tf.get_logger().setLevel("WARNING")
    # TF's checkpoint writer logs one absl INFO line per save; they drown the progress bar.
    logging.get_absl_handler().addFilter(
        lambda record: not record.pathname.endswith("functional_saver.py")
    )
    from coco_tf.training import interrupt

    try:
        # The first Ctrl-C stops at the next step boundary (a signal inside TensorFlow's checkpoint
        # writer would otherwise surface as a RuntimeError); a second one stops at once.
        with interrupt.deferred():
            if cfg.runtime.strategy == "ps":
                from coco_tf.training.ps_trainer import ClusterFailure, PSTrainer

                try:
                    trainer = PSTrainer(cfg)
                    result = trainer.run()
                except ClusterFailure as e:
                    print(f"cluster error: {e}", file=sys.stderr)
                    return 3
            else:
                trainer = Trainer(cfg)
                result = trainer.run()
    except TFConfigError as e:
        print(f"TF_CONFIG error: {e}", file=sys.stderr)
        return 2
    except (DataError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: run the same command again to resume {cfg.runtime.model_dir} from its latest "
              "checkpoint (the end of the last finished epoch, or train.checkpoint_every_steps within one)",
              file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001  (only write failures are handled here)
        message = write_failure(e)
        if message is None:
            raise
        print(f"write error: could not write to {cfg.runtime.model_dir} ({message}). The latest checkpoint "
              "and history.json / metrics.json are still the previous, complete ones; free space (or fix "
              "the permissions) and run the same command again to resume.", file=sys.stderr)
        return 4
    metrics_path = f"{cfg.runtime.model_dir}/metrics.json"
    if trainer.already_finished:
        print(f"run {cfg.runtime.model_dir} already finished ({result['epochs_run']} epochs, best epoch "
              f"{result['best_epoch']}); left as it is. Metrics: {metrics_path}")
        print(format_table(result))
        return 0
    if trainer.dataset.skipped.total:
        print(trainer.dataset.skipped.summary())
    print()
    print(f"{trainer.dataset.describe()}")
    print(f"best epoch {result['best_epoch']} of {result['epochs_run']}; "
          f"{result['examples_per_sec']} training users/s; wall {result['wall_seconds']} s")
    print(format_table(result))
    print(f"\nwrote {metrics_path}")
    return 0


def run():
    app.run(main)


if __name__ == "__main__":
    run()
