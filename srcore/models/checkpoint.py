"""One checkpoint format for models, and strict loading of official files into it.

Our format is a dict ``{"format": "srcore-model", "version": 1, "model": preset name,
"arch": ..., "config": {...}, "state_dict": {...}}`` written atomically. Loading also accepts
a plain state dict, a BasicSR dict (``params_ema`` preferred, ``params`` selectable), or a dict
with a ``state_dict`` entry; official layouts pass through the architecture's converter.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from srcore.errors import CheckpointError
from srcore.io import atomic_write_bytes
from srcore.models.base import SRModel
from srcore.models.presets import Preset, build, preset
from srcore.storage import is_uri, read_bytes

__all__ = ["FORMAT", "save_model", "read_checkpoint", "extract_state_dict", "load_weights", "load_model"]

FORMAT = "srcore-model"
_STRIP_PREFIXES = ("module.", "_orig_mod.", "model.")


def save_model(path: str | os.PathLike, model: SRModel, name: str,
               extra: dict[str, Any] | None = None) -> None:
    """Write ``model`` (preset ``name``) in our format, atomically."""
    payload = {"format": FORMAT, "version": 1, "model": name, "arch": model.arch,
               "config": model.config.model_dump(mode="json"),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    if extra:
        payload["extra"] = extra
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def _read_object(uri: str) -> io.BytesIO:
    """The bytes of a file in an object store (``s3://...``: training writes there when its
    ``storage_path`` is a URI)."""
    import pyarrow as pa

    try:
        return io.BytesIO(read_bytes(uri))
    except (OSError, pa.ArrowException) as exc:
        raise CheckpointError(f"{uri}: weights file not found or unreadable ({exc})") from exc


def read_checkpoint(source: str | os.PathLike | dict) -> dict:
    """Load a checkpoint file or object-store URI (on CPU, tensors only) or pass a dict through."""
    if isinstance(source, dict):
        return source
    path = Path(source)
    if is_uri(source):
        path, data = str(source), _read_object(str(source))
    elif not path.is_file():
        raise CheckpointError(f"{path}: weights file not found; check the path, or pass models:/name@alias")
    else:
        data = path
    try:
        obj = torch.load(data, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt/foreign files
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint "
                              f"({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    return obj


def extract_state_dict(ckpt: dict, key: str | None = None) -> tuple[dict, str]:
    """(state dict, layout) from any accepted layout; ``key`` picks ``params``/``params_ema`` in
    BasicSR files."""
    if ckpt.get("format") == FORMAT:
        return ckpt["state_dict"], "srcore"
    if "params_ema" in ckpt or "params" in ckpt:
        pick = key or ("params_ema" if "params_ema" in ckpt else "params")
        if pick not in ckpt:
            raise CheckpointError(f"BasicSR checkpoint has no {pick!r}; it has {sorted(k for k in ckpt)}")
        return ckpt[pick], f"basicsr:{pick}"
    if isinstance(ckpt.get("state_dict"), dict):
        return ckpt["state_dict"], "state_dict"
    if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return ckpt, "plain"
    raise CheckpointError("unrecognised checkpoint layout: expected a state dict, a BasicSR dict "
                          "(params/params_ema) or an srcore checkpoint")


def _strip(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        for p in _STRIP_PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


def _mismatch_message(model: SRModel, sd: dict, label: str) -> str | None:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or shapes):
        return None
    count = sum(p.numel() for p in model.parameters())
    parts = [f"{label} does not fit {model.arch} x{model.scale} ({count} params)"]
    if shapes:
        hint = " (weights for another scale?)" if any(k.startswith(("upsample", "upsampler", "upsampling"))
                                                      for k in shapes) else ""
        parts.append(f"shape mismatches{hint}: " + "; ".join(shapes[:6])
                     + (" ..." if len(shapes) > 6 else ""))
    if missing:
        parts.append(f"missing keys ({len(missing)}): " + ", ".join(missing[:6])
                     + (" ..." if len(missing) > 6 else ""))
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): " + ", ".join(unexpected[:6])
                     + (" ..." if len(unexpected) > 6 else ""))
    return "\n  ".join(parts)


def load_weights(model: SRModel, source: str | os.PathLike | dict, name: str | None = None,
                 key: str | None = None, label: str | None = None) -> str:
    """Strictly load weights into ``model``; returns the layout that was read.

    Official layouts go through preset ``name``'s converter (default: the preset named like
    the architecture). Raises :class:`CheckpointError` naming missing/unexpected keys and
    shape mismatches.
    """
    label = label or (str(source) if not isinstance(source, dict) else "checkpoint")
    ckpt = read_checkpoint(source)
    sd, layout = extract_state_dict(ckpt, key)
    if layout == "srcore":
        if ckpt.get("arch") != model.arch:
            raise CheckpointError(f"{label}: weights are for {ckpt.get('arch')!r}, not {model.arch!r}")
        saved_scale = (ckpt.get("config") or {}).get("scale")
        if saved_scale is not None and saved_scale != model.scale:
            raise CheckpointError(f"{label}: weights are for x{saved_scale}, not x{model.scale}; "
                                  "use weights trained at the run's scale")
    else:
        sd = _strip(sd)
        p: Preset = preset(name or model.arch)
        if p.convert is not None:
            sd = p.convert(sd)
    problem = _mismatch_message(model, sd, label)
    if problem:
        raise CheckpointError(problem)
    model.load_state_dict(sd, strict=True)
    return layout


def load_model(source: str | os.PathLike | dict, name: str | None = None, scale: int | None = None,
               key: str | None = None, label: str | None = None, **overrides: Any) -> SRModel:
    """Build and load a model: our checkpoints carry their config; official files need ``name``/``scale``.
    ``label`` names the source in errors (default: its path)."""
    label = label or (str(source) if not isinstance(source, dict) else "checkpoint")
    ckpt = read_checkpoint(source)
    if ckpt.get("format") == FORMAT:
        saved = preset(ckpt["model"])
        if name is not None and preset(name).arch != saved.arch:
            raise CheckpointError(f"{label}: weights are for {ckpt['model']!r}, not {name!r}; pass "
                                  f"--model {ckpt['model']} or weights of a {name} model")
        cfg = saved.config_cls(**ckpt["config"])
        if scale is not None and cfg.scale != scale:
            raise CheckpointError(f"{label}: weights are for x{cfg.scale}, not x{scale}; pass "
                                  f"--scale {cfg.scale} or weights trained at x{scale}")
        model = saved.model_cls(cfg)
        load_weights(model, ckpt, label=label)
        return model
    if name is None:
        raise CheckpointError(f"{label}: an official checkpoint needs --model to say which "
                              "architecture it is")
    model = build(name, scale or 4, **overrides)
    load_weights(model, ckpt, name=name, key=key, label=label)
    return model
