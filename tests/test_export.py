"""SavedModel export (python -m coco_tf.export): a tiny base and a tiny CoCo model, trained a few
steps, exported and reloaded; rankings against the in-memory model and a numpy reference,
signatures through saved_model_cli, loading without coco_tf, input hardening, errors."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from coco_tf.config import ConfigError, load_config
from coco_tf.export import ExportError, export_saved_model
from coco_tf.training.trainer import Trainer
from conftest import tiny_overrides  # noqa: E402  (tests/conftest.py: the tiny config)

ROOT = os.path.join(os.path.dirname(__file__), "..")
NUM_ITEMS, MAX_LEN = 60, 8
TINY = tiny_overrides(f"data.synthetic_num_items={NUM_ITEMS}", f"data.max_len={MAX_LEN}", "train.batch_size=32",
                      "train.loss=in_batch")
HISTORIES = np.array(
    [[3, 7, 9, 12, 0, 0], [0, 0, 5, 1, 44, 60], [17, 0, 0, 0, 0, 0], [2, 4, 6, 8, 10, 11]], np.int64
)


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    return env


def _popen(args, env, cwd=None):
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)


def _finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """{"base" | "coco" | "kar": (model_dir, export path, the trained in-memory model)}; base goes through the CLI with
    two k (in a subprocess that runs while the CoCo and KAR models train)."""
    out, cli = {}, None
    for method in ("base", "coco", "kar"):
        model_dir = str(tmp_path_factory.mktemp(f"{method}_run"))
        cfg = load_config(overrides=TINY + ["train.epochs=1", f"coco.method={method}", f"runtime.model_dir={model_dir}"])
        trainer = Trainer(cfg)
        trainer.run()  # ends with the best checkpoint restored into trainer.model
        export_dir = str(tmp_path_factory.mktemp(f"{method}_export"))
        if method == "base":
            cli = _popen([sys.executable, "-m", "coco_tf.export", "--model_dir", model_dir, "--out", export_dir,
                          "--set", "export.top_k=10,5"], _env())
            path = os.path.join(export_dir, "1")
        else:
            path = export_saved_model(model_dir, export_dir)
        out[method] = (model_dir, path, trainer.model)
    code, stdout, stderr = _finish(cli)
    assert code == 0, stderr[-3000:]
    assert f"wrote {out['base'][1]}" in stdout
    return out


@pytest.fixture(scope="module")
def tools(trained, tmp_path_factory):
    """Outputs of concurrent fresh processes: the export CLI on a bad --model_dir, and two that
    import neither coco_tf nor the repository:
    ``saved_model_cli show --all`` on the base export, and ``saved_model_cli run`` on the CoCo
    export in an interpreter where coco_tf, TFRS, tf_keras and keras-nlp cannot be imported
    (saved_model_cli's own entry point, ``saved_model_cli.main``, as the console script calls it)."""
    env = _env()
    env.pop("PYTHONPATH")
    cwd = str(tmp_path_factory.mktemp("tools"))
    base, coco = trained["base"][1], trained["coco"][1]
    run_args = ["saved_model_cli", "run", "--dir", coco, "--tag_set", "serve", "--signature_def", "serving_default",
                "--input_exprs", "history=[[3, 7, 9, 12]]"]
    code = (
        "import sys\n"
        "for name in ('coco_tf', 'tensorflow_recommenders', 'tf_keras', 'keras_nlp', 'keras_hub'):\n"
        "    sys.modules[name] = None\n"
        "from tensorflow.python.tools import saved_model_cli\n"
        f"sys.argv = {run_args!r}\n"
        "saved_model_cli.main()\n"
    )
    procs = {
        "show": _popen(["saved_model_cli", "show", "--dir", base, "--all"], env, cwd),
        "run": _popen([sys.executable, "-c", code], env, cwd),
        "cli_error": _popen([sys.executable, "-m", "coco_tf.export", "--model_dir", os.path.join(cwd, "missing"),
                             "--out", os.path.join(cwd, "out")], _env(), cwd),
    }
    return {name: _finish(proc) for name, proc in procs.items()}


def _reference(model, histories, k):
    """numpy top-k of the in-memory model: (ids [B, k], scores [B, k], user [B, d])."""
    user = model({"history": tf.constant(histories)}, training=False).numpy().astype(np.float64)
    table = model.item_table().numpy().astype(np.float64)[1:]  # items 1..N
    scores = user @ table.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order + 1, np.take_along_axis(scores, order, axis=1), user


@pytest.mark.slow  # the trained fixture: three trainings and an export CLI subprocess
@pytest.mark.parametrize("method", ["base", "coco", "kar"])
def test_export_matches_in_memory_model(trained, method):
    _, path, model = trained[method]  # the trainer's own model: LoRA factors separate, unmerged
    if method == "coco":
        lora_b = [v for v in model.llm.lora_variables if "lora_b" in v.name]
        assert lora_b and max(float(np.abs(v.numpy()).max()) for v in lora_b) > 0, "LoRA did not train"
    loaded = tf.saved_model.load(path)
    out = loaded.signatures["serving_default"](history=tf.constant(HISTORIES))
    ids, scores, user = _reference(model, HISTORIES, 10)
    np.testing.assert_array_equal(out["item_ids"].numpy(), ids)
    np.testing.assert_allclose(out["scores"].numpy(), scores, atol=1e-5, rtol=0)
    assert out["item_ids"].dtype == tf.int64 and out["scores"].dtype == tf.float32
    np.testing.assert_array_equal(out["num_unknown_ids"].numpy(), np.zeros(len(HISTORIES)))
    emb = loaded.signatures["user_embedding"](history=tf.constant(HISTORIES))["user_embedding"]
    np.testing.assert_allclose(emb.numpy(), user, atol=1e-5, rtol=0)
    # Only what serving reads: no LoRA factors, optimizer slots or step counters.
    names = [v.name for v in loaded.serving_variables]
    stored = [k for k, _ in tf.train.list_variables(os.path.join(path, "variables", "variables")) if "VARIABLE_VALUE" in k]
    assert len(stored) == len(names)
    assert not [n for n in names if "lora" in n or "iteration" in n or "optimizer" in n.lower()], names
    if method == "kar":  # the frozen decoder computes the reasoning knowledge per history; the adaptor maps it
        assert any("item_text_table" in n for n in names) and any(n.startswith("llm/") for n in names), names
        assert any("hybrid_expert_adaptor" in n for n in names), names
    if method == "coco":
        assert any("item_text_table" in n for n in names), names
        # The served query kernel is the trained one with A·B·alpha/r folded in (numpy reference).
        served = {n.split("/", 1)[1]: v.numpy() for n, v in zip(names, loaded.serving_variables) if n.startswith("llm")}
        query = model.llm.transformer_layers[0]._self_attention_layer.lora_layers[0]
        assert query.lora_rank > 0 and "query" in query.name
        merged = query.kernel.numpy() + (query.lora_a.numpy() @ query.lora_b.numpy() * query.lora_scale).reshape(
            query.kernel.shape)
        np.testing.assert_allclose(served["transformer_layer_0/self_attention/query/kernel:0"], merged, atol=1e-6)
        assert np.abs(merged - query.kernel.numpy()).max() > 1e-4
    info = json.load(open(os.path.join(path, "assets.extra", "export_info.json")))
    assert info["method"] == method and info["num_items"] == NUM_ITEMS


@pytest.mark.slow  # the trained fixture: three trainings and an export CLI subprocess
def test_several_k_signatures(trained):
    loaded = tf.saved_model.load(trained["base"][1])
    assert set(loaded.signatures) == {"serving_default", "top_10", "top_5", "user_embedding"}
    h = tf.constant(HISTORIES)
    top10 = loaded.signatures["top_10"](history=h)["item_ids"].numpy()
    top5 = loaded.signatures["top_5"](history=h)["item_ids"].numpy()
    assert top5.shape == (len(HISTORIES), 5)
    np.testing.assert_array_equal(top5, top10[:, :5])


@pytest.mark.slow  # the trained fixture: three trainings and an export CLI subprocess
@pytest.mark.parametrize("method", ["base", "coco"])
def test_input_hardening(trained, method):
    _, path, model = trained[method]
    serve = tf.saved_model.load(path).signatures["serving_default"]
    # Unknown and negative ids are padding, and counted.
    dirty = HISTORIES.copy()
    dirty[0, 4], dirty[0, 5], dirty[3, 0] = NUM_ITEMS + 1, -3, 10**9
    out, clean = serve(history=tf.constant(dirty)), serve(history=tf.constant(HISTORIES))
    np.testing.assert_array_equal(out["num_unknown_ids"].numpy(), [2, 0, 0, 1])
    np.testing.assert_array_equal(out["item_ids"].numpy()[:3], clean["item_ids"].numpy()[:3])
    ref_ids, _, _ = _reference(model, np.where((dirty > 0) & (dirty <= NUM_ITEMS), dirty, 0), 10)
    np.testing.assert_array_equal(out["item_ids"].numpy(), ref_ids)
    # All padding (and an empty T = 0 request): still a ranking of k distinct catalog items.
    for empty in (np.zeros([2, 5], np.int64), np.zeros([2, 0], np.int64)):
        out = serve(history=tf.constant(empty))
        ids, scores = out["item_ids"].numpy(), out["scores"].numpy()
        assert ids.shape == (2, 10) and np.isfinite(scores).all()
        assert all(len(set(row)) == 10 for row in ids) and ids.min() >= 1 and ids.max() <= NUM_ITEMS
    # Longer than max_len: the max_len most recent valid items, in order.
    rng = np.random.default_rng(0)
    long = rng.integers(1, NUM_ITEMS + 1, size=(3, 3 * MAX_LEN)).astype(np.int64)
    long[1, -5:] = 0  # right padding
    long[2, 4:9] = 0  # padding in the middle
    recent = np.stack([row[row != 0][-MAX_LEN:] for row in long])
    out = serve(history=tf.constant(long))
    ref_ids, ref_scores, _ = _reference(model, recent, 10)
    np.testing.assert_array_equal(out["item_ids"].numpy(), ref_ids)
    np.testing.assert_allclose(out["scores"].numpy(), ref_scores, atol=1e-5, rtol=0)


@pytest.mark.slow  # subprocesses
def test_saved_model_cli_show_and_run_with_tensorflow_only(tools):
    code, text, err = tools["show"]
    assert code == 0, err[-2000:]
    for name in ("serving_default", "top_10", "top_5", "user_embedding"):
        assert f"signature_def['{name}']" in text
    default = text.split("signature_def['serving_default']")[1].split("signature_def[")[0]
    assert re.search(r"inputs\['history'\] tensor_info:\s+dtype: DT_INT64\s+shape: \(-1, -1\)", default)
    assert re.search(r"outputs\['item_ids'\] tensor_info:\s+dtype: DT_INT64\s+shape: \(-1, 10\)", default)
    assert re.search(r"outputs\['scores'\] tensor_info:\s+dtype: DT_FLOAT\s+shape: \(-1, 10\)", default)
    assert re.search(r"outputs\['num_unknown_ids'\] tensor_info:\s+dtype: DT_INT32\s+shape: \(-1\)", default)
    user = text.split("signature_def['user_embedding']")[1].split("signature_def[")[0]
    assert re.search(r"outputs\['user_embedding'\] tensor_info:\s+dtype: DT_FLOAT\s+shape: \(-1, 16\)", user)
    code, text, err = tools["run"]
    assert code == 0, err[-2000:]
    ids = re.search(r"Result for output key item_ids:\s*\[\[([\d\s]+)\]\]", text)
    assert ids, text[-2000:]
    assert len(ids.group(1).split()) == 10


@pytest.mark.slow  # the trained fixture: three trainings and an export CLI subprocess
def test_cli_bad_model_dir_exits_2_naming_it(tools):
    code, out, err = tools["cli_error"]
    assert code == 2 and "--model_dir" in err and "missing: no config.yaml" in err, err[-2000:]
    assert "Traceback" not in err


@pytest.mark.slow  # the trained fixture: three trainings and an export CLI subprocess
def test_xla_export_matches_plain_export(trained, tmp_path):
    model_dir, path, _ = trained["base"]
    xla_path = export_saved_model(model_dir, str(tmp_path), overrides=["export.jit_compile=true"])
    assert b"_XlaMustCompile" in open(os.path.join(xla_path, "saved_model.pb"), "rb").read()
    holder = tf.saved_model.load(xla_path)
    plain, xla = tf.saved_model.load(path).signatures["serving_default"], holder.signatures["serving_default"]
    # One batch (one XLA compilation): short histories and ones longer than max_len.
    history = np.zeros([6, 3 * MAX_LEN], np.int64)
    history[:4, : HISTORIES.shape[1]] = HISTORIES
    history[4:] = np.random.default_rng(1).integers(1, NUM_ITEMS + 1, size=(2, 3 * MAX_LEN))
    a, b = plain(history=tf.constant(history)), xla(history=tf.constant(history))
    np.testing.assert_array_equal(a["item_ids"].numpy(), b["item_ids"].numpy())
    np.testing.assert_allclose(a["scores"].numpy(), b["scores"].numpy(), atol=1e-5, rtol=0)


@pytest.mark.slow  # the trained fixture: three trainings and an export CLI subprocess
def test_bad_input_errors_name_the_flag_or_key(trained, tmp_path):
    model_dir = trained["base"][0]
    with pytest.raises(ExportError, match="no config.yaml"):
        export_saved_model(str(tmp_path), str(tmp_path / "out"))
    (tmp_path / "config.yaml").write_text(open(os.path.join(model_dir, "config.yaml")).read())
    with pytest.raises(ExportError, match=r"no checkpoint in .*best"):
        export_saved_model(str(tmp_path), str(tmp_path / "out"))
    with pytest.raises(ConfigError, match=r"export.top_k.*\[1, 60\]"):
        export_saved_model(model_dir, str(tmp_path / "out"), overrides=["export.top_k=61"])
    with pytest.raises(ConfigError, match="export.top_k"):
        export_saved_model(model_dir, str(tmp_path / "out"), overrides=["export.top_k=0"])
    export_dir = os.path.dirname(trained["base"][1])
    with pytest.raises(ExportError, match="version 1 already exists"):
        export_saved_model(model_dir, export_dir, version=1)
    assert not os.path.exists(tmp_path / "out" / "1")


def test_serving_dockerfile():
    text = open(os.path.join(ROOT, "docker", "Dockerfile.serving")).read()
    assert re.search(r"^ARG TF_SERVING_VERSION=2\.\d+\.\d+$", text, re.M)
    assert re.search(r"^FROM tensorflow/serving:\$\{TF_SERVING_VERSION\}$", text, re.M)
    assert "MODEL_NAME" in text and "8501" in text


def test_export_feature_backbone_with_item_text(tmp_path):
    """FDSA reads item attributes (constants rebuilt from the data, not checkpoint variables) and
    model.item_text puts the projected LLM text and the seen-item mask in the candidate tower."""
    model_dir = str(tmp_path / "run")
    cfg = load_config(overrides=TINY + ["train.epochs=1", "model.backbone=fdsa", "model.item_text=true",
                                        f"runtime.model_dir={model_dir}"])
    trainer = Trainer(cfg)
    trainer.run()
    path = export_saved_model(model_dir, str(tmp_path / "export"))
    out = tf.saved_model.load(path).signatures["serving_default"](history=tf.constant(HISTORIES))
    ids, scores, _ = _reference(trainer.model, HISTORIES, 10)
    np.testing.assert_array_equal(out["item_ids"].numpy(), ids)
    np.testing.assert_allclose(out["scores"].numpy(), scores, atol=1e-5, rtol=0)
