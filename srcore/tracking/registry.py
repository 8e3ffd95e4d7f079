"""Registered models: logging a version, promotion (challenger -> champion), loading by URI.

Promotion rule: a new version gets the alias ``challenger``; it takes ``champion`` only if its
gate metric beats the current champion's by at least ``margin`` and it stays within the
parameter and latency budgets. The decision and both numbers are written as version tags.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from srcore.errors import CheckpointError, ConfigError
from srcore.models.base import SRModel

log = logging.getLogger(__name__)

__all__ = ["registered_name", "PromotionPolicy", "Decision", "promote", "load_registered_model"]


def registered_name(arch: str, scale: int) -> str:
    return f"srcore-{arch}-x{scale}"


@dataclass(frozen=True)
class PromotionPolicy:
    gate_metric: str = "sample-val_psnr_y"
    margin: float = 0.0
    max_params: int | None = None
    max_latency_ms: float | None = None


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str
    challenger: float | None
    champion: float | None
    version: str


def _metric(client, run_id: str, key: str) -> float | None:
    return client.get_run(run_id).data.metrics.get(key)


def promote(client, name: str, version: str, policy: PromotionPolicy) -> Decision:
    """Apply the promotion rule to ``version`` of registered model ``name``."""
    from mlflow.exceptions import MlflowException

    mv = client.get_model_version(name, version)
    client.set_registered_model_alias(name, "challenger", version)
    new = _metric(client, mv.run_id, policy.gate_metric)
    if new is None:
        raise ConfigError(f"run {mv.run_id} has no metric {policy.gate_metric!r} to gate promotion on")
    params = _metric(client, mv.run_id, "params")
    latency = _metric(client, mv.run_id, "latency_ms")
    try:
        champ = client.get_model_version_by_alias(name, "champion")
        old = _metric(client, champ.run_id, policy.gate_metric)
    except MlflowException:
        champ, old = None, None
    if policy.max_params is not None and params is not None and params > policy.max_params:
        promoted, reason = False, f"params {params:.0f} exceed the budget {policy.max_params}"
    elif policy.max_latency_ms is not None and latency is not None and latency > policy.max_latency_ms:
        promoted, reason = False, f"latency {latency:.1f} ms exceeds the budget {policy.max_latency_ms} ms"
    elif champ is None:
        promoted, reason = True, "no champion yet"
    elif champ.version == version:
        promoted, reason = True, "already champion"
    elif old is None or new >= old + policy.margin:
        promoted, reason = True, f"{policy.gate_metric} {new:.3f} beats champion v{champ.version} " \
                                 f"({old if old is not None else float('nan'):.3f}) by >= {policy.margin}"
    else:
        promoted, reason = False, f"{policy.gate_metric} {new:.3f} does not beat champion v{champ.version} " \
                                  f"({old:.3f}) by {policy.margin}"
    for key, value in {"promotion.decision": "promoted" if promoted else "refused", "promotion.reason": reason,
                       "promotion.gate_metric": policy.gate_metric, "promotion.challenger_value": f"{new:.4f}",
                       "promotion.champion_value": "" if old is None else f"{old:.4f}"}.items():
        client.set_model_version_tag(name, version, key, value)
    if promoted:
        client.set_registered_model_alias(name, "champion", version)
    log.info("%s v%s: %s (%s)", name, version, "promoted to champion" if promoted else "kept as challenger", reason)
    return Decision(promoted, reason, new, old, version)


def load_registered_model(uri: str) -> SRModel:
    """Load ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` as an srcore model."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from srcore.models import load_model
    from srcore.tracking.runs import configure

    configure()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        except MlflowException as exc:
            raise CheckpointError(f"{uri}: cannot load registered model ({exc.message})") from None
        files = sorted(local.rglob("artifacts/*.pth"))  # the pyfunc keeps our checkpoint under artifacts/
        if not files:
            raise CheckpointError(f"{uri}: no srcore checkpoint (.pth) inside the registered model")
        return load_model(files[0])
