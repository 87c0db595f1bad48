"""The four other backbones (issue #7): BERT4Rec, FDSA, S3Rec, PinnerFormer.

Objectives against hand-built examples (BERT4Rec's masking rate and targets,
PinnerFormer's future-window targets, FDSA's use of the features, S3Rec's
pre-training losses decreasing), and every backbone trained through the Trainer
on a tiny synthetic catalog beating a popularity ranker on the same test split.
"""

import json
import os
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from coco_tf.config import load_config
from coco_tf.data.synthetic import generate_synthetic
from coco_tf.metrics.ranking import popularity_metrics
from coco_tf.backbones.base import full_sequence
from coco_tf.backbones.bert4rec import BERT4Rec
from coco_tf.backbones.fdsa import FDSA
from coco_tf.backbones.pinnerformer import PinnerFormer, future_window_targets, sample_window_positive
from coco_tf.backbones.registry import available, get_backbone
from coco_tf.methods.retrieval_model import SequentialRetrievalModel
from coco_tf.backbones.s3rec import S3Rec
from coco_tf.training.trainer import Trainer
from conftest import tiny_overrides  # noqa: E402  (tests/conftest.py: the tiny config)

sys.path.insert(0, os.path.dirname(__file__))

NEW = ("bert4rec", "fdsa", "s3rec", "pinnerformer")

TINY = tiny_overrides("data.synthetic_num_users=400", "data.synthetic_num_items=80", "data.synthetic_max_len=12",
                      "data.max_len=10", "eval.ks=[5,10]", drop=("coco.", "llm."))
EPOCHS = {"bert4rec": 8, "fdsa": 3, "s3rec": 3, "pinnerformer": 3}  # the cloze task learns more slowly


def items(n=40, d=8):
    return keras.layers.Embedding(n + 1, d, name="item_embedding")


def test_registry_lists_every_backbone():
    assert available() == sorted(("sasrec",) + NEW)
    assert get_backbone("bert4rec") is BERT4Rec and get_backbone("pinnerformer") is PinnerFormer


def test_full_sequence_appends_last_target_for_any_padding():
    right = {"history": tf.constant([[3, 4, 0], [5, 6, 7]], tf.int64),
             "targets": tf.constant([[4, 9, 0], [6, 7, 8]], tf.int64)}
    left = {"history": tf.constant([[0, 3, 4]], tf.int64), "targets": tf.constant([[0, 4, 9]], tf.int64)}
    np.testing.assert_array_equal(full_sequence(right).numpy(), [[3, 4, 9, 0], [5, 6, 7, 8]])
    np.testing.assert_array_equal(full_sequence(left).numpy(), [[0, 3, 4, 9]])


# ------------------------------------------------------------------ BERT4Rec
def test_bert4rec_masking_rate_targets_and_mask_token():
    tf.keras.utils.set_random_seed(0)
    n_items = 40
    model = SequentialRetrievalModel(n_items, backbone="bert4rec", embedding_dim=8, max_len=20,
                                     backbone_kwargs={"mask_prob": 0.3, "dropout": 0.0})
    tower = model.backbone
    assert tower.mask_token_id == n_items + 1  # one past the candidate table
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 21, 400)
    seq = np.zeros((400, 20), np.int64)
    for i, n in enumerate(lengths):
        seq[i, :n] = rng.integers(1, n_items + 1, n)
    masked, mask = (t.numpy() for t in tower.cloze(tf.constant(seq)))
    valid = seq != 0
    assert not (mask & ~valid).any()  # padding is never masked
    assert mask.any(axis=1).all()  # every sequence predicts something
    assert abs(mask.sum() / valid.sum() - 0.3) < 0.03
    np.testing.assert_array_equal(masked[mask], tower.mask_token_id)
    np.testing.assert_array_equal(masked[~mask], seq[~mask])

    # training_queries: the targets are the original items at the masked positions, never [MASK].
    history, targets = seq[:, :-1] * (seq[:, 1:] != 0), seq[:, 1:]  # position t predicts item t + 1
    features = {"history": tf.constant(history), "targets": tf.constant(targets)}
    tower.last_item_samples = False
    q, t = tower.training_queries(features)
    assert q.shape[0] == t.shape[0] > 0 and q.shape[1] == 8
    assert t.numpy().min() >= 1 and t.numpy().max() <= n_items
    assert abs(t.shape[0] / valid.sum() - 0.3) < 0.03
    # The paper's extra samples: [MASK] after each history predicts its last target.
    tower.last_item_samples = True
    q2, t2 = tower.training_queries(features)
    np.testing.assert_array_equal(t2.numpy()[-400:], seq[np.arange(400), lengths - 1])
    np.testing.assert_allclose(q2.numpy()[-400:], model({"history": features["history"]}).numpy(), atol=1e-5)
    # A caller's user vector (CoCo/KAR's h_RS) is reused for those samples, not encoded again.
    given = tf.random.normal([400, 8])
    q3, t3 = tower.training_queries(features, user=given)
    np.testing.assert_array_equal(q3.numpy()[-400:], given.numpy())
    np.testing.assert_array_equal(t3.numpy()[-400:], t2.numpy()[-400:])
    # The mask token is not a candidate: scores cover padding + the real items only.
    user = model({"history": tf.constant(history[:4])})
    assert model.score_all(user).shape == (4, n_items + 1)


def test_bert4rec_user_vector_is_the_appended_mask_state():
    tf.keras.utils.set_random_seed(1)
    tower = BERT4Rec(items(), max_len=6, hidden_dim=8, dropout=0.0, num_blocks=1)
    right = tf.constant([[3, 4, 5, 0, 0, 0]], tf.int64)
    left = tf.constant([[0, 0, 0, 3, 4, 5]], tf.int64)
    full = tf.constant([[1, 2, 3, 4, 5, 6]], tf.int64)  # no padding left: the mask goes at T
    by_hand = tower.encode(tf.constant([[3, 4, 5, tower.mask_token_id]], tf.int64))[:, -1]
    np.testing.assert_allclose(tower(right).numpy(), by_hand.numpy(), atol=1e-5)
    np.testing.assert_allclose(tower(left).numpy(), by_hand.numpy(), atol=1e-5)
    assert tower(full).shape == (1, 8)
    # Bidirectional: a later item changes an earlier position's state.
    a = tower.encode(tf.constant([[3, 4, 5, 6]], tf.int64)).numpy()
    b = tower.encode(tf.constant([[3, 4, 5, 9]], tf.int64)).numpy()
    assert np.abs(a[0, 0] - b[0, 0]).max() > 1e-4


# ------------------------------------------------------------------ PinnerFormer
def test_pinnerformer_future_window_targets():
    targets = tf.constant([[2, 3, 4, 5, 0, 0], [0, 7, 8, 9, 6, 0]], tf.int64)
    window = future_window_targets(targets, 3).numpy()
    np.testing.assert_array_equal(window[0], [[2, 3, 4], [3, 4, 5], [4, 5, 0], [5, 0, 0], [0, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(window[1, 0], [0, 0, 0])  # a padded position has no window
    np.testing.assert_array_equal(window[1, 1], [7, 8, 9])
    np.testing.assert_array_equal(future_window_targets(targets, 1).numpy()[..., 0], targets.numpy())

    tf.random.set_seed(0)
    drawn = np.stack([sample_window_positive(tf.constant(window)).numpy() for _ in range(200)])  # [200, B, T]
    for b in range(2):
        for t in range(6):
            allowed = set(window[b, t][window[b, t] != 0]) or {0}
            assert set(drawn[:, b, t]) == allowed  # uniform over the window: every item drawn

    tower = PinnerFormer(items(), max_len=6, hidden_dim=8, window=3, sample_positive=False, num_blocks=1)
    history = tf.constant([[1, 2, 3, 4, 0, 0], [0, 6, 7, 8, 9, 0]], tf.int64)
    q, t = tower.training_queries({"history": history, "targets": targets})
    assert q.shape == (int((window != 0).sum()), 8)
    np.testing.assert_array_equal(np.sort(t.numpy()), np.sort(window[window != 0]))
    sampled = PinnerFormer(items(), max_len=6, hidden_dim=8, window=3, num_blocks=1)
    _, t2 = sampled.training_queries({"history": history, "targets": targets})
    assert t2.shape[0] == int((targets.numpy() != 0).sum())  # one positive per position


# ------------------------------------------------------------------ FDSA
def test_fdsa_uses_the_features():
    tf.keras.utils.set_random_seed(2)
    n = 40
    rng = np.random.default_rng(0)
    category = np.concatenate([[0], rng.integers(1, 6, n)])
    brand = np.concatenate([[0], rng.integers(0, 4, n)])  # 0: brand unknown for some items
    history = tf.constant([[3, 4, 5, 0]], tf.int64)

    def tower(cat):
        return FDSA(items(n), max_len=6, hidden_dim=8, num_blocks=1, dropout=0.0,
                    attribute_tables={"category": cat, "brand": brand})

    base = tower(category)
    out = base(history).numpy()
    changed_cat = category.copy()
    changed_cat[4] = category[4] % 5 + 1  # an item in the history
    other = tower(changed_cat)
    other(history)
    other.set_weights(base.get_weights())
    assert np.abs(other(history).numpy() - out).max() > 1e-4
    unrelated = category.copy()
    unrelated[30] = category[30] % 5 + 1  # an item not in the history
    same = tower(unrelated)
    same(history)
    same.set_weights(base.get_weights())
    np.testing.assert_allclose(same(history).numpy(), out, atol=1e-6)
    assert base.item_features(history).shape == (1, 4, 2)
    cfg = base.get_config()
    assert cfg["attribute_tables"]["category"] == category.tolist() and cfg["num_blocks"] == 1


def test_feature_backbones_need_attributes():
    cfg = load_config(overrides=["model.backbone=fdsa", "model.attributes=[nosuchfield]"])
    with pytest.raises(ValueError, match="model.attributes"):
        FDSA.config_kwargs(cfg, {"category": np.zeros(5, np.int32)})


# ------------------------------------------------------------------ S3Rec
def test_s3rec_pretraining_losses_decrease():
    tf.keras.utils.set_random_seed(3)
    data = generate_synthetic(num_users=96, num_items=60, min_len=5, max_len=12, seed=3)
    tower = S3Rec(items(60, 16), max_len=12, hidden_dim=16, num_blocks=1, dropout=0.0,
                  attribute_tables={k: data.attributes[k] for k in ("category", "brand")})
    seqs = [s[-13:] for s in data.sequences]
    width = max(len(s) for s in seqs) - 1
    hist = np.zeros((len(seqs), width), np.int64)
    tgt = np.zeros((len(seqs), width), np.int64)
    for i, s in enumerate(seqs):
        hist[i, : len(s) - 1], tgt[i, : len(s) - 1] = s[:-1], s[1:]
    batch = {"history": tf.constant(hist), "targets": tf.constant(tgt)}
    opt = keras.optimizers.Adam(0.01)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            losses = tower.pretrain_losses(batch, training=True)
        variables = tower.trainable_variables
        grads = tape.gradient(losses["total"], variables)
        opt.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])
        return losses

    history = [{k: float(v) for k, v in step().items()} for _ in range(25)]
    for name in ("aap", "mip", "map", "sp", "total"):
        first = np.mean([h[name] for h in history[:5]])
        last = np.mean([h[name] for h in history[-5:]])
        assert last < first, (name, first, last)


# ------------------------------------------------------------------ through the Trainer
def write_text_dataset(root, data):
    """The catalog in the text format: sequences.txt and items.tsv with a categories column (no brand)."""
    root.mkdir()
    with open(root / "sequences.txt", "w") as fh:
        for u, seq in enumerate(data.sequences):
            fh.write(f"{u + 1} " + " ".join(map(str, seq)) + "\n")
    vocab = data.attribute_vocab["category"]
    with open(root / "items.tsv", "w") as fh:
        fh.write("item_id\ttitle\tcategories\n")
        for i in range(1, data.num_items + 1):
            fh.write(f"{i}\t{data.titles[i]}\t{vocab[data.attributes['category'][i]]} | Other>Path\n")


@pytest.mark.parametrize("backbone", NEW)
def test_backbone_trains_and_beats_popularity(tmp_path, backbone):
    """Each backbone through the Trainer (``--set model.backbone=...``); FDSA reads the text format,
    whose only feature is the items.tsv category column."""
    overrides = [f"model.backbone={backbone}", f"train.epochs={EPOCHS[backbone]}", "model.s3rec_pretrain_epochs=2",
                 f"runtime.model_dir={tmp_path / 'run'}"]
    if backbone == "fdsa":
        data = generate_synthetic(num_users=400, num_items=80, min_len=5, max_len=12, seed=7)
        write_text_dataset(tmp_path / "data", data)
        overrides += ["data.source=text", f"data.path={tmp_path / 'data'}"]
    trainer = Trainer(load_config(overrides=TINY + overrides))
    result = trainer.run()
    if backbone == "fdsa":
        assert set(trainer.model.backbone.attribute_tables) == {"category"}
        assert int(trainer.model.backbone.attribute_tables["category"][1:].min()) > 0
    pop = popularity_metrics(trainer.split.train, trainer.split.test.targets, trainer.dataset.num_items)
    assert result["test"]["ndcg@10"] > pop["ndcg@10"], (result["test"], pop)
    assert result["test"]["recall@10"] > pop["recall@10"], (result["test"], pop)
    if backbone == "s3rec":  # the pre-training stage ran first and logged its four losses
        records = json.load(open(tmp_path / "run" / "pretrain.json"))
        assert len(records) == 2 and all(np.isfinite(records[-1][k]) for k in ("aap", "mip", "map", "sp"))


class _FakeAssets:
    """Stands in for ``coco_tf.llm.assets.LLMAssets``: random text table, tiny random decoder."""

    def __init__(self, num_items):
        rng = np.random.default_rng(0)
        self.item_text_table = rng.normal(size=(num_items + 1, 64)).astype(np.float32)
        self.item_text_table[0] = 0
        self.kar_prompts = rng.normal(size=(2, 64)).astype(np.float32)
        self.codebook_init = self.shared_init = None

    def make_decoder(self, lora_rank=0, lora_alpha=16.0, lora_dropout=0.0):
        from coco_tf.llm.qwen_decoder import QwenBackbone

        decoder = QwenBackbone.from_preset("tiny", lora_rank=lora_rank, lora_dropout=0.0)
        decoder.trainable = lora_rank > 0
        return decoder


# The coco section of configs/beauty_*.yaml: text-space scoring, L_r on the branch only.
SHIPPED_COCO = ["coco.text_score=true", "coco.rec_to_backbone=false", "coco.branch_penalty=1.0"]


@pytest.mark.parametrize("backbone,method", [(b, m) for b in NEW for m in ("coco", "kar")])
def test_coco_and_kar_wrap_every_backbone(backbone, method):
    """CoCo and KAR, as the shipped configs set them, take the backbone by name, unchanged (build_model,
    as the Trainer does): a few Adam steps on a synthetic batch, every loss finite, the backbone's encoder
    learns (from its own objective: L_r trains the branch only)."""
    from coco_tf.methods.factory import build_model

    tf.keras.utils.set_random_seed(6)
    data = generate_synthetic(num_users=16, num_items=40, min_len=5, max_len=8, seed=6)
    cfg = load_config(overrides=TINY + [f"model.backbone={backbone}", f"coco.method={method}",
                                        "coco.codebook_size=8", "coco.max_prompts=3", "coco.threshold=0.0",
                                        "llm.lora_rank=4", "train.loss=in_batch", *SHIPPED_COCO])
    model = build_model(cfg, data.num_items, _FakeAssets(data.num_items), attributes=data.attributes)
    assert type(model.backbone) is get_backbone(backbone)
    hist = np.zeros((16, 7), np.int64)
    tgt = np.zeros((16, 7), np.int64)
    for i, seq in enumerate(data.sequences):
        seq = seq[-8:]
        hist[i, : len(seq) - 1], tgt[i, : len(seq) - 1] = seq[:-1], seq[1:]
    features = {"history": tf.constant(hist), "targets": tf.constant(tgt)}
    opt = keras.optimizers.Adam(0.01)
    losses = []
    for _ in range(2):
        with tf.GradientTape() as tape:
            loss, metrics = model.compute_loss_and_metrics(features, training=True)
        variables = model.trainable_variables
        grads = tape.gradient(loss, variables)
        opt.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])
        losses.append(float(loss))
        assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
    block = {v.ref() for v in model.backbone.blocks[0].trainable_variables}
    encoder = [g for g, v in zip(grads, variables) if v.ref() in block]
    assert encoder and all(g is not None for g in encoder)  # the backbone's own objective reaches it
    # the two-tower user vector [h_user ; q_u]: d = 16 id-space dims, then the 64 text-space ones
    assert model({"history": features["history"]}).shape == (16, 16 + 64)
