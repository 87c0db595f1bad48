"""Ranking metrics against a hand-written numpy reference."""

import numpy as np
import pytest
import tensorflow as tf

from coco_tf.metrics.ranking import RankingMetrics, metrics_from_ranks, popularity_metrics, target_ranks


def reference_rank(scores, target, history=None):
    """Pessimistic 0-based rank, by a plain loop: ties count as ranked above."""
    s = np.array(scores, np.float64)
    s[0] = -np.inf
    if history is not None:
        for h in history:
            if h != 0 and h != target:
                s[h] = -np.inf
    others = [j for j in range(1, len(s)) if j != target]
    return sum(1 for j in others if s[j] >= s[target])


def test_ranks_match_reference_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(64, 9)).astype(np.float32)  # many ties
    targets = rng.integers(1, 9, size=64)
    got = target_ranks(scores, targets).numpy()
    want = [reference_rank(s, t) for s, t in zip(scores, targets)]
    np.testing.assert_array_equal(got, want)


def test_hand_computed_example():
    #            pad   1    2    3    4
    scores = [[9.0, 0.1, 0.5, 0.5, 0.2]]
    assert target_ranks(scores, [3]).numpy()[0] == 1  # item 2 ties with 3 and counts above
    assert target_ranks(scores, [4]).numpy()[0] == 2
    assert target_ranks(scores, [1]).numpy()[0] == 3  # padding's 9.0 is ignored
    m = metrics_from_ranks(np.array([0, 1, 3, 7]), ks=[1, 2, 5])
    assert m["recall@1"] == pytest.approx(0.25)
    assert m["recall@2"] == pytest.approx(0.5)
    assert m["recall@5"] == pytest.approx(0.75)
    assert m["ndcg@2"] == pytest.approx((1 + 1 / np.log2(3)) / 4)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(5)) / 4)


def test_constant_scores_get_worst_rank():
    scores = np.zeros((3, 6), np.float32)
    np.testing.assert_array_equal(target_ranks(scores, [1, 3, 5]).numpy(), [4, 4, 4])


def test_k_larger_than_catalog():
    ranks = np.array([0, 2, 4])
    m = metrics_from_ranks(ranks, ks=[100])
    assert m["recall@100"] == 1.0
    assert m["ndcg@100"] == pytest.approx(np.mean([1.0, 1 / np.log2(4), 1 / np.log2(6)]))


def test_exclude_history_keeps_target():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(16, 12)).astype(np.float32)
    history = rng.integers(0, 12, size=(16, 5))
    targets = history[:, 2].copy()  # target also in history: must stay rankable
    targets[targets == 0] = 1
    got = target_ranks(scores, targets, history).numpy()
    want = [reference_rank(s, t, h) for s, t, h in zip(scores, targets, history)]
    np.testing.assert_array_equal(got, want)


def test_nan_gets_worst_rank():
    scores = np.array([[0.0, np.nan, 1.0, 2.0]], np.float32)
    assert target_ranks(scores, [1]).numpy()[0] == 3


def test_accumulator_matches_one_shot():
    rng = np.random.default_rng(2)
    ranks = rng.integers(0, 50, size=100)
    acc = RankingMetrics([5, 10, 20])
    for chunk in np.array_split(ranks, 7):
        acc.update(tf.constant(chunk))
    assert acc.count == 100
    assert acc.result() == pytest.approx(metrics_from_ranks(ranks, [5, 10, 20]))


def test_popularity_metrics_match_target_ranks_on_count_scores():
    # Items 1..6; counts 3, 1, 1, 0, 2, 1 (ties at 1): the same pessimistic ranks as target_ranks.
    train = [np.array([1, 1, 2, 5]), np.array([1, 3, 5, 6])]
    targets = np.array([1, 2, 4, 5, 6])
    counts = np.array([0, 3, 1, 1, 0, 2, 1], np.float32)
    ranks = target_ranks(tf.constant(np.tile(counts, (len(targets), 1))), tf.constant(targets)).numpy()
    np.testing.assert_array_equal(ranks, [0, 4, 5, 1, 4])
    expected = metrics_from_ranks(ranks, [1, 5])
    assert popularity_metrics(train, targets, num_items=6, ks=[1, 5]) == pytest.approx(expected)
