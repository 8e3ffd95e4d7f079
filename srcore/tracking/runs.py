"""MLflow runs for training, distillation and evaluation: params, metrics, lineage, images, models.

Tracking URI: ``MLFLOW_TRACKING_URI`` when set (a server), else a local SQLite store
``mlflow.db`` with artifacts under ``mlartifacts/`` in the working directory. Commands that only
read (loading a registered model) use :func:`reading_uri`, which never creates that store, and
run their requests under :func:`bounded_requests` and :func:`call_with_deadline`, so a sick
server costs at most ``SRCORE_TRACKING_TIMEOUT`` seconds (default 60), not MLflow's minutes of
retries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from srcore.data.patch_source import patch_source
from srcore.errors import ConfigError
from srcore.servers import call_within

log = logging.getLogger(__name__)

__all__ = ["tracking_uri", "store_identity", "reading_uri", "tracking_timeout", "bounded_requests",
           "call_with_deadline", "configure", "flatten", "lineage", "stage_lineage", "comparison_grid",
           "run_url", "loggable_params", "EXPERIMENT"]

EXPERIMENT = "srcore"
LOCAL_STORE = "mlflow.db"
TIMEOUT_ENV = "SRCORE_TRACKING_TIMEOUT"
_T = TypeVar("_T")


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(LOCAL_STORE).resolve()}"


def store_identity(uri: str | None = None) -> str:
    """The tracking store at ``uri`` (default: :func:`tracking_uri`) as one string: the URI and when
    the store was made (its Default experiment's creation time). A store made anew at the same URI,
    such as a fresh clone's ``mlflow.db`` in the same folder, is another store: caches of what was
    registered in the old one must not be taken for the new one. An unreachable store gets a
    one-off identity, which no cache holds."""
    import uuid

    from mlflow import MlflowClient

    uri = uri or tracking_uri()
    try:
        with bounded_requests(tracking_timeout()):
            created = MlflowClient(uri, uri).get_experiment("0").creation_time
    except Exception as exc:  # any failure to ask: the caller's work runs instead of a cache hit
        log.debug("tracking store %s did not answer (%s)", uri, exc)
        return f"{uri}#unknown-{uuid.uuid4().hex}"
    return f"{uri}#{created}"


def reading_uri() -> str:
    """The tracking URI for a command that only reads: the server, or the local store only when it
    already exists (opening a missing SQLite store would create it)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if not Path(LOCAL_STORE).is_file():
        raise ConfigError(f"no tracking store: MLFLOW_TRACKING_URI is not set and there is no {LOCAL_STORE} "
                          "here; set MLFLOW_TRACKING_URI, run where that file is, or use --offline")
    return tracking_uri()


def tracking_timeout() -> float:
    """Total seconds a read from the tracking server may take (``SRCORE_TRACKING_TIMEOUT``, default 60)."""
    text = os.environ.get(TIMEOUT_ENV, "60")
    try:
        value = float(text)
        if value <= 0:
            raise ValueError
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {text!r}") from None
    return value


@contextmanager
def bounded_requests(total: float, retries: int = 2) -> Iterator[None]:
    """MLflow's HTTP defaults (7 retries with exponential backoff, 120 s per request) add up to
    minutes against a server that fails; inside this block a request is tried ``1 + retries`` times
    with a short backoff and waits at most ``min(total, 30)`` s. Variables the user set are left
    alone, and the environment is restored on exit (MLflow reads these variables at each request)."""
    limits = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries), "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
              "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
              "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, int(min(total, 30))))}
    added = {k: v for k, v in limits.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def call_with_deadline(fn: Callable[[], _T], seconds: float, what: str) -> _T:
    """``fn()``, or a :class:`ConfigError` naming ``what`` once ``seconds`` have passed.

    The call runs in a daemon thread because an HTTP client stuck in a connect or a read cannot be
    interrupted from outside; the command then reports the failure and exits without waiting."""
    try:
        return call_within(fn, seconds, "tracking-call")
    except TimeoutError:
        raise ConfigError(f"{what}: the tracking server gave no answer within {seconds:g} s "
                          f"(raise {TIMEOUT_ENV}, check the server, or use --offline with a cached model)"
                          ) from None


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


def run_url(uri: str, experiment_id: str, run_id: str) -> str:
    """Where a person looks at a run: the server's page, or the local store and how to browse it."""
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"run {run_id} in {uri} (browse it: mlflow ui --backend-store-uri {uri})"


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


def loggable_params(params, stage: str) -> dict[str, str]:
    """The flat MLflow params of a training stage's run: its recipe, the loader and the patches."""
    cfg = params.stage(stage)
    return flatten({"stage": stage, "train": cfg.model_dump(mode="json"),
                    "loader": params.loader.model_dump(mode="json"),
                    "prepare": params.prepare.model_dump(mode="json")})


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def lineage(patches) -> dict[str, str]:
    """Data and code provenance: raw data DVC hash, patch manifest hash (and the DVC pin of the patches
    when training reads them from the DVC remote), git commit. ``patches``: a folder, prefix or
    ``PatchSource``."""
    from srcore.data.patch_source import as_source

    source = as_source(patches)
    tags = {"git_commit": _git_commit()}
    data = source.manifest_bytes()
    if data is not None:
        tags["patch_manifest_sha256"] = hashlib.sha256(data).hexdigest()
        tags["patches"] = source.uri
        if source.pin:
            tags["patches_dvc_md5"] = source.pin
        info = json.loads(data).get("input", {})
        tags["raw_data_dvc_md5"] = str(info.get("dvc_md5"))
        tags["raw_data_sha256"] = str(info.get("sha256"))
    return tags


def stage_lineage(params, stage: str, source=None) -> dict[str, str]:
    """``lineage`` plus what a training stage started from: the weights it was initialised from
    (``init``) and, for distillation, the teacher it learnt from. ``source``: the stage's patch
    source when the caller resolved it already (``srcore.data.patch_source``)."""
    cfg = params.stage(stage)
    source = source or patch_source(params.prepare.out, params.loader.source)
    tags = {**lineage(source), "stage": stage}
    if cfg.init:
        tags["init"] = cfg.init
    if stage == "distill" and cfg.distills:
        tags["teacher"] = cfg.teacher
    return tags


def comparison_grid(rows: list[list[tuple[str, np.ndarray]]], label_height: int = 14) -> np.ndarray:
    """Labelled panels: one row per crop, each panel (HxWx3 uint8) under its caption (e.g.
    ``"student 27.31 dB"``), separated by white lines; panels are cut to the smallest size."""
    from PIL import Image, ImageDraw

    h = min(p.shape[0] for row in rows for _, p in row)
    w = min(p.shape[1] for row in rows for _, p in row)
    sep = 4
    cols = max(len(row) for row in rows)
    canvas = Image.new("RGB", (cols * (w + sep) - sep, len(rows) * (h + label_height + sep) - sep), "white")
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        top = r * (h + label_height + sep)
        for c, (label, panel) in enumerate(row):
            left = c * (w + sep)
            draw.text((left + 2, top + 1), label, fill="black")
            canvas.paste(Image.fromarray(np.ascontiguousarray(panel[:h, :w])), (left, top + label_height))
    return np.asarray(canvas)
