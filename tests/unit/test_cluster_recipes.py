"""The cluster recipes in launch/cluster/: the two cluster-launcher YAMLs validate against
Ray's own cluster-config schema (shipped inside the ray package, the same check `ray up` runs),
and the KubeRay RayJob has the fields KubeRay's CRD requires; all pin the same vitpipe, keep the
dashboard private and use a storage URI for the run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from pipelines.config import config_from_dict

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "launch" / "cluster"
LAUNCHER = ("aws.yaml", "gcp.yaml")
VERSION = re.search(r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(), re.M).group(1)


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_yaml_validates_against_rays_schema(name):
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((RECIPES / name).read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(config))  # + Ray's own checks, defaults filled as `ray up` does

    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0  # the head trains nothing
    gpu_types = [t for n, t in types.items() if t["resources"].get("GPU", 0) >= 8]
    assert gpu_types and all(t["max_workers"] >= 1 for t in gpu_types)
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start  # Jobs API on loopback: reach it over SSH
    assert config["provider"]["use_internal_ips"] is True


def test_aws_has_p5_and_p4d_and_gcp_has_a3():
    aws = yaml.safe_load((RECIPES / "aws.yaml").read_text())["available_node_types"]
    gcp = yaml.safe_load((RECIPES / "gcp.yaml").read_text())["available_node_types"]
    assert {t["node_config"]["InstanceType"] for t in aws.values()} >= {
        "p5.48xlarge",
        "p4d.24xlarge",
    }
    assert any(t["node_config"]["machineType"].startswith("a3-") for t in gcp.values())


def _rayjob() -> tuple[dict, dict]:
    docs = list(yaml.safe_load_all((RECIPES / "kuberay-rayjob.yaml").read_text()))
    (job,) = [d for d in docs if d["kind"] == "RayJob"]
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    return job, config_map


def test_rayjob_has_what_kuberay_requires():
    job, config_map = _rayjob()
    assert job["apiVersion"] == "ray.io/v1" and job["metadata"]["name"]
    spec = job["spec"]
    assert spec["entrypoint"].startswith("vitpipe pretrain -c /etc/vitpipe/pretrain.yaml")
    cluster = spec["rayClusterSpec"]
    # Required by the RayJob CRD (ray.io/v1): rayClusterSpec.headGroupSpec.template, each worker
    # group's groupName, minReplicas, maxReplicas and template, every pod's containers (named).
    head = cluster["headGroupSpec"]
    pods = [head["template"]["spec"]]
    for group in cluster["workerGroupSpecs"]:
        assert {"groupName", "minReplicas", "maxReplicas", "template"} <= set(group)
        assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
        pods.append(group["template"]["spec"])
    assert all(p["containers"] and all(c["name"] for c in p["containers"]) for p in pods)
    images = [c["image"] for p in pods for c in p["containers"]]
    assert all(f":{cluster['rayVersion']}-" in image for image in images), images

    head_limits = pods[0]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in head_limits and head["rayStartParams"]["num-gpus"] == "0"
    gpus = [
        c["resources"]["limits"].get("nvidia.com/gpu") for p in pods[1:] for c in p["containers"]
    ]
    assert gpus and all(int(g) >= 1 for g in gpus)
    assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress")

    shipped = yaml.safe_load(config_map["data"]["pretrain.yaml"])
    config = config_from_dict(shipped)  # the job's own config is valid
    assert config.cluster.use_gpu and config.tracking.uri.startswith("http")
    workers = sum(g["replicas"] * 8 for g in cluster["workerGroupSpecs"])
    assert config.cluster.num_workers == workers  # one worker per GPU of the group


def test_recipes_pin_the_same_vitpipe_and_keep_credentials_out():
    pins = {}
    for name in (*LAUNCHER, "kuberay-rayjob.yaml"):
        text = (RECIPES / name).read_text()
        pins[name] = set(re.findall(r"vitpipe==[\w.]+", text))
        assert not re.search(r"AWS_(SECRET_ACCESS_KEY|ACCESS_KEY_ID|SESSION_TOKEN)\s*[:=]", text)
        assert re.search(r"--run-dir (s3|gs)://", text), name  # run storage is a URI
    assert all(p == {f"vitpipe=={VERSION}"} for p in pins.values()), pins
    job, _ = _rayjob()
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"]) == {"pip": [f"vitpipe=={VERSION}"]}
