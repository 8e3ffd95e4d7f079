"""Flow ``preprocess``: raw data from DVC, then ``dvc repro`` of the patch stage (and ``dvc push``)."""

from __future__ import annotations

from prefect import flow, task

from srcore.data.versioning import reproduce_patches


@task(retries=2, retry_delay_seconds=[5, 30], name="dvc-repro-prepare")
def repro_patches(pull: bool = True, push: bool = False) -> str:
    return reproduce_patches(".", pull=pull, push=push)


@flow(name="preprocess", log_prints=True)
def preprocess(pull: bool = True, push: bool = False) -> str:
    """Returns the patch manifest hash (what later stages key their caches on). ``push`` sends the
    patches to the DVC remote, where training on a cluster with no shared disk reads them."""
    return repro_patches(pull, push)
