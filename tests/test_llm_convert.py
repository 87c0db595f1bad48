"""``python -m coco_tf.llm.convert`` error paths: clear messages that name the tensors."""

import coco_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

from coco_tf.llm import convert
from coco_tf.llm.qwen_decoder import QwenBackbone, read_weight_file, write_weight_file

SHAPES = dict(
    vocabulary_size=50,
    num_layers=2,
    hidden_dim=16,
    num_query_heads=4,
    num_key_value_heads=2,
    head_dim=4,
    intermediate_dim=24,
)
HF_CONFIG = {
    "model_type": "qwen3",
    "vocab_size": 50,
    "hidden_size": 16,
    "intermediate_size": 24,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 4,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000,
    "tie_word_embeddings": True,
}


def hf_tensors(backbone):
    """Our (keras-nlp-path) weights as Hugging Face tensors, via the converter's own map."""
    weights = {k: v.numpy() for k, v in backbone.weight_map(include_lora=False).items()}
    out = {}
    for ours, (hf, hf_shape) in convert.hf_expected_tensors(backbone.get_config()).items():
        w = weights[ours]
        if ours == "token_embedding/embeddings" or w.ndim == 1:
            out[hf] = w
        else:
            if ours.endswith("attention_output/kernel"):  # [heads, head_dim, hidden]
                w = w.reshape(-1, w.shape[-1])
            out[hf] = np.ascontiguousarray(w.reshape(w.shape[0], -1).T)  # torch [out, in]
            assert out[hf].shape == hf_shape
    return out


def write_hf(directory, tensors, config=HF_CONFIG):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    save_file(tensors, os.path.join(directory, "model.safetensors"))
    return str(directory)


@pytest.fixture(scope="module")
def backbone():
    return QwenBackbone(**SHAPES)


def test_hf_round_trip_reproduces_the_model(backbone, tmp_path):
    src = write_hf(tmp_path / "hf", hf_tensors(backbone))
    (tmp_path / "hf" / "tokenizer.json").write_text("{}")
    out = str(tmp_path / "out")
    assert convert.main(["--from", src, "--out", out]) == 0
    loaded = QwenBackbone.from_pretrained(out)
    x = {"token_ids": np.array([[1, 2, 3, 4]], "int32")}
    np.testing.assert_array_equal(loaded(x).numpy(), backbone(x).numpy())
    assert os.path.isfile(os.path.join(out, "tokenizer", "tokenizer.json"))


def test_missing_tensors_are_listed(backbone, tmp_path, capsys):
    tensors = hf_tensors(backbone)
    del tensors["model.layers.1.self_attn.k_norm.weight"]
    del tensors["model.norm.weight"]
    src = write_hf(tmp_path / "hf", tensors)
    with pytest.raises(convert.ConversionError) as info:
        convert.convert(src, str(tmp_path / "out"))
    message = str(info.value)
    assert "missing tensors" in message
    assert "model.layers.1.self_attn.k_norm.weight" in message and "model.norm.weight" in message
    # The CLI prints the same message, no traceback, exit status 2, nothing written.
    assert convert.main(["--from", src, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convert: error:") and "model.norm.weight" in err
    assert "Traceback" not in err
    assert not os.path.exists(tmp_path / "out" / "weights.h5")


def test_shape_mismatches_are_listed(backbone, tmp_path):
    tensors = hf_tensors(backbone)
    tensors["model.layers.0.mlp.up_proj.weight"] = np.zeros((25, 16), "float32")
    tensors["model.embed_tokens.weight"] = np.zeros((49, 16), "float32")
    src = write_hf(tmp_path / "hf", tensors)
    with pytest.raises(ValueError, match="shape mismatches") as info:
        convert.convert(src, str(tmp_path / "out"))
    message = str(info.value)
    assert "model.layers.0.mlp.up_proj.weight (expected (24, 16), got (25, 16))" in message
    assert "model.embed_tokens.weight (expected (50, 16), got (49, 16))" in message


def test_bad_configs_and_directories(backbone, tmp_path):
    tensors = hf_tensors(backbone)
    with pytest.raises(ValueError, match="model_type='qwen2'"):
        convert.convert(write_hf(tmp_path / "a", tensors, dict(HF_CONFIG, model_type="qwen2")), str(tmp_path / "o"))
    with pytest.raises(ValueError, match="lacks keys: hidden_size"):
        config = {k: v for k, v in HF_CONFIG.items() if k != "hidden_size"}
        convert.convert(write_hf(tmp_path / "b", tensors, config), str(tmp_path / "o"))
    with pytest.raises(ValueError, match="bias tensors .*q_proj.bias"):
        biased = dict(tensors, **{"model.layers.0.self_attn.q_proj.bias": np.zeros(16, "float32")})
        convert.convert(write_hf(tmp_path / "c", biased), str(tmp_path / "o"))
    with pytest.raises(ValueError, match="not a directory"):
        convert.convert(str(tmp_path / "nope"), str(tmp_path / "o"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        convert.convert(str(tmp_path / "empty"), str(tmp_path / "o"))


def test_loading_a_damaged_converted_directory_lists_names(backbone, tmp_path):
    out = str(tmp_path / "out")
    backbone.save_pretrained(out)
    arrays, _ = read_weight_file(os.path.join(out, "weights.h5"))
    del arrays["transformer_layer_1/feedforward_gate_dense/kernel"]
    arrays["transformer_layer_0/self_attention/query/kernel"] = np.zeros((16, 4, 5), "float32")
    write_weight_file(os.path.join(out, "weights.h5"), arrays)
    with pytest.raises(ValueError) as info:
        QwenBackbone.from_pretrained(out)
    message = str(info.value)
    assert "missing tensors: transformer_layer_1/feedforward_gate_dense/kernel" in message
    assert "transformer_layer_0/self_attention/query/kernel (expected (16, 4, 4), got (16, 4, 5))" in message
    with pytest.raises(ValueError, match="not a converted decoder directory"):
        QwenBackbone.from_pretrained(str(tmp_path))


@pytest.mark.slow  # subprocesses
def test_cli_runs_as_module_without_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "coco_tf.llm.convert", "--from", str(tmp_path / "missing"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "convert: error:" in proc.stderr and "not a directory" in proc.stderr
    assert "Traceback" not in proc.stderr
