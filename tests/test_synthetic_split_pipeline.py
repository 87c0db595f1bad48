import collections

import numpy as np

from coco_tf.data.pipeline import eval_dataset, pad_histories, train_dataset, training_examples
from coco_tf.data.split import leave_one_out
from coco_tf.data.synthetic import generate_synthetic


def test_synthetic_is_deterministic_and_sized():
    a = generate_synthetic(num_users=300, num_items=200, min_len=4, max_len=12, seed=3)
    b = generate_synthetic(num_users=300, num_items=200, min_len=4, max_len=12, seed=3)
    c = generate_synthetic(num_users=300, num_items=200, min_len=4, max_len=12, seed=4)
    assert a.num_users == 300 and a.num_items == 200
    assert all(4 <= len(s) <= 12 for s in a.sequences)
    assert all(np.array_equal(x, y) for x, y in zip(a.sequences, b.sequences))
    assert a.titles == b.titles
    assert not all(np.array_equal(x, y) for x, y in zip(a.sequences, c.sequences))
    assert all(1 <= i <= 200 for s in a.sequences for i in s)


def test_synthetic_titles_carry_the_users_taste():
    ds = generate_synthetic(num_users=1000, num_items=600, seed=5)
    brand = ds.attributes["brand"]
    # The brand in a title: the first word(s) of the title match the brand vocabulary.
    for i in (1, 50, 600):
        assert ds.titles[i].startswith(ds.attribute_vocab["brand"][brand[i]])
    # Items a user buys share brands far more often than random pairs do.
    same = np.mean([brand[s[-1]] in set(brand[s[:-1]]) for s in ds.sequences])
    rand = np.mean([brand[np.random.default_rng(0).integers(1, 601)] in set(brand[s[:-1]]) for s in ds.sequences])
    assert same > rand + 0.2
    # Rare items are bought: the rarest half of the catalog still gets interactions.
    counts = np.bincount(np.concatenate(ds.sequences), minlength=601)[1:]
    assert np.sort(counts)[:300].sum() > 0.05 * counts.sum()


def test_leave_one_out():
    seqs = [np.array([1, 2, 3, 4, 5]), np.array([7, 8]), np.array([9, 10, 11])]
    split = leave_one_out(seqs)
    np.testing.assert_array_equal(split.train[0], [1, 2, 3])
    np.testing.assert_array_equal(split.valid.histories[0], [1, 2, 3])
    assert split.valid.targets[0] == 4
    np.testing.assert_array_equal(split.test.histories[0], [1, 2, 3, 4])
    assert split.test.targets[0] == 5
    np.testing.assert_array_equal(split.train[1], [7, 8])  # too short: training only
    assert split.train_only_users == 1
    np.testing.assert_array_equal(split.valid.users, [0, 2])
    assert split.test.targets[1] == 11 and split.valid.targets[1] == 10
    np.testing.assert_array_equal(split.train[2], [9])


def test_training_examples_shift_and_truncate():
    hist, tgt = training_examples([np.arange(1, 8), np.array([5]), np.array([3, 4])], max_len=4)
    np.testing.assert_array_equal(hist[0], [3, 4, 5, 6])
    np.testing.assert_array_equal(tgt[0], [4, 5, 6, 7])
    assert len(hist) == 2  # a one-item sequence predicts nothing
    np.testing.assert_array_equal(hist[1], [3])
    np.testing.assert_array_equal(tgt[1], [4])


def test_train_dataset_covers_every_example_once_per_epoch():
    ds_seqs = generate_synthetic(num_users=500, num_items=100, min_len=3, max_len=40, seed=1).sequences
    hist, tgt = training_examples(ds_seqs, max_len=20)
    want = collections.Counter(tuple(h) for h in hist)
    for bucket in (True, False):
        got = collections.Counter()
        for batch in train_dataset(ds_seqs, max_len=20, batch_size=32, seed=0, bucket_by_length=bucket):
            h, t = batch["history"].numpy(), batch["targets"].numpy()
            assert h.shape == t.shape and h.shape[0] <= 32 and h.shape[1] <= 20
            np.testing.assert_array_equal(h != 0, t != 0)  # padding aligned
            for hr, tr in zip(h, t):
                hv, tv = hr[hr != 0], tr[tr != 0]
                np.testing.assert_array_equal(hv[1:], tv[:-1])  # position i predicts item i+1
                got[tuple(hv)] += 1
        assert got == want


def test_eval_dataset_right_pads_most_recent():
    padded = pad_histories([np.arange(1, 8), np.array([4])], max_len=5)
    np.testing.assert_array_equal(padded, [[3, 4, 5, 6, 7], [4, 0, 0, 0, 0]])
    split = leave_one_out([np.arange(1, 10)] * 3)
    batch = next(iter(eval_dataset(split.test, max_len=5, batch_size=2)))
    assert batch["history"].shape == (2, 5) and list(batch["target"].numpy()) == [9, 9]
