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
