"""Training checkpoints: everything needed to continue a run at the exact same step.

A checkpoint directory holds ``state.pt`` (model, EMA, optimiser, scheduler, step, epoch, RNG
states, the stage config) and ``model.pth`` (the exportable model in srcore's own format). When
the newest checkpoint of a run cannot be read, the previous ones are tried in turn.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import torch

from srcore.io import atomic_output
from srcore.errors import CheckpointError

log = logging.getLogger(__name__)

__all__ = ["rng_state", "restore_rng", "write_state", "read_state", "load_with_fallback"]

STATE_FILE = "state.pt"


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def write_state(folder: str | os.PathLike, payload: dict[str, Any]) -> Path:
    path = Path(folder) / STATE_FILE
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_state(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / STATE_FILE
    try:
        # Our own files: full unpickling is needed for optimiser/RNG state objects.
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # corrupt, truncated or missing
        raise CheckpointError(f"{path}: unreadable training checkpoint ({type(exc).__name__}: {exc})") from exc


def _siblings(checkpoint) -> list[str]:
    """Checkpoint folders of the same run, newest first (Ray names them by timestamp)."""
    fs: pafs.FileSystem = checkpoint.filesystem
    parent = os.path.dirname(checkpoint.path.rstrip("/"))
    infos = fs.get_file_info(pafs.FileSelector(parent, allow_not_found=True))
    names = [i.path for i in infos if i.type == pafs.FileType.Directory and os.path.basename(i.path).startswith("checkpoint_")]
    return sorted(names, reverse=True)


def load_with_fallback(checkpoint) -> dict[str, Any] | None:
    """State from a Ray checkpoint; if it is unreadable, the newest readable older one."""
    from ray.train import Checkpoint

    if checkpoint is None:
        return None
    candidates = [checkpoint.path] + [p for p in _siblings(checkpoint) if p.rstrip("/") != checkpoint.path.rstrip("/")]
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
