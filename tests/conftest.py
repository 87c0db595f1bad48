"""Test setup: Keras 2 behind tf.keras before anything imports TensorFlow."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import coco_tf  # noqa: E402,F401  (checks Keras 2)
