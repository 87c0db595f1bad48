"""The item text table: one frozen-LLM vector per catalog item, cached on disk.

Every catalog title is tokenised, run through the frozen base decoder
(``QwenBackbone``), and mean-pooled over its real (non-padded) tokens, giving a
float32 array ``[num_items + 1, hidden_dim]`` whose row ``i`` belongs to item id
``i``; row 0 (padding) is zeros, and so is the row of an item whose title is
empty. This is KAR's pre-storage idea (docs/design.md §3-4): the per-user LLM pass
then reads one vector per history item instead of every title token.

The table is cached as ``item_text_table_<key>.npy`` plus a small ``.json``
(shape, settings, key) in ``cache_dir``. The key is a SHA-256 over the titles,
the decoder's weights and config, the tokenizer's vocabulary and the encoding
settings, so a rerun with the same inputs loads the file and never runs the
model, and any change (one title, one weight, another tokenizer) recomputes it.

Compute it with the base weights (before LoRA training, or with LoRA merged
out), outside any distribution strategy scope; the trainer then feeds the array
to the model (e.g. as a constant or a non-trainable embedding table).

Example::

    backbone = QwenBackbone.from_preset("tiny")
    tokenizer = build_tokenizer(titles=titles[1:])
    table = build_item_text_table(titles, backbone, tokenizer, cache_dir="/tmp/cache")
    table.shape  # (len(titles), 64); table[0] == 0
"""

import hashlib
import json
import os
import time

import numpy as np
import tensorflow as tf
import tf_keras as keras
from absl import logging

from coco_tf.utils import masked_mean

CACHE_FORMAT = 2  # 2: rows are item texts (llm.item_text_template), no longer always titles


def weights_fingerprint(backbone):
    """SHA-256 over a backbone's config and every variable (name, shape, bytes)."""
    h = hashlib.sha256()
    config = {k: v for k, v in backbone.get_config().items() if k not in ("name", "trainable")}
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, variable in backbone.weight_map().items():
        value = np.ascontiguousarray(variable.numpy())
        h.update(name.encode())
        h.update(str(value.shape).encode())
        h.update(value.tobytes())
    return h.hexdigest()


def _titles_list(titles):
    titles = ["" if t is None else str(t) for t in list(titles)]
    if not titles:
        raise ValueError("item text table: `titles` is empty; it needs the padding row 0 at least.")
    if titles[0].strip():
        raise ValueError(
            "item text table: titles[0] must be the padding entry ('' or None), got "
            f"{titles[0][:60]!r}; titles are indexed by item id and id 0 is padding."
        )
    return titles


def cache_key(titles, weights_hash, tokenizer_hash, sequence_length, pooling="mean"):
    """The cache key: SHA-256 of titles, weights, tokenizer and settings."""
    h = hashlib.sha256()
    for part in (
        f"format={CACHE_FORMAT}",
        f"sequence_length={sequence_length}",
        f"pooling={pooling}",
        f"weights={weights_hash}",
        f"tokenizer={tokenizer_hash}",
        f"num_titles={len(titles)}",
    ):
        h.update(part.encode())
        h.update(b"\0")
    for title in titles:
        h.update(title.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def _encode_titles(titles, backbone, tokenizer, sequence_length, batch_size, verbose):
    """Run the decoder over ``titles[1:]``; returns the ``[len(titles), hidden]`` table."""
    num_rows = len(titles)
    table = np.zeros((num_rows, backbone.hidden_dim), dtype=np.float32)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, sequence_length], tf.int32),
            tf.TensorSpec([None, sequence_length], tf.int32),
        ],
        reduce_retracing=True,
    )
    def pooled(token_ids, padding_mask):
        hidden = backbone({"token_ids": token_ids, "padding_mask": padding_mask}, training=False)
        return masked_mean(tf.cast(hidden, tf.float32), padding_mask)

    progbar = keras.utils.Progbar(num_rows - 1, verbose=verbose, unit_name="title")
    for start in range(1, num_rows, batch_size):
        stop = min(start + batch_size, num_rows)
        token_ids, padding_mask = tokenizer.encode(titles[start:stop], sequence_length)
        too_big = token_ids[padding_mask.astype(bool)] >= backbone.vocabulary_size
        if np.any(too_big):
            raise ValueError(
                f"Tokenizer ids reach {int(token_ids.max())}, beyond the decoder's vocabulary "
                f"({backbone.vocabulary_size}); use a tokenizer that fits the decoder "
                "(e.g. a smaller word-piece vocabulary_size) or the checkpoint's own tokenizer."
            )
        table[start:stop] = pooled(tf.constant(token_ids), tf.constant(padding_mask)).numpy()
        progbar.update(stop - 1)
    return table


PROMPT_SEQUENCE_LENGTH = 16


def encode_texts(texts, backbone, tokenizer, sequence_length: int = PROMPT_SEQUENCE_LENGTH) -> np.ndarray:
    """``[len(texts), d_llm]``: each text through the frozen decoder, mean-pooled over its tokens."""
    ids, mask = tokenizer.encode(list(texts), sequence_length)
    ids = np.where(ids < backbone.vocabulary_size, ids, 0)
    hidden = backbone({"token_ids": tf.constant(ids), "padding_mask": tf.constant(mask)}, training=False)
    return masked_mean(tf.cast(hidden, tf.float32), tf.constant(mask)).numpy()


def _paths(cache_dir, key):
    base = os.path.join(cache_dir, f"item_text_table_{key[:16]}")
    return base + ".npy", base + ".json"


def build_item_text_table(
    titles,
    backbone,
    tokenizer,
    cache_dir=None,
    sequence_length=32,
    batch_size=64,
    verbose=1,
    knowledge_tokens=0,
    knowledge_prompt="",
):
    """The ``[num_items + 1, hidden]`` float32 item text table (cached when ``cache_dir``).

    Args:
        titles: titles indexed by item id; ``titles[0]`` is the padding entry
            (``""`` or ``None``). A list, tuple or numpy array of str.
        backbone: the frozen base ``QwenBackbone``.
        tokenizer: a ``coco_tf.llm.tokenizer.TitleTokenizer`` whose ids fit the
            backbone's vocabulary.
        cache_dir: directory for the cached table, or None for no caching.
        sequence_length: tokens kept per title (longer titles are truncated).
        batch_size: titles per decoder call.
        verbose: 1 shows a progress bar, 0 is silent.
        knowledge_tokens: > 0: each row is instead what the decoder *writes* after
            ``titles[i] + knowledge_prompt`` (at most this many tokens, greedy, stopping at the
            end-of-text token), mean-pooled over the written tokens
            (``coco_tf.llm.knowledge.knowledge_vectors``; ``llm.item_text_source=written``).
        knowledge_prompt: the text appended before the decoder writes (``" |"``).

    Returns:
        float32 numpy array ``[len(titles), backbone.hidden_dim]``, row 0 zeros.
    """
    titles = _titles_list(titles)
    if sequence_length < 1 or batch_size < 1:
        raise ValueError(
            f"sequence_length and batch_size must be positive; got {sequence_length}, {batch_size}."
        )
    pooling = f"written:{knowledge_tokens}:{knowledge_prompt!r}" if knowledge_tokens > 0 else "mean"
    key = None
    if cache_dir:
        key = cache_key(
            titles, weights_fingerprint(backbone), tokenizer.fingerprint(), sequence_length, pooling
        )
        npy_path, json_path = _paths(cache_dir, key)
        if os.path.isfile(npy_path) and os.path.isfile(json_path):
            with open(json_path) as f:
                meta = json.load(f)
            table = np.load(npy_path)
            if meta.get("key") == key and table.shape == (len(titles), backbone.hidden_dim):
                logging.info("Item text table: cache hit %s %s", npy_path, table.shape)
                return table
            logging.warning("Item text table: ignoring inconsistent cache file %s", npy_path)

    started = time.time()
    if knowledge_tokens > 0:
        from coco_tf.llm.knowledge import knowledge_vectors

        table = np.zeros((len(titles), backbone.hidden_dim), np.float32)
        table[1:] = knowledge_vectors(backbone, tokenizer, titles[1:], knowledge_prompt, knowledge_tokens,
                                      sequence_length, batch_size)
    else:
        table = _encode_titles(titles, backbone, tokenizer, sequence_length, batch_size, verbose)
    table[0] = 0.0
    seconds = time.time() - started
    logging.info("Item text table: encoded %d titles in %.1f s", len(titles) - 1, seconds)

    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
        npy_path, json_path = _paths(cache_dir, key)
        # Per-process temp names and atomic replaces: grid processes sharing a cache may write at once.
        tmp = f"{npy_path}.{os.getpid()}.tmp.npy"
        np.save(tmp, table)
        os.replace(tmp, npy_path)
        tmp_json = f"{json_path}.{os.getpid()}.tmp"
        with open(tmp_json, "w") as f:
            json.dump(
                {
                    "key": key,
                    "shape": list(table.shape),
                    "dtype": "float32",
                    "sequence_length": sequence_length,
                    "pooling": pooling,
                    "tokenizer": tokenizer.kind,
                    "num_items": len(titles) - 1,
                    "seconds": round(seconds, 3),
                },
                f,
                indent=2,
            )
        os.replace(tmp_json, json_path)
    return table
