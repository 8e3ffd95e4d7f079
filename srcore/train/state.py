"""Training checkpoints: everything needed to continue a run at the exact same step, and nothing
that can run code when read.

A checkpoint directory holds ``state.pt`` (tensors and plain containers only: model, EMA,
optimiser, scheduler and torch RNG state), ``state.json`` (step, epoch, position in the epoch,
history, the stage config, Python/NumPy RNG state) and ``model.pth`` (the exportable model in
srcore's own format). ``state.pt`` is read with ``torch.load(weights_only=True)``: a file that
asks the unpickler for anything but tensors and plain data is refused, so a planted checkpoint
(a shared bucket, a copied run folder) cannot run its payload. Checkpoints written before the
split (one ``state.pt`` holding everything, NumPy arrays included) still load, with NumPy's
array types allow-listed and nothing else. When the newest checkpoint of a run cannot be read,
the previous ones are tried in turn.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import torch

from srcore.errors import CheckpointError
from srcore.io import atomic_output, atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["load_with_fallback", "read_state", "restore_rng", "rng_state", "write_state"]

STATE_FILE = "state.pt"
META_FILE = "state.json"

# NumPy's array reconstruction, allowed only for checkpoints written before state.json existed
# (they held ``np.random.get_state()``); it builds arrays of plain dtypes and calls nothing else.
_LEGACY_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def rng_state() -> dict[str, Any]:
    """Every random stream a rank draws from, as JSON-ready data plus one tensor (torch's)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss],
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "torch": torch.get_rng_state()}


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])


def write_state(folder: str | os.PathLike, tensors: dict[str, Any], meta: dict[str, Any]) -> Path:
    """``tensors`` (state dicts: tensors, numbers, strings, lists, dicts) -> state.pt;
    ``meta`` (JSON-serialisable) -> state.json. Each file is written atomically."""
    folder = Path(folder)
    with atomic_output(folder / STATE_FILE) as tmp:
        torch.save(tensors, tmp)
    atomic_write_text(folder / META_FILE, json.dumps(meta, indent=1, default=str))
    return folder / STATE_FILE


def _load_tensors(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # maybe the single-file layout; still weights-only, NumPy arrays allowed
        with torch.serialization.safe_globals(_LEGACY_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)


def read_state(folder: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint in ``folder`` as one dict (state.pt and state.json merged); a file that is
    missing, truncated or asks to run code raises ``CheckpointError``."""
    path = Path(folder) / STATE_FILE
    try:
        state = _load_tensors(path)
    except Exception as exc:  # corrupt, truncated, missing, or refused by the weights-only unpickler
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if "weights only" in str(exc).lower() or "unsupported global" in str(exc).lower():
            reason = "it asks to run code or load objects other than tensors; refused"
        raise CheckpointError(f"{path}: unreadable training checkpoint "
                              f"({type(exc).__name__}: {reason})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a training checkpoint (holds a {type(state).__name__})")
    meta = Path(folder) / META_FILE
    if meta.is_file():
        try:
            state.update(json.loads(meta.read_text()))
        except ValueError as exc:
            raise CheckpointError(f"{meta}: unreadable training checkpoint metadata ({exc})") from exc
    elif "rng" in state:  # the single-file layout: RNG held as Python/NumPy objects
        state["rng"] = [_legacy_rng(r) for r in state["rng"]]
    for entry, generator in zip(state.get("rng", []), state.pop("torch_rng", []), strict=False):
        entry["torch"] = generator
    return state


def _legacy_rng(state: dict[str, Any]) -> dict[str, Any]:
    version, internal, gauss = state["python"]
    name, keys, pos, has_gauss, cached = state["numpy"]
    return {"python": [version, list(internal), gauss],
            "numpy": [name, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)],
            "torch": state["torch"]}


def _siblings(checkpoint) -> list[str]:
    """Checkpoint folders of the same run, newest first (Ray names them by timestamp)."""
    fs: pafs.FileSystem = checkpoint.filesystem
    parent = os.path.dirname(checkpoint.path.rstrip("/"))
    infos = fs.get_file_info(pafs.FileSelector(parent, allow_not_found=True))
    names = [i.path for i in infos
             if i.type == pafs.FileType.Directory and os.path.basename(i.path).startswith("checkpoint_")]
    return sorted(names, reverse=True)


def load_with_fallback(checkpoint) -> dict[str, Any] | None:
    """State from a Ray checkpoint; if it is unreadable, the newest readable older one."""
    from ray.train import Checkpoint

    if checkpoint is None:
        return None
    newest = checkpoint.path.rstrip("/")
    candidates = [checkpoint.path] + [p for p in _siblings(checkpoint) if p.rstrip("/") != newest]
    for i, path in enumerate(candidates):
        try:
            with Checkpoint(path, filesystem=checkpoint.filesystem).as_directory() as folder:
                state = read_state(folder)
            if i:
                log.warning("latest checkpoint %s is unreadable; resumed from older %s (step %s)",
                            checkpoint.path, path, state.get("step"))
            return state
        except CheckpointError as exc:
            log.warning("%s", exc)
    log.warning("no readable checkpoint in %s; starting from scratch", os.path.dirname(checkpoint.path))
    return None
