"""docker-compose and the Kubeflow TFJob describe a consistent PS cluster (parsed, not run)."""

import json
import os

import yaml

from coco_tf.training.tf_config import validate

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_compose_services_share_one_valid_cluster():
    doc = yaml.safe_load(open(os.path.join(ROOT, "docker", "docker-compose.yml")))
    services = doc["services"]
    configs = {name: json.loads(s["environment"]["TF_CONFIG"]) for name, s in services.items()}
    clusters = {json.dumps(c["cluster"], sort_keys=True) for c in configs.values()}
    assert len(clusters) == 1, "services disagree on the cluster"
    cluster = next(iter(configs.values()))["cluster"]
    assert len(cluster["ps"]) == 2 and len(cluster["chief"]) == 1 and len(cluster["worker"]) >= 1
    # every task in the cluster is exactly one service, reachable by its hostname
    tasks = set()
    for name, c in configs.items():
        validate(c, source=name)
        t = c["task"]
        assert cluster[t["type"]][t["index"]] == f"{services[name]['hostname']}:2222", name
        tasks.add((t["type"], t["index"]))
    assert tasks == {(j, i) for j, addrs in cluster.items() for i in range(len(addrs))}
    for name, s in services.items():
        if name == "chief":
            assert "runtime.strategy=ps" in s["command"]
            assert "entrypoint" not in s  # the image's entrypoint: python -m coco_tf.train
        else:
            assert s["entrypoint"] == ["python", "-m", "coco_tf.training.server"]
        assert s["networks"] == ["cluster"] and "ports" not in s, "cluster ports must not be published"
    assert doc["networks"]["cluster"]["internal"] is True
    dockerfile = open(os.path.join(ROOT, "docker", "Dockerfile")).read()
    assert "TF_USE_LEGACY_KERAS=1" in dockerfile


def test_tfjob_replicas_and_generated_tf_config():
    job = yaml.safe_load(open(os.path.join(ROOT, "launch", "k8s", "tfjob.yaml")))
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "TFJob"
    assert job["spec"]["runPolicy"]["cleanPodPolicy"] == "Running"
    specs = job["spec"]["tfReplicaSpecs"]
    assert set(specs) == {"Chief", "PS", "Worker"}
    assert specs["Chief"]["replicas"] == 1 and specs["PS"]["replicas"] == 2 and specs["Worker"]["replicas"] >= 1
    for kind, spec in specs.items():
        (container,) = spec["template"]["spec"]["containers"]
        assert container["name"] == "tensorflow", kind
        assert {"name": "tfjob-port", "containerPort": 2222} in container["ports"], kind
        cmd = container["command"] + container.get("args", [])
        if kind == "Chief":
            assert cmd[:3] == ["python", "-m", "coco_tf.train"] and "runtime.strategy=ps" in cmd
        else:
            assert cmd == ["python", "-m", "coco_tf.training.server"]
    # The TF_CONFIG the training operator generates for this job passes our validation.
    name = job["metadata"]["name"]
    cluster = {
        r.lower(): [f"{name}-{r.lower()}-{i}.default.svc:2222" for i in range(specs[r]["replicas"])]
        for r in ("Chief", "PS", "Worker")
    }
    for r in ("Chief", "PS", "Worker"):
        for i in range(specs[r]["replicas"]):
            validate({"cluster": cluster, "task": {"type": r.lower(), "index": i}})
