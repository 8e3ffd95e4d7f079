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


def _prefect_spec() -> dict:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())


def _deployment(name: str) -> dict:
    return next(d for d in _prefect_spec()["deployments"] if d["name"] == name)


def test_prefect_yaml_has_a_kubernetes_deployment_pulling_from_the_image():
    spec = _prefect_spec()
    pools = {d["work_pool"]["name"] for d in spec["deployments"]}
    assert pools == {"srcore-process", "srcore-k8s"}
    k8s = _deployment("nightly-k8s")
    assert k8s["entrypoint"] == "flows/retrain.py:retrain"
    template = json.loads((INFRA / "k8s" / "prefect-base-job-template.json").read_text())
    variables = template["variables"]["properties"]
    # the pool's job variables are ones its base job template declares, and agree with the image
    assert set(k8s["work_pool"]["job_variables"]) <= set(variables) | {"image_pull_policy"}
    image = k8s["work_pool"]["job_variables"]["image"]
    assert image == variables["image"]["default"]
    assert f"-t {image} " in (INFRA / "docker" / "Dockerfile").read_text()
    # the code is where the image keeps it: the pull step's folder is the Dockerfile's WORKDIR
    workdir = [line.split()[1] for line in (INFRA / "docker" / "Dockerfile").read_text().splitlines()
               if line.startswith("WORKDIR")]
    pull_dir = k8s["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"]
    assert pull_dir == workdir[-1] == k8s["work_pool"]["job_variables"]["env"]["SRCORE_HOME"]
    # task results go to the block the stack and srcore.stack.results save
    from srcore.stack.results import BLOCK_NAME, SETTING

    assert k8s["work_pool"]["job_variables"]["env"][SETTING] == f"remote-file-system/{BLOCK_NAME}"
    assert variables["env"]["default"][SETTING] == f"remote-file-system/{BLOCK_NAME}"
    assert k8s["concurrency_limit"]["limit"] == 1


def test_the_stack_deploys_only_its_own_pool():
    from srcore.stack.services import pool_deployments

    names = pool_deployments(REPO / "prefect.yaml", "srcore-process")
    assert "nightly" in names and "tiny" in names and "nightly-k8s" not in names
    assert pool_deployments(REPO / "prefect.yaml", "srcore-k8s") == ["nightly-k8s"]


def _resolved_params(deployment: dict):
    """The parameters a worker's flow run loads: flow defaults, then the deployment's parameters."""
    import importlib
    import inspect

    from flows.common import params_with

    path, name = deployment["entrypoint"].split(":")
    flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)
    bound = inspect.signature(flow.fn).bind_partial(**deployment.get("parameters", {}))
    bound.apply_defaults()
    args = bound.arguments
    overrides = dict(args.get("overrides") or {})
    if args.get("student"):
        overrides["student.model"] = args["student"]
    return params_with(str(REPO / args["params_file"]), args.get("profile"), overrides)


# every deployment that trains (evaluate/bicubic scores a given file and reads no recipe)
_TRAINING = [d["name"] for d in _prefect_spec()["deployments"]
             if not d["entrypoint"].startswith("flows/evaluate")]


@pytest.mark.parametrize("name", _TRAINING)
def test_deployments_resolve_to_the_full_recipe_unless_they_ask(name):
    deployment = _deployment(name)
    params = _resolved_params(deployment)
    asked = deployment.get("parameters", {}).get("profile")
    if asked is None:
        assert params.profile is None
        assert params.teacher.steps == params.student.steps == 500_000
        assert params.teacher.model_overrides == {}
    else:
        assert asked == "tiny" and params.teacher.steps < 1000  # only the demo's deployment asks


def test_cluster_jobs_read_the_patches_from_the_dvc_remote():
    """No pod shares a disk: the RayJob and the Kubernetes deployment train on the version dvc.lock
    pins, read from the DVC remote, and the image carries what resolves it (dvc.lock, DVC's config)."""
    job = next(o for o in _kuberay_objects() if o["kind"] == "RayJob")
    assert "--set loader.source=dvc" in " ".join(job["spec"]["entrypoint"].split())
    assert _resolved_params(_deployment("nightly-k8s")).loader.source == "dvc"
    dockerfile = (INFRA / "docker" / "Dockerfile").read_text()
    assert "COPY .dvc/config .dvc/config" in dockerfile and " dvc.lock " in dockerfile
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".dvc" not in ignored and ".dvc/config" not in ignored
