"""Shared fixtures: paths to ../shared (tests using it skip when it is absent), and what a test
session starts once: the Ray cluster and an MLflow server. Prefect runs on the stack's server
(``tests/test_stack.py``)."""

from __future__ import annotations

import os

# The suite runs three pytest workers on two cores (``make test``), beside servers and Ray nodes: an
# OpenMP thread that waits for work (torch's and the numba kernels') spins on a core another process
# needs. Passive waiting sleeps instead; it changes how threads wait, never a result. Set before torch
# is imported (OpenMP reads it when it loads); every process the tests start inherits it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# Ray Train's controller looks at its workers every 2 s by default, so each stage waits up to 2 s to
# see its workers start and again to see them finish; the tests run some twenty tiny stages. Set
# here, every Ray the tests start (and every process they spawn) inherits it. The preemption
# watcher (one more actor process a stage) watches for spot-instance notices a laptop never gets.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
# No usage statistics from test drivers either (the nodes already start without): with them on, the
# first Ray Data execution of a cluster starts one more actor process to collect them.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

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
    from srcore.servers import free_port as port

    return port()


# ---------------------------------------------------------------------------------------------
# Servers and clusters started once per test session (Ray's and Prefect's advice: a cluster or
# a server per session, reused by every test that needs it). Each binds to loopback only.


def _start_server(args: list[str], health: str, env: dict | None = None, timeout: float = 180):
    """A server for a test, healthy (``srcore.servers``: the stack and the demo start theirs alike)."""
    import os

    from srcore.servers import start_server

    return start_server(args, health, f"server behind {health}", env={**os.environ, **(env or {})},
                        timeout=timeout)


def _stop(proc) -> None:
    from srcore.servers import stop_server

    stop_server(proc)


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

        self.connect()  # the GCS is asked when the killed node is declared dead
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


def pytest_sessionfinish(session, exitstatus):
    import sys

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


# ---------------------------------------------------------------------------------------------
# Running on several pytest-xdist workers (``make test``): the modules that use the session's servers
# (its Ray cluster, its MLflow server) run on one worker, so that the worker starts each once, and
# the training module on another with servers of its own; the stack's module runs whole on a third.
# Every other module runs whole on whichever worker is free, so a module-scoped fixture (a Triton
# interpreter run, a served model) is built once. The long groups go first (``--no-loadscope-reorder``
# keeps this order), one to each worker; the other modules then fill in around them, those with slow
# tests (servers, clusters, timed outages) before the quick ones, so that no long module is left to
# run alone at the end.

SESSION_SERVERS = {"ray_cluster", "ray_local", "mlflow_server"}
# Modules long enough to pay for servers of their own (a second Ray cluster and MLflow server, about
# 15 s to start): they run on a worker of their own beside the other modules that need servers.
OWN_SERVERS = {"test_train"}
GROUP_ORDER = {"stack": 0, "session-servers": 1, "session-servers-train": 2}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    groups: dict[Path, str] = {}
    for item in items:
        if "stack" in item.fixturenames:
            groups[item.path] = "stack"
        elif SESSION_SERVERS & set(item.fixturenames):
            own = item.path.stem in OWN_SERVERS
            groups.setdefault(item.path, "session-servers-train" if own else "session-servers")
    for item in items:
        item.add_marker(pytest.mark.xdist_group(groups.get(item.path, item.path.stem)))
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: (GROUP_ORDER.get(groups.get(item.path, ""), len(GROUP_ORDER)),  # stable
                                 item.path not in slow))


def pytest_configure(config):
    # xdist 3.8 groups a test by renaming Item._nodeid, which pytest 9.2 no longer reads: the groups
    # would be split across the workers, each starting its own cluster and stack
    if config.getoption("dist", "no") == "loadgroup" and pytest.version_tuple >= (9, 2):
        import xdist

        if tuple(int(p) for p in xdist.__version__.split(".")[:2]) <= (3, 8):
            raise pytest.UsageError(f"pytest {pytest.__version__} with pytest-xdist {xdist.__version__} "
                                    "cannot keep test groups together; install the dev extra "
                                    "(pip install -e '.[dev]'), which asks for pytest below 9.2")


def pytest_collection_finish(session):
    # the same, checked where it happens (each xdist worker): a grouped test whose node id lacks its
    # "@group" would run apart from its group, so the worker refuses to run any
    if getattr(session.config.option, "loadgroup", False):
        ungrouped = [item.nodeid for item in session.items
                     if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
        if ungrouped:
            raise pytest.UsageError(f"pytest-xdist did not group {ungrouped[0]} (and {len(ungrouped) - 1} "
                                    "more); install the pytest version pyproject.toml asks for")
