"""Worker processes that run one model over many items, started once per process and reused.

``shared_pool(workers, threads)`` returns this process's :class:`ModelPool` when one with that many
workers at that torch thread count is running, else starts one (and stops the old one);
``running_pool`` only looks. ``pool.map(fn, model, items, *args)`` returns
``[fn(model, item, *args) for item in items]`` in item order, computed by the workers. ``fn`` must be
a module-level function (it travels by name). The model travels with each ``map`` call as pickled
bytes under a fresh token: a worker unpickles it once per call, so a model changed between calls is
never stale, and a warm pool serves any number of models, datasets and scales.

Why reuse: a worker is a fresh interpreter (spawn) that imports torch and srcore and initialises
numba before its first result, seconds that a benchmark of a few dozen images does not repay.

Workers run the model at the caller's torch thread count (oneDNN's 1x1 convolutions round
differently with another count, and pooled scores must equal the sequential ones), so workers x
threads exceeds the cores. They therefore start with OpenMP's passive wait policy (unless
``OMP_WAIT_POLICY`` is set): an idle OpenMP thread sleeps instead of spinning on a core that another
worker's threads need (on a busy two-core machine a warm two-worker pool scored Set5 + Set14 with
RLFN in 28-38 s spinning, 2.5-4 s sleeping). The policy changes only how threads wait, never a result.
"""

from __future__ import annotations

import atexit
import itertools
import multiprocessing
import os
import pickle
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import torch

from srcore.environment import env_defaults

__all__ = ["ModelPool", "running_pool", "shared_pool", "shutdown_pool"]

# Variables the workers start with unless this process already sets them (read by OpenMP at load).
_WORKER_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}

_tokens = itertools.count(1)


class ModelPool:
    """``workers`` spawned processes at ``threads`` torch threads each (see the module docstring)."""

    def __init__(self, workers: int, threads: int) -> None:
        self.workers, self.threads = workers, threads
        # spawn, not fork: a forked child of a process that already ran torch's OpenMP pool hangs.
        self._executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_worker, initargs=(threads,))
        # The executor spawns a process per submit while none is idle (a fresh worker takes seconds
        # to come up): one call per worker here starts them all, with the environment above.
        with env_defaults(_WORKER_ENV):
            for _ in range(workers):
                self._executor.submit(os.getpid)

    def map(self, fn: Callable[..., Any], model: torch.nn.Module, items: Sequence[Any], *args: Any,
            on_result: Callable[[Any], None] | None = None) -> list[Any]:
        """``[fn(model, item, *args) for item in items]`` on the workers; ``on_result`` sees each
        result as it arrives (any order)."""
        token, payload = next(_tokens), pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
        futures = {self._executor.submit(_call, fn, token, payload, item, *args): i
                   for i, item in enumerate(items)}
        results: list[Any] = [None] * len(items)
        try:
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()
                if on_result is not None:
                    on_result(results[futures[fut]])
        except BaseException as exc:
            for fut in futures:  # a failed item or Ctrl-C: the rest of this call is not run
                fut.cancel()
            if isinstance(exc, BrokenProcessPool) and _pool is self:  # a worker died: start afresh next time
                shutdown_pool()
            raise
        return results

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


_pool: ModelPool | None = None


def running_pool(workers: int, threads: int) -> ModelPool | None:
    """This process's pool if it has ``workers`` workers at ``threads`` threads, else None."""
    if _pool is not None and (_pool.workers, _pool.threads) == (workers, threads):
        return _pool
    return None


def shared_pool(workers: int, threads: int) -> ModelPool:
    """The running pool of that shape, or a new one (the previous pool, of another shape, stops)."""
    global _pool
    pool = running_pool(workers, threads)
    if pool is None:
        shutdown_pool()
        pool = _pool = ModelPool(workers, threads)
    return pool


def shutdown_pool() -> None:
    """Stop this process's pool, if any (workers also end with the interpreter)."""
    global _pool
    pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown()


# The model a worker holds, under the token of the call it came with.
_worker_model: tuple[int, torch.nn.Module] | None = None


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    # A worker's results are sent before it exits (multiprocessing flushes its queues first), and
    # nothing else needs cleaning up: skipping the interpreter's teardown of torch and numba (1-2 s)
    # lets a pool stop, and a command using one exit, at once.
    atexit.register(_exit_now)


def _exit_now() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _call(fn: Callable[..., Any], token: int, payload: bytes, item: Any, *args: Any) -> Any:
    global _worker_model
    if _worker_model is None or _worker_model[0] != token:
        _worker_model = (token, pickle.loads(payload).eval())
    return fn(_worker_model[1], item, *args)
