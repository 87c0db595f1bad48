"""Through the Trainer: the soft and dec ablations (with the mlp and concat fusions) train a few steps."""

import sys
import os

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from test_coco_train import _check, _run  # noqa: E402


@pytest.mark.parametrize(
    "overrides",
    [["coco.ablation=soft", "coco.fusion=mlp"], ["coco.ablation=dec", "coco.fusion=concat"]],
    ids=["soft-mlp", "dec-concat"],
)
def test_ablations_train(tmp_path, overrides):
    _, result = _run(tmp_path, "coco.method=coco", *overrides, epochs=1)
    _check(tmp_path, result)
