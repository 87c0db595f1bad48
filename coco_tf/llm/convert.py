"""Import real Qwen3 weights into a directory that ``QwenBackbone`` loads.

Usage::

    python -m coco_tf.llm.convert --from /path/to/qwen3_0.6b_en --out /data/qwen3_0.6b

``--from`` is a LOCAL directory, either

* a keras-nlp preset (``config.json`` naming ``Qwen3Backbone`` + ``model.weights.h5``
  + ``assets/tokenizer/``), loaded with ``keras_hub.models.Qwen3Backbone.from_preset``
  and copied variable by variable (our variable paths are keras-nlp's), or
* a Hugging Face checkpoint (``config.json`` with ``model_type: qwen3`` and
  ``*.safetensors``), read tensor by tensor with ``safetensors``' numpy API
  (bfloat16 arrives as ``ml_dtypes.bfloat16``; no torch needed). Torch ``[out,
  in]`` matrices are transposed and reshaped into keras-nlp's layouts.

Nothing is downloaded. ``--out`` receives ``config.json`` + ``weights.h5`` (float32;
see ``coco_tf.llm.qwen_decoder``) and the tokenizer files under ``tokenizer/``.
Every expected tensor is checked (presence and shape) before anything is written;
problems come back as one ``ValueError`` listing all offending names. The LM head
of an untied checkpoint is not copied (the backbone returns hidden states).
"""

import argparse
import glob
import json
import os
import shutil
import sys

import numpy as np

from coco_tf.llm import qwen_decoder as qb
from coco_tf.utils import join_names

# Ours (keras-nlp variable path suffix) → Hugging Face name suffix, per block.
_HF_BLOCK_MAP = {
    "self_attention_layernorm/scale": "input_layernorm.weight",
    "self_attention/query/kernel": "self_attn.q_proj.weight",
    "self_attention/key/kernel": "self_attn.k_proj.weight",
    "self_attention/value/kernel": "self_attn.v_proj.weight",
    "self_attention/attention_output/kernel": "self_attn.o_proj.weight",
    "self_attention/query_dense_layernorm/scale": "self_attn.q_norm.weight",
    "self_attention/key_dense_layernorm/scale": "self_attn.k_norm.weight",
    "feedforward_layernorm/scale": "post_attention_layernorm.weight",
    "feedforward_intermediate_dense/kernel": "mlp.up_proj.weight",
    "feedforward_gate_dense/kernel": "mlp.gate_proj.weight",
    "feedforward_output_dense/kernel": "mlp.down_proj.weight",
}

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "vocabulary.json",
    "vocabulary.txt",
    "special_tokens_map.json",
)


# keras-nlp 0.32's Qwen3TransformerDecoder does not pass `layer_norm_epsilon` to
# Qwen3Attention, so its per-head q/k RMS norms use that layer's default, 1e-5,
# while Hugging Face Qwen3 uses `rms_norm_eps` (1e-6) for them. Converted
# directories follow Hugging Face (qk_norm_epsilon unset = rms_norm_eps); build
# with `qk_norm_epsilon=KERAS_NLP_QK_NORM_EPSILON` to match keras-nlp bit for bit.
KERAS_NLP_QK_NORM_EPSILON = 1e-5


class ConversionError(ValueError):
    """A checkpoint that does not fit: missing tensors, wrong shapes, bad config."""


# --------------------------------------------------------------------------- configs
def backbone_config_from_hf(hf_config):
    """Our backbone config from a Hugging Face Qwen3 ``config.json`` dict."""
    model_type = hf_config.get("model_type")
    if model_type != "qwen3":
        raise ConversionError(
            f"Hugging Face config has model_type={model_type!r}; only 'qwen3' (dense) is "
            "supported (Qwen2 has q/k/v biases and no q/k norms; MoE models differ)."
        )
    required = [
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
    ]
    missing = [k for k in required if k not in hf_config]
    if missing:
        raise ConversionError(f"Hugging Face config.json lacks keys: {', '.join(missing)}")
    rope_theta = (hf_config.get("rope_parameters") or {}).get("rope_theta")
    if rope_theta is None:
        rope_theta = hf_config.get("rope_theta", 1_000_000.0)
    scaling = hf_config.get("rope_scaling")
    scaling_factor = 1.0
    if scaling:
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind not in ("linear", "default"):
            raise ConversionError(
                f"rope_scaling {scaling} is not supported (only linear scaling is)."
            )
        scaling_factor = float(scaling.get("factor", 1.0))
    if hf_config.get("attention_bias"):
        raise ConversionError("attention_bias=true checkpoints are not supported (Qwen3 has none).")
    return {
        "vocabulary_size": int(hf_config["vocab_size"]),
        "num_layers": int(hf_config["num_hidden_layers"]),
        "num_query_heads": int(hf_config["num_attention_heads"]),
        "num_key_value_heads": int(hf_config["num_key_value_heads"]),
        "head_dim": int(
            hf_config.get("head_dim")
            or hf_config["hidden_size"] // hf_config["num_attention_heads"]
        ),
        "hidden_dim": int(hf_config["hidden_size"]),
        "intermediate_dim": int(hf_config["intermediate_size"]),
        "rope_max_wavelength": float(rope_theta),
        "rope_scaling_factor": scaling_factor,
        "layer_norm_epsilon": float(hf_config.get("rms_norm_eps", 1e-6)),
        "dropout": 0.0,
        "tie_word_embeddings": bool(hf_config.get("tie_word_embeddings", True)),
    }


def backbone_config_from_keras_nlp(config):
    """Our backbone config from a keras-nlp ``Qwen3Backbone.get_config()`` dict."""
    keys = qb._SHAPE_KEYS + ("rope_max_wavelength", "rope_scaling_factor", "layer_norm_epsilon", "tie_word_embeddings")
    missing = [k for k in qb._SHAPE_KEYS if k not in config]
    if missing:
        raise ConversionError(f"keras-nlp backbone config lacks keys: {', '.join(missing)}")
    out = {k: config[k] for k in keys if k in config}
    out["rope_max_wavelength"] = float(out.get("rope_max_wavelength", 10000.0))
    out["dropout"] = 0.0
    return out


# ------------------------------------------------------------------ tensor sources
def _check_and_collect(expected, names, get_shape):
    """Raise one ConversionError listing every missing name and shape mismatch.

    ``expected``: ``{our name: (source name, expected source shape)}``.
    """
    missing = [src for src, _ in expected.values() if src not in names]
    mismatched = []
    for src, shape in expected.values():
        if src in names:
            got = tuple(get_shape(src))
            if got != tuple(shape):
                mismatched.append(f"{src} (expected {tuple(shape)}, got {got})")
    problems = []
    if missing:
        problems.append(f"missing tensors: {join_names(missing, limit=30)}")
    if mismatched:
        problems.append(f"shape mismatches: {join_names(mismatched, limit=30)}")
    if problems:
        raise ConversionError("Checkpoint does not match its config: " + "; ".join(problems))


def hf_expected_tensors(config, prefix="model."):
    """``{our name: (HF name, HF shape)}`` for a backbone ``config``."""
    ours = qb.expected_weight_shapes(config)
    expected = {
        "token_embedding/embeddings": (prefix + "embed_tokens.weight", ours["token_embedding/embeddings"]),
        "sequence_output_layernorm/scale": (prefix + "norm.weight", ours["sequence_output_layernorm/scale"]),
    }
    for i in range(config["num_layers"]):
        for suffix, hf_suffix in _HF_BLOCK_MAP.items():
            name = f"transformer_layer_{i}/{suffix}"
            shape = ours[name]
            if len(shape) == 1:
                hf_shape = shape
            elif suffix.endswith("attention_output/kernel"):
                hf_shape = (shape[2], shape[0] * shape[1])  # [hidden, heads*head_dim]
            else:
                hf_shape = (int(np.prod(shape[1:])), shape[0])  # torch [out, in]
            expected[name] = (f"{prefix}layers.{i}.{hf_suffix}", hf_shape)
    return expected


def hf_to_ours(name, array, our_shape):
    """A Hugging Face tensor → our (keras-nlp) layout ``our_shape``, float32.

    Vectors and the token embedding (``[vocab, hidden]`` on both sides) copy as
    they are; torch ``[out, in]`` matrices are transposed to ``[in, out]`` and
    reshaped (query ``[hidden, heads, head_dim]``, attention output
    ``[heads, head_dim, hidden]``, ...).
    """
    array = np.asarray(array, dtype=np.float32)
    if name == "token_embedding/embeddings" or array.ndim == 1:
        return array.reshape(our_shape)
    return np.ascontiguousarray(np.reshape(array.T, our_shape))


class _SafetensorsSource:
    """Lazy name → tensor access over one or more ``*.safetensors`` files."""

    def __init__(self, directory):
        from safetensors import safe_open

        self._safe_open = safe_open
        files = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
        if not files:
            raise ConversionError(f"No *.safetensors files in {directory}.")
        self.file_of = {}
        self.shape_of = {}
        for path in files:
            with safe_open(path, framework="np") as f:
                for key in f.keys():
                    self.file_of[key] = path
                    self.shape_of[key] = tuple(f.get_slice(key).get_shape())

    def names(self):
        return set(self.file_of)

    def get(self, name):
        with self._safe_open(self.file_of[name], framework="np") as f:
            return f.get_tensor(name)


# ------------------------------------------------------------------------- writers
def _copy_tokenizer_files(src_dir, out_dir):
    copied = []
    tok_out = os.path.join(out_dir, "tokenizer")
    for base in (src_dir, os.path.join(src_dir, "assets", "tokenizer"), os.path.join(src_dir, "tokenizer")):
        for name in _TOKENIZER_FILES:
            path = os.path.join(base, name)
            if os.path.isfile(path) and name not in copied:
                os.makedirs(tok_out, exist_ok=True)
                shutil.copyfile(path, os.path.join(tok_out, name))
                copied.append(name)
    return copied


def convert_hf_checkpoint(src_dir, out_dir):
    """Hugging Face Qwen3 directory → converted directory. Returns the backbone config."""
    with open(os.path.join(src_dir, "config.json")) as f:
        config = backbone_config_from_hf(json.load(f))
    source = _SafetensorsSource(src_dir)
    names = source.names()
    prefix = "model." if any(n.startswith("model.") for n in names) else ""
    biases = sorted(n for n in names if n.endswith(".bias"))
    if biases:
        raise ConversionError(
            f"Checkpoint has bias tensors this decoder does not use: {join_names(biases, limit=30)}"
        )
    expected = hf_expected_tensors(config, prefix)
    _check_and_collect(expected, names, lambda n: source.shape_of[n])
    ours = qb.expected_weight_shapes(config)

    def tensors():
        for name, (src, _) in expected.items():
            yield name, hf_to_ours(name, source.get(src), ours[name])

    os.makedirs(out_dir, exist_ok=True)
    qb.write_weight_file(os.path.join(out_dir, qb.WEIGHTS_FILE), tensors())
    skipped = sorted(names - {src for src, _ in expected.values()})
    qb.write_backbone_config(
        out_dir,
        config,
        {"kind": "huggingface", "path": os.path.abspath(src_dir), "skipped_tensors": skipped},
    )
    _copy_tokenizer_files(src_dir, out_dir)
    return config


def keras_nlp_weights(kbackbone):
    """``{variable path: np.ndarray}`` of a keras-nlp ``Qwen3Backbone`` (reverse embeddings dropped)."""
    out = {}
    for variable in kbackbone.weights:
        path = variable.path
        # Paths are layer-relative ("transformer_layer_0/self_attention/query/kernel");
        # drop a leading model name if a Keras version adds one.
        if not path.startswith(("token_embedding/", "transformer_layer_", "sequence_output_layernorm/")):
            path = path.split("/", 1)[-1]
        if path.endswith("reverse_embeddings"):
            continue
        out[path] = np.asarray(variable.numpy(), dtype=np.float32)
    return out


def check_keras_nlp_weights(config, arrays):
    """Raise a ConversionError naming every missing or mis-shaped variable."""
    expected = {k: (k, shape) for k, shape in qb.expected_weight_shapes(config).items()}
    _check_and_collect(expected, set(arrays), lambda n: np.shape(arrays[n]))


def load_keras_nlp_into(backbone, kbackbone):
    """Copy a keras-nlp ``Qwen3Backbone``'s weights into a ``QwenBackbone`` in memory."""
    arrays = keras_nlp_weights(kbackbone)
    check_keras_nlp_weights(backbone.get_config(), arrays)
    backbone.set_base_weights(arrays, what="keras-nlp Qwen3Backbone")


def convert_keras_nlp_preset(src_dir, out_dir):
    """keras-nlp preset directory → converted directory. Returns the backbone config."""
    import keras_hub  # Keras 3; only here, outside the training graph.

    with open(os.path.join(src_dir, "config.json")) as f:
        preset_config = json.load(f)
    if "Qwen3Backbone" not in str(preset_config.get("class_name", "")):
        raise ConversionError(
            f"{src_dir}/config.json describes {preset_config.get('class_name')!r}, "
            "not a keras-nlp Qwen3Backbone."
        )
    config = backbone_config_from_keras_nlp(preset_config.get("config", {}))
    kbackbone = keras_hub.models.Qwen3Backbone.from_preset(src_dir, dtype="float32")
    arrays = keras_nlp_weights(kbackbone)
    del kbackbone
    check_keras_nlp_weights(config, arrays)
    expected = qb.expected_weight_shapes(config)
    os.makedirs(out_dir, exist_ok=True)
    qb.write_weight_file(
        os.path.join(out_dir, qb.WEIGHTS_FILE), ((name, arrays[name]) for name in expected)
    )
    qb.write_backbone_config(
        out_dir, config, {"kind": "keras_nlp", "path": os.path.abspath(src_dir)}
    )
    _copy_tokenizer_files(src_dir, out_dir)
    return config


def detect_format(src_dir):
    """``"keras_nlp"`` or ``"huggingface"`` for a local checkpoint directory."""
    if not os.path.isdir(src_dir):
        raise ConversionError(f"--from {src_dir!r} is not a directory (only local paths are read).")
    config_path = os.path.join(src_dir, "config.json")
    if not os.path.isfile(config_path):
        raise ConversionError(f"{src_dir} has no config.json; is it a checkpoint directory?")
    with open(config_path) as f:
        config = json.load(f)
    if "class_name" in config and "config" in config:
        return "keras_nlp"
    if "model_type" in config:
        return "huggingface"
    raise ConversionError(
        f"Cannot tell the format of {src_dir}: config.json has neither keras-nlp "
        "'class_name' nor Hugging Face 'model_type'."
    )


def convert(src_dir, out_dir):
    """Convert either format; returns ``(format, backbone config)``."""
    kind = detect_format(src_dir)
    if os.path.abspath(src_dir) == os.path.abspath(out_dir):
        raise ConversionError("--out must differ from --from.")
    if kind == "keras_nlp":
        return kind, convert_keras_nlp_preset(src_dir, out_dir)
    return kind, convert_hf_checkpoint(src_dir, out_dir)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m coco_tf.llm.convert",
        description="Convert a local keras-nlp or Hugging Face Qwen3 checkpoint for QwenBackbone.",
    )
    parser.add_argument("--from", dest="src", required=True, help="local checkpoint directory")
    parser.add_argument("--out", required=True, help="output directory")
    args = parser.parse_args(argv)
    try:
        kind, config = convert(args.src, args.out)
    except (ValueError, OSError) as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 2
    from coco_tf.llm.presets import count_parameters

    print(
        f"Converted {kind} checkpoint {args.src} -> {args.out} "
        f"({config['num_layers']} layers, hidden {config['hidden_dim']}, "
        f"{count_parameters(config, include_lm_head=False):,} parameters)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
