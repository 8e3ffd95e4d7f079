"""Shared helpers for the flows: parameters with flow-level overrides, and cache keys."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from srcore.config import Params, load_params

DEFAULT_PARAMS = "params.yaml"


def params_with(params_file: str = DEFAULT_PARAMS, profile: str | None = None,
                overrides: dict[str, Any] | None = None) -> Params:
    """params.yaml with a profile and dotted overrides applied (validated)."""
    return load_params(params_file, overrides, profile=profile)


def digest(*parts: Any) -> str:
    """A stable hash of JSON-serialisable parts (used as a cache key)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def file_digest(path: str) -> str:
    """Content hash of a local or object-store file (models are cached on their bytes, never on tensors)."""
    from srcore.data.shards import file_sha256
    from srcore.evaluation import BICUBIC
    from srcore.tracking.publish import local_model_file

    if path == BICUBIC:
        return BICUBIC
    with local_model_file(path) as local_path:
        return file_sha256(local_path)
