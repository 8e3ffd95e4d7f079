"""A multi-node Ray cluster on one host, for tests and benchmarks: nodes on 127.0.0.2, 127.0.0.3, ...
(the loopback addresses Ray accepts here for several nodes), one CPU each unless told otherwise.

``local_cluster(nodes)`` starts the head and ``nodes - 1`` workers, connects this process as the
driver, and on exit disconnects and ends every process of every node it started (and only
those: other Ray clusters on the host are left alone). ``replace_node`` puts a fresh node in the
place of one a test killed, so that a cluster shared by several tests outlives that test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def add_node(cluster: Any, tries: int = 3, **args: Any) -> Any:
    """``cluster.add_node``, tried again when the node does not register within Ray's fixed 30 s
    (a busy host); the processes a failed try started (children of this process) are ended."""
    import psutil

    me = psutil.Process()
    for attempt in range(tries):
        before = {c.pid for c in me.children(recursive=True)}
        try:
            return cluster.add_node(**args)
        except Exception:
            for child in me.children(recursive=True):
                if child.pid not in before:
                    child.kill()
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


# The GCS checks each node every second instead of every 3 s: a node whose raylet was killed refuses
# the check at once and is declared dead after 5 refusals (5 s, not 15 s), while a slow node still
# has 5 checks of 10 s each to answer (the timeout and the threshold stay Ray's).
HEALTH_CHECK = {"RAY_health_check_period_ms": "1000"}


@contextmanager
def _environment(env: dict[str, str] | None) -> Iterator[None]:
    """``env`` set in this process (so the nodes started meanwhile inherit it), then restored."""
    from srcore.raycluster import IDLE_NODE_ENV

    env = {**IDLE_NODE_ENV, **(env or {}), "RAY_USAGE_STATS_ENABLED": "0", **HEALTH_CHECK}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def local_cluster(nodes: int = 2, cpus_per_node: int = 1, env: dict[str, str] | None = None
                  ) -> Iterator[tuple[Any, list[Any]]]:
    """Yields the cluster and its worker nodes (the head is ``cluster.head_node``). ``env`` is set
    in this process while the nodes start, so their workers inherit it, and restored afterwards."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()  # an in-process local Ray left by earlier work
    cluster = Cluster()
    try:
        with _environment(env):
            add_node(cluster, node_ip_address="127.0.0.2", num_cpus=cpus_per_node, include_dashboard=False)
            workers = [add_node(cluster, node_ip_address=f"127.0.0.{3 + i}", num_cpus=cpus_per_node)
                       for i in range(nodes - 1)]
            ray.init(address=cluster.address)
        yield cluster, workers
    finally:
        ray.shutdown()
        cluster.shutdown()


def wait_until_dead(node_id: str, timeout: float = 180) -> None:
    """Until the GCS declares ``node_id`` dead. A node whose raylet was killed stays "alive" to the
    scheduler until its health checks run out (about 15 s, longer on a busy host): work placed on it
    meanwhile (the next test's actors) would die with it."""
    import time

    import ray

    deadline = time.monotonic() + timeout
    while any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"Ray node {node_id} still alive {timeout:.0f} s after its raylet was killed")
        time.sleep(0.5)


def replace_node(cluster: Any, node: Any, num_cpus: int, env: dict[str, str] | None = None) -> Any:
    """A fresh worker node at ``node``'s address in place of ``node`` (whose raylet a test killed):
    what is left of the old node is ended and declared dead by the GCS, the new one starts with
    ``env`` as in ``local_cluster``. Needs this process connected as the cluster's driver."""
    cluster.remove_node(node, allow_graceful=False)
    wait_until_dead(node.node_id)
    with _environment(env):
        return add_node(cluster, node_ip_address=node.node_ip_address, num_cpus=num_cpus)
