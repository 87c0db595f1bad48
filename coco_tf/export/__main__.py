"""``python -m coco_tf.export``: export a trained model as a TF Serving SavedModel.

    python -m coco_tf.export --model_dir runs/coco --out exports/coco
    python -m coco_tf.export --model_dir runs/coco --out exports/coco --set export.top_k=10,50

Reads ``<model_dir>/config.yaml`` and the best checkpoint (``<model_dir>/best``),
merges LoRA and writes ``<out>/<version>/`` (default version: one more than the
largest under ``--out``). Signatures: ``serving_default`` (top k of
``export.top_k[0]``), ``top_<k>`` for every k, ``user_embedding``.

Flags:
  --model_dir DIR   a directory written by python -m coco_tf.train.
  --out DIR         the export base directory (TF Serving's --model_base_path).
  --version N       version number (default: next free one); an existing one is refused.
  --set KEY=VALUE   override a config key of config.yaml (e.g. export.top_k=10,20).

Exit status: 0 done, 2 bad flags, config or model directory.
"""

from __future__ import annotations

import sys

import coco_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Training output directory (config.yaml, best/).")
flags.DEFINE_string("out", None, "Export base directory; the SavedModel goes to <out>/<version>/.")
flags.DEFINE_integer("version", None, "Version number (default: one more than the largest under --out).")
flags.DEFINE_multi_string("set", [], "Override a config key: dotted.key=value (repeatable).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    for name in ("model_dir", "out"):
        if not getattr(FLAGS, name):
            print(f"error: --{name} is required", file=sys.stderr)
            return 2
    from coco_tf.config import ConfigError
    from coco_tf.export.exporter import ExportError, export_saved_model

    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    try:
        path = export_saved_model(FLAGS.model_dir, FLAGS.out, FLAGS.version, FLAGS.set)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def run():
    app.run(main)


if __name__ == "__main__":
    run()
