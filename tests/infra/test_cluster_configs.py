"""ray_cluster.yaml passes Ray's own cluster-config validation; the KubeRay manifests are well formed."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _load(path):
    return yaml.safe_load((ROOT / path).read_text())


def test_ray_cluster_yaml_validates_with_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = _load("ray_cluster.yaml")
    validate_config(prepare_config(cfg))  # raises on any schema error
    types = cfg["available_node_types"]
    assert types["head"]["resources"]["CPU"] == 0
    assert types["cpu_worker"]["resources"]["cpu_node"] == 1 and "GPU" not in types["cpu_worker"]["resources"]
    assert types["gpu_worker"]["resources"]["GPU"] >= 1 and types["gpu_worker"]["resources"]["gpu_node"] == 1
    setup = "\n".join(cfg["setup_commands"])
    assert "torch==2.14.1" in setup and "reelforge @ " in setup and "@v0.1.0" in setup
    assert setup.count("s3://") == 1  # the bucket is named in one place


def test_schema_validation_catches_a_typo():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = _load("ray_cluster.yaml")
    cfg["available_node_types"]["gpu_worker"]["max_wrkers"] = 3
    with pytest.raises(Exception, match="max_wrkers"):
        validate_config(prepare_config(cfg))


@pytest.mark.parametrize("path", ["infra/k8s/raycluster.yaml", "infra/k8s/rayjob.yaml"])
def test_kuberay_manifests(path):
    doc = _load(path)
    assert doc["apiVersion"] == "ray.io/v1"
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    assert spec["rayVersion"] == "2.60.0"
    containers = [spec["headGroupSpec"]["template"]["spec"]["containers"][0]]
    containers += [g["template"]["spec"]["containers"][0] for g in spec["workerGroupSpecs"]]
    for c in containers:
        assert c["image"].startswith("ghcr.io/reelforge/reelforge:")
        assert c["resources"]["requests"] == c["resources"]["limits"]  # guaranteed QoS: no surprise evictions
    if doc["kind"] == "RayJob":
        assert doc["spec"]["entrypoint"].startswith("reelforge curate --input s3://")
        assert doc["spec"]["shutdownAfterJobFinishes"] is True
    else:
        gpu = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu-workers"][0]
        assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
