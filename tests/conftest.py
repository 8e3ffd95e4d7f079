"""Shared fixtures: paths to ../shared (tests using it skip when it is absent)."""

from __future__ import annotations

from pathlib import Path

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
           "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-home"))}
    proc = _start_server([str(Path(sys.executable).parent / "prefect"), "server", "start",
                          "--host", "127.0.0.1", "--port", str(port)],
                         env["PREFECT_API_URL"] + "/health", env=env)
    yield env
    _stop(proc)


@pytest.fixture
def ray_local():
    """The session's local Ray (started on first use; a test that stops Ray gets it back)."""
    from srcore.train.runner import ensure_ray

    ensure_ray(None, num_cpus=2)
    yield


def pytest_sessionfinish(session, exitstatus):
    import sys

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
