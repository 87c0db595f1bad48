"""Title tokenizers: the checkpoint's own Qwen BPE, or a no-download word-piece one.

* With a real checkpoint directory (``checkpoint_dir``), the Qwen byte-pair
  tokenizer is built with keras-nlp's ``Qwen3Tokenizer`` from the directory's
  LOCAL files: ``vocab.json``/``vocabulary.json`` + ``merges.txt`` (looked up in
  ``DIR/tokenizer/``, ``DIR/assets/tokenizer/`` and ``DIR``) or a Hugging Face
  ``tokenizer.json``.
* A directory written by ``python -m coco_tf.llm.pretrain`` over the word-piece
  vocabulary carries it as ``tokenizer/word_piece_vocabulary.txt``
  (:data:`WORD_PIECE_FILE`); that file wins over the BPE files.
* Without one (the default), a word-piece vocabulary is learned from the
  catalog titles with keras-nlp's ``compute_word_piece_vocabulary`` (lower-cased,
  accents stripped, split on whitespace and punctuation; ``[PAD]`` = 0,
  ``[UNK]`` = 1), deterministic for the same titles.

Both are keras-nlp (Keras 3) layers backed by TensorFlow ops; they run eagerly or
inside ``tf.data`` next to the tf_keras model (docs/design.md §1). Titles are padded
on the right: ``encode`` returns ``token_ids`` and ``padding_mask`` (1 = token),
the inputs ``QwenBackbone`` takes.

Example::

    tok = build_tokenizer(titles=catalog_titles)            # word-piece, no download
    ids, mask = tok.encode(["Red running shoe"], sequence_length=16)
    tok.decode(ids, mask)                                    # ['red running shoe']
    qwen = build_tokenizer(checkpoint_dir="/data/qwen3_0.6b")  # converted/HF/keras-nlp dir
"""

import hashlib
import json
import os

import numpy as np
import tensorflow as tf

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
END_TOKEN = "[END]"  # word-piece: appended to a learned vocabulary; pretraining ends every text with it
QWEN_PAD_TOKEN = "<|endoftext|>"
WORD_PIECE_FILE = "word_piece_vocabulary.txt"  # under <checkpoint>/tokenizer/
WORD_PIECE_VOCABULARY_SIZE = 4096


# keras-nlp 0.32 runs tokenizers eagerly on a pure-Python path (returning lists)
# and on TensorFlow Text inside tf.function/tf.data. Always take the TensorFlow
# path, so eager ids are the very ids a tf.data pipeline produces.
_TF_PATH = {"_allow_python_workflow": False}


def _no_convert_scope():
    from keras_hub.src.utils.tensor_utils import no_convert_scope

    return no_convert_scope()


def _keras_hub():
    import keras_hub  # Keras 3; tokenizers only, outside the training graph.

    return keras_hub


class TitleTokenizer:
    """Common interface over a keras-nlp tokenizer layer.

    Attributes:
        tokenizer: the keras-nlp tokenizer layer (``tokenizer(strings)`` → ragged ids).
        kind: ``"word_piece"`` or ``"qwen_bpe"``.
        pad_id: id written into padded slots.
    """

    kind = None

    def __init__(self, tokenizer, pad_id, end_id=None):
        self.tokenizer = tokenizer
        self.pad_id = int(pad_id)
        self.end_id = None if end_id is None else int(end_id)

    @property
    def vocabulary_size(self):
        return int(self.tokenizer.vocabulary_size())

    def tokenize(self, texts):
        """``texts`` (list of str or string tensor ``[n]``) → ``tf.RaggedTensor`` of ids ``[n, None]``.

        Works eagerly and inside ``tf.data.Dataset.map``.
        """
        with _no_convert_scope():  # keep tf.RaggedTensor (keras-nlp would return lists eagerly)
            return self.tokenizer(tf.convert_to_tensor(texts, dtype=tf.string))

    def encode(self, texts, sequence_length):
        """Right-padded ``(token_ids, padding_mask)``, int32 numpy ``[n, sequence_length]``.

        Longer titles are truncated to ``sequence_length`` tokens.
        """
        ragged = self.tokenize(list(texts))[:, :sequence_length]
        ids = ragged.to_tensor(default_value=self.pad_id, shape=[None, sequence_length])
        mask = tf.ones_like(ragged, dtype=tf.int32).to_tensor(shape=[None, sequence_length])
        return ids.numpy().astype(np.int32), mask.numpy().astype(np.int32)

    def encode_with_end(self, texts, sequence_length):
        """As :meth:`encode`, with the end-of-text token (``end_id``) after each non-empty text
        (texts truncated to ``sequence_length - 1`` tokens first): what pretraining reads, so that
        the decoder learns where an item's text ends. Without an ``end_id`` (a vocabulary written
        before it existed) the same as :meth:`encode`."""
        if self.end_id is None:
            return self.encode(texts, sequence_length)
        ids, mask = self.encode(texts, sequence_length - 1)
        length = mask.sum(1)
        ids = np.concatenate([ids, np.full([len(ids), 1], self.pad_id, np.int32)], axis=1)
        mask = np.concatenate([mask, np.zeros([len(mask), 1], np.int32)], axis=1)
        rows = np.nonzero(length > 0)[0]
        ids[rows, length[rows]] = self.end_id
        mask[rows, length[rows]] = 1
        return ids, mask

    def decode(self, token_ids, padding_mask=None):
        """Ids ``[n, seq]`` → list of strings (padded slots dropped)."""
        token_ids = np.asarray(token_ids)
        if padding_mask is None:
            padding_mask = token_ids != self.pad_id
        rows = [row[np.asarray(m, bool)].tolist() for row, m in zip(token_ids, padding_mask)]
        ragged = tf.ragged.constant(rows, dtype=tf.int32, ragged_rank=1, inner_shape=())
        with _no_convert_scope():
            out = self.tokenizer.detokenize(ragged)
        return [s.decode("utf-8") for s in out.numpy().tolist()]

    def _fingerprint_parts(self):
        raise NotImplementedError

    def fingerprint(self):
        """Stable hash of everything that decides the ids (for cache keys)."""
        h = hashlib.sha256()
        for part in (self.kind,) + tuple(self._fingerprint_parts()):
            h.update(json.dumps(part, sort_keys=True, ensure_ascii=False).encode("utf-8"))
            h.update(b"\0")
        return h.hexdigest()


class WordPieceTitleTokenizer(TitleTokenizer):
    """Word-piece tokenizer over a vocabulary learned from the catalog titles.

    Args:
        vocabulary: list of tokens; ``vocabulary[0]`` must be ``[PAD]``.

    Example::

        tok = WordPieceTitleTokenizer.from_titles(["red shoe", "blue shoe"], 100)
        ids, mask = tok.encode(["red shoe"], 8)
    """

    kind = "word_piece"

    def __init__(self, vocabulary):
        vocabulary = list(vocabulary)
        if not vocabulary or vocabulary[0] != PAD_TOKEN or UNK_TOKEN not in vocabulary:
            raise ValueError(
                f"A word-piece vocabulary must start with {PAD_TOKEN!r} and contain {UNK_TOKEN!r}."
            )
        self.vocabulary = vocabulary
        end_id = vocabulary.index(END_TOKEN) if END_TOKEN in vocabulary else None
        layer = _keras_hub().tokenizers.WordPieceTokenizer(
            vocabulary=vocabulary,
            lowercase=True,
            strip_accents=True,
            split=True,
            split_on_cjk=True,
            oov_token=UNK_TOKEN,
            dtype="int32",
            **_TF_PATH,
        )
        super().__init__(layer, pad_id=0, end_id=end_id)

    @classmethod
    def from_titles(cls, titles, vocabulary_size=4096):
        """Learn a vocabulary of at most ``vocabulary_size`` tokens from ``titles`` (the last one
        ``[END]``, appended so that the learned tokens keep the ids they had before it existed)."""
        titles = [str(t) for t in titles if t is not None and str(t).strip()]
        if not titles:
            raise ValueError("Cannot learn a word-piece vocabulary: no non-empty titles given.")
        if vocabulary_size < 4:
            raise ValueError(f"vocabulary_size must be at least 4, got {vocabulary_size}.")
        data = tf.data.Dataset.from_tensor_slices(titles).batch(1024)
        vocabulary = _keras_hub().tokenizers.compute_word_piece_vocabulary(
            data,
            vocabulary_size=vocabulary_size - 1,
            lowercase=True,
            strip_accents=True,
            split=True,
            split_on_cjk=True,
            reserved_tokens=[PAD_TOKEN, UNK_TOKEN],
        )
        return cls(list(vocabulary) + [END_TOKEN])

    @classmethod
    def from_file(cls, path):
        """Load a vocabulary written by ``save_vocabulary`` (one token per line)."""
        with open(path, encoding="utf-8") as f:
            return cls([line.rstrip("\n") for line in f])

    def save_vocabulary(self, path):
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(self.vocabulary) + "\n")

    def normalize(self, texts):
        """What ``decode(encode(t))`` gives back for in-vocabulary text: lower-cased,
        accents stripped, words and punctuation separated by single spaces."""
        from keras_hub.src.tokenizers.word_piece_tokenizer import pretokenize

        words = pretokenize(tf.constant(list(texts)), True, True, True, True)
        return [
            " ".join(w.decode("utf-8") for w in row) for row in words.to_list()
        ]

    def _fingerprint_parts(self):
        return (self.vocabulary,)


class QwenTitleTokenizer(TitleTokenizer):
    """Qwen's byte-level BPE (keras-nlp ``Qwen3Tokenizer``) from local files.

    Padding uses ``<|endoftext|>`` (Qwen3's pad token); no special tokens are
    added around titles.

    Args:
        vocabulary: dict token → id, or path of ``vocab.json``.
        merges: list of ``"a b"`` merge rules, or path of ``merges.txt``.

    Example::

        tok = QwenTitleTokenizer.from_directory("/data/qwen3_0.6b")
        ids, mask = tok.encode(["Red running shoe"], 16)
    """

    kind = "qwen_bpe"

    def __init__(self, vocabulary, merges, unsplittable_tokens=None):
        if isinstance(vocabulary, str):
            with open(vocabulary, encoding="utf-8") as f:
                vocabulary = json.load(f)
        if isinstance(merges, str):
            with open(merges, encoding="utf-8") as f:
                merges = [line.rstrip("\n") for line in f]
        merges = [m for m in merges if m and not m.startswith("#version")]
        missing = [t for t in (QWEN_PAD_TOKEN, "<|im_end|>") if t not in vocabulary]
        if missing:
            raise ValueError(f"Qwen vocabulary lacks special tokens: {', '.join(missing)}")
        self.vocabulary = dict(vocabulary)
        self.merges = list(merges)
        kwargs = {"unsplittable_tokens": list(unsplittable_tokens)} if unsplittable_tokens else {}
        layer = _keras_hub().tokenizers.Qwen3Tokenizer(
            vocabulary=self.vocabulary, merges=self.merges, dtype="int32", **_TF_PATH, **kwargs
        )
        # <|endoftext|> pads (masked) and ends a text (unmasked, pretraining's last target).
        super().__init__(layer, pad_id=self.vocabulary[QWEN_PAD_TOKEN], end_id=self.vocabulary[QWEN_PAD_TOKEN])

    @classmethod
    def from_tokenizer_json(cls, path):
        """From a Hugging Face ``tokenizer.json`` (BPE model + added tokens)."""
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        model = data.get("model", {})
        if model.get("type") not in (None, "BPE") or "vocab" not in model or "merges" not in model:
            raise ValueError(f"{path} is not a byte-pair tokenizer.json (model.vocab/merges missing).")
        vocabulary = dict(model["vocab"])
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        special = []
        for token in data.get("added_tokens", []):
            vocabulary[token["content"]] = token["id"]
            special.append(token["content"])
        return cls(vocabulary, merges, unsplittable_tokens=special)

    @classmethod
    def from_directory(cls, directory):
        """Find the tokenizer files in a checkpoint directory (several layouts)."""
        searched = []
        for base in (
            os.path.join(directory, "tokenizer"),
            os.path.join(directory, "assets", "tokenizer"),
            directory,
        ):
            merges = os.path.join(base, "merges.txt")
            for vocab_name in ("vocab.json", "vocabulary.json"):
                vocab = os.path.join(base, vocab_name)
                searched.append(f"{vocab} + {merges}")
                if os.path.isfile(vocab) and os.path.isfile(merges):
                    return cls(vocab, merges)
            tokenizer_json = os.path.join(base, "tokenizer.json")
            searched.append(tokenizer_json)
            if os.path.isfile(tokenizer_json):
                return cls.from_tokenizer_json(tokenizer_json)
        raise ValueError(
            f"No Qwen tokenizer files in {directory}; looked for: " + "; ".join(searched)
        )

    def _fingerprint_parts(self):
        return (sorted(self.vocabulary.items()), self.merges)


def save_tokenizer(tokenizer, checkpoint_dir):
    """Write ``tokenizer``'s files into ``checkpoint_dir/tokenizer/`` (what ``build_tokenizer`` reads back).

    Word-piece: :data:`WORD_PIECE_FILE`. Qwen BPE: ``vocab.json`` + ``merges.txt``.
    """
    out = os.path.join(checkpoint_dir, "tokenizer")
    os.makedirs(out, exist_ok=True)
    if isinstance(tokenizer, WordPieceTitleTokenizer):
        tokenizer.save_vocabulary(os.path.join(out, WORD_PIECE_FILE))
        return
    with open(os.path.join(out, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer.vocabulary, f, ensure_ascii=False)
    with open(os.path.join(out, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(tokenizer.merges) + "\n")


def catalog_tokenizer(texts, checkpoint_dir=None, decoder_vocabulary_size=WORD_PIECE_VOCABULARY_SIZE):
    """The one tokenizer rule of every reader of the catalog text (assets, pretraining, probes, export).

    The checkpoint's own tokenizer when ``checkpoint_dir`` has one, else word-piece
    learned from ``texts[1:]`` (item texts indexed by item id, ``texts[0]`` padding)
    with at most ``min(4096, decoder_vocabulary_size)`` tokens.
    """
    return build_tokenizer(
        titles=[t for t in list(texts)[1:] if t] or ["item"],
        checkpoint_dir=checkpoint_dir or None,
        vocabulary_size=min(WORD_PIECE_VOCABULARY_SIZE, int(decoder_vocabulary_size)),
    )


def build_tokenizer(titles=None, checkpoint_dir=None, vocabulary_size=4096):
    """The tokenizer for a run: the checkpoint's Qwen BPE, else word-piece from ``titles``.

    Args:
        titles: catalog titles (any iterable of str; empty strings ignored),
            needed when ``checkpoint_dir`` is None.
        checkpoint_dir: local checkpoint directory (converted, pretrained, Hugging
            Face or keras-nlp preset) holding the tokenizer files, or None.
        vocabulary_size: upper bound of the learned word-piece vocabulary; keep it
            at most the decoder's ``vocabulary_size``.
    """
    if checkpoint_dir:
        word_piece = os.path.join(checkpoint_dir, "tokenizer", WORD_PIECE_FILE)
        if os.path.isfile(word_piece):
            return WordPieceTitleTokenizer.from_file(word_piece)
        return QwenTitleTokenizer.from_directory(checkpoint_dir)
    if titles is None:
        raise ValueError("build_tokenizer needs catalog `titles` when no checkpoint_dir is given.")
    return WordPieceTitleTokenizer.from_titles(titles, vocabulary_size=vocabulary_size)
