"""Leave-one-out split: last item = test, second-last = validation, rest = training.

For a user ``[i1, ..., in]`` (n >= 3):

* training sequence ``[i1, ..., i(n-2)]``: every prefix predicts its next item;
* validation: history ``[i1, ..., i(n-2)]`` -> target ``i(n-1)``;
* test: history ``[i1, ..., i(n-1)]`` -> target ``in``.

Users with fewer than 3 items cannot be evaluated; their whole sequence is used
for training and they are counted in ``Split.train_only_users``.
"""

from __future__ import annotations

import dataclasses
from typing import List

import numpy as np


@dataclasses.dataclass
class EvalSet:
    """Histories (ragged, time order) and the next item to predict."""

    histories: List[np.ndarray]
    targets: np.ndarray  # int64 [num_users]
    users: np.ndarray  # int64 [num_users], index into the dataset's sequences


@dataclasses.dataclass
class Split:
    train: List[np.ndarray]
    valid: EvalSet
    test: EvalSet
    train_only_users: int


def leave_one_out(sequences: List[np.ndarray]) -> Split:
    train, v_hist, v_tgt, t_hist, t_tgt, users = [], [], [], [], [], []
    train_only = 0
    for u, seq in enumerate(sequences):
        if len(seq) < 3:
            train.append(seq)
            train_only += 1
            continue
        train.append(seq[:-2])
        v_hist.append(seq[:-2])
        v_tgt.append(seq[-2])
        t_hist.append(seq[:-1])
        t_tgt.append(seq[-1])
        users.append(u)
    users = np.asarray(users, np.int64)
    return Split(
        train=train,
        valid=EvalSet(v_hist, np.asarray(v_tgt, np.int64), users),
        test=EvalSet(t_hist, np.asarray(t_tgt, np.int64), users),
        train_only_users=train_only,
    )


def training_item_mask(train: List[np.ndarray], num_items: int) -> np.ndarray:
    """bool ``[num_items + 1]``: the items that occur in the training sequences (the rest are cold)."""
    seen = np.zeros([num_items + 1], bool)
    if train:
        seen[np.concatenate([np.asarray(seq, np.int64) for seq in train])] = True
    return seen
