"""The local stack for tests: started once, on free loopback ports, in a short temporary folder.

Import the ``stack`` fixture from here (``from stack_fixtures import stack``). The folder is short
because Ray puts Unix sockets under its temp dir and socket paths are limited to 107 bytes.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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


@pytest.fixture(scope="module")
def stack():
    """A running stack: (StackConfig, UpReport); stopped when the module's tests are done.

    Module scope, not session: the stack holds servers and two Ray nodes, which the rest of the
    suite should not share two cores with.
    """
    from srcore.stack import StackConfig, down, up

    root = Path(tempfile.mkdtemp(prefix="srs", dir="/tmp"))
    cfg = StackConfig(root=root, project_dir=REPO, port_base=_free_base())
    try:
        report = up(cfg)
        yield cfg, report
    finally:
        down(cfg)
        shutil.rmtree(root, ignore_errors=True)
