"""Loading a frozen teacher from any place a user may keep one."""

from __future__ import annotations

import tempfile
from pathlib import Path

from srcore.errors import CheckpointError
from srcore.io import is_uri
from srcore.models import load_model
from srcore.models.base import SRModel
from srcore.train.storage import fetch_to_local

__all__ = ["load_teacher"]


def load_teacher(spec: str, scale: int, preset: str | None = None) -> SRModel:
    """A teacher from a registered MLflow model (``models:/name@alias``), an srcore checkpoint or
    run folder, an object-store URI, or official weights (then ``preset`` names the architecture)."""
    if spec.startswith("models:/"):
        from srcore.tracking.registry import load_registered_model

        model = load_registered_model(spec)
    elif is_uri(spec):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = fetch_to_local(spec, tmp)
            except OSError as exc:
                raise CheckpointError(f"{spec}: cannot fetch teacher weights ({exc})") from exc
            model = load_model(local, name=preset, scale=scale)
    else:
        path = Path(spec)
        if path.is_dir():
            path = path / "model.pth"
        if not path.is_file():
            raise CheckpointError(f"teacher {spec}: not found; train one first (`srcore train`) "
                                  "or point student.teacher at a checkpoint, run folder or "
                                  "models:/ URI")
        model = load_model(path, name=preset, scale=scale)
    if model.scale != scale:
        raise CheckpointError(f"teacher {spec} is x{model.scale} but the student is x{scale}; "
                              "use matching scales")
    return model
