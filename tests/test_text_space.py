"""coco.text_score: the text-space query against numpy, the loss by hand, the untrained model ranks as
its backbone, and the exported SavedModel ranks as the model (coco_tf/methods/text_space.py)."""

import numpy as np
import pytest
import tensorflow as tf

from coco_tf.methods.text_space import SCALE_STEP, TextSpaceQuery, recency_weights


def _np_recency(history, window, decay):
    out = np.zeros(history.shape, np.float32)
    for b, row in enumerate(history):
        valid = np.nonzero(row)[0]
        for k, pos in enumerate(valid[::-1][:window]):
            out[b, pos] = decay ** k
    return out


def test_recency_weights_match_numpy_for_left_and_right_padding():
    history = np.array([[0, 0, 4, 5, 6], [7, 8, 0, 0, 0], [3, 0, 9, 0, 2], [0, 0, 0, 0, 0]], np.int64)
    got = recency_weights(tf.constant(history), window=2, decay=0.5).numpy()
    np.testing.assert_allclose(got, _np_recency(history, 2, 0.5), atol=0)
    got = recency_weights(tf.constant(history), window=10, decay=1.0).numpy()
    np.testing.assert_allclose(got, (history != 0).astype(np.float32))


def test_text_space_query_matches_numpy():
    rng = np.random.default_rng(0)
    history = np.array([[0, 1, 2, 3], [4, 5, 0, 0]], np.int64)
    rows = rng.normal(size=(2, 4, 6)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=-1, keepdims=True)
    summary = rng.normal(size=(2, 5)).astype(np.float32)
    query = TextSpaceQuery(text_dim=6, summary_dim=5, window=2, decay=0.25, name="q")
    np.testing.assert_array_equal(query(tf.constant(history), tf.constant(rows), tf.constant(summary)).numpy(), 0.0)
    w = rng.normal(size=(5, 6)).astype(np.float32)
    query.scale_parameter.assign(1.7 / SCALE_STEP)
    query.summary_projection.kernel.assign(w)
    got = query(tf.constant(history), tf.constant(rows), tf.constant(summary)).numpy()
    weights = _np_recency(history, 2, 0.25)
    pooled = (rows * weights[:, :, None]).sum(1)
    pooled /= np.linalg.norm(pooled, axis=-1, keepdims=True)
    np.testing.assert_allclose(got, 1.7 * pooled + summary @ w, rtol=1e-5, atol=1e-6)
    # coco.text_summary=false: the history's rows alone (no W).
    alone = TextSpaceQuery(text_dim=6, summary_dim=0, window=2, decay=0.25, name="q0")
    alone.scale_parameter.assign(1.7 / SCALE_STEP)
    np.testing.assert_allclose(alone(tf.constant(history), tf.constant(rows)).numpy(), 1.7 * pooled, rtol=1e-5)
    assert alone.summary_projection is None
    with pytest.raises(ValueError, match="coco.text_decay"):
        TextSpaceQuery(text_dim=6, decay=0.0)


def _tiny_model(method, **kwargs):
    import tf_keras as keras

    from coco_tf.methods.coco.model import CoCoModel
    from coco_tf.methods.kar import KARModel
    from coco_tf.llm.qwen_decoder import QwenBackbone

    keras.utils.set_random_seed(3)
    n, d_llm = 30, 64
    table = np.random.default_rng(1).normal(size=(n + 1, d_llm)).astype(np.float32)
    table[0] = 0
    llm = QwenBackbone.from_preset("tiny", lora_rank=8 if method == "coco" else 0, name="llm")
    common = dict(num_items=n, item_text_table=table, llm=llm, embedding_dim=16, max_len=6, text_score=True,
                  backbone_kwargs={"num_blocks": 1, "dropout": 0.0}, **kwargs)
    if method == "kar":
        return KARModel(prompt_vectors=np.ones((2, d_llm), np.float32), **common), table
    return CoCoModel(codebook_size=8, max_prompts=4, **common), table


@pytest.mark.parametrize("method", ["coco", "kar"])
def test_untrained_text_query_adds_nothing_and_the_loss_is_the_softmax_over_both_spaces(method):
    model, table = _tiny_model(method)
    history = tf.constant([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 9]], tf.int64)
    user = model({"history": history}, training=False).numpy()
    h_rs = model.base_user(history, training=False).numpy()
    assert user.shape == (2, 16 + 64)
    np.testing.assert_array_equal(user[:, 16:], 0.0)
    np.testing.assert_allclose(model.score_all(user).numpy(), model.score_all(h_rs).numpy(), atol=1e-6)
    # Move the text query off zero: the full-softmax loss is the log-softmax over [E ; t̂] (numpy),
    # padding excluded.
    model.text_query.scale_parameter.assign(2.0 / SCALE_STEP)
    user = model({"history": history}, training=False).numpy()
    assert np.abs(user[:, 16:]).max() > 0.1
    rows = table / np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-12)
    candidates = np.concatenate([model.item_table().numpy(), rows], axis=1)
    logits = user @ candidates.T
    targets = np.array([7, 8])
    expected = np.log(np.exp(logits[:, 1:]).sum(1)) - logits[np.arange(2), targets]  # column 0: padding
    got = model.retrieval_loss(tf.constant(user), tf.constant(targets, tf.int64)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(model.score_all(user).numpy(), logits, rtol=1e-5, atol=1e-5)
    # The history's own text part: item 6 (the newest of row 0) gains a * t̂_6 . q / a ~ the most.
    text_part = model.score_all(user).numpy() - model.score_all(h_rs).numpy()
    assert int(np.argmax(text_part[0, 1:]) + 1) == 6


def test_text_score_trains_and_exports_the_same_ranking(tmp_path):
    """End to end: coco with coco.text_score trains (the history scale leaves zero), and the SavedModel's
    top-10 equals the model's own full ranking against [E ; t̂]."""
    import json

    from coco_tf.config import load_config
    from coco_tf.export import export_saved_model
    from coco_tf.export.exporter import best_checkpoint
    from coco_tf.training.trainer import Trainer
    from conftest import tiny_overrides

    model_dir = tmp_path / "run"
    cfg = load_config(overrides=tiny_overrides("train.learning_rate=0.005", "train.loss=in_batch") + [
        "train.epochs=2", f"runtime.model_dir={model_dir}", "coco.method=coco", "coco.base_epochs=0",
        "coco.text_score=true", "coco.codebook_size=8"])
    trainer = Trainer(cfg)
    trainer.run()
    history = json.load(open(model_dir / "history.json"))
    assert abs(history[-1]["telemetry"]["text/history_scale"]) > 1e-3
    loaded = tf.saved_model.load(export_saved_model(str(model_dir), str(tmp_path / "export")))
    hist = tf.constant([[1, 2, 3, 0, 0, 0, 0, 0], [4, 5, 6, 7, 8, 9, 10, 11]], tf.int64)
    served = loaded.signatures["serving_default"](history=hist)
    model = trainer.model  # the last epoch's weights; restore the best one, which the export holds
    tf.train.Checkpoint(model=model).restore(best_checkpoint(str(model_dir))).expect_partial()
    user = model({"history": hist}, training=False)
    assert user.shape[-1] == cfg.model.embedding_dim + model.text_dim
    scores = model.score_all(user).numpy()[:, 1:]
    expected = np.argsort(-scores, axis=1)[:, :10] + 1
    np.testing.assert_array_equal(served["item_ids"].numpy(), expected)
    np.testing.assert_allclose(served["scores"].numpy(), np.take_along_axis(scores, expected - 1, 1), atol=1e-4)


def test_user_level_loss_leaves_out_the_history_as_evaluation_does():
    """rec_excludes_history (eval.exclude_history): L_r's softmax skips the history's items, not the
    target's, and the padding column (numpy by hand)."""
    model, table = _tiny_model("coco", rec_excludes_history=True)
    model.text_query.scale_parameter.assign(3.0 / SCALE_STEP)
    history = tf.constant([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 9]], tf.int64)
    user = model({"history": history}, training=False)
    targets = np.array([7, 4])  # row 1's target is in its history: it stays a candidate
    logits = model.score_all(user).numpy()
    keep = np.ones_like(logits, bool)
    keep[:, 0] = False
    keep[0, [3, 4, 5, 6]] = False
    keep[1, [1, 2, 3, 5, 9]] = False
    expected = [np.log(np.exp(logits[b][keep[b]]).sum()) - logits[b, targets[b]] for b in range(2)]
    got = model.user_level_loss(user, tf.constant(targets, tf.int64), history).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    plain = model.retrieval_loss(user, tf.constant(targets, tf.int64)).numpy()
    assert np.all(got < plain)  # fewer competitors


def test_text_scale_grid_keeps_the_best_validation_multiple_and_saves_it(tmp_path):
    """coco.text_scale_grid: the multiple of the learnt a with the best validation NDCG@10 is kept,
    saved in best/ (a reload ranks with it) and recorded in metrics.json; [1.0] leaves a as learnt."""
    import json

    from coco_tf.config import load_config
    from coco_tf.experiments.analysis import load_run
    from coco_tf.metrics.evaluator import Evaluator
    from coco_tf.training.trainer import Trainer
    from conftest import tiny_overrides

    model_dir = tmp_path / "run"
    grid = [1.0, 0.5, 3.0]
    cfg = load_config(overrides=tiny_overrides("train.learning_rate=0.005", "train.loss=in_batch") + [
        "train.epochs=2", f"runtime.model_dir={model_dir}", "coco.method=coco", "coco.base_epochs=0",
        "coco.text_score=true", "coco.codebook_size=8", "coco.text_scale_grid=1.0,0.5,3.0"])
    result = Trainer(cfg).run()
    chosen = result["text_scale_selection"]
    assert chosen["grid"] == grid and chosen["multiplier"] == grid[int(np.argmax(chosen["valid_ndcg@10"]))]
    assert json.load(open(model_dir / "metrics.json"))["text_scale_selection"] == chosen
    run = load_run(str(model_dir))
    np.testing.assert_allclose(float(run.model.text_query.scale), chosen["learnt_a"] * chosen["multiplier"],
                               rtol=1e-3)  # learnt_a is recorded to 4 decimals
    valid = Evaluator(run.model, cfg.eval.ks, cfg.data.max_len, cfg.eval.batch_size).evaluate(run.split.valid)
    assert valid["ndcg@10"] == pytest.approx(max(chosen["valid_ndcg@10"]), abs=1e-5)
    assert result["valid"]["ndcg@10"] == pytest.approx(max(chosen["valid_ndcg@10"]), abs=1e-5)
