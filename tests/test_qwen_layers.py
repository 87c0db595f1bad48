"""Unit tests of the decoder's layers and presets (against numpy references)."""

import coco_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

import numpy as np
import pytest
import tensorflow as tf

from coco_tf.llm.lora_dense import LoraDense
from coco_tf.llm.qwen_attention import QwenAttention
from coco_tf.llm.qwen_decoder_block import QwenDecoderBlock, compute_causal_padding_mask
from coco_tf.llm.qwen_feed_forward import QwenFeedForward
from coco_tf.llm.rms_norm import RMSNorm
from coco_tf.llm.rotary_embedding import RotaryEmbedding
from coco_tf.llm import presets
from coco_tf.llm.qwen_decoder import QwenBackbone, expected_weight_shapes


def _np_rms(x, scale, eps):
    return x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + eps) * scale


def _np_rope(x, base=1e6, positions=None):
    """x [b, s, heads, d] — rotate-half RoPE written out directly (positions [s] or [b, s])."""
    d = x.shape[-1]
    inv = base ** (-np.arange(0, d, 2) / d)
    pos = np.arange(x.shape[1]) if positions is None else np.asarray(positions, np.float64)
    ang = np.broadcast_to(pos, x.shape[:2])[..., None] * inv  # [b, s, d/2]
    cos = np.cos(np.concatenate([ang, ang], -1))[:, :, None, :]
    sin = np.sin(np.concatenate([ang, ang], -1))[:, :, None, :]
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * cos + np.concatenate([-x2, x1], -1) * sin


def test_rms_norm_matches_formula_and_per_head_scale():
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 8)).astype("float32")
    norm = RMSNorm(epsilon=1e-6, head_dim=8, name="n")
    norm.build(x.shape)
    scale = np.linspace(0.5, 1.5, 8).astype("float32")
    norm.scale.assign(scale)
    np.testing.assert_allclose(norm(x).numpy(), _np_rms(x, scale, 1e-6), rtol=1e-5, atol=1e-6)
    assert norm.scale.shape == (8,)
    assert RMSNorm.from_config(norm.get_config()).get_config() == norm.get_config()


def test_rope_matches_reference_and_is_relative():
    x = np.random.default_rng(1).normal(size=(1, 6, 2, 16)).astype("float32")
    rope = RotaryEmbedding(max_wavelength=1e6)
    np.testing.assert_allclose(rope(x).numpy(), _np_rope(x), atol=1e-5)
    # Scores depend only on the offset: <R_m q, R_n k> == <R_{m+s} q, R_{n+s} k>.
    q = np.tile(x[:, :1], (1, 6, 1, 1))
    k = np.tile(x[:, 1:2], (1, 6, 1, 1))
    rq, rk = rope(q).numpy()[0, :, 0], rope(k).numpy()[0, :, 0]
    np.testing.assert_allclose(rq[3] @ rk[1], rq[5] @ rk[3], rtol=1e-4)
    np.testing.assert_allclose(rope(x[:, 2:], start_index=2).numpy(), rope(x).numpy()[:, 2:], atol=1e-5)
    with pytest.raises(ValueError, match="even"):
        rope(np.zeros((1, 2, 3), "float32"))


def test_rope_explicit_positions_shared_and_per_example():
    x = np.random.default_rng(2).normal(size=(2, 5, 2, 16)).astype("float32")
    rope = RotaryEmbedding(max_wavelength=1e6)
    gapped = [0, 1, 7, 8, 9]  # two slots cut out after position 1
    np.testing.assert_allclose(rope(x, positions=gapped).numpy(), _np_rope(x, positions=gapped), atol=1e-5)
    per_example = [[0, 1, 2, 3, 4], [0, 4, 5, 6, 7]]
    out = rope(x, positions=tf.constant(per_example)).numpy()
    np.testing.assert_allclose(out, _np_rope(x, positions=per_example), atol=1e-5)
    np.testing.assert_allclose(out[0], rope(x).numpy()[0], atol=1e-6)  # row 0 = default positions


def _np_attention(layer, x, mask):
    """Reference GQA with explicit head repetition (as keras-nlp does)."""
    a = layer
    q = np.einsum("bsm,muh->bsuh", x, a._query_dense.kernel.numpy())
    k = np.einsum("bsm,mvh->bsvh", x, a._key_dense.kernel.numpy())
    v = np.einsum("bsm,mvh->bsvh", x, a._value_dense.kernel.numpy())
    q = _np_rope(_np_rms(q, a._query_dense_layer_norm.scale.numpy(), a.layer_norm_epsilon))
    k = _np_rope(_np_rms(k, a._key_dense_layer_norm.scale.numpy(), a.layer_norm_epsilon))
    groups = a.num_query_heads // a.num_key_value_heads
    k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
    s = np.einsum("bquh,bkuh->buqk", q, k) / np.sqrt(a.head_dim)
    s = np.where(mask[:, None], s, -1e9)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = np.einsum("buqk,bkuh->bquh", p, v)
    return np.einsum("bquh,uhm->bqm", o, a._output_dense.kernel.numpy())


def test_grouped_query_attention_matches_repeat_reference():
    x = np.random.default_rng(2).normal(size=(2, 5, 32)).astype("float32")
    layer = QwenAttention(4, 2, 8, name="self_attention")
    layer.build(x.shape)
    for norm in (layer._query_dense_layer_norm, layer._key_dense_layer_norm):
        norm.scale.assign(np.random.default_rng(3).uniform(0.5, 1.5, 8).astype("float32"))
    padding = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], "int32")
    mask = compute_causal_padding_mask(padding).numpy()
    np.testing.assert_allclose(
        layer(x, attention_mask=mask).numpy(), _np_attention(layer, x, mask), atol=1e-5
    )
    assert layer._query_dense.kernel.shape == (32, 4, 8)
    assert layer._output_dense.kernel.shape == (4, 8, 32)
    with pytest.raises(ValueError, match="multiple"):
        QwenAttention(4, 3, 8)


def test_causal_mask_and_block_causality():
    mask = compute_causal_padding_mask(tf.constant([[1, 1, 0]])).numpy()[0]
    np.testing.assert_array_equal(mask, [[1, 0, 0], [1, 1, 0], [1, 1, 0]])
    block = QwenDecoderBlock(64, 4, 2, 8, name="transformer_layer_0")
    x = np.random.default_rng(4).normal(size=(1, 6, 32)).astype("float32")
    y = block(x).numpy()
    x2 = x.copy()
    x2[:, 4:] += 3.0  # the future must not change the past
    np.testing.assert_allclose(block(x2).numpy()[:, :4], y[:, :4], atol=1e-6)


def test_feed_forward_is_swiglu():
    x = np.random.default_rng(5).normal(size=(2, 3, 32)).astype("float32")
    ffn = QwenFeedForward(64, name="feedforward")
    y = ffn(x).numpy()
    g = x @ ffn._feedforward_gate_dense.kernel.numpy()
    u = x @ ffn._feedforward_intermediate_dense.kernel.numpy()
    ref = (u * g / (1 + np.exp(-g))) @ ffn._feedforward_output_dense.kernel.numpy()
    np.testing.assert_allclose(y, ref, atol=1e-5)


@pytest.mark.parametrize(
    "layer",
    [
        lambda: RotaryEmbedding(max_wavelength=1e6, scaling_factor=2.0),
        lambda: LoraDense(units=(4, 8), lora_rank=8, lora_alpha=16, lora_dropout=0.05, name="q"),
        lambda: QwenAttention(4, 2, 8, lora_rank=8, name="self_attention"),
        lambda: QwenFeedForward(64, name="ff"),
        lambda: QwenDecoderBlock(64, 4, 2, 8, qk_norm_epsilon=1e-5, lora_rank=8, name="b"),
    ],
)
def test_get_config_round_trip(layer):
    layer = layer()
    config = layer.get_config()
    assert type(layer).from_config(config).get_config() == config


def test_backbone_config_and_shapes():
    config = dict(presets.get_preset("tiny"), lora_rank=8, lora_layers=[1])
    backbone = QwenBackbone(**config)
    assert QwenBackbone.from_config(backbone.get_config()).get_config() == backbone.get_config()
    assert backbone.base_weight_shapes() == expected_weight_shapes(config)


def test_backbone_input_errors_are_clear():
    backbone = QwenBackbone.from_preset("tiny")
    ids = tf.constant([[1, 2, 3]])
    with pytest.raises(ValueError, match="exactly one of 'token_ids' or 'inputs_embeds'; got both"):
        backbone({"token_ids": ids, "inputs_embeds": tf.zeros([1, 3, 64])})
    with pytest.raises(ValueError, match="neither"):
        backbone({"padding_mask": tf.ones([1, 3])})
    with pytest.raises(ValueError, match="unknown input keys"):
        backbone({"token_ids": ids, "attention_mask": ids})
    with pytest.raises(ValueError, match=r"\[batch, seq, 64\]"):
        backbone({"inputs_embeds": tf.zeros([1, 3, 10])})
    with pytest.raises(ValueError, match="expects a dict"):
        backbone(ids)
    with pytest.raises(ValueError, match="Known presets: tiny, small, qwen3_0.6b"):
        QwenBackbone.from_preset("qwen9_huge")


def test_presets_match_published_qwen3_parameter_counts():
    """Shapes check: keras-nlp's own preset metadata lists the parameter counts."""
    from keras_hub.src.models.qwen3.qwen3_presets import backbone_presets

    for ours, theirs in (
        ("qwen3_0.6b", "qwen3_0.6b_en"),
        ("qwen3_1.7b", "qwen3_1.7b_en"),
        ("qwen3_4b", "qwen3_4b_en"),
        ("qwen3_8b", "qwen3_8b_en"),
    ):
        config = presets.get_preset(ours)
        assert config["vocabulary_size"] == 151936 and config["head_dim"] == 128
        assert config["rope_max_wavelength"] == 1e6 and config["layer_norm_epsilon"] == 1e-6
        assert presets.count_parameters(config) == backbone_presets[theirs]["metadata"]["params"]
    assert not presets.get_preset("qwen3_8b")["tie_word_embeddings"]
    assert presets.get_preset("qwen3_0.6b")["tie_word_embeddings"]


def test_tiny_preset_is_a_few_hundred_thousand_parameters():
    backbone = QwenBackbone.from_preset("tiny")
    n = backbone.count_params()
    assert n == presets.count_parameters(presets.get_preset("tiny"), include_lm_head=False)
    assert 100_000 < n < 1_000_000
    assert presets.DEFAULT_PRESET == "tiny"
