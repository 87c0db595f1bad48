"""Item text table: shape, padding row, pooling, and the on-disk cache."""

import coco_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

import glob
import json
import os

import numpy as np
import pytest

from coco_tf.llm import item_text_table as itt
from coco_tf.llm.tokenizer import build_tokenizer
from coco_tf.llm.qwen_decoder import QwenBackbone

TITLES = [""] + [
    f"{color} {thing} {size}"
    for color in ("red", "blue", "green", "black", "white")
    for thing in ("running shoe", "face cream", "lipstick", "phone charger")
    for size in ("small", "XL")
]
TITLES[7] = ""  # an item with no title


@pytest.fixture(scope="module")
def backbone():
    return QwenBackbone.from_preset("tiny")


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(titles=TITLES, vocabulary_size=500)


@pytest.fixture
def counted(monkeypatch):
    """Counts how often the decoder pass runs."""
    calls = []
    real = itt._encode_titles

    def wrapper(titles, *args, **kwargs):
        calls.append(len(titles))
        return real(titles, *args, **kwargs)

    monkeypatch.setattr(itt, "_encode_titles", wrapper)
    return calls


def test_shape_padding_row_and_pooling(backbone, tokenizer):
    table = itt.build_item_text_table(TITLES, backbone, tokenizer, sequence_length=12, batch_size=8, verbose=0)
    assert table.shape == (len(TITLES), backbone.hidden_dim) and table.dtype == np.float32
    assert not np.any(table[0]) and not np.any(table[7])
    assert np.all(np.abs(table[1:7]).sum(axis=1) > 0)
    # Masked mean of the decoder's hidden states over the title's own tokens.
    ids, mask = tokenizer.encode([TITLES[3]], 12)
    n = mask.sum()
    hidden = backbone({"token_ids": ids[:, :n], "padding_mask": mask[:, :n]}).numpy()[0]
    np.testing.assert_allclose(table[3], hidden.mean(axis=0), atol=1e-5)
    # Independent of batching and padding length.
    other = itt.build_item_text_table(TITLES, backbone, tokenizer, sequence_length=20, batch_size=3, verbose=0)
    np.testing.assert_allclose(other, table, atol=1e-5)


def test_cache_hit_and_misses(backbone, tokenizer, tmp_path, counted):
    cache = str(tmp_path / "cache")
    first = itt.build_item_text_table(TITLES, backbone, tokenizer, cache_dir=cache, verbose=0)
    assert len(counted) == 1
    assert len(glob.glob(os.path.join(cache, "*.npy"))) == 1
    meta = json.loads(open(glob.glob(os.path.join(cache, "*.json"))[0]).read())
    assert meta["shape"] == [len(TITLES), backbone.hidden_dim] and meta["num_items"] == len(TITLES) - 1

    second = itt.build_item_text_table(TITLES, backbone, tokenizer, cache_dir=cache, verbose=0)
    assert len(counted) == 1  # served from disk, the model did not run
    np.testing.assert_array_equal(first, second)

    changed = list(TITLES)
    changed[5] = "purple running shoe small"
    itt.build_item_text_table(changed, backbone, tokenizer, cache_dir=cache, verbose=0)
    assert len(counted) == 2  # one title changed: recomputed

    itt.build_item_text_table(TITLES, backbone, tokenizer, cache_dir=cache, sequence_length=8, verbose=0)
    assert len(counted) == 3  # settings are part of the key

    other_weights = QwenBackbone.from_preset("tiny")
    itt.build_item_text_table(TITLES, other_weights, tokenizer, cache_dir=cache, verbose=0)
    assert len(counted) == 4  # other weights: recomputed
    itt.build_item_text_table(TITLES, backbone, tokenizer, cache_dir=cache, verbose=0)
    assert len(counted) == 4  # the first entry is still there


def test_clear_errors(backbone, tokenizer):
    with pytest.raises(ValueError, match=r"titles\[0\] must be the padding entry"):
        itt.build_item_text_table(TITLES[1:], backbone, tokenizer, verbose=0)
    small = QwenBackbone.from_preset("tiny", vocabulary_size=10)
    with pytest.raises(ValueError, match="beyond the decoder's vocabulary"):
        itt.build_item_text_table(TITLES, small, tokenizer, verbose=0)
