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

# TensorFlow's start-up lines on a machine without an NVIDIA driver: informational, or (cuInit) an
# E-level line that only says there is no GPU. They are dropped; every other line is kept.
_STARTUP_NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "cudart_stub.cc",
    "oneDNN custom operations are on",
    "failed call to cuInit",
    "cpu_feature_guard.cc",
    "To enable the following instructions:",
)


def _no_nvidia_driver() -> bool:
    if _os.path.exists("/proc/driver/nvidia/version"):
        return False
    import ctypes.util

    return ctypes.util.find_library("cuda") is None and not any(
        _os.path.exists(_os.path.join(d, "libcuda.so.1"))
        for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/local/nvidia/lib64", "/usr/lib/wsl/lib")
    )


def _import_tensorflow_quietly():
    """Imports TensorFlow (and lets it look for GPUs) with stderr going to a temporary file, then
    writes back every line but the known no-GPU start-up noise. Only without an NVIDIA driver,
    only when TensorFlow is not imported yet, and not with COCO_TF_TF_STARTUP_LOGS=1."""
    if ("tensorflow" in _sys.modules or _os.environ.get("COCO_TF_TF_STARTUP_LOGS") == "1"
            or not _no_nvidia_driver()):
        return
    _os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    import tempfile

    try:
        _sys.stderr.flush()
        saved = _os.dup(2)
    except (OSError, ValueError):
        return
    with tempfile.TemporaryFile() as tmp:
        _os.dup2(tmp.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")  # the cuInit line comes from here
        finally:
            _os.dup2(saved, 2)
            _os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().decode(errors="replace").splitlines(keepends=True)
                    if not any(n in line for n in _STARTUP_NOISE)]
            if kept:
                _sys.stderr.write("".join(kept))
                _sys.stderr.flush()


_import_tensorflow_quietly()


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
