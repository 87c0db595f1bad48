"""Test setup: Keras 2 behind tf.keras before anything imports TensorFlow; the tiny config every
training test starts from; the ``slow`` marker.

The tiny config: :data:`TINY` (a 160-user, 60-item synthetic catalog, a one-block model of width
16, the CoCo prompt pool cut to 8 codewords and 3 prompts) and :func:`tiny_overrides`, which
returns it as ``--set`` overrides with a test's changes applied; the fixture :func:`tiny_config`
builds the :class:`~coco_tf.config.Config` in the test's ``tmp_path``.

>>> tiny_overrides("data.synthetic_num_users=400", drop=("coco.", "llm."))
>>> def test_x(tiny_config):
...     cfg = tiny_config("coco.method=kar", "train.epochs=3")

``slow``: the cluster, kill / resume, subprocess-heavy and multi-run training tests (each carries
its reason). ``python -m pytest -q -m "not slow" tests`` runs the rest in a few minutes; CI
(``.ci/run``, README's test command) runs everything.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import coco_tf  # noqa: E402,F401  (checks Keras 2)
import pytest  # noqa: E402

TINY = {
    "data.synthetic_num_users": "160",
    "data.synthetic_num_items": "60",
    "data.synthetic_max_len": "10",
    "data.max_len": "8",
    "model.embedding_dim": "16",
    "model.num_blocks": "1",
    "model.dropout": "0.1",
    "train.batch_size": "64",
    "train.learning_rate": "0.01",
    "coco.codebook_size": "8",
    "coco.max_prompts": "3",
    "coco.threshold": "0.2",
    "llm.lora_rank": "4",
    "runtime.progress": "false",
}


def tiny_overrides(*overrides: str, drop=()) -> list:
    """:data:`TINY` as ``key=value`` overrides, then ``overrides`` (``key=value``; a key of TINY
    takes the new value in place). ``drop``: prefixes of TINY's keys (``"coco."``, ``"model.num_blocks"``)
    left at their defaults."""
    out = {k: v for k, v in TINY.items() if not any(k.startswith(d) for d in drop)}
    for item in overrides:
        key, value = item.split("=", 1)
        out[key] = value
    return [f"{k}={v}" for k, v in out.items()]


@pytest.fixture
def tiny_config(tmp_path):
    """``build(*overrides, drop=())`` → the tiny :class:`Config` writing to ``tmp_path``."""
    from coco_tf.config import load_config

    def build(*overrides, drop=()):
        return load_config(overrides=tiny_overrides(f"runtime.model_dir={tmp_path}", *overrides, drop=drop))

    return build


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: cluster, kill / resume, subprocess and multi-run training tests (deselect with -m 'not slow'; CI runs them)"
    )
