"""Joining a Ray cluster by address, against a real `ray start` head bound to 127.0.0.1: a usable
head is joined (Ray alone would rewrite the address to the host's external IP and wait for
minutes) without Ray's INFO lines on the console; a refused token or a port where no Ray answers
fails with one line, well within 30 s. Every command runs in its own process, as a user's would,
leaving this process's Ray alone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from conftest import free_port

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture(scope="module")
def loopback_head():
    """A one-CPU Ray head on 127.0.0.1 only; yields its address. Its processes (found by their
    temp folder) are ended afterwards, and no other Ray on the host. The folder is short: Ray puts
    Unix sockets under it, and a socket path has at most 107 bytes (pytest's own folders, under a
    test worker's, are longer)."""
    temp = Path(tempfile.mkdtemp(prefix="srh", dir="/tmp"))
    port = free_port()
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    res = subprocess.run([RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                          "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats",
                          f"--temp-dir={temp}"], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        for proc in psutil.process_iter(["cmdline"]):
            if str(temp) in " ".join(proc.info["cmdline"] or []):
                proc.kill()
        shutil.rmtree(temp, ignore_errors=True)


def _run(args: list[str], **env: str) -> tuple[subprocess.CompletedProcess, float]:
    """A command in its own process (RAY_AUTH_MODE left to srcore, as on a user's shell)."""
    full = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    start = time.monotonic()
    res = subprocess.run(args, env={**full, **env}, capture_output=True, text=True, timeout=120)
    return res, time.monotonic() - start


_JOIN = """
import sys
import ray
from srcore.raycluster import ensure_ray
ensure_ray(sys.argv[1])
print("nodes", sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]))
print("answer", ray.get(ray.remote(lambda: 41 + 1).remote()))
"""


def test_a_head_bound_to_loopback_is_joined(loopback_head):
    res, _ = _run([sys.executable, "-c", _JOIN, loopback_head])
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "nodes ['127.0.0.1']" in res.stdout and "answer 42" in res.stdout
    assert "Connecting to existing Ray cluster" not in res.stderr  # Ray's INFO lines stay off the console


def _one_line(res: subprocess.CompletedProcess) -> str:
    printed = res.stdout + res.stderr
    assert res.returncode == 2 and "Traceback" not in printed, printed[-3000:]
    assert "InvalidAuthToken: Authentication token is missing" not in printed  # Ray's own page of them
    text = " ".join(printed.split())
    assert text.startswith("error:") and text.count("error:") == 1, printed[-3000:]
    return text


def _prepare(tmp_path: Path, address: str, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    """`srcore data prepare --address` on one small image."""
    import numpy as np
    from PIL import Image

    (tmp_path / "raw").mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "raw" / "a.png")
    return _run([sys.executable, "-m", "srcore.cli", "data", "prepare", "--input", str(tmp_path / "raw"),
                 "--out", str(tmp_path / "out"), "--address", address], **env)


def test_a_refused_token_fails_with_one_line(loopback_head, tmp_path):
    res, seconds = _prepare(tmp_path, loopback_head, RAY_AUTH_TOKEN="not-the-cluster-token")
    text = _one_line(res)
    assert loopback_head in text and "InvalidAuthToken" in text and "RAY_AUTH_TOKEN" in text
    print(f"refused in {seconds:.1f} s")


def test_a_port_without_ray_fails_with_one_line(tmp_path):
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{server.server_address[1]}"
    try:
        res, seconds = _prepare(tmp_path, address)
    finally:
        server.shutdown()
    text = _one_line(res)
    assert address in text and "no Ray GCS answered" in text
    print(f"refused in {seconds:.1f} s")
