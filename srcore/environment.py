"""Process environment variables set for the length of a block."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["env_defaults"]


@contextmanager
def env_defaults(values: dict[str, str]) -> Iterator[None]:
    """``values`` set where this process does not set them already (the user's setting wins), for
    the block only: processes started inside it inherit them, later ones do not."""
    added = [k for k in values if k not in os.environ]
    os.environ.update({k: values[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)
