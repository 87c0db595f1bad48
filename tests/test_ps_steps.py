"""Steps per epoch: the counts the trainers schedule equal the batches the datasets yield."""

import numpy as np

from coco_tf.data.pipeline import train_dataset, training_examples
from coco_tf.data.synthetic import generate_synthetic
from coco_tf.training.ps_trainer import worker_steps_per_epoch
from coco_tf.data.pipeline import count_batches


def test_steps_per_epoch_match_sharded_datasets():
    seqs = generate_synthetic(num_users=300, num_items=80, min_len=3, max_len=30, seed=2).sequences
    hist, _ = training_examples(seqs, max_len=20)
    lengths = np.array([len(h) for h in hist])
    for bucket in (True, False):
        whole = sum(1 for _ in train_dataset(seqs, 20, 32, 0, bucket))
        assert count_batches(lengths, 32, 20, bucket) == whole
        for n in (1, 3, 10):
            actual = sum(
                sum(1 for _ in train_dataset(seqs, 20, 32, 0, bucket, shard=(n, k))) for k in range(n)
            )
            assert worker_steps_per_epoch(lengths, n, 32, 20, bucket) == actual
    # Small bucketed shards leave partial batches: counting the whole dataset in full batches
    # (the old PS epoch) would cover only part of the data.
    assert worker_steps_per_epoch(lengths, 10, 32, 20, True) > count_batches(lengths, 32, 20, True)
