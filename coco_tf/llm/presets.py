"""Decoder shapes: the ``tiny`` default and the real Qwen3 dense sizes.

Shapes only, no weights: a preset builds a randomly initialised ``QwenBackbone``
(``QwenBackbone.from_preset("qwen3_0.6b")``); real weights come from a local
directory written by ``python -m coco_tf.llm.convert``.

The Qwen3 numbers are those of the Hugging Face ``config.json`` files of
Qwen/Qwen3-{0.6B,1.7B,4B,8B} (``head_dim`` 128, ``rope_theta`` 1e6,
``rms_norm_eps`` 1e-6, vocabulary 151,936; input/output embeddings tied up to
4B, untied for 8B). ``count_parameters`` reproduces keras-nlp's published
parameter counts (596,049,920 / 1,720,574,976 / 4,022,468,096 /
8,190,735,360 with the 8B's separate LM head), which checks every shape here.
"""

import copy

QWEN3_VOCABULARY_SIZE = 151936

DEFAULT_PRESET = "tiny"

PRESETS = {
    # A few hundred thousand parameters: the default for the synthetic quick start
    # and the tests (vocabulary sized for a word-piece vocabulary of catalog titles).
    "tiny": {
        "vocabulary_size": 4096,
        "num_layers": 2,
        "num_query_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "hidden_dim": 64,
        "intermediate_dim": 128,
        "rope_max_wavelength": 1_000_000.0,
        "layer_norm_epsilon": 1e-6,
        "tie_word_embeddings": True,
    },
    # Four layers, hidden 256 (about 3.4M parameters with the 4096 word-piece vocabulary):
    # the size worth pretraining on the catalog text on a CPU (coco_tf.llm.pretrain).
    "small": {
        "vocabulary_size": 4096,
        "num_layers": 4,
        "num_query_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "hidden_dim": 256,
        "intermediate_dim": 512,
        "rope_max_wavelength": 1_000_000.0,
        "layer_norm_epsilon": 1e-6,
        "tie_word_embeddings": True,
    },
    "qwen3_0.6b": {
        "vocabulary_size": QWEN3_VOCABULARY_SIZE,
        "num_layers": 28,
        "num_query_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "hidden_dim": 1024,
        "intermediate_dim": 3072,
        "rope_max_wavelength": 1_000_000.0,
        "layer_norm_epsilon": 1e-6,
        "tie_word_embeddings": True,
    },
    "qwen3_1.7b": {
        "vocabulary_size": QWEN3_VOCABULARY_SIZE,
        "num_layers": 28,
        "num_query_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "hidden_dim": 2048,
        "intermediate_dim": 6144,
        "rope_max_wavelength": 1_000_000.0,
        "layer_norm_epsilon": 1e-6,
        "tie_word_embeddings": True,
    },
    "qwen3_4b": {
        "vocabulary_size": QWEN3_VOCABULARY_SIZE,
        "num_layers": 36,
        "num_query_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "hidden_dim": 2560,
        "intermediate_dim": 9728,
        "rope_max_wavelength": 1_000_000.0,
        "layer_norm_epsilon": 1e-6,
        "tie_word_embeddings": True,
    },
    "qwen3_8b": {
        "vocabulary_size": QWEN3_VOCABULARY_SIZE,
        "num_layers": 36,
        "num_query_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "hidden_dim": 4096,
        "intermediate_dim": 12288,
        "rope_max_wavelength": 1_000_000.0,
        "layer_norm_epsilon": 1e-6,
        "tie_word_embeddings": False,
    },
}


def preset_names():
    """Names of the built-in presets, default first."""
    return list(PRESETS)


def get_preset(name):
    """A copy of preset ``name``'s backbone config.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    if name not in PRESETS:
        raise ValueError(
            f"Unknown decoder preset {name!r}. Known presets: {', '.join(PRESETS)}; "
            "or pass a directory written by `python -m coco_tf.llm.convert`."
        )
    return copy.deepcopy(PRESETS[name])


def count_parameters(config, include_lm_head=True):
    """Parameter count of a Qwen3 decoder with ``config``'s shapes.

    Counts the token embedding, every block (q/k/v/o, q/k norms, two block
    norms, SwiGLU) and the final norm; with ``include_lm_head`` an untied model
    (``tie_word_embeddings=False``) also counts its separate output projection,
    as keras-nlp's published counts do. Our backbone returns hidden states and
    has no LM head, so its own variables are the ``include_lm_head=False`` count.
    """
    v, d = config["vocabulary_size"], config["hidden_dim"]
    h, kv, hd = config["num_query_heads"], config["num_key_value_heads"], config["head_dim"]
    inter, layers = config["intermediate_dim"], config["num_layers"]
    attention = d * h * hd * 2 + d * kv * hd * 2 + 2 * hd
    block = attention + 3 * d * inter + 2 * d
    total = v * d + layers * block + d
    if include_lm_head and not config.get("tie_word_embeddings", True):
        total += v * d
    return total
