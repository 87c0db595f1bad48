"""coco_tf: CoCo, LLM-enhanced sequential recommendation on TensorFlow.

The training graph is Keras 2 (``tf_keras``): TensorFlow Recommenders and
parameter-server training with sharded variables need it (see docs/design.md §1).
Importing this package therefore sets ``TF_USE_LEGACY_KERAS=1`` before anything
imports TensorFlow, and fails loudly if TensorFlow was already imported with
Keras 3 behind ``tf.keras``.
"""

import os as _os
import sys as _sys

__version__ = "0.1.0"

if "tensorflow" not in _sys.modules:
    _os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _check_keras_2():
    import tensorflow as tf  # noqa: F401  (imported after the variable is set)

    version = getattr(tf.keras, "__version__", None)
    if version is None:
        import tf_keras

        version = tf_keras.__version__
    if not str(version).startswith("2."):
        raise ImportError(
            "coco_tf needs Keras 2 behind tf.keras (got Keras %s). TensorFlow was "
            "imported before coco_tf without TF_USE_LEGACY_KERAS=1. Set "
            "TF_USE_LEGACY_KERAS=1 in the environment, or import coco_tf before "
            "tensorflow." % version
        )


_check_keras_2()
