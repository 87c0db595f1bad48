"""LoRA on the Qwen decoder: identity at init, exact merge, frozen base, own save/load,
and save/restore round trips of the backbone (tf.train.Checkpoint, SavedModel,
converted-directory format)."""

import coco_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from coco_tf.llm.lora_dense import LoraDense
from coco_tf.llm.qwen_decoder import QwenBackbone

SHAPES = dict(
    vocabulary_size=100,
    num_layers=2,
    hidden_dim=32,
    num_query_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    intermediate_dim=64,
)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 100, size=(3, 9)).astype("int32")
    mask = (np.arange(9)[None] < np.array([9, 6, 2])[:, None]).astype("int32")
    return {"token_ids": tf.constant(ids * mask), "padding_mask": tf.constant(mask)}


def _pair(**lora):
    """A base backbone and a LoRA backbone sharing the same base weights."""
    base = QwenBackbone(**SHAPES)
    tuned = QwenBackbone(**SHAPES, lora_rank=8, **lora)
    tuned.set_base_weights({k: v.numpy() for k, v in base.weight_map().items()})
    return base, tuned


def _randomise_b(backbone, seed=1):
    rng = np.random.default_rng(seed)
    for v in backbone.lora_variables:
        if "lora_b" in v.name:
            v.assign(rng.normal(0, 0.5, size=v.shape).astype("float32"))


def test_lora_with_zero_b_equals_base():
    base, tuned = _pair()
    x = _inputs()
    np.testing.assert_array_equal(base(x).numpy(), tuned(x).numpy())
    # LoRA dropout only touches the LoRA branch, which is zero while B = 0.
    np.testing.assert_allclose(base(x).numpy(), tuned(x, training=True).numpy(), atol=1e-6)


def test_merge_lora_equals_unmerged_model():
    base, tuned = _pair()
    _randomise_b(tuned)
    x = _inputs()
    before = tuned(x).numpy()
    assert np.abs(before - base(x).numpy()).max() > 1e-3  # LoRA really changes the output
    tuned.merge_lora()
    after = tuned(x).numpy()
    assert np.abs(after - before).max() <= 1e-5
    for v in tuned.lora_variables:
        if "lora_b" in v.name:
            assert not np.any(v.numpy())
    assert all(not d.lora_enabled for d in tuned._lora_projections())
    tuned.merge_lora()  # idempotent: nothing is folded twice
    np.testing.assert_array_equal(tuned(x).numpy(), after)


def test_merge_lora_inside_traced_function_stays_exact():
    """A tf.function traced before the merge still computes the right thing (B = 0)."""
    _, tuned = _pair()
    _randomise_b(tuned)
    x = _inputs()
    fn = tf.function(lambda d: tuned(d))
    before = fn(x).numpy()
    tuned.merge_lora()
    np.testing.assert_allclose(fn(x).numpy(), before, atol=1e-5)


def test_only_lora_variables_are_trainable():
    _, tuned = _pair()
    trainable = {id(v) for v in tuned.trainable_variables}
    lora = {id(v) for v in tuned.lora_variables}
    assert trainable == lora
    assert len(lora) == SHAPES["num_layers"] * 2 * 2  # (query, value) x (A, B) per layer
    assert all(("lora_a" in v.name) or ("lora_b" in v.name) for v in tuned.trainable_variables)
    # Everything else is still there, just frozen.
    assert len(tuned.non_trainable_variables) == len(tuned.weight_map(include_lora=False))


def test_trainable_toggle_keeps_the_base_frozen():
    _, tuned = _pair()
    tuned.trainable = False  # e.g. a frozen-LLM baseline
    assert tuned.trainable_variables == []
    tuned.trainable = True
    assert {id(v) for v in tuned.trainable_variables} == {id(v) for v in tuned.lora_variables}


def test_lora_layers_selects_blocks():
    _, tuned = _pair(lora_layers=[1])
    names = sorted(tuned.lora_weight_map())
    assert names and all(n.startswith("transformer_layer_1/") for n in names)
    assert {id(v) for v in tuned.trainable_variables} == {id(v) for v in tuned.lora_variables}
    with pytest.raises(ValueError, match="lora_layers"):
        QwenBackbone(**SHAPES, lora_rank=8, lora_layers=[5])


def test_training_step_moves_only_lora():
    base, tuned = _pair()
    x = _inputs()
    frozen = {k: v.numpy().copy() for k, v in tuned.weight_map(include_lora=False).items()}
    optimizer = keras.optimizers.Adam(1e-2)
    for _ in range(2):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(tuned(x, training=True) - 1.0))
        grads = tape.gradient(loss, tuned.trainable_variables)
        assert all(g is not None for g in grads)
        optimizer.apply_gradients(zip(grads, tuned.trainable_variables))
    for k, v in tuned.weight_map(include_lora=False).items():
        np.testing.assert_array_equal(v.numpy(), frozen[k], err_msg=k)
    assert any(np.any(v.numpy()) for v in tuned.lora_variables if "lora_b" in v.name)
    assert np.abs(tuned(x).numpy() - base(x).numpy()).max() > 0


def test_lora_weights_save_and_load_on_their_own(tmp_path):
    base, tuned = _pair()
    _randomise_b(tuned)
    x = _inputs()
    expected = tuned(x).numpy()
    path = str(tmp_path / "lora.h5")
    tuned.save_lora_weights(path)

    import h5py

    with h5py.File(path) as f:
        stored = []
        f.visititems(lambda n, o: stored.append(n) if isinstance(o, h5py.Dataset) else None)
    assert sorted(stored) == sorted(tuned.lora_weight_map())

    fresh = QwenBackbone(**SHAPES, lora_rank=8)
    fresh.set_base_weights({k: v.numpy() for k, v in base.weight_map().items()})
    fresh.load_lora_weights(path)
    np.testing.assert_allclose(fresh(x).numpy(), expected, atol=1e-6)

    with pytest.raises(ValueError, match="missing tensors: transformer_layer_0/"):
        QwenBackbone(**SHAPES, lora_rank=8, lora_layers=[0, 1]).load_lora_weights(
            _only_layer_1(tuned, tmp_path)
        )
    with pytest.raises(ValueError, match=r"shape mismatches: .*lora_a \(expected \(32, 4\)"):
        QwenBackbone(**SHAPES, lora_rank=4).load_lora_weights(path)
    with pytest.raises(ValueError, match="no LoRA"):
        base.save_lora_weights(str(tmp_path / "none.h5"))


def _only_layer_1(tuned, tmp_path):
    from coco_tf.llm.qwen_decoder import write_weight_file

    path = str(tmp_path / "layer1.h5")
    write_weight_file(
        path,
        {k: v.numpy() for k, v in tuned.lora_weight_map().items() if k.startswith("transformer_layer_1/")},
    )
    return path


def test_lora_dense_layouts_merge_exactly():
    """Dense [in, out] and attention-output [heads, head_dim, hidden] layouts."""
    for units, axes, shape in (((16,), 1, (2, 5, 12)), ((12,), 2, (2, 5, 4, 3)), ((4, 3), 1, (7, 12))):
        layer = LoraDense(units=units, num_input_axes=axes, lora_rank=2, lora_alpha=4, name="p")
        x = tf.random.normal(shape, seed=3)
        y0 = layer(x)
        assert y0.shape == shape[: len(shape) - axes] + tuple(units)
        layer.lora_b.assign(tf.random.normal(layer.lora_b.shape, seed=4))
        y1 = layer(x)
        layer.merge_lora()
        np.testing.assert_allclose(layer(x).numpy(), y1.numpy(), atol=1e-5)
        assert layer.kernel.trainable is False
        config = layer.get_config()
        assert LoraDense.from_config(config).get_config() == config


def test_checkpoint_round_trip(tmp_path):
    _, tuned = _pair()
    _randomise_b(tuned)
    x = _inputs()
    expected = tuned(x).numpy()
    prefix = tf.train.Checkpoint(backbone=tuned).write(str(tmp_path / "ckpt"))
    other = QwenBackbone(**SHAPES, lora_rank=8)
    assert np.abs(other(x).numpy() - expected).max() > 1e-3
    tf.train.Checkpoint(backbone=other).read(prefix).assert_consumed()
    np.testing.assert_array_equal(other(x).numpy(), expected)


def test_saved_model_round_trip_with_inputs_embeds(tmp_path):
    _, tuned = _pair()
    _randomise_b(tuned)
    tuned.merge_lora()  # what an export does

    class Exported(tf.Module):
        def __init__(self, backbone):
            super().__init__()
            self.backbone = backbone

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, None, SHAPES["hidden_dim"]], tf.float32, name="inputs_embeds"),
                tf.TensorSpec([None, None], tf.int32, name="padding_mask"),
            ]
        )
        def encode(self, inputs_embeds, padding_mask):
            return {
                "hidden_states": self.backbone(
                    {"inputs_embeds": inputs_embeds, "padding_mask": padding_mask}, training=False
                )
            }

    module = Exported(tuned)
    path = str(tmp_path / "saved_model")
    tf.saved_model.save(module, path, signatures={"serving_default": module.encode})
    x = _inputs()
    embeds = tuned.embed_tokens(x["token_ids"])
    expected = tuned({"inputs_embeds": embeds, "padding_mask": x["padding_mask"]}).numpy()

    loaded = tf.saved_model.load(path)
    got = loaded.signatures["serving_default"](
        inputs_embeds=embeds, padding_mask=x["padding_mask"]
    )["hidden_states"].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(
        loaded.encode(embeds, x["padding_mask"])["hidden_states"].numpy(), expected, atol=1e-6
    )


def test_save_pretrained_round_trip(tmp_path):
    base = QwenBackbone(**SHAPES)
    x = _inputs()
    base.save_pretrained(str(tmp_path / "dir"))
    loaded = QwenBackbone.from_pretrained(str(tmp_path / "dir"), lora_rank=8, lora_layers=[0])
    np.testing.assert_array_equal(loaded(x).numpy(), base(x).numpy())
    assert loaded.lora_layers == [0]
    again = QwenBackbone.from_preset(str(tmp_path / "dir"))
    np.testing.assert_array_equal(again(x).numpy(), base(x).numpy())
