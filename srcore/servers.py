"""Servers the project starts itself (the stack's services, the demo's Prefect API, the test
fixtures' MLflow and model servers): a free loopback port, an HTTP health probe, and the one loop
that waits until a server answers, failing with its name and the end of its log when its process
dies or time runs out.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from srcore.errors import SrcoreError

__all__ = ["ServerError", "call_within", "free_port", "http_ok", "running_server", "start_server",
           "stop_server", "wait_until"]


_T = TypeVar("_T")


class ServerError(SrcoreError):
    """A server this project started did not come up."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """Whether ``url`` answers with a 2xx status."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except OSError:
        return False


def wait_until(check: Callable[[], bool], what: str, timeout: float, died: Callable[[], bool] | None = None,
               log_file: Path | None = None, error: type[SrcoreError] = ServerError) -> float:
    """Poll ``check`` until true; returns the seconds it took. Raises ``error`` naming ``what`` (and
    the last lines of ``log_file``) when ``died()`` says its process ended or time runs out."""
    start = time.monotonic()
    while not check():
        gone = died is not None and died()
        if gone or time.monotonic() - start > timeout:
            tail = ""
            if log_file is not None and log_file.is_file():
                tail = "\n" + "\n".join(log_file.read_text(errors="replace").splitlines()[-15:])
            reason = "exited" if gone else f"did not answer within {timeout:.0f} s"
            raise error(f"{what} {reason}; see {log_file}{tail}")
        time.sleep(0.5)
    return time.monotonic() - start


def start_server(argv: Sequence[str], health_url: str, what: str, log_file: Path | None = None,
                 env: dict[str, str] | None = None, timeout: float = 180.0) -> subprocess.Popen:
    """Start ``argv`` in its own session (output to ``log_file``, else discarded) and wait until
    ``health_url`` answers; a server that does not is stopped before the error is raised."""
    out = open(log_file, "ab") if log_file is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.Popen(list(argv), env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finally:
        if log_file is not None:
            out.close()  # the child holds its own copy
    try:
        wait_until(lambda: http_ok(health_url), what, timeout, died=lambda: proc.poll() is not None,
                   log_file=log_file)
    except BaseException:
        stop_server(proc)
        raise
    return proc


def stop_server(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def running_server(argv: Sequence[str], health_url: str, what: str, log_file: Path | None = None,
                   env: dict[str, str] | None = None, timeout: float = 180.0) -> Iterator[subprocess.Popen]:
    """A server for the block: started and healthy on entry, stopped on exit."""
    proc = start_server(argv, health_url, what, log_file, env, timeout)
    try:
        yield proc
    finally:
        stop_server(proc)


def call_within(fn: Callable[[], _T], seconds: float, name: str = "srcore-call") -> _T:
    """``fn()``'s result (or its exception), or ``TimeoutError`` once ``seconds`` have passed.

    A client stuck in a connect or a read cannot be interrupted from outside, so the call runs in a
    daemon thread (named ``name``) that is left to finish on its own: the caller reports and moves on."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=run, name=name, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise TimeoutError(f"no answer within {seconds:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]
