"""Where Prefect keeps task results (the caches the flows hit on a re-run).

Local by default (``PREFECT_LOCAL_STORAGE_PATH``, ``~/.prefect/storage``), which a pod loses when it
ends. For workers that come and go (Kubernetes, the local stack), save an object-store block once
and point Prefect's own setting at it:

    python -m srcore.stack.results s3://prefect/results   # prints the block's slug
    export PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK=remote-file-system/srcore-results

The block stores only the location: the S3 endpoint and keys come from the worker's environment
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``; the stack's env file sets
them), so no secret is written into Prefect.
"""

from __future__ import annotations

import sys

BLOCK_NAME = "srcore-results"
BLOCK_SLUG = f"remote-file-system/{BLOCK_NAME}"
SETTING = "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"


def save_result_storage(url: str, name: str = BLOCK_NAME) -> str:
    """Save (or update) a remote result-storage block at ``url``; returns the slug for ``SETTING``."""
    from prefect.filesystems import RemoteFileSystem

    RemoteFileSystem(basepath=url.rstrip("/")).save(name, overwrite=True)
    return f"remote-file-system/{name}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or "://" not in args[0]:
        print("usage: python -m srcore.stack.results s3://BUCKET/PREFIX", file=sys.stderr)
        return 2
    print(f"{SETTING}={save_result_storage(args[0])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
