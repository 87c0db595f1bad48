"""``QwenBackbone``: a Qwen3 decoder in tf_keras, weight-compatible with keras-nlp.

keras-nlp's ``Qwen3Backbone`` is Keras 3 and cannot run inside our
parameter-server training graph (docs/design.md §1), so this is our own tf_keras
decoder with the same variables (same names, shapes and math) and LoRA on the
query/value projections of chosen layers. ``tests/test_qwen_parity.py`` checks it
against keras-nlp number by number.

Weights on disk ("converted directory", written by ``coco_tf.llm.convert`` or
``save_pretrained``)::

    config.json   {"format": "coco_tf.qwen_backbone", "version": 1,
                   "backbone": {...QwenBackbone config...}, "source": {...}}
    weights.h5    one float32 dataset per variable, named by its keras-nlp
                  variable path, e.g. "transformer_layer_0/self_attention/query/kernel"
    tokenizer/    (optional) the checkpoint's tokenizer files

LoRA weights alone (``save_lora_weights``) use the same h5 layout with only the
``.../lora_a`` and ``.../lora_b`` datasets.
"""

import json
import os

import h5py
import numpy as np
import tensorflow as tf
import tf_keras as keras

from coco_tf.llm.qwen_decoder_block import QwenDecoderBlock, compute_causal_padding_mask
from coco_tf.llm.rms_norm import RMSNorm
from coco_tf.llm import presets as presets_lib
from coco_tf.utils import join_names

FORMAT_NAME = "coco_tf.qwen_backbone"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.h5"


# ----------------------------------------------------------------------------- h5 I/O
def write_weight_file(path, arrays, attrs=None):
    """Write ``{name: np.ndarray}`` to an h5 file, one dataset per name.

    ``arrays`` may be a dict or an iterable of ``(name, array)`` pairs (a
    generator keeps only one tensor in memory at a time).
    """
    items = arrays.items() if isinstance(arrays, dict) else arrays
    tmp = path + ".tmp"
    with h5py.File(tmp, "w") as f:
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
        for name, array in items:
            f.create_dataset(name, data=np.asarray(array))
    os.replace(tmp, path)


def read_weight_file(path):
    """``({name: np.ndarray}, attrs)`` from a file written by ``write_weight_file``."""
    if not os.path.isfile(path):
        raise ValueError(f"Weight file not found: {path}")
    arrays = {}
    with h5py.File(path, "r") as f:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                arrays[name] = obj[()]

        f.visititems(visit)
    return arrays, attrs


class QwenBackbone(keras.Model):
    """Qwen3 decoder: embeddings (or given input embeddings) → blocks → RMS norm.

    Accepts EITHER ``token_ids`` OR ``inputs_embeds`` (soft prompts and item
    text vectors enter as embeddings), plus a ``padding_mask``, and returns the
    final normed hidden states. Attention is causal plus key padding (padding
    on the right, as keras-nlp pads). RoPE positions are ``0..seq-1`` unless
    ``position_ids`` (int ``[seq]`` or ``[batch, seq]``, Hugging Face's name)
    gives them, e.g. to cut padding slots out of a sequence without moving
    the tokens after them.

    LoRA: ``lora_rank > 0`` puts LoRA on the query and value projections of the
    blocks in ``lora_layers`` (``None`` = every block) and freezes everything
    else (embeddings, norms, all base kernels), so ``trainable_variables`` are
    exactly ``lora_variables``. ``merge_lora()`` folds the updates into the
    kernels for export. With ``lora_rank == 0`` every variable is trainable
    (set ``backbone.trainable = False`` for a frozen LLM).

    All variables exist right after construction (no first call needed), named
    by keras-nlp's variable paths (``weight_map()``).

    Args:
        vocabulary_size, num_layers, num_query_heads, num_key_value_heads,
        head_dim, hidden_dim, intermediate_dim: Qwen3 shape (see
            ``coco_tf.llm.presets``).
        rope_max_wavelength: float. RoPE base (1e6 for Qwen3).
        rope_scaling_factor: float. Linear RoPE scaling.
        layer_norm_epsilon: float. RMS-norm epsilon (1e-6).
        qk_norm_epsilon: float or None. Epsilon of the per-head query/key RMS
            norms; ``None`` = ``layer_norm_epsilon``, as in Hugging Face Qwen3.
            keras-nlp 0.32 uses 1e-5 there (its decoder block does not pass
            ``layer_norm_epsilon`` on to ``Qwen3Attention``); pass
            ``convert.KERAS_NLP_QK_NORM_EPSILON`` to reproduce keras-nlp exactly.
        dropout: float. Attention/residual dropout (0 for Qwen3).
        tie_word_embeddings: bool. Recorded for the checkpoint's LM head; the
            backbone returns hidden states and holds no LM head either way.
        lora_rank, lora_alpha, lora_dropout: LoRA (paper: 8, 16, 0.05); rank 0 = off.
        lora_layers: list of block indices that get LoRA, or ``None`` for all.
        **kwargs: passed to ``tf_keras.Model`` (``name``, ...).

    Call arguments:
        inputs: dict with ``"token_ids"`` int ``[batch, seq]`` OR
            ``"inputs_embeds"`` float ``[batch, seq, hidden_dim]``, and
            optionally ``"padding_mask"`` int/bool ``[batch, seq]`` (1 = real;
            default all ones).
        training: bool (dropout, LoRA dropout).

    Returns:
        float tensor ``[batch, seq, hidden_dim]``.

    Example:

    ```python
    backbone = QwenBackbone.from_preset("tiny", lora_rank=8)
    h = backbone({"token_ids": tf.constant([[5, 6, 7, 0]]),
                  "padding_mask": tf.constant([[1, 1, 1, 0]])})  # [1, 4, 64]
    emb = backbone.embed_tokens(tf.constant([[5, 6, 7]]))
    h2 = backbone({"inputs_embeds": emb})                        # same as token ids
    backbone.save_lora_weights("/tmp/lora.h5")
    backbone.merge_lora()
    ```
    """

    def __init__(
        self,
        vocabulary_size,
        num_layers,
        num_query_heads,
        num_key_value_heads,
        head_dim,
        hidden_dim,
        intermediate_dim,
        rope_max_wavelength=1_000_000.0,
        rope_scaling_factor=1.0,
        layer_norm_epsilon=1e-6,
        qk_norm_epsilon=None,
        dropout=0.0,
        tie_word_embeddings=True,
        lora_rank=0,
        lora_alpha=16.0,
        lora_dropout=0.05,
        lora_layers=None,
        **kwargs,
    ):
        kwargs.setdefault("name", "qwen_backbone")
        super().__init__(**kwargs)
        self.vocabulary_size = int(vocabulary_size)
        self.num_layers = int(num_layers)
        self.num_query_heads = int(num_query_heads)
        self.num_key_value_heads = int(num_key_value_heads)
        self.head_dim = int(head_dim)
        self.hidden_dim = int(hidden_dim)
        self.intermediate_dim = int(intermediate_dim)
        self.rope_max_wavelength = float(rope_max_wavelength)
        self.rope_scaling_factor = float(rope_scaling_factor)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.qk_norm_epsilon = None if qk_norm_epsilon is None else float(qk_norm_epsilon)
        self.dropout = float(dropout)
        self.tie_word_embeddings = bool(tie_word_embeddings)
        self.lora_rank = int(lora_rank or 0)
        self.lora_alpha = float(lora_alpha)
        self.lora_dropout = float(lora_dropout)
        if lora_layers is not None:
            lora_layers = sorted({int(i) for i in lora_layers})
            bad = [i for i in lora_layers if not 0 <= i < self.num_layers]
            if bad:
                raise ValueError(
                    f"lora_layers {bad} out of range for a decoder with {self.num_layers} layers."
                )
        self.lora_layers = lora_layers
        lora_set = set(range(self.num_layers) if lora_layers is None else lora_layers)

        # === Layers (names = keras-nlp's) ===
        self.token_embedding = keras.layers.Embedding(
            self.vocabulary_size,
            self.hidden_dim,
            embeddings_initializer=keras.initializers.RandomNormal(stddev=0.01),
            name="token_embedding",
        )
        self.transformer_layers = []
        for i in range(self.num_layers):
            self.transformer_layers.append(
                QwenDecoderBlock(
                    intermediate_dim=self.intermediate_dim,
                    num_query_heads=self.num_query_heads,
                    num_key_value_heads=self.num_key_value_heads,
                    head_dim=self.head_dim,
                    rope_max_wavelength=self.rope_max_wavelength,
                    rope_scaling_factor=self.rope_scaling_factor,
                    layer_norm_epsilon=self.layer_norm_epsilon,
                    qk_norm_epsilon=self.qk_norm_epsilon,
                    dropout=self.dropout,
                    kernel_initializer=keras.initializers.RandomNormal(stddev=0.02),
                    lora_rank=self.lora_rank if i in lora_set else 0,
                    lora_alpha=self.lora_alpha,
                    lora_dropout=self.lora_dropout,
                    name=f"transformer_layer_{i}",
                )
            )
        self.layer_norm = RMSNorm(epsilon=self.layer_norm_epsilon, name="sequence_output_layernorm")

        # === Build every variable now ===
        # Each under its name scope, so variable names read like keras-nlp's paths
        # ("qwen_backbone/transformer_layer_0/self_attention/query/kernel:0").
        sequence_shape = tf.TensorShape([None, None, self.hidden_dim])
        with tf.name_scope(self.name):
            for layer, shape in (
                [(self.token_embedding, tf.TensorShape([None, None]))]
                + [(block, sequence_shape) for block in self.transformer_layers]
                + [(self.layer_norm, sequence_shape)]
            ):
                with tf.name_scope(layer.name):
                    layer.build(shape)
        self.built = True

        if self.lora_rank > 0:
            self._freeze_base()

    # ------------------------------------------------------------------ structure
    @property
    def trainable(self):
        return keras.Model.trainable.fget(self)

    @trainable.setter
    def trainable(self, value):
        # tf_keras propagates `trainable` to every sublayer; with LoRA, turning the
        # backbone back on must re-freeze the base, not unfreeze it.
        keras.Model.trainable.fset(self, value)
        if value and getattr(self, "lora_rank", 0) > 0 and getattr(self, "built", False):
            self._freeze_base()

    def _freeze_base(self):
        """Make every non-LoRA variable non-trainable."""
        self.token_embedding.trainable = False
        self.layer_norm.trainable = False
        for block in self.transformer_layers:
            block._self_attention_layernorm.trainable = False
            block._feedforward_layernorm.trainable = False
            block._feedforward.trainable = False
            attention = block._self_attention_layer
            attention._key_dense.trainable = False
            attention._output_dense.trainable = False
            attention._query_dense_layer_norm.trainable = False
            attention._key_dense_layer_norm.trainable = False
            # query/value: the kernel was created frozen; LoRA A/B stay trainable.
            # A block outside lora_layers has plain frozen projections.
            for projection in attention.lora_layers:
                if projection.lora_rank == 0:
                    projection.trainable = False

    def weight_map(self, include_lora=True):
        """``{keras-nlp variable path: variable}``, in a fixed order."""
        out = {"token_embedding/embeddings": self.token_embedding.embeddings}
        for i, block in enumerate(self.transformer_layers):
            p = f"transformer_layer_{i}/"
            attention = block._self_attention_layer
            ffn = block._feedforward
            out[p + "self_attention_layernorm/scale"] = block._self_attention_layernorm.scale
            for name, dense in (
                ("query", attention._query_dense),
                ("key", attention._key_dense),
                ("value", attention._value_dense),
                ("attention_output", attention._output_dense),
            ):
                out[p + f"self_attention/{name}/kernel"] = dense.kernel
                if include_lora and dense.lora_rank > 0:
                    out[p + f"self_attention/{name}/lora_a"] = dense.lora_a
                    out[p + f"self_attention/{name}/lora_b"] = dense.lora_b
            out[p + "self_attention/query_dense_layernorm/scale"] = (
                attention._query_dense_layer_norm.scale
            )
            out[p + "self_attention/key_dense_layernorm/scale"] = attention._key_dense_layer_norm.scale
            out[p + "feedforward_layernorm/scale"] = block._feedforward_layernorm.scale
            out[p + "feedforward_intermediate_dense/kernel"] = (
                ffn._feedforward_intermediate_dense.kernel
            )
            out[p + "feedforward_gate_dense/kernel"] = ffn._feedforward_gate_dense.kernel
            out[p + "feedforward_output_dense/kernel"] = ffn._feedforward_output_dense.kernel
        out["sequence_output_layernorm/scale"] = self.layer_norm.scale
        return out

    def base_weight_shapes(self):
        """``{name: shape}`` of the base (non-LoRA) weights, as a converter must produce."""
        return {k: tuple(v.shape.as_list()) for k, v in self.weight_map(include_lora=False).items()}

    def _lora_projections(self):
        for block in self.transformer_layers:
            for dense in block._self_attention_layer.lora_layers:
                if dense.lora_rank > 0:
                    yield dense

    @property
    def lora_variables(self):
        """All LoRA A/B variables (empty when LoRA is off)."""
        out = []
        for dense in self._lora_projections():
            out.extend(dense.lora_variables)
        return out

    def lora_weight_map(self):
        """``{path: variable}`` of the LoRA variables only."""
        return {k: v for k, v in self.weight_map().items() if k.endswith(("/lora_a", "/lora_b"))}

    # ------------------------------------------------------------------- forward
    def embed_tokens(self, token_ids):
        """Token embedding lookup: int ``[batch, seq]`` → ``[batch, seq, hidden]``."""
        return self.token_embedding(token_ids)

    def call(self, inputs, training=None):
        if not isinstance(inputs, dict):
            raise ValueError(
                "QwenBackbone expects a dict with 'token_ids' or 'inputs_embeds' "
                f"(and optionally 'padding_mask'); got {type(inputs).__name__}."
            )
        unknown = set(inputs) - {"token_ids", "inputs_embeds", "padding_mask", "position_ids"}
        if unknown:
            raise ValueError(
                f"QwenBackbone got unknown input keys {sorted(unknown)}; expected "
                "'token_ids' or 'inputs_embeds', and optionally 'padding_mask' and 'position_ids'."
            )
        token_ids = inputs.get("token_ids")
        embeds = inputs.get("inputs_embeds")
        if (token_ids is None) == (embeds is None):
            raise ValueError(
                "QwenBackbone needs exactly one of 'token_ids' or 'inputs_embeds'; got "
                + ("both." if token_ids is not None else "neither.")
            )
        if token_ids is not None:
            x = self.token_embedding(token_ids)
        else:
            x = tf.convert_to_tensor(embeds)
            if x.shape.rank != 3 or (x.shape[-1] is not None and x.shape[-1] != self.hidden_dim):
                raise ValueError(
                    f"'inputs_embeds' must be [batch, seq, {self.hidden_dim}]; got shape {x.shape}."
                )
            x = tf.cast(x, self.token_embedding.embeddings.dtype)
        padding_mask = inputs.get("padding_mask")
        if padding_mask is None:
            padding_mask = tf.ones(tf.shape(x)[:2], tf.int32)
        attention_mask = compute_causal_padding_mask(padding_mask, tf.shape(x)[1])
        positions = inputs.get("position_ids")  # None: 0..seq-1
        for block in self.transformer_layers:
            x = block(x, attention_mask=attention_mask, training=training, positions=positions)
        return self.layer_norm(x)

    # ----------------------------------------------------------------------- LoRA
    def merge_lora(self):
        """Fold every LoRA update into its kernel (W += A·B·alpha/r), zero B, skip LoRA."""
        for dense in self._lora_projections():
            dense.merge_lora()

    def save_lora_weights(self, path):
        """Write only the LoRA A/B weights (h5, named by variable path)."""
        weights = self.lora_weight_map()
        if not weights:
            raise ValueError("save_lora_weights: this backbone has no LoRA (lora_rank=0).")
        attrs = {
            "format": FORMAT_NAME + ".lora",
            "lora_rank": self.lora_rank,
            "lora_alpha": self.lora_alpha,
        }
        write_weight_file(path, ((k, v.numpy()) for k, v in weights.items()), attrs)

    def load_lora_weights(self, path):
        """Load LoRA A/B weights written by ``save_lora_weights`` (names and shapes checked)."""
        arrays, attrs = read_weight_file(path)
        if attrs.get("lora_alpha") is not None and float(attrs["lora_alpha"]) != self.lora_alpha:
            raise ValueError(
                f"LoRA file {path} has lora_alpha={attrs['lora_alpha']}, this backbone "
                f"has lora_alpha={self.lora_alpha}."
            )
        self._assign(self.lora_weight_map(), arrays, what=f"LoRA file {path}")

    # -------------------------------------------------------------- base weights
    @staticmethod
    def _assign(targets, arrays, what, allow_unexpected=False):
        missing = [k for k in targets if k not in arrays]
        unexpected = [k for k in arrays if k not in targets]
        mismatched = [
            f"{k} (expected {tuple(v.shape.as_list())}, got {tuple(np.shape(arrays[k]))})"
            for k, v in targets.items()
            if k in arrays and tuple(v.shape.as_list()) != tuple(np.shape(arrays[k]))
        ]
        problems = []
        if missing:
            problems.append(f"missing tensors: {join_names(missing)}")
        if mismatched:
            problems.append(f"shape mismatches: {join_names(mismatched)}")
        if unexpected and not allow_unexpected:
            problems.append(f"unexpected tensors: {join_names(unexpected)}")
        if problems:
            raise ValueError(f"{what} does not fit this QwenBackbone: " + "; ".join(problems))
        for k, v in targets.items():
            v.assign(np.asarray(arrays[k], dtype=v.dtype.as_numpy_dtype))

    def set_base_weights(self, arrays, what="weights"):
        """Assign ``{variable path: array}`` to the base weights (all required, shapes checked)."""
        self._assign(self.weight_map(include_lora=False), arrays, what=what)

    def save_pretrained(self, directory, source=None):
        """Write ``config.json`` + ``weights.h5`` with the base weights only.

        LoRA weights are not included: call ``merge_lora()`` first to export a
        tuned decoder as plain weights, or save them with ``save_lora_weights``.
        """
        os.makedirs(directory, exist_ok=True)
        config = self.get_config()
        for key in ("name", "trainable", "dtype", "lora_rank", "lora_alpha", "lora_dropout", "lora_layers"):
            config.pop(key, None)
        write_weight_file(
            os.path.join(directory, WEIGHTS_FILE),
            ((k, v.numpy()) for k, v in self.weight_map(include_lora=False).items()),
        )
        write_backbone_config(directory, config, source or {"kind": "save_pretrained"})

    @classmethod
    def from_pretrained(cls, directory, **overrides):
        """Build from a converted directory and load its weights.

        ``overrides`` set constructor arguments that the checkpoint does not fix
        (``lora_rank``, ``lora_layers``, ``dropout``, ``name``, ...).
        """
        config = read_backbone_config(directory)
        config.update(overrides)
        backbone = cls(**config)
        arrays, _ = read_weight_file(os.path.join(directory, WEIGHTS_FILE))
        backbone.set_base_weights(arrays, what=f"Checkpoint {directory}")
        return backbone

    @classmethod
    def from_preset(cls, preset, **overrides):
        """A named preset (random weights) or a converted directory (real weights)."""
        if isinstance(preset, str) and os.path.isdir(preset):
            return cls.from_pretrained(preset, **overrides)
        config = presets_lib.get_preset(preset)
        config.update(overrides)
        return cls(**config)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "vocabulary_size": self.vocabulary_size,
            "num_layers": self.num_layers,
            "num_query_heads": self.num_query_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_dim": self.hidden_dim,
            "intermediate_dim": self.intermediate_dim,
            "rope_max_wavelength": self.rope_max_wavelength,
            "rope_scaling_factor": self.rope_scaling_factor,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "qk_norm_epsilon": self.qk_norm_epsilon,
            "dropout": self.dropout,
            "tie_word_embeddings": self.tie_word_embeddings,
            "lora_rank": self.lora_rank,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "lora_layers": None if self.lora_layers is None else list(self.lora_layers),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


# get_config keys that are not the decoder's shape: its name and its LoRA adapters.
INSTANCE_KEYS = ("name", "trainable", "lora_rank", "lora_alpha", "lora_dropout", "lora_layers")


def decoder_config(decoder) -> dict:
    """``decoder.get_config()`` without :data:`INSTANCE_KEYS`: what builds another decoder of the
    same shape (``QwenBackbone(**decoder_config(d), lora_rank=8, name="llm")``)."""
    config = decoder.get_config()
    for key in INSTANCE_KEYS:
        config.pop(key, None)
    return config


def expected_weight_shapes(config):
    """``{variable path: shape}`` of the base weights for a backbone ``config``.

    Computed from the shapes alone (no variables are created), so a converter
    can check a multi-gigabyte checkpoint before reading it; equal to
    ``QwenBackbone(**config).base_weight_shapes()``.
    """
    d, hd = config["hidden_dim"], config["head_dim"]
    h, kv, inter = config["num_query_heads"], config["num_key_value_heads"], config["intermediate_dim"]
    out = {"token_embedding/embeddings": (config["vocabulary_size"], d)}
    for i in range(config["num_layers"]):
        p = f"transformer_layer_{i}/"
        out[p + "self_attention_layernorm/scale"] = (d,)
        out[p + "self_attention/query/kernel"] = (d, h, hd)
        out[p + "self_attention/key/kernel"] = (d, kv, hd)
        out[p + "self_attention/value/kernel"] = (d, kv, hd)
        out[p + "self_attention/attention_output/kernel"] = (h, hd, d)
        out[p + "self_attention/query_dense_layernorm/scale"] = (hd,)
        out[p + "self_attention/key_dense_layernorm/scale"] = (hd,)
        out[p + "feedforward_layernorm/scale"] = (d,)
        out[p + "feedforward_intermediate_dense/kernel"] = (d, inter)
        out[p + "feedforward_gate_dense/kernel"] = (d, inter)
        out[p + "feedforward_output_dense/kernel"] = (inter, d)
    out["sequence_output_layernorm/scale"] = (d,)
    return out


_SHAPE_KEYS = (
    "vocabulary_size",
    "num_layers",
    "num_query_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_dim",
    "intermediate_dim",
)


def write_backbone_config(directory, backbone_config, source):
    """Write a converted directory's ``config.json``."""
    with open(os.path.join(directory, CONFIG_FILE), "w") as f:
        json.dump(
            {
                "format": FORMAT_NAME,
                "version": FORMAT_VERSION,
                "backbone": backbone_config,
                "source": source,
            },
            f,
            indent=2,
            sort_keys=True,
        )


def read_backbone_config(directory):
    """The backbone config stored in a converted directory (clear errors otherwise)."""
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(path):
        raise ValueError(
            f"{directory} is not a converted decoder directory (no {CONFIG_FILE}). "
            "Write one with `python -m coco_tf.llm.convert --from SRC --out DIR`."
        )
    with open(path) as f:
        data = json.load(f)
    if data.get("format") != FORMAT_NAME:
        raise ValueError(
            f"{path} is not a coco_tf decoder config (format={data.get('format')!r}); "
            "convert the checkpoint first with `python -m coco_tf.llm.convert`."
        )
    config = dict(data["backbone"])
    missing = [k for k in _SHAPE_KEYS if k not in config]
    if missing:
        raise ValueError(f"{path} lacks backbone keys: {', '.join(missing)}")
    return config
