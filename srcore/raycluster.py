"""Connecting to Ray: an existing cluster at ``HOST:PORT``, or a local, loopback-only Ray.

Shared by every room that runs work on Ray (patch preparation, training), so it sits at the
bottom and imports nothing of ours but the errors. Before ``ray.init`` joins a cluster, the
address is probed within :data:`PROBE_TIMEOUT_S`: nothing listening, no Ray GCS answering, a token
the cluster refuses, another Ray or Python version fail with one :class:`~srcore.errors.ConfigError`
line saying what was tried, why it failed and what to do (``ray.init`` itself would retry for
minutes, printing a C++ warning a second). Two things ``ray.init`` gets wrong on its own are
fixed on the way: a cluster that uses token authentication gets this machine's token
(``~/.ray/auth_token``, ``RAY_AUTH_TOKEN``) when ``RAY_AUTH_MODE`` is not set, as Ray's own
``ray start`` does; and a head bound to 127.0.0.1 alone is joined at 127.0.0.1, where ``ray.init``
would rewrite the address to the host's external IP, on which nothing listens.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from srcore.environment import env_defaults
from srcore.errors import ConfigError
from srcore.servers import call_within

__all__ = ["IDLE_NODE_ENV", "PROBE_TIMEOUT_S", "ClusterProbe", "check_address", "ensure_ray", "probe_cluster"]

PROBE_TIMEOUT_S = 15.0

# What a Ray node costs while it waits, measured on a 2-core host: each idle worker process it keeps
# for reuse (one per CPU of the node) about 1% of a core, and its log monitor, which lists the logs
# folder at every pass (ten a second), about 1% and more as the folder fills. For nodes that live long
# (the stack's, the tests'): a worker idle for a minute ends, and the log monitor lists the folder twice
# a second. A minute, not less: work comes in bursts seconds apart (a flow's stages, one preparation
# after another), and a task worker kept is reused, where a new one would import its task's modules
# again (about 4 CPU-seconds for patch preparation: the seven Ray preparation tests took 72 CPU-s with
# workers ending after 10 s idle, 51 with a minute). Set in the environment a node starts in.
IDLE_NODE_ENV = {"RAY_num_workers_soft_limit": "0", "RAY_idle_worker_killing_time_threshold_ms": "60000",
                 "RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0"}
_T = TypeVar("_T")
_LOOPBACK = "127.0.0.1"


def check_address(address: str, setting: str = "--address") -> None:
    """Refuse an address that is not ``HOST:PORT`` or where nothing listens."""
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"Ray address {address!r} must look like HOST:PORT (e.g. 127.0.0.2:6379)")
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); "
                          f"start it (ray start --head) or fix {setting}") from None


@dataclass(frozen=True)
class ClusterProbe:
    """What answered at an address: the live nodes' IPs and the Ray and Python versions."""

    address: str
    node_ips: tuple[str, ...]
    ray_version: str | None
    python_version: str | None

    @property
    def loopback_only(self) -> bool:
        """Every node on 127.0.0.1: the driver must join there too (see the module docstring)."""
        return bool(self.node_ips) and set(self.node_ips) == {_LOOPBACK}


def _token_available() -> bool:
    token_file = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or Path(token_file).is_file()


def _use_local_token() -> bool:
    """Send this machine's token from now on, if ``RAY_AUTH_MODE`` is unset and there is one (``ray
    start`` turns token auth on by itself whenever a token file exists; ``ray.init(address=...)``
    does not, and is then refused). Only for a cluster that asks for it: a driver in token mode
    also demands the token from the cluster's own processes. Returns whether it switched."""
    if os.environ.get("RAY_AUTH_MODE") is not None or not _token_available():
        return False
    from ray._raylet import Config

    os.environ["RAY_AUTH_MODE"] = "token"
    Config.initialize("")  # the C++ side reads the mode once; let it read it again
    return True


@contextmanager
def _stderr_quiet() -> Iterator[None]:
    """Ray's C++ client writes a warning line a second to file descriptor 2 while it retries; the
    probe's one-line error says it all."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _ask_gcs(address: str) -> ClusterProbe:
    import ray._common.usage.usage_lib as usage
    from ray._raylet import GcsClient

    client = GcsClient(address=address)
    meta = usage.get_cluster_metadata(client) or {}
    nodes = client.get_all_node_info(timeout=5)
    ips = tuple(sorted({n.node_manager_address for n in nodes.values() if n.state == 0}))  # 0: ALIVE
    return ClusterProbe(address, ips, meta.get("ray_version"), meta.get("python_version"))


def probe_cluster(address: str, setting: str = "--address", timeout: float = PROBE_TIMEOUT_S) -> ClusterProbe:
    """Ask the Ray GCS at ``address`` who is there, within ``timeout`` seconds; a one-line
    ConfigError (what was tried, why it failed, what to do) when it cannot be used from here."""
    import ray
    from ray.exceptions import AuthenticationError

    check_address(address, setting)
    tried = f"Ray cluster at {address} ({setting})"
    try:
        with _stderr_quiet():
            try:
                probe = call_within(lambda: _ask_gcs(address), timeout, "srcore-ray-probe")
            except AuthenticationError:
                if not _use_local_token():
                    raise
                probe = call_within(lambda: _ask_gcs(address), timeout, "srcore-ray-probe")
    except AuthenticationError:
        token = ("RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN") else
                 "this machine's ~/.ray/auth_token" if _token_available() else "no token")
        raise ConfigError(f"{tried}: refused the connection (InvalidAuthToken): the cluster uses token "
                          f"authentication and {token} is not its token; copy the head's ~/.ray/auth_token "
                          "here or set RAY_AUTH_TOKEN to it") from None
    except TimeoutError:
        raise ConfigError(f"{tried}: the port is open but no Ray GCS answered within {timeout:g} s; give the "
                          "head's GCS port (`ray start --head --port`), or check that the head is "
                          "running") from None
    except Exception as exc:  # whatever else the client says about a port that is not a usable GCS
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"{tried}: not a Ray cluster this machine can join ({first}); "
                          f"check {setting}") from None
    here = platform.python_version()
    if probe.ray_version not in (None, ray.__version__) or (
            probe.python_version and probe.python_version.split(".")[:2] != here.split(".")[:2]):
        raise ConfigError(f"{tried}: runs Ray {probe.ray_version} on Python {probe.python_version}, this "
                          f"machine Ray {ray.__version__} on Python {here}; install the same versions on "
                          "both")
    if not probe.node_ips:
        raise ConfigError(f"{tried}: has no live node; start the head (ray start --head) and fix {setting}")
    return probe


@contextmanager
def _joining_at_loopback() -> Iterator[None]:
    """``ray.init`` at 127.0.0.1 without rewriting it: Ray keeps a loopback address only when it
    believes multi-node clusters are off, a module constant read at import, so it is set for the call."""
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


def _console_level() -> int:
    """Ray's driver logger prints INFO lines (starting, connecting) on the console; they show only
    when the application logs at DEBUG (``srcore -v``)."""
    return logging.INFO if logging.getLogger().isEnabledFor(logging.DEBUG) else logging.WARNING


def ensure_ray(address: str | None, num_cpus: int | None = None, setting: str = "--address",
               logging_level: int | None = None) -> None:
    """Connect to ``address`` or start a local, loopback-only Ray (no-op when already connected).
    ``setting`` names, in the error, where the user sets the address; ``logging_level`` is the level
    of Ray's driver logger (default: WARNING, INFO under ``-v``)."""
    import ray

    level = _console_level() if logging_level is None else logging_level

    if address and ray.is_initialized():
        check_address(address, setting)  # a wrong address must not pass silently
    if ray.is_initialized():
        return
    if address:
        probe = probe_cluster(address, setting)
        if probe.loopback_only:
            port = address.rpartition(":")[2]
            with _joining_at_loopback():
                ray.init(address=f"{_LOOPBACK}:{port}", _node_ip_address=_LOOPBACK, log_to_driver=True,
                         logging_level=level)
        else:
            ray.init(address=address, log_to_driver=True, logging_level=level)
        return
    # A single-node Ray binds to this host's external address unless told it is a lone node. The
    # flag is set for the start-up only: left in this process's environment it would mark any
    # cluster started later from here (``ray start`` subprocesses) as single-node too.
    with env_defaults({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}):
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True,
                 logging_level=level)


def on_head_node() -> dict:
    """Ray actor options that place a small helper actor (a training stage's channel between the
    driver and the ranks) on the cluster's head node: a worker node that dies takes its actors with
    it, and the ranks Ray Train starts again must still find them, while the head's loss ends the
    cluster anyway.
    Not "the driver's node": on a host with several nodes Ray may attach the driver to a worker node,
    and a soft affinity was seen to place the actor on another node all the same."""
    # A sliver of the resource only the head holds (how Ray Serve pins its controller there).
    return {"num_cpus": 0, "resources": {"node:__internal_head__": 0.001}}
