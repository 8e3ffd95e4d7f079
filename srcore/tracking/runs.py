"""MLflow runs for training, distillation and evaluation: params, metrics, lineage, images, models.

Tracking URI: ``MLFLOW_TRACKING_URI`` when set (a server), else a local SQLite store
``mlflow.db`` with artifacts under ``mlartifacts/`` in the working directory.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from srcore.data.prepare import MANIFEST
from srcore.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["tracking_uri", "configure", "flatten", "lineage", "comparison_grid", "log_model_version", "EXPERIMENT"]

EXPERIMENT = "srcore"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"


def _check_server(uri: str) -> None:
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as resp:
            if resp.status != 200:
                raise OSError(f"HTTP {resp.status}")
    except OSError as exc:
        raise ConfigError(f"cannot reach the MLflow tracking server at {uri} ({exc}); start it or fix "
                          "MLFLOW_TRACKING_URI") from None


def configure(experiment: str = EXPERIMENT):
    """Point MLflow at the tracking store (checking a server answers) and return a client."""
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri()
    _check_server(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, uri)
    if client.get_experiment_by_name(experiment) is None:
        location = None if uri.startswith("http") else Path("mlartifacts").resolve().as_uri()
        client.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment)
    return client


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params -> {"a.b": "value"} (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def lineage(patches_dir: str | os.PathLike) -> dict[str, str]:
    """Data and code provenance: raw data DVC hash, patch manifest hash, git commit."""
    from srcore.data.versioning import manifest_hash

    manifest = Path(patches_dir) / MANIFEST
    tags = {"git_commit": _git_commit()}
    if manifest.is_file():
        tags["patch_manifest_sha256"] = manifest_hash(patches_dir)
        info = json.loads(manifest.read_text()).get("input", {})
        tags["raw_data_dvc_md5"] = str(info.get("dvc_md5"))
        tags["raw_data_sha256"] = str(info.get("sha256"))
    return tags


def comparison_grid(panels: list[np.ndarray]) -> np.ndarray:
    """Side-by-side panels (e.g. bicubic | student | teacher | HR) separated by white lines."""
    h = min(p.shape[0] for p in panels)
    w = min(p.shape[1] for p in panels)
    sep = np.full((h, 4, 3), 255, dtype=np.uint8)
    row = []
    for i, p in enumerate(panels):
        row.append(p[:h, :w])
        if i < len(panels) - 1:
            row.append(sep)
    return np.concatenate(row, axis=1)


def log_model_version(model_path: str | os.PathLike, registered_name: str, client) -> str:
    """Log ``model_path`` as a pyfunc model in the active run and register it; returns the version."""
    import mlflow.pyfunc

    from srcore.tracking.packaging import MODEL_ARTIFACT, SRPyfunc, signature

    info = mlflow.pyfunc.log_model(name="model", python_model=SRPyfunc(),
                                   artifacts={MODEL_ARTIFACT: str(model_path)}, signature=signature(),
                                   registered_model_name=registered_name)
    return str(info.registered_model_version)
