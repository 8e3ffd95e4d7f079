"""Deployable files in infra/, checked offline: Kubernetes objects against the bundled schemas of
a pinned Kubernetes version, KubeRay objects against our schema of the fields the operator needs,
compose against the vendored compose-spec schema, and the Dockerfile's promised pieces.

No Dockerfile linter installs from PyPI or Debian here (hadolint does not), so the Dockerfile
checks are structural.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
K8S_VERSION = "1.33.0"


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _k8s_objects() -> list[tuple[str, dict]]:
    return [(f"{p.name}:{d['kind']}/{d['metadata']['name']}", d)
            for p in sorted((INFRA / "k8s").glob("*.yaml")) for d in _docs(p)]


@pytest.mark.parametrize("label,obj", _k8s_objects(), ids=lambda v: v if isinstance(v, str) else "")
def test_kubernetes_objects_match_the_pinned_schemas(label, obj):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_a_broken_kubernetes_object_is_refused():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    _, deployment = next((lbl, o) for lbl, o in _k8s_objects() if o["kind"] == "Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["ports"] = [{"containerPort": "five thousand"}]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_no_credentials_in_kubernetes_files():
    for label, obj in _k8s_objects():
        if obj["kind"] == "Secret":
            assert set(obj.get("stringData", {}).values()) <= {"replace-me"}, label
    text = "\n".join(p.read_text() for p in (INFRA / "k8s").glob("*.yaml"))
    assert "secretRef" in text and "password" not in text.lower().replace("postgres_password", "")


def _kuberay_objects() -> list[dict]:
    return _docs(INFRA / "ray" / "kuberay.yaml")


def test_kuberay_objects_have_the_required_fields():
    import jsonschema

    schema = json.loads((INFRA / "schemas" / "kuberay.json").read_text())
    objs = _kuberay_objects()
    assert sorted(o["kind"] for o in objs) == ["RayCluster", "RayJob"]
    for obj in objs:
        jsonschema.validate(obj, schema)
    # The schema bites: a GPU worker without a GPU limit, or a head that trains, is refused.
    bad = json.loads(json.dumps(objs[0]))
    worker = bad["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    del worker["resources"]["limits"]["nvidia.com/gpu"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    bad = json.loads(json.dumps(objs[0]))
    bad["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = "8"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_kuberay_image_is_the_one_the_dockerfile_builds():
    dockerfile = (INFRA / "docker" / "Dockerfile").read_text()
    images = {c["image"] for o in _kuberay_objects() for c in _containers(o["spec"])}
    assert images == {"ghcr.io/srcore/srcore:0.1.0"}
    assert "-t ghcr.io/srcore/srcore:0.1.0" in dockerfile


def _containers(spec: dict) -> list[dict]:
    spec = spec.get("rayClusterSpec", spec)
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_compose_file_matches_the_vendored_compose_schema():
    cli = Path(sys.executable).parent / "check-jsonschema"
    if not cli.exists():
        pytest.skip("check-jsonschema is not installed (dev extra)")
    res = subprocess.run([str(cli), "--schemafile", str(INFRA / "schemas" / "compose-spec.json"),
                          str(INFRA / "compose.yaml")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    services = yaml.safe_load((INFRA / "compose.yaml").read_text())["services"]
    healthy = {"postgres", "s3", "mlflow", "prefect-server", "ray-head"}
    assert healthy | {"prefect-worker", "ray-gpu-worker"} <= set(services)
    gpu = services["ray-gpu-worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    assert all("healthcheck" in services[s] for s in healthy)


def test_dockerfile_has_cuda_runtime_non_root_user_and_smoke_check():
    text = (INFRA / "docker" / "Dockerfile").read_text()
    assert "nvidia/cuda:" in text and "-runtime-" in text
    assert 'TORCH_CUDA_ARCH_LIST="' in text and "AS mamba" in text and "AS runtime-mamba" in text
    assert "USER srcore" in text and "srcore --help" in text
    assert "triton" in text
    assert ".stack" in (REPO / ".dockerignore").read_text()


def test_ray_vm_launcher_installs_this_checkout():
    cfg = yaml.safe_load((INFRA / "ray" / "cluster.yaml").read_text())
    assert "example.invalid" not in json.dumps(cfg)
    assert "/home/ubuntu/srcore" in cfg["file_mounts"]
