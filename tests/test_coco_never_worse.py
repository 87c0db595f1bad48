"""CoCo and KAR start exactly where their backbone is (coco.zero_init), and the two warm starts:
the in-run base stage (coco.base_epochs) and coco.init_from; the shuffled-text control."""

import json

import numpy as np
import pytest
import tensorflow as tf

from coco_tf.config import ConfigError, load_config
from coco_tf.data.pipeline import count_batches
from coco_tf.training.inputs import shuffle_item_rows
from coco_tf.training.trainer import Trainer
from test_coco_train import TINY  # the tiny synthetic catalog and model of the CoCo train tests


def _trainer(tmp_path, name, *overrides, epochs=2):
    cfg = load_config(overrides=TINY + [f"train.epochs={epochs}", f"runtime.model_dir={tmp_path / name}",
                                        f"llm.cache_dir={tmp_path / 'cache'}", *overrides])
    return Trainer(cfg)


@pytest.mark.parametrize("method", ["coco", "kar"])
def test_untrained_branch_ranks_exactly_as_the_backbone(tmp_path, method):
    """Same backbone and item-table weights: the same top-10 for every user (and the same scores)."""
    base = _trainer(tmp_path, "base", "coco.method=base")
    aug = _trainer(tmp_path, method, f"coco.method={method}", "model.dropout=0.0")
    base._build()
    aug._build()
    # The base model's weights (backbone + item table) into the augmented model, by object path.
    path = tf.train.Checkpoint(model=base.model).save(str(tmp_path / "base_ckpt" / "ckpt"))
    tf.train.Checkpoint(model=aug.model).restore(path).expect_partial()
    pairs = list(zip(base.model.backbone.variables, aug.model.backbone.variables))  # it holds the item table
    assert len(pairs) == len(base.model.variables)
    for a, b in pairs:
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    history = tf.constant(_pad(aug.split.test.histories, 8), tf.int64)
    u_base = base.model({"history": history}, training=False)
    u_aug = aug.model({"history": history}, training=False)
    np.testing.assert_array_equal(u_aug.numpy(), u_base.numpy())
    top_base = tf.math.top_k(base.model.score_all(u_base), 10).indices.numpy()
    top_aug = tf.math.top_k(aug.model.score_all(u_aug), 10).indices.numpy()
    np.testing.assert_array_equal(top_aug, top_base)
    # The paper's reading (random init) does move the ranking: the test can fail.
    paper = _trainer(tmp_path, method + "_paper", f"coco.method={method}", "coco.zero_init=false")
    paper._build()
    tf.train.Checkpoint(model=paper.model).restore(path).expect_partial()
    assert np.abs(paper.model({"history": history}, training=False).numpy() - u_base.numpy()).max() > 1e-3


def test_item_text_candidates_start_as_the_id_embeddings(tmp_path):
    """model.item_text with the zero-initialised text projection: every seen item scores as in base."""
    base = _trainer(tmp_path, "base", "coco.method=base", "model.dropout=0.0")
    text = _trainer(tmp_path, "text", "coco.method=base", "model.item_text=true", "model.dropout=0.0")
    base._build()
    text._build()
    path = tf.train.Checkpoint(model=base.model).save(str(tmp_path / "base_ckpt" / "ckpt"))
    tf.train.Checkpoint(model=text.model).restore(path).expect_partial()
    history = tf.constant(_pad(text.split.test.histories, 8), tf.int64)
    seen = text.model.item_seen.numpy()[:, 0] > 0
    s_base = base.model.score_all(base.model({"history": history})).numpy()[:, seen]
    s_text = text.model.score_all(text.model({"history": history})).numpy()[:, seen]
    np.testing.assert_array_equal(s_text, s_base)
    assert float(np.abs(text.model.text_projection.kernel.numpy()).max()) == 0.0


def _pad(histories, max_len):
    out = np.zeros([len(histories), max_len], np.int64)
    for i, h in enumerate(histories):
        h = list(h)[-max_len:]
        out[i, max_len - len(h):] = h
    return out


@pytest.mark.slow  # two training runs
def test_base_stage_then_branch_joins_at_the_base_validation(tmp_path):
    trainer = _trainer(tmp_path, "coco", "coco.method=coco", "coco.base_epochs=2", "coco.base_patience=5",
                       "train.checkpoint_every_steps=100000", epochs=4)  # checkpoints numbered by step
    assert trainer.base_stage == 2 and trainer.in_base_stage()
    result = trainer.run()
    # The step count runs on across the join, where the optimizer's own count restarts.
    steps = count_batches(trainer.lengths, trainer.cfg.train.batch_size, trainer.cfg.data.max_len,
                          trainer.cfg.data.bucket_by_length)
    assert trainer.manager.latest_checkpoint.endswith(f"ckpt-{4 * steps}")
    assert int(trainer.optimizer.iterations.numpy()) == 2 * steps
    history = json.load(open(tmp_path / "coco" / "history.json"))
    assert [("branch_joins" in r) for r in history] == [False, True, False, False]
    join = history[1]["branch_joins"]
    best_base = max(history[:2], key=lambda r: r["valid"]["ndcg@10"])
    assert join["from_epoch"] == best_base["epoch"]
    for k, v in best_base["valid"].items():  # the full model at the join ranks as the best base epoch
        assert join["valid"][k] == pytest.approx(v, abs=1e-6), k
    # Base-stage epochs train the backbone objective only; the joint epochs run the LLM branch.
    assert "loss/rec" not in history[0]["telemetry"] and "loss/rec" in history[2]["telemetry"]
    assert not trainer.in_base_stage()
    assert result["best_epoch"] >= join["from_epoch"]


def test_base_stage_limit_and_off_for_base():
    from coco_tf.training.base import base_stage_epochs
    # -1 (the default): until the stall, leaving coco.branch_epochs (5) of train.epochs to the branch,
    # but never less than half of train.epochs to the base stage.
    assert base_stage_epochs(load_config(overrides=["coco.method=coco", "train.epochs=30"])) == 25
    assert base_stage_epochs(load_config(overrides=["coco.method=coco", "train.epochs=3"])) == 1
    assert base_stage_epochs(load_config(overrides=["coco.method=coco", "train.epochs=30",
                                                    "coco.branch_epochs=12"])) == 18
    assert base_stage_epochs(load_config(overrides=["coco.method=kar", "train.epochs=30", "coco.base_epochs=10"])) == 10
    assert base_stage_epochs(load_config(overrides=["coco.method=kar", "train.epochs=30", "coco.base_epochs=0"])) == 0
    assert base_stage_epochs(load_config(overrides=["coco.method=base", "train.epochs=30"])) == 0
    assert base_stage_epochs(load_config(overrides=["coco.method=kar", "coco.init_from=/x"])) == 0


@pytest.mark.slow  # two training runs
def test_init_from_a_coco_run_keeps_this_runs_frozen_text_table(tmp_path):
    """A warm start from a kar/coco run takes its trained variables but not its frozen item text
    table: the shuffled control (or another llm.item_text_source) must stay in effect."""
    source = _trainer(tmp_path, "source", "coco.method=coco", "coco.base_epochs=0", "model.item_text=true", epochs=1)
    source.run()
    run = _trainer(tmp_path, "shuffled", "coco.method=coco", f"coco.init_from={tmp_path / 'source'}",
                   "llm.text_table_shuffle=true", "model.item_text=true", epochs=1)
    run._build()
    own = run.model.item_text.embeddings.numpy().copy()
    run._start_run()
    np.testing.assert_array_equal(run.model.item_text.embeddings.numpy(), own)
    assert np.abs(own - source.model.item_text.embeddings.numpy()).max() > 0  # the shuffle differs
    for mine, theirs in zip(run.model.backbone.trainable_variables, source.model.backbone.trainable_variables):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    # model.item_text's projection comes along (it trained away from its zero start).
    theirs = source.model.text_projection.kernel.numpy()
    assert np.abs(theirs).max() > 0
    np.testing.assert_array_equal(run.model.text_projection.kernel.numpy(), theirs)


@pytest.mark.slow  # two training runs
def test_init_from_restores_the_base_run_and_checks_its_shape(tmp_path):
    base = _trainer(tmp_path, "base", "coco.method=base", epochs=2)
    base_result = base.run()
    coco = _trainer(tmp_path, "coco", "coco.method=coco", f"coco.init_from={tmp_path / 'base'}",
                    "model.dropout=0.0", epochs=1)
    assert coco.base_stage == 0
    coco._build()
    coco._start_run()
    # The base run's best model, restored: its test metrics are the warm-started model's at step 0.
    from coco_tf.metrics.evaluator import Evaluator
    ev = Evaluator(coco.model, [5, 10, 20], 8, 512)
    got = ev.evaluate(coco.split.test)
    for k, v in base_result["test"].items():
        assert got[k] == pytest.approx(v, abs=1e-6), k

    # The warm start is validated and kept as best checkpoint 0.
    assert coco.warm_start_record["valid"] == pytest.approx(base_result["valid"], abs=1e-6)
    assert coco.best_manager.latest_checkpoint.endswith("-0")

    wrong = _trainer(tmp_path, "wrong", "coco.method=coco", f"coco.init_from={tmp_path / 'base'}",
                     "model.embedding_dim=8", epochs=1)
    wrong._build()
    with pytest.raises(ConfigError, match="model.embedding_dim is 16 .* but 8 here"):
        wrong._start_run()
    missing = _trainer(tmp_path, "missing", "coco.method=coco", f"coco.init_from={tmp_path / 'nope'}", epochs=1)
    with pytest.raises(ConfigError, match="not a run directory"):
        missing._start_run()


def test_shuffled_text_table_permutes_items_not_padding():
    table = np.arange(12, dtype=np.float32).reshape(6, 2)
    table[0] = 0
    out = shuffle_item_rows(table)
    np.testing.assert_array_equal(out[0], 0)
    assert sorted(map(tuple, out[1:])) == sorted(map(tuple, table[1:]))
    assert (out[1:] != table[1:]).any()
    np.testing.assert_array_equal(shuffle_item_rows(table), out)  # fixed permutation


def test_shuffle_control_reaches_the_model(tmp_path):
    plain = _trainer(tmp_path, "plain", "coco.method=kar")
    shuffled = _trainer(tmp_path, "shuffled", "coco.method=kar", "llm.text_table_shuffle=true")
    a, b = plain.llm_assets.item_text_table, shuffled.llm_assets.item_text_table
    np.testing.assert_array_equal(b, shuffle_item_rows(a))


@pytest.mark.parametrize("method", ["coco", "kar"])
def test_branch_penalty_adds_what_the_branch_moves_the_user_vector(tmp_path, method):
    """coco.branch_penalty: the loss grows by λ · mean_u ||user_u − h_RS,u||², computed here in numpy
    from the model's own user vector and h_RS (a moved branch, so the term is not zero)."""
    lam = 0.7
    models = {}
    for name, value in (("free", 0.0), ("penalised", lam)):
        t = _trainer(tmp_path, f"{method}_{name}", f"coco.method={method}", "model.dropout=0.0",
                     "llm.lora_dropout=0.0", "coco.zero_init=false", f"coco.branch_penalty={value}")
        t._build()
        models[name] = t
    free, pen = models["free"], models["penalised"]
    path = tf.train.Checkpoint(model=free.model).save(str(tmp_path / "free_ckpt" / "ckpt"))
    tf.train.Checkpoint(model=pen.model).restore(path).assert_existing_objects_matched()
    history = _pad(free.split.test.histories, 8)
    targets = np.zeros_like(history)
    targets[:, :-1] = history[:, 1:]
    targets[:, -1] = np.asarray(free.split.test.targets)
    features = {"history": tf.constant(history, tf.int64), "targets": tf.constant(targets, tf.int64)}
    loss_free, m_free = free.model.compute_loss_and_metrics(features, training=False)
    loss_pen, m_pen = pen.model.compute_loss_and_metrics(features, training=False)
    user = free.model(features, training=False).numpy()
    h_rs = free.model.base_user(features["history"], training=False).numpy()
    expected = float(np.mean(np.sum((user - h_rs) ** 2, axis=-1)))
    assert expected > 1e-3  # a random-init branch moves the user vector
    assert float(m_free["branch/sq_norm"]) == pytest.approx(expected, rel=1e-4)
    assert float(loss_pen) - float(loss_free) == pytest.approx(lam * expected, rel=1e-4, abs=1e-5)
    # With the zero-initialised branch the term starts at zero.
    zero = _trainer(tmp_path, f"{method}_zero", f"coco.method={method}", "coco.branch_penalty=1.0")
    zero._build()
    _, m_zero = zero.model.compute_loss_and_metrics(features, training=False)
    assert float(m_zero["branch/sq_norm"]) == 0.0


def test_branch_joins_with_a_fresh_optimizer(tmp_path):
    """At the join Adam restarts as after coco.init_from: the branch's first step moves a zero-init
    variable by train.learning_rate (Adam's bias-corrected first step is lr·g/|g|), not by the
    uncorrected 0.1/sqrt(0.001) = 3.16x that the base stage's global step count would give."""
    from coco_tf.data.pipeline import train_dataset
    trainer = _trainer(tmp_path, "coco", "coco.method=coco", "coco.text_score=true", epochs=2)
    assert trainer.base_stage == 1
    trainer._build()
    cfg = trainer.cfg
    batches = list(train_dataset(trainer.split.train, cfg.data.max_len, cfg.train.batch_size, cfg.train.seed,
                                 cfg.data.bucket_by_length, epoch=1).take(3))
    for batch in batches:
        trainer._base_train_step(batch)
    assert int(trainer.optimizer.iterations.numpy()) == 3
    trainer._maybe_join(1, {})
    assert not trainer.in_base_stage()
    assert int(trainer.optimizer.iterations.numpy()) == 0
    assert all(not np.any(v.numpy()) for v in trainer.optimizer.variables)
    theta = trainer.model.text_query.scale_parameter
    assert float(theta.numpy()) == 0.0
    trainer._train_step(batches[0])
    assert abs(float(theta.numpy())) == pytest.approx(cfg.train.learning_rate, rel=1e-3)


def test_branch_patience_governs_the_branch_only(tmp_path):
    """One patience per stage: coco.base_patience ends a kar/coco base stage, coco.branch_patience the
    run once its LLM branch trains (0 hands the branch to train.early_stopping_patience), and the base
    method keeps train.early_stopping_patience."""
    base = _trainer(tmp_path, "base", "coco.method=base", "train.early_stopping_patience=10")
    assert base._patience() == 10
    coco = _trainer(tmp_path, "coco", "coco.method=coco", "train.early_stopping_patience=10", "coco.base_patience=3",
                    epochs=30)
    assert coco.in_base_stage() and coco._patience() == 3  # the base stage ends on its own patience (a join)
    coco.branch_joined.assign(True)
    assert coco._patience() == 4  # the default
    coco.stale_evals.assign(3)
    assert not coco._out_of_patience()
    coco.stale_evals.assign(4)
    assert coco._out_of_patience()
    off = _trainer(tmp_path, "off", "coco.method=kar", "coco.base_epochs=0", "coco.branch_patience=0",
                   "train.early_stopping_patience=10")
    assert not off.in_base_stage() and off._patience() == 10
    with pytest.raises(ConfigError, match="coco.branch_patience"):
        load_config(overrides=["coco.branch_patience=-1"])


def test_branch_stops_after_branch_patience_stale_evaluations(tmp_path):
    """End to end: the run stops at the first branch epoch that leaves validation stale for
    coco.branch_patience evaluations, replayed here from history.json."""
    trainer = _trainer(tmp_path, "coco", "coco.method=coco", "coco.base_epochs=1", "coco.branch_patience=1",
                       "train.early_stopping_patience=0", epochs=5)
    result = trainer.run()
    history = json.load(open(tmp_path / "coco" / "history.json"))
    best, expected = -1.0, 5
    for r in history:
        score = r["valid"]["ndcg@10"]
        stale = score <= best
        best = max(best, score)
        if r["epoch"] > 1 and stale:  # a branch epoch without a better validation: patience 1 is spent
            expected = r["epoch"]
            break
    assert expected < 5  # on this seed the branch does stall before the budget: the stop is exercised
    assert result["epochs_run"] == len(history) == expected
