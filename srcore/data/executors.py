"""Where shard jobs run: ``LocalPool`` (a process pool on this machine) or ``RayTasks`` (one Ray
task per shard on a cluster). Both yield each :class:`ShardResult` as soon as it finishes, in any
order, and run the same job, so the bytes written do not depend on which.

Pool workers die with the command: on Linux the kernel kills them when the parent dies
(``PR_SET_PDEATHSIG``), elsewhere a thread in each worker watches the parent's pid.

On Ray, failures are sorted as Ray can act on them:

- a worker process or node that dies (killed task, lost raylet) is a system failure: Ray reruns
  the task, up to ``max_retries`` times;
- an ``OSError`` raised by the job (an object store that did not answer, a full disk on one
  node) is retried the same way (``retry_exceptions``);
- an error the user must fix (``SrcoreError``: an unwritable output, a refused bucket) comes back
  as a value, so Ray does not retry it, and is raised again on the driver with its message.

A task killed mid-write leaves only a temporary file (local) or nothing (S3: no object until
the PUT completes); the next run removes stray temporaries and skips every verified shard.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Protocol

from srcore.config import PrepareParams
from srcore.data.shard_job import ShardJob, ShardResult, build_shard, one_thread_each
from srcore.errors import SrcoreError
from srcore.storage import endpoint_env, is_s3

log = logging.getLogger(__name__)

__all__ = ["LocalPool", "PrepareFailed", "RayTasks", "ShardExecutor", "executor_for"]

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class ShardExecutor(Protocol):
    """Runs shard jobs somewhere and yields each result as it finishes (any order). Closing the
    iterator early stops the work still outstanding."""

    def run(self, jobs: list[ShardJob]) -> Iterator[ShardResult]: ...


class PrepareFailed(SrcoreError):
    """A shard task failed on every try Ray gave it; finished shards are kept for the rerun."""


def executor_for(params: PrepareParams) -> ShardExecutor:
    """The executor ``params.executor`` names."""
    if params.executor == "ray":
        return RayTasks(params.address)
    return LocalPool(params.workers)


class LocalPool:
    """Shard jobs in a process pool on this machine (``workers`` processes, 0 = one per core)."""

    def __init__(self, workers: int = 0) -> None:
        self.workers = workers or os.cpu_count() or 1

    def run(self, jobs: list[ShardJob]) -> Iterator[ShardResult]:
        workers = min(self.workers, len(jobs))
        if workers <= 1:
            yield from map(build_shard, jobs)
            return
        # spawn: forking a parent that already runs numba/torch threads is not safe.
        with mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(os.getpid(),)) as pool:
            yield from pool.imap_unordered(build_shard, jobs)


def _init_worker(parent: int) -> None:
    _die_with_parent(parent)
    one_thread_each()


def _die_with_parent(parent: int) -> None:
    """End this worker when process ``parent`` dies (SIGTERM or SIGKILL included), so that no
    orphan keeps writing shards. The standard library has no such option, hence prctl."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
                if os.getppid() != parent:  # the parent died before the request took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="watch-parent").start()


def _watch_parent(parent: int, interval: float = 0.5) -> None:
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)


def _shard_task(job: ShardJob) -> ShardResult | SrcoreError:
    """Runs on a Ray worker: the pool's shard job, with user errors returned, not raised."""
    one_thread_each()
    try:
        return build_shard(job)
    except SrcoreError as exc:
        return exc


class RayTasks:
    """Shard jobs as Ray tasks on the cluster at ``address`` (None: a local Ray on this machine).

    At most ``in_flight`` tasks are submitted at a time (default: four per cluster CPU, at least
    64): waiting on a bounded set keeps the driver's work per finished shard constant however
    many shards the run has."""

    def __init__(self, address: str | None = None, max_retries: int = 3,
                 in_flight: int | None = None) -> None:
        self.address = address
        self.max_retries = max_retries
        self.in_flight = in_flight

    def run(self, jobs: list[ShardJob]) -> Iterator[ShardResult]:
        import ray

        from srcore.raycluster import ensure_ray

        ensure_ray(self.address, setting="prepare.address / --address")
        s3 = any(is_s3(j.out) or any(is_s3(s) for s in j.sources) for j in jobs)
        env = endpoint_env() if s3 else {}
        task = ray.remote(_shard_task).options(
            name="prepare-shard", num_cpus=1, max_retries=self.max_retries, retry_exceptions=[OSError],
            **({"runtime_env": {"env_vars": env}} if env else {}))
        window = self.in_flight or max(64, 4 * int(ray.cluster_resources().get("CPU", 1)))
        queue = iter(jobs)
        pending: dict = {}  # task -> shard index
        log.info("%d shard tasks for Ray (%s), %d at a time", len(jobs), self.address or "local", window)
        try:
            while True:
                for job in itertools.islice(queue, window - len(pending)):
                    pending[task.remote(job)] = job.index
                if not pending:
                    return
                ray.wait(list(pending), num_returns=1)
                done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
                for ref in done:
                    yield self._outcome(ref, pending.pop(ref))
        finally:
            for ref in pending:  # stopped early (error, Ctrl-C): no task keeps writing
                ray.cancel(ref, force=True)

    def _outcome(self, ref, index: int) -> ShardResult:
        import ray

        try:
            outcome = ray.get(ref)
        except ray.exceptions.RayError as exc:
            cause = (str(exc).splitlines() or [""])[0]
            raise PrepareFailed(f"shard {index} failed after {self.max_retries + 1} tries "
                                f"({type(exc).__name__}: {cause}); rerun to resume: finished "
                                "shards are kept") from exc
        if isinstance(outcome, SrcoreError):
            raise outcome
        return outcome
