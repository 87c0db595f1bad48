"""Title tokenizers: the no-download word-piece default and Qwen's BPE from local files."""

import coco_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

import json

import numpy as np
import pytest
import tensorflow as tf

from coco_tf.llm.tokenizer import (
    QwenTitleTokenizer,
    WordPieceTitleTokenizer,
    build_tokenizer,
)

TITLES = [
    "Nike Air Zoom Pegasus 39, Men's Running Shoe",
    "L'Oréal Paris Revitalift Anti-Wrinkle Cream (50ml)",
    "Sony WH-1000XM5 Wireless Noise Cancelling Headphones",
    "Maybelline Lash Sensational Mascara, Very Black",
    "CeraVe Moisturizing Cream 16 oz",
    "Neutrogena Hydro Boost Water Gel",
    "Anker PowerCore 10000 Portable Charger",
    "Crest 3D White Toothpaste, 2 Pack",
]


@pytest.fixture(scope="module")
def word_piece():
    return build_tokenizer(titles=[""] + TITLES, vocabulary_size=400)


def test_word_piece_round_trips_catalog_titles(word_piece):
    assert isinstance(word_piece, WordPieceTitleTokenizer)
    ids, mask = word_piece.encode(TITLES, sequence_length=96)
    assert ids.shape == mask.shape == (len(TITLES), 96) and ids.dtype == np.int32
    assert mask.sum(axis=1).max() < 96  # nothing truncated
    assert np.all(ids[mask == 0] == 0)  # [PAD] = 0 on the right
    assert not np.any(ids == 1)  # no [UNK]: every title is in the learned vocabulary
    assert word_piece.decode(ids, mask) == word_piece.normalize(TITLES)
    assert word_piece.normalize(["L'Oréal (50ml)"]) == ["l ' oreal ( 50ml )"]
    assert word_piece.vocabulary_size <= 400


def test_word_piece_is_deterministic_and_savable(word_piece, tmp_path):
    again = build_tokenizer(titles=[""] + TITLES, vocabulary_size=400)
    assert again.vocabulary == word_piece.vocabulary
    assert again.fingerprint() == word_piece.fingerprint()
    path = str(tmp_path / "vocab.txt")
    word_piece.save_vocabulary(path)
    loaded = WordPieceTitleTokenizer.from_file(path)
    assert loaded.fingerprint() == word_piece.fingerprint()
    other = build_tokenizer(titles=TITLES[:3], vocabulary_size=400)
    assert other.fingerprint() != word_piece.fingerprint()


def test_truncation_and_tf_data(word_piece):
    ids, mask = word_piece.encode(TITLES[:2], sequence_length=4)
    assert ids.shape == (2, 4) and mask.sum() == 8
    eager = word_piece.tokenize(TITLES[:3])
    ds = tf.data.Dataset.from_tensor_slices(TITLES[:3]).batch(3).map(word_piece.tokenize)
    in_graph = next(iter(ds))
    assert eager.to_list() == in_graph.to_list()


def test_errors_are_clear():
    with pytest.raises(ValueError, match="needs catalog `titles`"):
        build_tokenizer()
    with pytest.raises(ValueError, match="no non-empty titles"):
        build_tokenizer(titles=["", "  "])
    with pytest.raises(ValueError, match=r"must start with '\[PAD\]'"):
        WordPieceTitleTokenizer(["a", "b"])


def _bytes_to_unicode():
    """GPT-2 / Qwen byte-level alphabet."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


MERGES = ["Ġ s", "h o", "ho e", "Ġs hoe", "r e", "re d"]


def _tiny_qwen_vocab():
    vocab = {c: i for i, c in enumerate(sorted(set(_bytes_to_unicode())))}
    for merge in MERGES:
        vocab[merge.replace(" ", "")] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    vocab["<|im_end|>"] = len(vocab)
    return vocab


def test_qwen_bpe_from_local_vocab_and_merges(tmp_path):
    vocab = _tiny_qwen_vocab()
    tok_dir = tmp_path / "ckpt" / "tokenizer"
    tok_dir.mkdir(parents=True)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    tok = build_tokenizer(checkpoint_dir=str(tmp_path / "ckpt"))
    assert isinstance(tok, QwenTitleTokenizer)
    texts = ["red shoe", "Café shoe!", ""]
    ids, mask = tok.encode(texts, sequence_length=8)
    assert ids[0, : mask[0].sum()].tolist() == [vocab["red"], vocab["Ġshoe"]]  # merges applied
    assert np.all(ids[mask == 0] == vocab["<|endoftext|>"])
    assert tok.decode(ids, mask) == texts  # byte-level BPE is lossless
    assert tok.vocabulary_size == len(vocab)


def test_qwen_bpe_from_tokenizer_json(tmp_path):
    vocab = _tiny_qwen_vocab()
    special = {k: vocab.pop(k) for k in ("<|endoftext|>", "<|im_end|>")}
    data = {
        "model": {"type": "BPE", "vocab": vocab, "merges": [m.split(" ") for m in MERGES]},
        "added_tokens": [{"id": i, "content": c} for c, i in special.items()],
    }
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    tok = QwenTitleTokenizer.from_directory(str(tmp_path))
    ids, mask = tok.encode(["red shoe<|im_end|>"], 8)
    assert ids[0, : mask[0].sum()].tolist() == [vocab["red"], vocab["Ġshoe"], special["<|im_end|>"]]


def test_qwen_missing_files_lists_what_was_searched(tmp_path):
    with pytest.raises(ValueError, match="No Qwen tokenizer files.*merges.txt.*tokenizer.json"):
        build_tokenizer(checkpoint_dir=str(tmp_path))
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0}))
    (tmp_path / "merges.txt").write_text("")
    with pytest.raises(ValueError, match="lacks special tokens"):
        build_tokenizer(checkpoint_dir=str(tmp_path))
