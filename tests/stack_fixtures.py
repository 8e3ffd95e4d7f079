"""The local stack for tests: started once, on free loopback ports, in a short temporary folder.

Import the ``stack`` fixture from here (``pytest_plugins = ["stack_fixtures"]``). The folder is
short because Ray puts Unix sockets under its temp dir and socket paths are limited to 107 bytes.

The stack serves a throwaway checkout (``project``), not this one: its worker runs the flows there,
so ``dvc repro``, the runs and the caches of a test never touch the working tree. The checkout is a
git repository with DVC, whose default remote is the stack's ``dvc`` bucket.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# Patch preparation reduced to what the tiny models train on (one scale, few large crops).
PREPARE = {"scales": [4], "crop_size": 96, "step": 96, "workers": 1}
KEEP_ENV = "SRCORE_KEEP_TEST_STACK"  # set to keep the stack's folder after the tests
# The Prefect server's bookkeeping passes that no test waits on (late runs, pause expirations, the
# cleanup reconciler: every 5 s by default, each a round trip to PostgreSQL) every 60 s instead, for
# the stack's test life of several minutes on a shared two-core host.
QUIET_PREFECT_SERVER = {f"PREFECT_SERVER_SERVICES_{service}_LOOP_SECONDS": "60"
                        for service in ("LATE_RUNS", "PAUSE_EXPIRATIONS", "CLEANUP_RECONCILER")}
GIT = ["git", "-c", "user.name=srcore-tests", "-c", "user.email=tests@srcore.invalid"]


def _free_base(span: int = 16, grpc_offset: int = 10000) -> int:
    """A port base whose ``span`` ports (and their +10000 gRPC twins) are all free on loopback."""
    for base in range(22000, 40000, 37):
        ports = [base + i for i in range(span)] + [base + grpc_offset + i for i in range(span)]
        if all(_free(p) for p in ports):
            return base
    pytest.skip("no free block of loopback ports for the stack")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def project_checkout(root: Path, s3_endpoint: str) -> Path:
    """A committed copy of the pipeline's files (the whole package: a flow run started there imports
    srcore from it) with a DVC remote on the stack's S3 (credentials come from the environment).

    The copy keeps the package's ``__pycache__`` folders (git ignores them), as an installed checkout
    has them: the numba kernels compiled at install are cached there, keyed by the source's size and
    time, which the copy keeps. Without them every flow run and Ray worker started in the copy compiles
    the selective scan again, about 13 CPU-seconds a process."""
    root.mkdir(parents=True)
    for name in ("data.dvc", "dvc.yaml", ".dvcignore", "prefect.yaml"):
        shutil.copy(REPO / name, root / name)
    for name in ("flows", "srcore"):
        shutil.copytree(REPO / name, root / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["prepare"].update(PREPARE)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / ".gitignore").write_text("__pycache__/\nruns/\nmlflow.db\nmlartifacts/\n")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}

    def run(*argv: str) -> None:
        subprocess.run(argv, cwd=root, env=env, check=True, capture_output=True)

    run("git", "init", "-q")
    dvc = [sys.executable, "-m", "dvc"]
    run(*dvc, "init", "-q")
    run(*dvc, "remote", "add", "-d", "stack", "s3://dvc/e2e")
    run(*dvc, "remote", "modify", "stack", "endpointurl", s3_endpoint)
    run("git", "add", "-A")
    run(*GIT, "commit", "-q", "-m", "pipeline")
    return root


@pytest.fixture(scope="module")
def stack():
    """A running stack: (StackConfig, UpReport); stopped when the module's tests are done.

    Module scope, not session: the stack holds servers and two Ray nodes, which the rest of the
    suite should not share two cores with.
    """
    from srcore.environment import env_defaults
    from srcore.stack import StackConfig, down, up

    root = Path(tempfile.mkdtemp(prefix="srs", dir="/tmp"))
    base = _free_base()
    endpoint = StackConfig(root=root / "probe", project_dir=REPO, port_base=base).s3_endpoint
    project = project_checkout(root / "p", endpoint)
    cfg = StackConfig(root=root / "s", project_dir=project, port_base=base)
    try:
        with env_defaults(QUIET_PREFECT_SERVER):
            report = up(cfg)
        yield cfg, report
    finally:
        down(cfg)
        if os.environ.get(KEEP_ENV):  # logs of every service (Ray's under s/ray) for a post-mortem
            print(f"stack folder kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
