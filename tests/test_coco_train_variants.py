"""Through the Trainer: the con ablation, and softmax selection with a random codebook, the
full-softmax loss and a random user-level position, learn (their losses fall)."""

import sys
import os

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from test_coco_train import _learns  # noqa: E402


@pytest.mark.slow  # one 3-epoch CoCo training per case (test_coco_train keeps CoCo's own in the fast run)
@pytest.mark.parametrize(
    "overrides",
    [["coco.ablation=con"],
     ["coco.selection=softmax", "coco.codebook_init=random", "train.loss=full_softmax", "coco.user_position=random"]],
    ids=["con", "softmax-random-fullsoftmax-randomposition"],
)
def test_variants_learn(tmp_path, overrides):
    _learns(tmp_path, "coco.method=coco", *overrides)
