"""What the decoder writes about an item: greedy continuations of its title (knowledge generation).

A decoder pretrained on ``{title} | {categories}`` (``python -m coco_tf.llm.pretrain``) learns to
predict an item's category path from its title. Mean-pooling the hidden states of the title alone
(the item text table) hides most of that: on Amazon Beauty the pooled title vectors of the pretrained
``tiny`` decoder reach a category agreement of 0.41, below a bag-of-words TF-IDF (0.49). Letting the
decoder *write* what follows the title (it writes a category path and stops) and pooling over what
it wrote shows the knowledge: 0.55, and among the 5% of items held out of pretraining 0.41 against
TF-IDF's 0.31 (docs/results.md §8). This is KAR's knowledge
generation (an LLM writes about the item, an encoder reads it) with the catalog-adapted decoder as
both.

The continuation starts from the title followed by :func:`knowledge_prompt` of the template: the
literal text between ``{title}`` and the next placeholder (``" |"`` for ``{title} | {categories}``),
so the decoder continues where pretraining taught it the category comes.

Example::

    ids, mask, start = continue_texts(backbone, tokenizer, ["OPI Nail Lacquer |"], num_tokens=16)
    tokenizer.decode(ids, mask)  # ['opi nail lacquer | beauty > makeup > nails > nail polish ...']
    table = knowledge_vectors(backbone, tokenizer, titles, prompt=" |", num_tokens=16)  # [n, d_llm]
"""

from __future__ import annotations

import re

import numpy as np
import tensorflow as tf

from coco_tf.utils import masked_mean


def knowledge_prompt(template: str) -> str:
    """The text the decoder continues after a title: ``template``'s literal text between
    ``{title}`` and the next placeholder (or the end), right-stripped
    (``"{title} | {categories}"`` → ``" |"``); ``""`` when ``{title}`` is absent."""
    at = template.find("{title}")
    if at < 0:
        return ""
    rest = template[at + len("{title}"):]
    nxt = re.search(r"\{[a-z_]+\}", rest)
    return (rest[:nxt.start()] if nxt else rest).rstrip()


def _lm_logits(backbone, hidden):
    """The tied LM head on ``hidden [B, d]`` → ``[B, V]`` (the token embeddings, transposed)."""
    embeddings = tf.cast(backbone.token_embedding.embeddings, tf.float32)
    return tf.matmul(tf.cast(hidden, tf.float32), embeddings, transpose_b=True)


def continue_texts(backbone, tokenizer, texts, num_tokens: int, sequence_length: int = 32, batch_size: int = 256):
    """Greedy continuation of each text by at most ``num_tokens`` tokens.

    Args:
        backbone: a ``QwenBackbone`` with a tied LM head (``tie_word_embeddings``).
        tokenizer: a ``TitleTokenizer`` whose ids fit the backbone.
        texts: list of str (each truncated to ``sequence_length`` tokens first).

    A row stops early when the decoder writes the tokenizer's end-of-text token (``end_id``, which
    pretraining teaches it to put after every item text); the end token itself is not kept.

    Returns:
        ``(ids, mask, start)``: int32 ``[n, sequence_length + num_tokens]`` right-padded ids and
        mask of text + continuation, and int ``[n]`` the first generated position of each row.
    """
    if not backbone.tie_word_embeddings:
        raise ValueError("knowledge generation needs the tied LM head (tie_word_embeddings); this decoder unties it")
    ids, mask = tokenizer.encode(list(texts), sequence_length)
    ids = np.concatenate([ids, np.full([len(ids), num_tokens], tokenizer.pad_id, np.int32)], axis=1)
    mask = np.concatenate([mask, np.zeros([len(mask), num_tokens], np.int32)], axis=1)
    start = mask.sum(1).astype(np.int64)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)] * 2 + [tf.TensorSpec([None], tf.int32)],
                 reduce_retracing=True)
    def next_token(token_ids, padding_mask, last):
        hidden = backbone({"token_ids": token_ids, "padding_mask": padding_mask}, training=False)
        return tf.argmax(_lm_logits(backbone, tf.gather(hidden, last, batch_dims=1)), -1, output_type=tf.int32)

    # No KV cache: each step reruns the batch, cut to its longest row so far (rows sorted by length,
    # so a batch holds texts of similar length). Causal attention makes the cut exact.
    order = np.argsort(start, kind="stable")
    for lo in range(0, len(ids), batch_size):
        rows = order[lo:lo + batch_size]
        length = start[rows].copy()
        writing = length > 0  # an empty text has nothing to continue
        for _ in range(num_tokens):
            if not writing.any():
                break
            cut = int(length.max())
            nxt = next_token(tf.constant(ids[rows, :cut]), tf.constant(mask[rows, :cut]),
                             tf.constant(np.maximum(length - 1, 0), tf.int32)).numpy()
            if tokenizer.end_id is not None:  # the decoder ends its text: stop that row, the end unwritten
                writing &= nxt != tokenizer.end_id
            ids[rows[writing], length[writing]] = nxt[writing]
            mask[rows[writing], length[writing]] = 1
            length = length + writing
    return ids, mask, start


def knowledge_vectors(backbone, tokenizer, texts, prompt: str, num_tokens: int, sequence_length: int = 32,
                      batch_size: int = 256) -> np.ndarray:
    """float32 ``[len(texts), d_llm]``: each text + ``prompt`` continued by the decoder
    (:func:`continue_texts`), mean-pooled over the tokens it wrote (their hidden states attend to
    the text as well); over the text itself where it wrote nothing; 0 for an empty text.

    Pooling over the written tokens only is the measured choice (docs/results.md §8): the title's own
    words are what a bag-of-words already has, the written ones are what the decoder adds."""
    ids, mask, start = continue_texts(backbone, tokenizer, [t + prompt if t.strip() else "" for t in texts],
                                      num_tokens, sequence_length, batch_size)
    written = mask * (np.arange(ids.shape[1])[None, :] >= start[:, None])
    weights = np.where(written.sum(1, keepdims=True) > 0, written, mask).astype(np.int32)

    @tf.function(input_signature=[tf.TensorSpec([None, ids.shape[1]], tf.int32)] * 3)
    def pooled(token_ids, padding_mask, pool_mask):
        hidden = backbone({"token_ids": token_ids, "padding_mask": padding_mask}, training=False)
        return masked_mean(tf.cast(hidden, tf.float32), pool_mask)

    out = [pooled(tf.constant(ids[s:s + batch_size]), tf.constant(mask[s:s + batch_size]),
                  tf.constant(weights[s:s + batch_size])).numpy() for s in range(0, len(ids), batch_size)]
    table = np.concatenate(out) if out else np.zeros([0, backbone.hidden_dim], np.float32)
    table[mask.sum(1) == 0] = 0.0
    return table
