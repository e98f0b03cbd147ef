"""clusters/: every `ray up` config passes Ray's own cluster-config validation (what `ray up` runs before it
touches a cloud), and the KubeRay manifests validate against the KubeRay CRD schemas with unknown fields
rejected, as `kubectl apply` (strict field validation) does.

tests/data/kuberay-v1.7.0-crd-schemas.json.gz holds the ray.io/v1 openAPIV3Schema of KubeRay v1.7.0's
helm-chart/kuberay-operator/crds/ray.io_{rayclusters,rayjobs}.yaml, descriptions dropped (20 KB instead of 2.3 MB)."""

import copy
import gzip
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTERS = ROOT / "clusters"
RAY_UP = ["local.yaml", "aws.yaml", "gcp.yaml"]
KUBERAY = {"raycluster.yaml": "RayCluster", "rayjob.yaml": "RayJob"}


def ray_validate(config: dict) -> dict:
    """What `ray up` does to a config before any provider call: fill defaults, then check Ray's schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(config))
    validate_config(config)
    return config


@pytest.mark.parametrize("name", RAY_UP)
def test_ray_up_config_passes_rays_validation(name):
    text = (CLUSTERS / name).read_text()
    assert f"ray up clusters/{name}" in text.split("\ncluster_name")[0]  # the header says how to launch it
    config = ray_validate(yaml.safe_load(text))
    assert config["file_mounts"] == {"~/agentworld": "."}  # this checkout goes to every node...
    assert any("agentworld" in c and ("pip install" in c or "make install" in c) for c in config["setup_commands"])


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_cloud_configs_have_a_cpu_head_and_autoscaled_gpu_workers(name):
    config = ray_validate(yaml.safe_load((CLUSTERS / name).read_text()))
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert not head["resources"].get("GPU")
    gpu = types["gpu_worker"]
    assert gpu["min_workers"] == 0 < gpu["max_workers"] <= config["max_workers"]
    node = json.dumps(gpu["node_config"])
    assert (re.search(r'"InstanceType": "(g5|g6|p4d|p5)\.', node)  # AWS: Ray detects the GPU from the type
            or ("guestAccelerators" in node and gpu["resources"]["GPU"] >= 1))
    assert config["docker"]["head_image"] == f"rayproject/ray:{ray.__version__}-py311-cpu"  # the Ray we run here


def test_ray_validation_rejects_a_typo():
    """The check above can fail: a misspelt top-level key is refused by Ray's schema."""
    config = yaml.safe_load((CLUSTERS / "aws.yaml").read_text())
    config["idle_timeout_minutez"] = 5
    with pytest.raises(jsonschema.ValidationError):
        ray_validate(config)


def strict(schema):
    """kubectl's strict field validation: an object that lists its properties accepts no others."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def crd_schemas():
    data = json.loads(gzip.decompress((ROOT / "tests" / "data" / "kuberay-v1.7.0-crd-schemas.json.gz").read_bytes()))
    return {kind: strict(data[kind]) for kind in KUBERAY.values()}


@pytest.mark.parametrize("name", list(KUBERAY))
def test_kuberay_manifest_matches_the_crd_schema(name, crd_schemas):
    text = (CLUSTERS / "kuberay" / name).read_text()
    assert f"kubectl apply -f clusters/kuberay/{name}" in text
    manifest = yaml.safe_load(text)
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == KUBERAY[name]
    jsonschema.validate(manifest, crd_schemas[KUBERAY[name]])
    spec = manifest["spec"] if name == "raycluster.yaml" else manifest["spec"]["rayClusterSpec"]
    assert spec["rayVersion"] == ray.__version__ and spec["enableInTreeAutoscaling"] is True
    gpu = next(g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu")
    assert gpu["minReplicas"] == 0 < gpu["maxReplicas"]
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:  # checkpoints pass by path: one shared dir
        mounts = group["template"]["spec"]["containers"][0]["volumeMounts"]
        assert {"name": "runs", "mountPath": "/mnt/runs"} in mounts


def test_kuberay_schema_rejects_a_typo(crd_schemas):
    manifest = yaml.safe_load((CLUSTERS / "kuberay" / "raycluster.yaml").read_text())
    manifest["spec"]["workerGroupSpecs"][0]["maxReplica"] = 4
    with pytest.raises(jsonschema.ValidationError, match="maxReplica"):
        jsonschema.validate(manifest, crd_schemas["RayCluster"])


def test_rayjob_entrypoint_is_a_valid_agentworld_run():
    from agentworld.config import load_config

    entry = shlex.split(yaml.safe_load((CLUSTERS / "kuberay" / "rayjob.yaml").read_text())["spec"]["entrypoint"])
    assert entry[:2] == ["agentworld", "run"]
    config = entry[2].replace("/home/ray/agentworld", str(ROOT))  # where the image holds this checkout
    cfg = load_config(config, entry[3:])
    assert cfg.run.storage.startswith("s3://") and cfg.run.output_dir == "/mnt/runs"


def test_images_run_the_installed_ray():
    dockerfile = (CLUSTERS / "kuberay" / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{ray.__version__}-py311-gpu" in dockerfile
    assert ".venv" in (CLUSTERS / "kuberay" / "Dockerfile.dockerignore").read_text().split()
