"""Our tf_keras QwenBackbone against keras-nlp's Qwen3Backbone (the numerical oracle).

A randomly initialised keras-nlp model (tiny shapes; norm scales randomised too,
so every variable matters) is imported into ours three ways — in memory by
variable path, through a keras-nlp preset directory, and through a Hugging Face
layout safetensors checkpoint written from the same weights — and the hidden
states must agree to 1e-4 (float32).

Padding: keras-nlp pads on the right. Real (non-padded) positions never attend
to padding, so they are compared strictly. Padded query positions still attend
to the real keys before them (the causal mask admits them) and both models use
the same ``-1e9`` masked-softmax fill, so they agree as well; that is asserted
too, but they are garbage by construction and nothing downstream reads them
(pooling and the LLM branch mask them out).
"""

import coco_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

import json
import os

import numpy as np
import pytest
import tensorflow as tf

keras_hub = pytest.importorskip("keras_hub")

from coco_tf.llm import convert  # noqa: E402
from coco_tf.llm.qwen_decoder import QwenBackbone  # noqa: E402

TOL = 1e-4
# keras-nlp's q/k norms use 1e-5 (see convert.KERAS_NLP_QK_NORM_EPSILON); Hugging
# Face uses rms_norm_eps. The oracle comparisons reproduce keras-nlp.
KNLP_QK_EPS = convert.KERAS_NLP_QK_NORM_EPSILON
SHAPES = dict(
    vocabulary_size=100,
    num_layers=2,
    hidden_dim=32,
    num_query_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    intermediate_dim=64,
    rope_max_wavelength=1_000_000,
    layer_norm_epsilon=1e-6,
)


@pytest.fixture(scope="module")
def oracle():
    """A keras-nlp Qwen3Backbone with random weights (scales included)."""
    import keras

    keras.utils.set_random_seed(7)
    model = keras_hub.models.Qwen3Backbone(**SHAPES, tie_word_embeddings=True, dtype="float32")
    rng = np.random.default_rng(0)
    for v in model.weights:
        if v.path.endswith("scale"):
            v.assign(rng.uniform(0.5, 1.5, size=v.shape).astype("float32"))
    return model


@pytest.fixture(scope="module")
def ours(oracle):
    backbone = QwenBackbone(
        **convert.backbone_config_from_keras_nlp(oracle.get_config()), qk_norm_epsilon=KNLP_QK_EPS
    )
    convert.load_keras_nlp_into(backbone, oracle)
    return backbone


def _inputs(lengths, seq=10, seed=1):
    rng = np.random.default_rng(seed)
    token_ids = rng.integers(1, SHAPES["vocabulary_size"], size=(len(lengths), seq)).astype("int32")
    padding_mask = (np.arange(seq)[None, :] < np.array(lengths)[:, None]).astype("int32")
    token_ids = token_ids * padding_mask  # pad id 0 on the right
    return token_ids, padding_mask


def _compare(oracle, ours, lengths):
    token_ids, padding_mask = _inputs(lengths)
    expected = np.asarray(oracle({"token_ids": token_ids, "padding_mask": padding_mask}))
    got = ours({"token_ids": token_ids, "padding_mask": padding_mask}).numpy()
    real = padding_mask.astype(bool)
    return np.abs(expected - got)[real].max(), np.abs(expected - got)[~real], got


def test_parity_without_padding(oracle, ours):
    diff, _, got = _compare(oracle, ours, [10, 10, 10])
    assert got.shape == (3, 10, SHAPES["hidden_dim"])
    assert diff <= TOL, diff


def test_parity_with_padding(oracle, ours):
    diff, padded_diff, _ = _compare(oracle, ours, [10, 7, 3])
    assert diff <= TOL, diff
    # See the module docstring: padded positions agree too (same masking), but only
    # the real positions are the contract.
    assert padded_diff.size and padded_diff.max() <= TOL, padded_diff.max()


def test_padding_does_not_leak_into_real_positions(ours):
    token_ids, mask = _inputs([6], seq=10)
    a = ours({"token_ids": token_ids, "padding_mask": mask}).numpy()[0, :6]
    other = token_ids.copy()
    other[0, 6:] = 42  # change what sits in the padded slots
    b = ours({"token_ids": other, "padding_mask": mask}).numpy()[0, :6]
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_inputs_embeds_path_equals_token_ids_path(ours):
    token_ids, mask = _inputs([10, 5])
    by_ids = ours({"token_ids": token_ids, "padding_mask": mask}).numpy()
    embeds = tf.gather(ours.token_embedding.embeddings, token_ids)
    by_embeds = ours({"inputs_embeds": embeds, "padding_mask": mask}).numpy()
    np.testing.assert_allclose(by_ids, by_embeds, atol=1e-6)
    by_method = ours({"inputs_embeds": ours.embed_tokens(token_ids), "padding_mask": mask})
    np.testing.assert_allclose(by_ids, by_method.numpy(), atol=1e-6)


def test_keras_nlp_qk_norm_epsilon_quirk(oracle):
    """keras-nlp's q/k norms use 1e-5, not layer_norm_epsilon; HF uses rms_norm_eps.

    If a keras-nlp release fixes this, this test fails: then drop
    KERAS_NLP_QK_NORM_EPSILON from the parity checks.
    """
    attention = oracle.get_layer("transformer_layer_0")._self_attention_layer
    assert oracle.layer_norm_epsilon == 1e-6
    assert attention._query_dense_layer_norm.epsilon == KNLP_QK_EPS
    hf_faithful = QwenBackbone(**convert.backbone_config_from_keras_nlp(oracle.get_config()))
    assert hf_faithful.qk_norm_epsilon is None  # = layer_norm_epsilon, as in HF


def test_parity_inside_tf_function(oracle, ours):
    token_ids, mask = _inputs([10, 4])
    fn = tf.function(lambda t, m: ours({"token_ids": t, "padding_mask": m}))
    got = fn(tf.constant(token_ids), tf.constant(mask)).numpy()
    expected = np.asarray(oracle({"token_ids": token_ids, "padding_mask": mask}))
    assert np.abs(expected - got)[mask.astype(bool)].max() <= TOL


def test_parity_through_keras_nlp_preset_directory(oracle, tmp_path):
    preset = tmp_path / "keras_preset"
    oracle.save_to_preset(str(preset))
    out = tmp_path / "converted"
    assert convert.main(["--from", str(preset), "--out", str(out)]) == 0
    meta = json.loads((out / "config.json").read_text())
    assert meta["source"]["kind"] == "keras_nlp"
    loaded = QwenBackbone.from_pretrained(str(out), qk_norm_epsilon=KNLP_QK_EPS)
    diff, _, _ = _compare(oracle, loaded, [10, 6, 2])
    assert diff <= TOL, diff


def hf_tensors_from_keras_nlp(model):
    """The keras-nlp weights under Hugging Face Qwen3 names and torch [out, in] layouts."""
    w = {v.path: np.asarray(v.numpy()) for v in model.weights}
    out = {"model.embed_tokens.weight": w["token_embedding/embeddings"]}
    for i in range(model.num_layers):
        p, q = f"transformer_layer_{i}/", f"model.layers.{i}."
        for ours_name, hf in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
            k = w[p + f"self_attention/{ours_name}/kernel"]  # [hidden, heads, head_dim]
            out[q + f"self_attn.{hf}.weight"] = k.reshape(k.shape[0], -1).T
        o = w[p + "self_attention/attention_output/kernel"]  # [heads, head_dim, hidden]
        out[q + "self_attn.o_proj.weight"] = o.reshape(-1, o.shape[-1]).T
        out[q + "self_attn.q_norm.weight"] = w[p + "self_attention/query_dense_layernorm/scale"]
        out[q + "self_attn.k_norm.weight"] = w[p + "self_attention/key_dense_layernorm/scale"]
        out[q + "input_layernorm.weight"] = w[p + "self_attention_layernorm/scale"]
        out[q + "post_attention_layernorm.weight"] = w[p + "feedforward_layernorm/scale"]
        out[q + "mlp.gate_proj.weight"] = w[p + "feedforward_gate_dense/kernel"].T
        out[q + "mlp.up_proj.weight"] = w[p + "feedforward_intermediate_dense/kernel"].T
        out[q + "mlp.down_proj.weight"] = w[p + "feedforward_output_dense/kernel"].T
    out["model.norm.weight"] = w["sequence_output_layernorm/scale"]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


HF_CONFIG = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "vocab_size": SHAPES["vocabulary_size"],
    "hidden_size": SHAPES["hidden_dim"],
    "intermediate_size": SHAPES["intermediate_dim"],
    "num_hidden_layers": SHAPES["num_layers"],
    "num_attention_heads": SHAPES["num_query_heads"],
    "num_key_value_heads": SHAPES["num_key_value_heads"],
    "head_dim": SHAPES["head_dim"],
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000,
    "rope_scaling": None,
    "attention_bias": False,
    "tie_word_embeddings": True,
    "use_sliding_window": False,
    "sliding_window": None,
    "max_position_embeddings": 40960,
    "torch_dtype": "float32",
}


def write_hf_checkpoint(directory, tensors, config=HF_CONFIG, shards=2):
    """Write ``config.json`` + sharded ``model-0000k-of-0000n.safetensors``."""
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    names = sorted(tensors)
    for s in range(shards):
        part = {n: tensors[n] for n in names[s::shards]}
        save_file(part, os.path.join(directory, f"model-{s + 1:05d}-of-{shards:05d}.safetensors"))


def test_parity_through_hf_safetensors(oracle, tmp_path):
    src = tmp_path / "hf"
    write_hf_checkpoint(str(src), hf_tensors_from_keras_nlp(oracle))
    out = tmp_path / "converted"
    assert convert.main(["--from", str(src), "--out", str(out)]) == 0
    loaded = QwenBackbone.from_pretrained(str(out), qk_norm_epsilon=KNLP_QK_EPS)
    assert loaded.rope_max_wavelength == 1e6
    for lengths in ([10, 10, 10], [10, 7, 3]):
        diff, _, _ = _compare(oracle, loaded, lengths)
        assert diff <= TOL, (lengths, diff)


def test_hf_bfloat16_checkpoint_reads_without_torch(oracle, tmp_path):
    import ml_dtypes

    tensors = {
        k: v.astype(ml_dtypes.bfloat16) for k, v in hf_tensors_from_keras_nlp(oracle).items()
    }
    src = tmp_path / "hf_bf16"
    write_hf_checkpoint(str(src), tensors, shards=1)
    out = tmp_path / "converted"
    assert convert.main(["--from", str(src), "--out", str(out)]) == 0
    loaded = QwenBackbone.from_pretrained(str(out))
    emb = loaded.token_embedding.embeddings.numpy()
    np.testing.assert_array_equal(
        emb, tensors["model.embed_tokens.weight"].astype(np.float32)
    )
