"""Connecting to Ray: an existing cluster at ``HOST:PORT``, or a local, loopback-only Ray.

Shared by every room that runs work on Ray (patch preparation, training), so it sits at the
bottom and imports nothing of ours but the errors. An address that cannot be reached fails at
once with a one-line :class:`~srcore.errors.ConfigError` naming the setting to fix.
"""

from __future__ import annotations

import os
import socket

from srcore.errors import ConfigError

__all__ = ["check_address", "ensure_ray"]


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


def ensure_ray(address: str | None, num_cpus: int | None = None, setting: str = "--address") -> None:
    """Connect to ``address`` or start a local, loopback-only Ray (no-op when already connected).
    ``setting`` names, in the error, where the user sets the address."""
    import ray

    if address:
        check_address(address, setting)  # also when already connected: a wrong address must not pass silently
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    # A single-node Ray binds to this host's external address unless told it is a lone node. The
    # flag is set for the start-up only: left in this process's environment it would mark any
    # cluster started later from here (``ray start`` subprocesses) as single-node too.
    key = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    before = os.environ.get(key)
    os.environ.setdefault(key, "0")
    try:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
    finally:
        if before is None:
            os.environ.pop(key, None)
