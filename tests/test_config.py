import pytest
import yaml

from coco_tf.config import Config, ConfigError, dump_config, load_config, reference_markdown


def test_defaults_and_overrides():
    cfg = load_config(overrides=["train.epochs=3", "model.dropout=0.1", "eval.ks=[1,5]", "data.bucket_by_length=false"])
    assert cfg.train.epochs == 3
    assert cfg.model.dropout == pytest.approx(0.1)
    assert cfg.eval.ks == [1, 5]
    assert cfg.data.bucket_by_length is False
    assert Config().train.epochs != 3


def test_yaml_file_then_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 7\n  batch_size: 16\n")
    cfg = load_config(str(path), ["train.batch_size=32"])
    assert (cfg.train.epochs, cfg.train.batch_size) == (7, 32)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.epochz=3", "unknown config key 'train.epochz'; keys in 'train': batch_size"),
        ("trian.epochs=3", "section one of: data, model, llm, coco, train, eval, runtime"),
        ("train.epochs=three", "config key 'train.epochs': 'three' is not a valid int"),
        ("train.loss=bce", "config key 'train.loss': 'bce' is not allowed; allowed values: full_softmax, in_batch"),
        ("model.backbone=gru4rec", "allowed values: sasrec"),
        ("data.bucket_by_length=maybe", "is not a valid bool"),
        ("train.epochs=0", "config key 'train.epochs': must be > 0"),
        ("model.num_heads=3", "does not divide model.embedding_dim=64"),
        ("data.source=text", "config key 'data.path': required when data.source=text"),
        ("noequals", "--set expects dotted.key=value"),
        ("coco.codebook_size=0", "config key 'coco.codebook_size': must be > 0, got 0"),
    ],
)
def test_bad_keys_and_values(override, expected):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[override])
    assert expected in str(e.value)


def test_yaml_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: 2\n  learning_rat: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'train.learning_rat'"):
        load_config(str(path))
    path.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(path))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "missing.yaml"))


def test_dump_round_trip_with_comments(tmp_path):
    cfg = load_config(overrides=["train.epochs=4", "eval.ks=[5,10]", "data.path=/x y/z"])
    path = tmp_path / "config.yaml"
    dump_config(cfg, str(path))
    text = path.read_text()
    assert "# int: training epochs" in text
    assert load_config(str(path)).to_dict() == cfg.to_dict()
    assert yaml.safe_load(text)["train"]["epochs"] == 4


def test_every_key_documented_in_readme_reference():
    table = reference_markdown()
    assert "`train.loss`" in table and "full_softmax \\| in_batch" in table
    import os

    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md"), encoding="utf-8").read()
    for line in table.splitlines()[2:]:
        key = line.split("|")[1].strip()
        assert key in readme, f"README config reference lacks {key}; regenerate with python -m coco_tf.config"


def test_shipped_configs_load():
    import glob
    import os

    root = os.path.join(os.path.dirname(__file__), "..", "configs")
    files = sorted(glob.glob(os.path.join(root, "*.yaml")))
    assert files
    for path in files:
        load_config(path, ["data.path=/tmp/anywhere"])


@pytest.mark.parametrize("backbone", ["bert4rec", "fdsa", "pinnerformer", "s3rec"])
def test_backbone_configs_differ_from_sasrecs_in_the_model_only(backbone):
    """`--config configs/beauty_<backbone>.yaml --set coco.method=coco` is the shipped CoCo on that backbone:
    every section but `model` (data, train, eval protocol, llm pretraining, coco) equals the SASRec file's."""
    import dataclasses
    import os

    root = os.path.join(os.path.dirname(__file__), "..", "configs")
    sasrec = load_config(os.path.join(root, "beauty_sasrec.yaml"), ["data.path=/tmp/anywhere"])
    other = load_config(os.path.join(root, f"beauty_{backbone}.yaml"), ["data.path=/tmp/anywhere"])
    assert other.model.backbone == backbone
    for section in (f.name for f in dataclasses.fields(sasrec) if f.name != "model"):
        assert getattr(other, section) == getattr(sasrec, section), section


def test_retired_key_loads_old_run_configs_but_rejects_other_values(tmp_path):
    # config.yaml of runs written before train.mixed_precision was removed still holds it (False).
    old_run = tmp_path / "config.yaml"
    old_run.write_text("train:\n  epochs: 3\n  mixed_precision: false\n")
    assert load_config(str(old_run)).train.epochs == 3
    with pytest.raises(ConfigError, match="train.mixed_precision' was removed"):
        load_config(overrides=["train.mixed_precision=true"])
