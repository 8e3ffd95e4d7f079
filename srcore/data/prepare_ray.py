"""The ``ray`` executor of ``srcore data prepare``: one Ray task per shard on a cluster.

Each task runs the same shard job as the local process pool (``srcore.data.prepare``), declares
one CPU, and yields its result to the driver as soon as it finishes, so the driver records
shards (and the caller's progress bar moves) in completion order. Failures are sorted as Ray
can act on them:

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

import logging
import os
from collections.abc import Iterator

from srcore.data import prepare as prep
from srcore.errors import SrcoreError
from srcore.raycluster import ensure_ray
from srcore.storage import is_s3

log = logging.getLogger(__name__)

__all__ = ["PrepareFailed", "RayTasks"]

# Where the object store is (a local S3 server on a laptop cluster) is part of where the data is,
# so the driver's setting travels with the tasks; credentials stay with each node's environment.
_FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


class PrepareFailed(SrcoreError):
    """A shard task failed on every try Ray gave it; finished shards are kept for the rerun."""


def _shard_task(job: prep._ShardJob) -> prep.Built | SrcoreError:
    """Runs on a Ray worker: the pool's shard job, with user errors returned, not raised."""
    prep.one_thread_each()
    try:
        return prep._build_shard(job)
    except SrcoreError as exc:
        return exc


class RayTasks:
    """Shard jobs as Ray tasks on the cluster at ``address`` (None: a local Ray on this machine)."""

    def __init__(self, address: str | None = None, max_retries: int = 3) -> None:
        self.address = address
        self.max_retries = max_retries

    def run(self, jobs: list[prep._ShardJob]) -> Iterator[prep.Built]:
        import ray

        ensure_ray(self.address, setting="prepare.address / --address")
        s3 = any(is_s3(j.source) or is_s3(j.out) for j in jobs)
        env = {k: os.environ[k] for k in _FORWARDED_ENV if s3 and os.environ.get(k)}
        task = ray.remote(_shard_task).options(
            name="prepare-shard", num_cpus=1, max_retries=self.max_retries, retry_exceptions=[OSError],
            **({"runtime_env": {"env_vars": env}} if env else {}))
        pending = {task.remote(job): job.index for job in jobs}
        log.info("%d shard tasks submitted to Ray (%s)", len(pending), self.address or "local")
        try:
            while pending:
                [done], _ = ray.wait(list(pending), num_returns=1)
                index = pending.pop(done)
                try:
                    outcome = ray.get(done)
                except ray.exceptions.RayError as exc:
                    cause = (str(exc).splitlines() or [""])[0]
                    raise PrepareFailed(f"shard {index} failed after {self.max_retries + 1} tries "
                                        f"({type(exc).__name__}: {cause}); rerun to resume: finished "
                                        "shards are kept") from exc
                if isinstance(outcome, SrcoreError):
                    raise outcome
                yield outcome
        finally:
            for ref in pending:  # stopped early (error, Ctrl-C): no task keeps writing
                ray.cancel(ref, force=True)
