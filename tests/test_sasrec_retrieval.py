"""SASRec query tower and the retrieval losses, against numpy by hand."""

import numpy as np
import pytest
import tensorflow as tf

from coco_tf.backbones.base import last_valid_index, recency_positions
from coco_tf.methods.retrieval_model import SequentialRetrievalModel
from coco_tf.tasks.retrieval import NextItemRetrieval


def make_model(loss="full_softmax", **kw):
    tf.keras.utils.set_random_seed(0)
    return SequentialRetrievalModel(30, embedding_dim=8, max_len=6, loss=loss,
                                    backbone_kwargs={"dropout": 0.0, "num_blocks": 2}, **kw)


def test_causal_mask_later_items_do_not_change_earlier_outputs():
    model = make_model()
    h1 = tf.constant([[3, 4, 5, 6, 0, 0]], tf.int64)
    h2 = tf.constant([[3, 4, 9, 11, 0, 0]], tf.int64)
    s1, s2 = model.backbone.encode(h1).numpy(), model.backbone.encode(h2).numpy()
    np.testing.assert_allclose(s1[0, :2], s2[0, :2], atol=1e-6)
    assert np.abs(s1[0, 2] - s2[0, 2]).max() > 1e-3  # and the changed position does change


def test_padding_layout_and_length_do_not_matter():
    model = make_model()
    right = tf.constant([[3, 4, 5, 0, 0, 0]], tf.int64)
    left = tf.constant([[0, 0, 0, 3, 4, 5]], tf.int64)
    short = tf.constant([[3, 4, 5]], tf.int64)
    u = [model({"history": h}).numpy() for h in (right, left, short)]
    np.testing.assert_allclose(u[0], u[1], atol=1e-5)
    np.testing.assert_allclose(u[0], u[2], atol=1e-5)


def test_recency_and_last_index():
    valid = tf.constant([[True, True, False], [False, True, True], [False, False, False]])
    np.testing.assert_array_equal(recency_positions(valid).numpy(), [[1, 0, 0], [2, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(last_valid_index(valid).numpy(), [1, 2, 0])


def np_log_softmax(x):
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def test_full_softmax_loss_by_hand():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(5, 4)).astype(np.float32)
    table = rng.normal(size=(7, 4)).astype(np.float32)
    targets = np.array([1, 6, 3, 3, 2])
    got = NextItemRetrieval("full_softmax", temperature=0.5)(q, targets, table).numpy()
    logits = q @ table[1:].T / 0.5  # padding column excluded
    want = -np_log_softmax(logits)[np.arange(5), targets - 1]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_in_batch_loss_by_hand_with_accidental_hits():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(4, 3)).astype(np.float32)
    table = rng.normal(size=(9, 3)).astype(np.float32)
    targets = np.array([2, 5, 2, 8])  # rows 0 and 2 share item 2: not each other's negative
    got = NextItemRetrieval("in_batch", temperature=1.0)(q, targets, table).numpy()
    cands = table[targets]
    scores = q @ cands.T
    want = []
    for i in range(4):
        keep = [j for j in range(4) if j == i or targets[j] != targets[i]]
        want.append(-np_log_softmax(scores[i, keep][None])[0, keep.index(i)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_compute_loss_uses_only_valid_positions():
    model = make_model()
    h = tf.constant([[3, 4, 5, 0], [7, 8, 0, 0]], tf.int64)
    t = tf.constant([[4, 5, 6, 0], [8, 9, 0, 0]], tf.int64)
    states = model.backbone.encode(h).numpy()
    table = model.item_table().numpy()
    queries = np.stack([states[0, 0], states[0, 1], states[0, 2], states[1, 0], states[1, 1]])
    logits = queries @ table[1:].T
    want = -np_log_softmax(logits)[np.arange(5), np.array([4, 5, 6, 8, 9]) - 1].mean()
    got = model.compute_loss({"history": h, "targets": t}, training=False).numpy()
    assert got == pytest.approx(want, rel=1e-5)


def test_gradients_reach_both_towers_and_unknown_loss_is_rejected():
    model = make_model(loss="in_batch")
    batch = {"history": tf.constant([[3, 4, 5], [7, 8, 1]], tf.int64),
             "targets": tf.constant([[4, 5, 6], [8, 1, 2]], tf.int64)}
    with tf.GradientTape() as tape:
        loss = model.compute_loss(batch, training=True)
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(g is not None for g in grads)
    with pytest.raises(ValueError, match="allowed values: full_softmax, in_batch"):
        NextItemRetrieval("bpr")


def test_loss_normalizer_weighs_every_position_equally():
    """With a constant normaliser, the loss is sum / normaliser, not a per-batch mean."""
    model = make_model()
    short = {"history": tf.constant([[3, 0], [7, 0]], tf.int64), "targets": tf.constant([[4, 0], [8, 0]], tf.int64)}
    long = {"history": tf.constant([[3, 4, 5, 6]], tf.int64), "targets": tf.constant([[4, 5, 6, 7]], tf.int64)}
    mean_short = model.compute_loss(short).numpy()
    mean_long = model.compute_loss(long).numpy()
    model.loss_normalizer = 3.0  # e.g. the average number of positions per batch
    assert model.compute_loss(short).numpy() == pytest.approx(mean_short * 2 / 3.0, rel=1e-5)
    assert model.compute_loss(long).numpy() == pytest.approx(mean_long * 4 / 3.0, rel=1e-5)
