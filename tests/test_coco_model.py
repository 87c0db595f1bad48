"""CoCoModel and KARModel on tiny shapes: forward, telemetry, eq. 9 gradient masking."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from coco_tf.methods.coco.model import CoCoModel
from coco_tf.methods.kar import KARModel
from coco_tf.llm.qwen_decoder import QwenBackbone

NUM_ITEMS, D, T = 40, 16, 6


def _features():
    rng = np.random.default_rng(0)
    seq = rng.integers(1, NUM_ITEMS + 1, size=(8, T + 1))
    history = seq[:, :-1].copy()
    targets = seq[:, 1:].copy()
    history[:2, :2] = 0  # left padding for two users
    targets[:2, :2] = 0
    return {"history": tf.constant(history, tf.int64), "targets": tf.constant(targets, tf.int64)}


def _llm(lora_rank=4):
    keras.utils.set_random_seed(3)
    return QwenBackbone.from_preset("tiny", lora_rank=lora_rank, lora_dropout=0.0)


def _table():
    table = np.random.default_rng(1).normal(size=(NUM_ITEMS + 1, 64)).astype(np.float32)
    table[0] = 0
    return table


def _coco(**kw):
    keras.utils.set_random_seed(4)
    # zero_init=False: the mechanism tests need an LLM branch whose gradients are not zero at
    # initialisation (with zero_init they are, until the branch's last projection moves).
    args = dict(num_items=NUM_ITEMS, item_text_table=_table(), llm=_llm(0 if kw.get("ablation") == "con" else 4),
                zero_init=False,
                codebook_size=8, max_prompts=3, threshold=0.0, embedding_dim=D, max_len=T,
                backbone_kwargs={"num_blocks": 1, "dropout": 0.0}, loss="in_batch")
    args.update(kw)
    return CoCoModel(**args)


def _grads(model, variables, features):
    with tf.GradientTape() as tape:
        loss = model.compute_loss(features, training=True)
    return [None if g is None else tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)]


def _norm(grads):
    return sum(float(tf.reduce_sum(tf.abs(g))) for g in grads if g is not None)


@pytest.mark.parametrize("decision, llm_grads_zero", [(1.0, True), (0.0, False)])
def test_gradient_mask_every_m1_freezes_lora_and_prompts_not_backbone(decision, llm_grads_zero):
    # beta = gamma = 0: the codebook then learns only through the LLM branch (L_ortho and
    # the VQ codebook term would move it regardless of M).
    model = _coco(decision_override=decision, beta=0.0, gamma=0.0)
    features = _features()
    model(features)
    lora = model.llm.lora_variables
    prompts = [model.codebook.codebook, model.codebook.shared_prompts]
    backbone = model.backbone.trainable_variables
    assert lora and backbone
    g_lora, g_prompts, g_backbone = (_grads(model, v, features) for v in (lora, prompts, backbone))
    assert _norm(g_backbone) > 0
    if llm_grads_zero:
        assert all(g is None or float(tf.reduce_max(tf.abs(g))) == 0.0 for g in g_lora + g_prompts)
    else:
        assert _norm([g for g in g_lora if g is not None]) > 0  # LoRA B starts at zero: A gets none, B does
        assert _norm(g_prompts) > 0


@pytest.mark.parametrize("threshold", [0.0, 2.0])  # some users select fewer than m_max; nobody selects
def test_trimmed_prompt_slots_give_the_same_loss_and_gradients(threshold):
    # codebook of 8 with m_max 6 and theta 0: users select different counts < 6, so trimming
    # cuts real slots; theta 2 (cosine <= 1) selects nothing: only the S shared slots remain.
    features = _features()
    results = []
    for trim in (False, True):
        model = _coco(max_prompts=6, threshold=threshold, trim_prompt_slots=trim)
        model(features)
        with tf.GradientTape() as tape:
            loss, metrics = model.compute_loss_and_metrics(features, training=False)
        variables = model.trainable_variables
        grads = tape.gradient(loss, variables)
        sel = model.llm_branch(features["history"], model._encode(features["history"], False)[1], trim_prompts=trim)
        results.append((float(loss), metrics, [tf.convert_to_tensor(g).numpy() for g in grads], sel))
    (loss0, m0, g0, sel0), (loss1, m1, g1, sel1) = results
    counts = sel0["num_selected"].numpy()
    assert counts.max() < 6 and (threshold > 1 or counts.max() > counts.min())
    assert sel0["prompts"].shape[1] == 2 + 6 and sel1["prompts"].shape[1] == 2 + counts.max()
    assert sel1["h_mix"].shape[1] == sel0["h_mix"].shape[1] - (6 - counts.max())
    # The same token values in the same positions: the kept rows match, the loss and every gradient match.
    keep = np.r_[0:2 + counts.max(), 2 + 6:sel0["h_mix"].shape[1]]
    mask0 = sel0["mix_mask"].numpy()[:, keep]
    np.testing.assert_array_equal(mask0, sel1["mix_mask"].numpy())
    np.testing.assert_allclose(sel0["h_mix"].numpy()[:, keep][mask0], sel1["h_mix"].numpy()[mask0], atol=2e-5)
    assert loss1 == pytest.approx(loss0, rel=1e-5)
    assert float(m1["coco/m1_fraction"]) == float(m0["coco/m1_fraction"])
    for a, b in zip(g0, g1):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_forward_shapes_telemetry_and_trainable_sets():
    model = _coco()
    features = _features()
    user = model({"history": features["history"]})
    assert user.shape == (8, D)
    loss, metrics = model.compute_loss_and_metrics(features, training=True)
    assert np.isfinite(loss.numpy())
    for key in ("loss/rec", "loss/aux", "loss/ortho", "loss/vq", "loss/vq_codebook", "loss/vq_commitment",
                "loss/total", "coco/m1_fraction", "coco/mean_selected", "coco/empty_selection",
                "coco/codebook_perplexity", "coco/codebook_unused"):
        assert key in metrics and np.isfinite(float(metrics[key])), key
    assert model.alpha == 1.0  # the backbone's objective at full weight (the paper: 0.2)
    expected = metrics["loss/rec"] + 1.0 * metrics["loss/aux"] + 0.15 * metrics["loss/ortho"] + 0.25 * metrics["loss/vq"]
    np.testing.assert_allclose(loss.numpy(), expected.numpy(), rtol=1e-5)
    assert 0.0 <= float(metrics["coco/m1_fraction"]) <= 1.0
    assert float(metrics["coco/mean_selected"]) == 3.0  # threshold 0: every user fills m_max
    names = {v.name for v in model.trainable_variables}
    assert any("lora" in n for n in names) and any("codebook" in n for n in names)
    assert not any("item_text_table" in n for n in names)
    trainable_ids = {id(v) for v in model.trainable_variables}
    llm_trainable = [v for v in model.llm.weights if id(v) in trainable_ids]
    assert {id(v) for v in llm_trainable} == {id(v) for v in model.llm.lora_variables}


@pytest.mark.parametrize("rec_to_backbone", [True, False])
def test_rec_to_backbone_false_keeps_the_user_level_terms_off_the_backbone(rec_to_backbone):
    model = _coco(rec_to_backbone=rec_to_backbone)
    features = _features()
    model.compute_loss_and_metrics(features, training=True)  # builds every variable
    backbone = [v for v in model.backbone.trainable_variables if "item_embedding" not in v.name]
    branch = model.alignment.trainable_variables + model.llm.lora_variables
    with tf.GradientTape() as tape:
        _, metrics = model.compute_loss_and_metrics(features, training=True)
        user_level = metrics["loss/total"] - model.alpha * metrics["loss/aux"]
    grads = tape.gradient(user_level, backbone + branch)
    backbone_norm, branch_norm = _norm(grads[:len(backbone)]), _norm(grads[len(backbone):])
    assert branch_norm > 0
    assert (backbone_norm > 0) == rec_to_backbone


@pytest.mark.parametrize("ablation", ["soft", "dec", "con"])
def test_ablations_change_what_trains(ablation):
    model = _coco(ablation=ablation)
    features = _features()
    loss, _ = model.compute_loss_and_metrics(features, training=True)
    assert np.isfinite(loss.numpy())
    names = {v.name for v in model.trainable_variables}
    if ablation == "soft":
        assert not any("codebook" in n or "shared_prompts" in n for n in names)
    if ablation == "con":
        assert not any("lora" in n for n in names)
    if ablation == "dec":
        assert not any("decoupling" in n for n in names)


def test_kar_forward_and_frozen_llm():
    keras.utils.set_random_seed(5)
    prompts = np.random.default_rng(2).normal(size=(2, 64)).astype(np.float32)
    model = KARModel(num_items=NUM_ITEMS, item_text_table=_table(), llm=_llm(0), prompt_vectors=prompts,
                     embedding_dim=D, max_len=T, backbone_kwargs={"num_blocks": 1, "dropout": 0.0})
    features = _features()
    assert model({"history": features["history"]}).shape == (8, D)
    loss, metrics = model.compute_loss_and_metrics(features, training=True)
    assert np.isfinite(loss.numpy()) and "loss/rec" in metrics
    names = {v.name for v in model.trainable_variables}
    assert any("hybrid_expert_adaptor" in n for n in names)
    assert not any(n.startswith("llm") or "/llm/" in n or "transformer_layer" in n for n in names)


def test_random_prefix_draws_every_valid_position_uniformly():
    from coco_tf.methods.llm_augmented import random_prefix

    history = np.array([[5, 6, 7, 8, 0, 0], [0, 0, 3, 4, 9, 0], [2, 0, 0, 0, 0, 0], [0] * 6], np.int64)
    tf.random.set_seed(0)
    counts = np.zeros_like(history)
    for _ in range(400):
        prefix, at = (x.numpy() for x in random_prefix(tf.constant(history)))
        assert prefix.shape[1] == at.max() + 1
        for b, a in enumerate(at):
            counts[b, a] += 1
            expected = np.where(np.arange(prefix.shape[1]) <= a, history[b, : prefix.shape[1]], 0)
            np.testing.assert_array_equal(prefix[b], expected)
    # Every valid position drawn, never padding; each about 1/n of the time (±4.5 sd of a binomial).
    for b in range(3):
        valid = history[b] != 0
        assert (counts[b][~valid] == 0).all()
        n = valid.sum()
        sd = np.sqrt(400 * (1 / n) * (1 - 1 / n))
        assert (np.abs(counts[b][valid] - 400 / n) < 4.5 * sd + 1e-9).all(), counts[b]
    assert counts[3, 0] == 400  # an all-padding row: position 0


@pytest.mark.parametrize("method", ["coco", "kar"])
def test_random_user_position_predicts_the_drawn_prefixs_next_item(method, monkeypatch):
    """coco.user_position=random: L_r's user vector comes from the drawn prefix and its target is
    that position's next item; L_aux still sees the whole history; evaluation is unchanged."""
    from coco_tf.methods import llm_augmented

    if method == "coco":
        model = _coco(user_position="random")
    else:
        keras.utils.set_random_seed(5)
        model = KARModel(num_items=NUM_ITEMS, item_text_table=_table(), llm=_llm(0), user_position="random",
                         prompt_vectors=np.random.default_rng(2).normal(size=(2, 64)).astype(np.float32),
                         embedding_dim=D, max_len=T, backbone_kwargs={"num_blocks": 1, "dropout": 0.0})
    features = _features()
    drawn, seen, queries = {}, {}, {}
    real_prefix, real_vector = llm_augmented.random_prefix, type(model).user_vector
    real_queries = type(model.backbone).training_queries

    def prefix_spy(history, seed=None):
        drawn["prefix"], drawn["at"] = real_prefix(history, seed)
        return drawn["prefix"], drawn["at"]

    def vector_spy(self, history, h_rs, states, training=None, target_ids=None):
        seen["history"], seen["targets"], seen["h_rs"] = history, target_ids, h_rs
        return real_vector(self, history, h_rs, states, training=training, target_ids=target_ids)

    def queries_spy(self, feats, training=None, states=None, user=None):
        queries["states"] = states
        return real_queries(self, feats, training=training, states=states, user=user)

    monkeypatch.setattr(llm_augmented, "random_prefix", prefix_spy)
    monkeypatch.setattr(type(model), "user_vector", vector_spy)
    monkeypatch.setattr(type(model.backbone), "training_queries", queries_spy)
    loss, _ = model.compute_loss_and_metrics(features, training=True)
    assert np.isfinite(loss.numpy())
    at = drawn["at"].numpy()
    np.testing.assert_array_equal(seen["history"].numpy(), drawn["prefix"].numpy())
    np.testing.assert_array_equal(seen["targets"].numpy(), features["targets"].numpy()[np.arange(8), at])
    # h_RS is the prefix's own (dropout 0: the same encoding again).
    np.testing.assert_allclose(seen["h_rs"].numpy(), model.backbone.user_states(drawn["prefix"])[1].numpy(), atol=1e-5)
    assert queries["states"].shape[1] == T  # the backbone's own objective: the whole history
    # Not training: the newest position, as before (and as evaluation).
    model.compute_loss_and_metrics(features, training=False)
    np.testing.assert_array_equal(seen["history"].numpy(), features["history"].numpy())
    np.testing.assert_array_equal(seen["targets"].numpy(), features["targets"].numpy()[:, -1])


def test_build_model_needs_assets_and_ps_accepts_llm_methods():
    from coco_tf.config import load_config
    from coco_tf.methods.factory import build_model

    with pytest.raises(ValueError, match="needs llm_assets"):
        build_model(load_config(overrides=["coco.method=coco"]), 10)
    # The parameter-server trainer builds kar, coco (every ablation) and the item text tower too
    # (trained on a real cluster in tests/test_ps_training.py).
    for method in ("kar", "coco"):
        cfg = load_config(overrides=[f"coco.method={method}", "model.item_text=true", "runtime.strategy=ps"])
        assert (cfg.coco.method, cfg.model.item_text, cfg.runtime.strategy) == (method, True, "ps")
