"""Loading a model from wherever a user keeps it: one reader for every place, where models are made.

A *weights spec* is what ``srcore eval --weights`` accepts: an srcore checkpoint or run folder, an
official file (plain state dict, BasicSR ``params``/``params_ema``), an object-store URI
(``s3://...``), or a model in a registry (``models:/name@alias``, ``models:/name/version``).
``load_spec`` builds the model a spec names (``eval``, ``upscale``, ``export``, the served model);
``load_teacher`` the frozen teacher of a distillation; ``init_weights`` loads a spec strictly into
the model a run is about to train (``teacher.init`` / ``student.init``, ``--init``).

A ``scheme:/...`` spec other than a URI (``models:/``) is resolved to a checkpoint file by the
resolver a higher room provides under the ``srcore.weights_resolvers`` entry-point group (srcore's
MLflow registry provides ``models``): this room never imports the room that knows the registry, and
every process, a Ray worker included, finds the resolver the installed package declares.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

from srcore.errors import CheckpointError
from srcore.models.base import SRModel
from srcore.models.checkpoint import load_model, load_weights, read_checkpoint
from srcore.storage import is_uri

__all__ = ["RESOLVERS", "init_weights", "load_spec", "load_teacher", "read_weights"]

RESOLVERS = "srcore.weights_resolvers"  # entry points: name = the scheme, value = f(spec, offline) -> file


def _resolver(spec: str) -> Callable[[str, bool], str | os.PathLike] | None:
    """The resolver declared for ``spec``'s scheme (``models`` for ``models:/...``), if any."""
    scheme, sep, rest = spec.partition(":/")
    if not sep or rest.startswith("/") or not scheme.isidentifier():  # a URI (s3://) or a plain path
        return None
    for ep in entry_points(group=RESOLVERS, name=scheme):
        return ep.load()
    raise CheckpointError(f"{spec}: nothing resolves {scheme}:/ specs here (no {RESOLVERS} entry point "
                          f"named {scheme!r}); reinstall srcore (pip install -e .) or give a file or URI")


def read_weights(spec: str, role: str = "weights", offline: bool = False) -> dict:
    """The checkpoint dict behind ``spec`` (see the module docstring); ``role`` names it in errors;
    ``offline`` reads a registered model from the local cache only."""
    resolve = _resolver(spec)
    if resolve is not None:
        return read_checkpoint(resolve(spec, offline))
    if is_uri(spec):
        return read_checkpoint(spec)
    path = Path(spec)
    if path.is_dir():
        path = path / "model.pth"
    if not path.is_file() and role != "weights":  # plain weights: read_checkpoint's own message
        raise CheckpointError(f"{role} {spec}: not found; give a checkpoint file, a run folder (with "
                              "model.pth), an s3:// URI or models:/name@alias")
    return read_checkpoint(path)


def load_spec(spec: str, preset: str | None = None, scale: int | None = None, key: str | None = None,
              offline: bool = False, role: str = "weights") -> SRModel:
    """The model ``spec`` names, built from its checkpoint; ``preset``/``scale`` are checked against
    our checkpoints and name the architecture of official files; ``key`` picks BasicSR's
    ``params``/``params_ema``."""
    return load_model(read_weights(spec, role, offline), name=preset, scale=scale, key=key,
                      label=spec if role == "weights" else f"{role} {spec}")


def load_teacher(spec: str, scale: int, preset: str | None = None) -> SRModel:
    """The teacher ``spec`` names, at the student's ``scale`` (a checkpoint for another scale is
    refused by ``load_model``); ``preset`` says which architecture an official file holds."""
    return load_spec(spec, preset, scale, role="teacher")


def init_weights(model: SRModel, spec: str, preset: str) -> str:
    """Load ``spec`` strictly into ``model`` (preset ``preset``, as built for the run); returns the
    layout read. Missing or unexpected keys, shape mismatches, another architecture or another
    scale raise a ``CheckpointError`` that names them."""
    return load_weights(model, read_weights(spec, "init"), name=preset, label=f"init {spec}")
