"""Planted test: titles carry signal the ids do not (cold items).

Catalog: 8 categories, each with 4 warm items and 3 cold items. A user's
history is warm items of one category; the last item (the test target) is a
cold item of the same category, which never occurs in training or validation.
The category shows only in the titles ("<category word> <category word>
<noise word>"). An id-only model cannot place a cold item (its id row is
never a positive); CoCo with ``model.item_text`` scores cold items by their
projected LLM text vector, so it should rank the target among the 7 items of
the user's category: R@10 close to 1 against 10/56 for a random ranker.
"""

import numpy as np
import pytest

from coco_tf.config import load_config
from coco_tf.data.dataset import SequenceDataset
from coco_tf.training.trainer import Trainer
from conftest import tiny_overrides  # noqa: E402  (tests/conftest.py: the tiny config)

CATEGORY_WORDS = ["amber", "basil", "cedar", "denim", "ember", "fjord", "grove", "heron"]
NOISE_WORDS = ["soft", "bold", "mini", "pro", "lite", "max", "eco", "neo"]
WARM, COLD = 4, 3


def planted_catalog(num_users=480, seed=0):
    rng = np.random.default_rng(seed)
    titles, warm, cold = [""], [], []
    for c, word in enumerate(CATEGORY_WORDS):
        ids = []
        for j in range(WARM + COLD):
            titles.append(f"{word} {word} {NOISE_WORDS[rng.integers(len(NOISE_WORDS))]}")
            ids.append(len(titles) - 1)
        warm.append(ids[:WARM])
        cold.append(ids[WARM:])
    sequences = []
    for _ in range(num_users):
        c = rng.integers(len(CATEGORY_WORDS))
        length = rng.integers(4, 8)
        history = rng.choice(warm[c], size=length, replace=True)
        sequences.append(np.concatenate([history, [rng.choice(cold[c])]]).astype(np.int64))
    return SequenceDataset(name="planted-cold", sequences=sequences, titles=titles)


# The tiny model on the planted catalog below (so no synthetic_* keys).
COMMON = tiny_overrides("train.loss=full_softmax", "train.epochs=6", drop=("data.synthetic_",))


def _test_recall10(tmp_path, name, *overrides):
    cfg = load_config(overrides=COMMON + [f"runtime.model_dir={tmp_path / name}", *overrides])
    return Trainer(cfg, dataset=planted_catalog()).run()["test"]["recall@10"]


@pytest.mark.slow  # three six-epoch training runs
def test_coco_with_item_text_ranks_cold_items_the_base_cannot(tmp_path):
    base = _test_recall10(tmp_path, "base", "coco.method=base")
    coco = _test_recall10(tmp_path, "coco", "coco.method=coco", "model.item_text=true")
    random_ranker = 10 / 56
    assert base < random_ranker, base  # cold ids only ever appear as negatives
    assert coco > 0.6, coco  # the target is among the 7 items of the user's category
    assert coco - base > 0.5, (coco, base)
