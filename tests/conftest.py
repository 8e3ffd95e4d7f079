"""Shared fixtures: paths to ../shared (tests using it skip when it is absent), and what a test
session starts once: the MLflow and Prefect servers, the Ray cluster and a prepared sample project."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
BENCHMARKS = SHARED / "data" / "benchmarks"
FIXTURES = SHARED / "fixtures"
WEIGHTS = SHARED / "weights"


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path.relative_to(REPO.parent)} is not available (../shared is absent)")
    return path


def load_fixture(name: str) -> dict:
    return torch.load(require(FIXTURES / f"{name}.pt"), map_location="cpu", weights_only=True)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Keep benchmark LR caches inside the test session, never in the user's home.
    monkeypatch.setenv("SRCORE_CACHE", str(tmp_path_factory.getbasetemp() / "srcore-cache"))


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now (for servers the tests start)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(url: str, proc, timeout: float = 180) -> None:
    """Poll ``url`` until it answers; fail the test if ``proc`` dies or time runs out."""
    import time
    import urllib.request

    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"server behind {url} did not start")
            time.sleep(1)


# ---------------------------------------------------------------------------------------------
# Servers and clusters started once per test session (Ray's and Prefect's advice: a cluster or
# a server per session, reused by every test that needs it). Each binds to loopback only.


def _start_server(args: list[str], health: str, env: dict | None = None, timeout: float = 180):
    import os
    import subprocess

    proc = subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for_health(health, proc, timeout=timeout)
    return proc


def _stop(proc) -> None:
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server (SQLite store, local artifacts); yields its URI."""
    import sys

    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    proc = _start_server(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination",
         str(root / "artifacts"), "--workers", "1"], uri + "/health", timeout=120,
        # no background job runners (four extra processes the tests never use)
        env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    yield uri
    _stop(proc)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real Prefect server; yields the environment a client or worker needs to reach it."""
    import sys

    port = free_port()
    env = {"PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-home")),
           # a worker started with this environment asks for scheduled runs every second, not every 10 s
           "PREFECT_WORKER_QUERY_SECONDS": "1"}
    proc = _start_server([str(Path(sys.executable).parent / "prefect"), "server", "start",
                          "--host", "127.0.0.1", "--port", str(port)],
                         env["PREFECT_API_URL"] + "/health", env=env)
    yield env
    _stop(proc)


# The session's Ray: a head on 127.0.0.2 and a worker node on 127.0.0.3, this process the driver.
# Two CPUs a node: a stage asking for two CPUs a rank still fits on one node, and a run with two such
# ranks has to use both nodes. The nodes hold the dummy credentials a loopback S3 server (moto)
# accepts, as a real cluster's nodes hold theirs (srcore forwards only the endpoint with its tasks).
RAY_CPUS_PER_NODE = 2
S3_TEST_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class SessionRay:
    """The session's cluster; ``worker`` is its second node."""

    cluster: Any
    worker: Any

    @property
    def address(self) -> str:
        return self.cluster.address

    def connect(self) -> None:
        """This process as the cluster's driver (again, after work that left or went elsewhere)."""
        import ray

        if ray.is_initialized() and ray.get_runtime_context().gcs_address != self.address:
            ray.shutdown()
        if not ray.is_initialized():
            ray.init(address=self.address)

    def replace_worker(self) -> None:
        """A fresh worker node in place of one a test killed, for the tests after it."""
        from local_ray_cluster import replace_node

        self.worker = replace_node(self.cluster, self.worker, RAY_CPUS_PER_NODE, env=S3_TEST_ENV)


@pytest.fixture(scope="session")
def ray_cluster():
    """The one Ray of the session (started on first use, ended at the end), connected."""
    from local_ray_cluster import local_cluster

    with local_cluster(2, cpus_per_node=RAY_CPUS_PER_NODE, env=S3_TEST_ENV) as (cluster, workers):
        yield SessionRay(cluster, workers[0])


@pytest.fixture
def ray_local(ray_cluster):
    """The session's Ray, this process its driver: code that runs on "local" Ray (no address) finds
    it connected and uses it."""
    ray_cluster.connect()
    return ray_cluster


# ---------------------------------------------------------------------------------------------
# One prepared sample project per session: a throwaway checkout (git + DVC + the project's pipeline
# files) with tiny parameters, the sample committed and the prepare stage reproduced. Tests get a
# copy of it (``sample_project``), so that what one changes never reaches another.

TINY_FLOW = {
    "prepare.scales": [4], "prepare.crop_size": 96, "prepare.step": 96, "prepare.workers": 1,
    "loader.patch_size": 12, "loader.batch_size": 4, "loader.shuffle_buffer": 8,
    "teacher.model_overrides": {"embed_dim": 8, "depths": [1]}, "teacher.steps": 6, "teacher.val_every": 6,
    "student.model_overrides": {"embed_dim": 4, "depths": [1]}, "student.steps": 6, "student.val_every": 6,
    "teacher.ray.cpus_per_worker": 1, "student.ray.cpus_per_worker": 1, "teacher.log_every": 2,
    "student.log_every": 2,
    "eval.efficiency_size": 32,  # the efficiency figures are checked for being logged, not for their values
}


def make_project(root: Path, overrides: dict[str, Any]) -> Path:
    """A throwaway checkout: git + DVC + the project's pipeline files, params.yaml with ``overrides``
    (dotted keys) and no profile."""
    import os
    import subprocess
    import sys

    import yaml

    root.mkdir(parents=True)
    for name in ("data.dvc", "dvc.yaml", ".dvcignore", "prefect.yaml"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "flows", root / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    # the whole package, not only srcore/data (the DVC dependency): a process started in the copy
    # imports srcore from it, and a partial copy would shadow the installed package
    shutil.copytree(REPO / "srcore", root / "srcore", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profile"] = None
    for key, value in overrides.items():
        section, *rest = key.split(".")
        node = params.setdefault(section, {})
        for k in rest[:-1]:
            node = node.setdefault(k, {})
        node[rest[-1]] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True, env=env)
    return root


@pytest.fixture(scope="session")
def prepared_project(tmp_path_factory) -> Path:
    """The session's sample project, prepared once (tests use ``sample_project``, a copy)."""
    from srcore.data.versioning import reproduce_patches

    root = make_project(tmp_path_factory.mktemp("sample") / "proj", TINY_FLOW)
    reproduce_patches(root, pull=False)  # the sample, committed to DVC; `dvc repro prepare`
    return root


@pytest.fixture
def sample_project(prepared_project, tmp_path) -> Path:
    """A private copy of the session's prepared sample project."""
    return Path(shutil.copytree(prepared_project, tmp_path / "proj", symlinks=True))


def pytest_sessionfinish(session, exitstatus):
    import sys

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
