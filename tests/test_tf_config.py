"""TF_CONFIG building and validation (coco_tf/training/tf_config.py, launch/tf_config.py)."""

import json
import os
import subprocess
import sys

import pytest

from coco_tf.training.tf_config import TFConfigError, make_cluster, make_tf_config, parse, validate

ROOT = os.path.join(os.path.dirname(__file__), "..")
CLUSTER = {"chief": ["h:1"], "ps": ["h:2", "h:3"], "worker": ["h:4", "h:5"]}


def cfg(cluster=CLUSTER, type_="worker", index=0):
    return {"cluster": cluster, "task": {"type": type_, "index": index}}


def test_built_cluster_is_valid_and_loopback():
    cluster = make_cluster(2, 10)
    assert len(cluster["ps"]) == 2 and len(cluster["worker"]) == 10 and len(cluster["chief"]) == 1
    addrs = sum(cluster.values(), [])
    assert len(set(addrs)) == 13 and all(a.startswith("127.0.0.1:") for a in addrs)
    for t, n in (("chief", 1), ("ps", 2), ("worker", 10)):
        for i in range(n):
            validate(make_tf_config(cluster, t, i))


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"cluster": CLUSTER}, "missing 'task'"),
        (cfg(type_=None), "missing task type"),
        (cfg(type_="evaluatorr"), "task type 'evaluatorr' is not in the cluster"),
        (cfg(index=2), "task index 2 out of range for 'worker' (2 task(s): 0..1)"),
        (cfg(index=-1), "task index -1 out of range"),
        (cfg(index="0"), "task index must be an integer"),
        (cfg(cluster={"ps": ["h:2"], "worker": ["h:4"]}), "cluster has no 'chief'"),
        (cfg(cluster={"chief": ["h:1", "h:9"], "ps": ["h:2"], "worker": ["h:4"]}), "exactly one address"),
        (cfg(cluster={"chief": ["h:1"], "worker": ["h:4"]}), "cluster has no 'ps' tasks"),
        (cfg(cluster={"chief": ["h:1"], "ps": ["h:2"], "worker": ["h:2"]}), "duplicate address h:2 (ps:0 and worker:0)"),
        (cfg(cluster={"chief": ["h:1"], "ps": ["h"], "worker": ["h:4"]}), "bad address 'h'"),
        (cfg(cluster={"chief": ["h:1"], "ps": ["h:2"], "worker": ["h:4"], "master": ["h:7"]}), "unknown task type 'master'"),
        ({"cluster": {}, "task": {}}, "'cluster' is empty"),
        ({"task": {}}, "missing 'cluster'"),
        ({"cluster": ["h:1"], "task": {}}, "'cluster' must be a mapping"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_validation_errors_name_the_problem(bad, message):
    with pytest.raises(TFConfigError) as e:
        validate(bad)
    assert message in str(e.value)


def test_parse_errors():
    with pytest.raises(TFConfigError, match="empty or not set"):
        parse("")
    with pytest.raises(TFConfigError, match="not valid JSON"):
        parse("{cluster:")


def _cli(*args, env=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, "launch", "tf_config.py"), *args],
                          capture_output=True, text=True, env=env, timeout=60)


def test_cli_validates_env_var_and_json():
    env = dict(os.environ, TF_CONFIG=json.dumps(cfg(index=1)))
    ok = _cli("validate", env=env)
    assert ok.returncode == 0 and "worker:1 at h:5" in ok.stdout
    bad = _cli("validate", json.dumps(cfg(index=5)))
    assert bad.returncode == 2
    assert "task index 5 out of range" in bad.stderr and "Traceback" not in bad.stderr
    env.pop("TF_CONFIG")
    assert "TF_CONFIG is empty or not set" in _cli("validate", env=env).stderr


def test_cli_builds_cluster_and_tasks():
    cluster = json.loads(_cli("cluster", "--ps", "2", "--workers", "3").stdout)
    task = json.loads(_cli("task", json.dumps(cluster), "ps", "1").stdout)
    assert task == {"cluster": cluster, "task": {"type": "ps", "index": 1}}
    assert _cli("task", json.dumps(cluster), "ps", "2").returncode == 2


@pytest.mark.slow  # subprocesses
def test_server_rejects_bad_tf_config():
    env = dict(os.environ, TF_CONFIG=json.dumps(cfg(cluster={"ps": ["h:2"], "worker": ["h:4"]})))
    proc = subprocess.run([sys.executable, "-m", "coco_tf.training.server"], capture_output=True, text=True,
                          env=env, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "cluster has no 'chief'" in proc.stderr


def test_run_cluster_argument_errors():
    script = os.path.join(ROOT, "launch", "run_cluster.sh")
    proc = subprocess.run(["bash", script], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "--workers N" in proc.stderr
    proc = subprocess.run(["bash", script, "--workers", "2", "--bogus"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "unknown argument '--bogus'" in proc.stderr
