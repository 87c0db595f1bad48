"""CoCo layers: prompt selection and VQ loss (eq. 2-4), L_ortho (eq. 6), decoupling (eq. 5),
alignment (eq. 7) masking, contradiction decision and gradient mask (eq. 8-9)."""

import numpy as np
import pytest
import tensorflow as tf

from coco_tf.methods.coco.alignment import SemanticBehavioralAlignment
from coco_tf.methods.coco.contradiction import ContradictionGradientMask, contradiction_decision
from coco_tf.methods.coco.decoupling import SemanticDecoupling, orthogonality_loss
from coco_tf.methods.coco.vq_prompt_codebook import VQPromptCodebook, codebook_usage


def _codebook(**kw):
    # Codewords e_0..e_3 (one-hot), so cos(e_u, z_i) is e_u's normalised i-th coordinate.
    args = dict(codebook_size=4, embedding_dim=4, num_shared_prompts=2, threshold=0.45, max_prompts=2,
                initial_codebook=np.eye(4, dtype=np.float32), initial_shared=np.full((2, 4), 7.0, np.float32))
    args.update(kw)
    return VQPromptCodebook(**args)


def test_selection_threshold_cap_empty_and_mask():
    layer = _codebook()
    e_u = tf.constant([
        [1.0, 0.9, 0.8, 0.0],   # cos .67 .60 .53 0: three pass θ, cap keeps the top 2 (0, 1)
        [1.0, 0.0, 0.0, 0.0],   # only codeword 0
        [-1.0, -1.0, -1.0, -1.0],  # none: empty selection
    ])
    out = layer(e_u)
    assert out["prompts"].shape == (3, 4, 4)
    np.testing.assert_array_equal(out["num_selected"].numpy(), [2, 1, 0])
    np.testing.assert_array_equal(out["prompt_mask"].numpy(),
                                  [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]])
    np.testing.assert_array_equal(out["selected_indices"].numpy()[0], [0, 1])
    p = out["prompts"].numpy()
    np.testing.assert_allclose(p[:, :2], 7.0)               # shared prompts first, always on
    np.testing.assert_allclose(p[0, 2:], np.eye(4)[:2])     # selected codewords, best first
    np.testing.assert_allclose(p[1, 2], np.eye(4)[0])
    np.testing.assert_allclose(p[1, 3], 0.0)                # padded slot zeroed
    np.testing.assert_allclose(p[2, 2:], 0.0)


def test_softmax_selection_admits_few():
    layer = _codebook(selection="softmax", threshold=0.3, max_prompts=4)
    out = layer(tf.constant([[5.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]))
    # softmax(cos) = softmax([1, 0, 0, 0]) -> [.48, .17, .17, .17]; uniform -> .25 each.
    np.testing.assert_array_equal(out["num_selected"].numpy(), [1, 0])


def test_codebook_and_commitment_gradients_go_where_they_should():
    layer = _codebook()
    e_u = tf.Variable([[0.5, 0.2, 0.0, 0.0], [0.0, 0.0, 0.3, 0.9]])
    with tf.GradientTape(persistent=True) as tape:
        out = layer(e_u)
        codebook_term, commitment_term = out["codebook_loss"], out["commitment_loss"]
    g_cb = tape.gradient(codebook_term, [layer.codebook, e_u])
    g_cm = tape.gradient(commitment_term, [layer.codebook, e_u])
    assert g_cb[1] is None and np.abs(tf.convert_to_tensor(g_cb[0]).numpy()).sum() > 0
    assert g_cm[0] is None and np.abs(g_cm[1].numpy()).sum() > 0
    # Only the nearest codewords (0 and 3) move.
    rows = np.abs(tf.convert_to_tensor(g_cb[0]).numpy()).sum(axis=1)
    assert rows[0] > 0 and rows[3] > 0 and rows[1] == 0 and rows[2] == 0
    # Values against numpy: mean squared error to the nearest codeword.
    z = np.eye(4)[[0, 3]]
    np.testing.assert_allclose(codebook_term.numpy(), np.mean((e_u.numpy() - z) ** 2), rtol=1e-6)
    np.testing.assert_allclose(out["vq_loss"].numpy(), codebook_term.numpy() * 1.25, rtol=1e-6)
    # Selection passes no gradient into e_u.
    assert tape.gradient(tf.reduce_sum(out["prompts"]), e_u) is None


def test_codebook_usage():
    perplexity, unused = codebook_usage(tf.constant([0, 0, 1, 1]), tf.constant([True] * 4), 4)
    np.testing.assert_allclose(perplexity.numpy(), 2.0, rtol=1e-6)
    assert unused.numpy() == 2


def test_orthogonality_loss_against_numpy():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 5)).astype(np.float32)
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    cos = zn @ zn.T
    expected = np.mean([cos[i, j] ** 2 for i in range(6) for j in range(i + 1, 6)])
    np.testing.assert_allclose(orthogonality_loss(tf.constant(z)).numpy(), expected, rtol=1e-5)
    assert orthogonality_loss(tf.eye(4)).numpy() == pytest.approx(0.0)
    assert orthogonality_loss(tf.ones([3, 8])).numpy() == pytest.approx(1.0)


@pytest.mark.parametrize("mode", ["cross_attention", "mean_pool"])
def test_decoupling_shapes_and_key_masking(mode):
    layer = SemanticDecoupling(hidden_dim=8, num_heads=2, mode=mode)
    rng = np.random.default_rng(1)
    prompt = tf.constant(rng.normal(size=(2, 3, 8)), tf.float32)
    mix = rng.normal(size=(2, 5, 8)).astype(np.float32)
    mask = tf.constant([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]]) > 0
    out = layer(prompt, tf.constant(mix), mask)
    assert out.shape == (2, 3, 8)
    changed = mix.copy()
    changed[0, 4] += 100.0
    changed[1, 2:] -= 50.0
    np.testing.assert_allclose(layer(prompt, tf.constant(changed), mask).numpy(), out.numpy(), atol=1e-5)


@pytest.mark.parametrize("fusion", ["attention", "mlp", "concat"])
def test_alignment_shapes_and_unselected_slot_has_no_effect(fusion):
    layer = SemanticBehavioralAlignment(hidden_dim=6, fusion=fusion, zero_init=False)
    rng = np.random.default_rng(2)
    h_rs = tf.constant(rng.normal(size=(2, 6)), tf.float32)
    pure = rng.normal(size=(2, 4, 8)).astype(np.float32)
    mask = tf.constant([[1, 1, 1, 0], [1, 1, 0, 0]]) > 0
    out = layer(h_rs, tf.constant(pure), mask)
    assert out.shape == (2, 6)
    changed = pure.copy()
    changed[0, 3] = 1e3
    changed[1, 2:] = -1e3
    np.testing.assert_allclose(layer(h_rs, tf.constant(changed), mask).numpy(), out.numpy(), atol=1e-4)
    changed[0, 0] += 1.0  # a selected slot does change it
    assert np.abs(layer(h_rs, tf.constant(changed), mask).numpy() - out.numpy()).max() > 1e-4
    assert layer.get_config()["fusion"] == fusion


@pytest.mark.parametrize("fusion", ["attention", "mlp", "concat"])
def test_zero_init_alignment_returns_h_rs_exactly_until_trained(fusion):
    layer = SemanticBehavioralAlignment(hidden_dim=6, fusion=fusion, num_heads=2)
    rng = np.random.default_rng(3)
    h_rs = tf.constant(rng.normal(size=(3, 6)), tf.float32)
    pure = tf.constant(rng.normal(size=(3, 4, 8)), tf.float32)
    mask = tf.constant(rng.random((3, 4)) > 0.3)
    np.testing.assert_array_equal(layer(h_rs, pure, mask).numpy(), h_rs.numpy())
    # One gradient step on a loss that wants h_aligned away from h_RS moves it (the branch can learn).
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(h_rs, pure, mask) * tf.constant(rng.normal(size=(3, 6)), tf.float32))
    grads = tape.gradient(loss, layer.trainable_variables)
    assert any(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)
    for v, g in zip(layer.trainable_variables, grads):
        if g is not None:
            v.assign_sub(0.5 * g)
    assert np.abs(layer(h_rs, pure, mask).numpy() - h_rs.numpy()).max() > 1e-3


def test_centered_selection_ignores_the_shared_component():
    """Codewords = one big shared direction + small distinct ones: plain cosine selects all of them
    for any user; centred cosine selects only the codeword(s) the user points at."""
    rng = np.random.default_rng(5)
    d, k = 16, 6
    shared = np.zeros(d, np.float32)
    shared[0] = 10.0
    distinct = np.eye(d, dtype=np.float32)[1:k + 1]
    z = shared + distinct  # [K, d], pairwise cosine ~0.99
    e_u = (shared + 3.0 * distinct[2])[None]  # a user near codeword 2
    kw = dict(codebook_size=k, embedding_dim=d, num_shared_prompts=1, threshold=0.45, max_prompts=k,
              initial_codebook=z, initial_shared=rng.normal(size=(1, d)).astype(np.float32))
    plain = VQPromptCodebook(selection="cosine", **kw)(tf.constant(e_u))
    centered = VQPromptCodebook(selection="centered", **kw)(tf.constant(e_u))
    assert int(plain["num_selected"][0]) == k
    assert int(centered["num_selected"][0]) == 1
    assert int(centered["selected_indices"][0, 0]) == 2 and int(centered["nearest"][0]) == 2


def test_contradiction_decision_and_gradient_mask():
    v_t = tf.constant([[1.0, 0.0], [1.0, 0.0]])
    h_rs = tf.constant([[1.0, 1.0], [1.0, 1.0]])
    h_aligned = tf.constant([[1.0, 0.1], [0.1, 1.0]])   # closer to v_t for row 0 only
    np.testing.assert_array_equal(contradiction_decision(h_aligned, h_rs, v_t).numpy(), [1.0, 0.0])

    x = tf.Variable(np.ones((2, 3, 2), np.float32))
    mask = ContradictionGradientMask()
    with tf.GradientTape() as tape:
        y = mask(x, tf.constant([1.0, 0.0]))
        loss = tf.reduce_sum(y * 3.0)
    np.testing.assert_allclose(y.numpy(), x.numpy())            # forward: identity
    g = tape.gradient(loss, x).numpy()
    np.testing.assert_allclose(g[0], 0.0)                        # M = 1: no gradient
    np.testing.assert_allclose(g[1], 3.0)                        # M = 0: full gradient


def test_layer_configs_round_trip():
    layers = [
        _codebook(selection="softmax"),
        SemanticDecoupling(hidden_dim=8, num_heads=2, mode="mean_pool"),
        SemanticBehavioralAlignment(hidden_dim=6, fusion="mlp", mlp_dim=10),
        ContradictionGradientMask(),
    ]
    for layer in layers:
        config = layer.get_config()
        clone = type(layer).from_config(config)
        assert clone.get_config() == config
