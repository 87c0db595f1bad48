"""The pretraining corpus: item texts split into training and a fixed held-out 5%.

The held-out items are a function of the catalog size alone (a permutation with
a fixed seed, independent of ``train.seed``), so pretraining, the probes and any
rerun hold out the same items. Only item metadata is read (``item_texts``),
never user sequences.

Example::

    split = split_corpus(texts)                   # texts[0] == "" (padding)
    split.train_ids, split.heldout_ids            # int arrays of item ids with text
"""

from __future__ import annotations

import dataclasses

import numpy as np

HELDOUT_FRACTION = 0.05
HELDOUT_SEED = 17


@dataclasses.dataclass
class CorpusSplit:
    train_ids: np.ndarray    # int64 [n_train], item ids with non-empty text
    heldout_ids: np.ndarray  # int64 [n_heldout]


def heldout_items(num_items: int) -> np.ndarray:
    """Sorted item ids (``1..num_items``) of the fixed held-out 5% (at least one when num_items >= 2)."""
    if num_items < 2:
        return np.zeros(0, np.int64)
    count = max(1, int(round(HELDOUT_FRACTION * num_items)))
    order = np.random.default_rng(HELDOUT_SEED).permutation(num_items) + 1
    return np.sort(order[:count]).astype(np.int64)


def split_corpus(texts) -> CorpusSplit:
    """Training / held-out item ids among items with non-empty text."""
    num_items = len(texts) - 1
    heldout = np.zeros(num_items + 1, bool)
    heldout[heldout_items(num_items)] = True
    has_text = np.array([bool(str(t).strip()) for t in texts])
    has_text[0] = False
    ids = np.arange(num_items + 1)
    return CorpusSplit(ids[has_text & ~heldout].astype(np.int64), ids[has_text & heldout].astype(np.int64))
