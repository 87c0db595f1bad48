"""Through the Trainer: the soft and dec ablations (with the mlp and concat fusions) learn (their losses fall)."""

import sys
import os

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from test_coco_train import _learns  # noqa: E402


@pytest.mark.slow  # one 3-epoch CoCo training per case (test_coco_train keeps CoCo's own in the fast run)
@pytest.mark.parametrize(
    "overrides",
    [["coco.ablation=soft", "coco.fusion=mlp"], ["coco.ablation=dec", "coco.fusion=concat"]],
    ids=["soft-mlp", "dec-concat"],
)
def test_ablations_learn(tmp_path, overrides):
    _learns(tmp_path, "coco.method=coco", *overrides)
