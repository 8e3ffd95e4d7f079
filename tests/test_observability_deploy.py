"""Deployments are safe by default: the nightly deployment, resolved the way a worker resolves it
(flow defaults + the deployment's parameters + params.yaml), trains the full recipe; it runs one
at a time, queueing; the process and Kubernetes pools are both described."""

from __future__ import annotations

import inspect

import pytest
import yaml
from conftest import REPO

from flows.common import params_with


def _deployments() -> dict[str, dict]:
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    return {d["name"]: d for d in spec["deployments"]}


def _resolved(deployment: dict):
    """The flow's arguments a worker would call it with, then the parameters they load."""
    import importlib

    path, name = deployment["entrypoint"].split(":")
    module = path.removesuffix(".py").replace("/", ".")
    flow = getattr(importlib.import_module(module), name)
    bound = inspect.signature(flow.fn).bind_partial(**deployment.get("parameters", {}))
    bound.apply_defaults()
    args = bound.arguments
    return params_with(str(REPO / args["params_file"]), args["profile"], args.get("overrides"))


def test_nightly_runs_the_full_recipe_one_at_a_time():
    nightly = _deployments()["nightly"]
    params = _resolved(nightly)
    assert params.profile is None
    assert params.teacher.steps == 500_000 and params.student.steps == 500_000
    assert params.loader.patch_size == 48 and params.teacher.model_overrides == {}
    assert nightly["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}


@pytest.mark.parametrize("name", ["dvmsr", "rlfn"])
def test_distill_deployments_run_the_full_recipe_unless_asked(name):
    deployment = _deployments()[name]
    assert _resolved(deployment).student.steps == 500_000
    tiny = {**deployment, "parameters": {**deployment["parameters"], "profile": "tiny"}}
    assert _resolved(tiny).student.steps == 600  # a run that asks for the demo profile gets it


def test_both_work_pools_are_described():
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    pools = spec["definitions"]["work_pools"]
    assert pools["process"]["name"] == "srcore-process" and pools["kubernetes"]["name"] == "srcore-k8s"
    assert "image" in pools["kubernetes"]["job_variables"]
    steps = spec["definitions"]["pull_steps"]
    assert "prefect.deployments.steps.git_clone" in steps["from_git"][0]
    assert "prefect.deployments.steps.set_working_directory" in steps["from_image"][0]
