"""Registered models: logging a version, promotion (challenger -> champion), loading by URI.

Promotion rule: a new version gets the alias ``challenger``; it takes ``champion`` only if its
gate metric beats the current champion's by at least ``margin`` and it stays within the
parameter, latency and FLOPs budgets (the ``params``, ``latency_ms`` and ``flops_g`` metrics the
evaluate stage logs). The decision and both numbers are written as version tags.

Loading ``models:/<name>@<alias>`` (or ``/<version>``) reads only: it creates no experiment and no
local store, resolves the alias once per call within a bounded time, and keeps the version's
checkpoint in a local cache (``<SRCORE_CACHE>/models/<name>/v<version>.pth``, plus the alias it
was last resolved to), so ``offline=True`` loads it again without the server. Only our checkpoint
file (tensors, read with ``weights_only=True``) is loaded, never the pyfunc's pickled code.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from srcore.errors import CheckpointError, ConfigError
from srcore.io import atomic_output, atomic_write_text
from srcore.models.base import SRModel

log = logging.getLogger(__name__)

__all__ = ["registered_name", "PromotionPolicy", "Decision", "promote", "load_registered_model",
           "registered_weights", "parse_model_uri", "model_cache_dir"]


def registered_name(arch: str, scale: int) -> str:
    return f"srcore-{arch}-x{scale}"


@dataclass(frozen=True)
class PromotionPolicy:
    """``gate_metric`` must beat the champion's by ``margin``; every metric in ``compare`` (the other
    configured benchmarks) must not fall more than ``tolerance`` below the champion's; budgets cap
    parameters, latency and FLOPs."""

    gate_metric: str = "sample-val_psnr_y"
    margin: float = 0.0
    max_params: int | None = None
    max_latency_ms: float | None = None
    max_flops_g: float | None = None
    compare: tuple[str, ...] = ()
    tolerance: float = 0.05


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str
    challenger: float | None
    champion: float | None
    version: str


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _refusal(policy: PromotionPolicy, new: dict[str, float | None], old: dict[str, float | None],
             champ_version: str) -> str | None:
    """Why the challenger loses to the champion on the benchmarks, or None when it does not."""
    gate, a, b = policy.gate_metric, new[policy.gate_metric], old.get(policy.gate_metric)
    if b is not None and a < b + policy.margin:
        return f"{gate} {a:.3f} does not beat champion v{champ_version} ({b:.3f}) by {policy.margin}"
    for key in policy.compare:
        a, b = new.get(key), old.get(key)
        if key != gate and a is not None and b is not None and a < b - policy.tolerance:
            return f"{key} {a:.3f} is more than {policy.tolerance} below champion v{champ_version} ({b:.3f})"
    return None


def promote(client, name: str, version: str, policy: PromotionPolicy) -> Decision:
    """Apply the promotion rule to ``version`` of registered model ``name``; the version's tags keep the
    decision, both values of every compared metric, and the teacher the version was distilled from."""
    from mlflow.exceptions import MlflowException

    mv = client.get_model_version(name, version)
    client.set_registered_model_alias(name, "challenger", version)
    run = client.get_run(mv.run_id).data
    keys = [policy.gate_metric, *(k for k in policy.compare if k != policy.gate_metric)]
    new = {k: run.metrics.get(k) for k in keys}
    if new[policy.gate_metric] is None:
        raise ConfigError(f"run {mv.run_id} has no metric {policy.gate_metric!r} to gate promotion on")
    params, latency, flops = (run.metrics.get(k) for k in ("params", "latency_ms", "flops_g"))
    try:
        champ = client.get_model_version_by_alias(name, "champion")
        champ_metrics = client.get_run(champ.run_id).data.metrics
        old = {k: champ_metrics.get(k) for k in keys}
    except MlflowException:
        champ, old = None, {}
    gate_new, gate_old = new[policy.gate_metric], old.get(policy.gate_metric)
    if policy.max_params is not None and params is not None and params > policy.max_params:
        promoted, reason = False, f"params {params:.0f} exceed the budget {policy.max_params}"
    elif policy.max_latency_ms is not None and latency is not None and latency > policy.max_latency_ms:
        promoted, reason = False, f"latency {latency:.1f} ms exceeds the budget {policy.max_latency_ms} ms"
    elif policy.max_flops_g is not None and flops is not None and flops > policy.max_flops_g:
        promoted, reason = False, f"FLOPs {flops:.2f} G exceed the budget {policy.max_flops_g} G"
    elif champ is None:
        promoted, reason = True, "no champion yet"
    elif champ.version == version:
        promoted, reason = True, "already champion"
    else:
        refusal = _refusal(policy, new, old, champ.version)
        promoted = refusal is None
        was = gate_old if gate_old is not None else float("nan")
        reason = refusal or (f"{policy.gate_metric} {gate_new:.3f} beats champion v{champ.version} "
                             f"({was:.3f}) by >= {policy.margin}")
    tags = {"promotion.decision": "promoted" if promoted else "refused", "promotion.reason": reason,
            "promotion.gate_metric": policy.gate_metric, "promotion.challenger_value": _fmt(gate_new),
            "promotion.champion_value": _fmt(gate_old),
            "promotion.champion_version": champ.version if champ is not None else ""}
    for key in keys:
        tags[f"promotion.{key}.challenger"] = _fmt(new[key])
        tags[f"promotion.{key}.champion"] = _fmt(old.get(key))
    for key in ("teacher", "teacher_run_id", "init"):
        if run.tags.get(key):
            tags[f"promotion.{key}"] = run.tags[key]
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    if promoted:
        client.set_registered_model_alias(name, "champion", version)
    log.info("%s v%s: %s (%s)", name, version, "promoted to champion" if promoted else "kept as challenger",
             reason)
    return Decision(promoted, reason, gate_new, gate_old, version)


_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?$")


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/name@alias`` -> (name, alias, None); ``models:/name/3`` -> (name, None, "3")."""
    m = _MODEL_URI.match(uri)
    if not m:
        raise CheckpointError(f"{uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
    return m["name"], m["alias"], m["version"]


def model_cache_dir(name: str) -> Path:
    """Where the checkpoints of registered model ``name`` are cached."""
    from srcore.data.benchmarks import default_cache_dir

    return default_cache_dir() / "models" / re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _cached_version(uri: str, name: str, alias: str | None, version: str | None) -> Path:
    folder = model_cache_dir(name)
    if alias is not None:
        pointer = folder / f"@{alias}"
        if not pointer.is_file():
            raise CheckpointError(f"{uri}: not in the local cache ({folder}); load it once without --offline")
        version = pointer.read_text().strip()
    path = folder / f"v{version}.pth"
    if not path.is_file():
        raise CheckpointError(f"{uri}: version {version} is not in the local cache ({folder}); "
                              "load it once without --offline")
    return path


def _fetch_version(uri: str, name: str, alias: str | None, version: str | None) -> Path:
    """Resolve the alias on the server and bring that version's checkpoint into the cache."""
    import mlflow.artifacts
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from srcore.tracking.runs import reading_uri

    server = reading_uri()
    client = MlflowClient(tracking_uri=server, registry_uri=server)
    try:
        mv = (client.get_model_version_by_alias(name, alias) if alias
              else client.get_model_version(name, version))
        folder = model_cache_dir(name)
        path = folder / f"v{mv.version}.pth"
        if not path.is_file():  # a registered version never changes: download it once
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(mlflow.artifacts.download_artifacts(
                    artifact_uri=f"models:/{name}/{mv.version}", dst_path=tmp, tracking_uri=server,
                    registry_uri=server))
                files = sorted(local.rglob("artifacts/*.pth"))  # the pyfunc keeps our checkpoint there
                if not files:
                    raise CheckpointError(f"{uri}: no srcore checkpoint (.pth) inside the registered model")
                with atomic_output(path) as dst:
                    shutil.copyfile(files[0], dst)
    except MlflowException as exc:
        raise CheckpointError(f"{uri}: cannot load the registered model from {server} "
                              f"({_short_reason(str(exc.message))})") from None
    if alias:
        atomic_write_text(folder / f"@{alias}", f"{mv.version}\n")
    return path


def _short_reason(message: str) -> str:
    """The useful part of an MLflow error: the HTTP client's cause when there is one, else its first line."""
    cause = re.search(r"Caused by \w+\('([^']+)'", message)
    if cause:
        return cause[1]
    lines = message.strip().splitlines()
    return lines[0][:300] if lines else "no detail"


def registered_weights(uri: str, offline: bool = False) -> Path:
    """The local copy of the srcore checkpoint behind ``models:/<name>@<alias>`` or
    ``models:/<name>/<version>``; with ``offline`` from the local cache only (see the module docstring)."""
    from srcore.tracking.runs import bounded_requests, call_with_deadline, tracking_timeout

    name, alias, version = parse_model_uri(uri)
    if offline:
        path = _cached_version(uri, name, alias, version)
    else:
        total = tracking_timeout()
        import mlflow.artifacts  # noqa: F401  (imported here: importing MLflow must not eat into the deadline)
        with bounded_requests(total):
            path = call_with_deadline(lambda: _fetch_version(uri, name, alias, version), total, uri)
    log.debug("%s -> %s", uri, path)
    return path


def load_registered_model(uri: str, offline: bool = False) -> SRModel:
    """Load a registered model (see ``registered_weights``) as an srcore model."""
    from srcore.models import load_model

    return load_model(registered_weights(uri, offline))
