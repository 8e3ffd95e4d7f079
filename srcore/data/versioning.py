"""DVC operations the pipeline needs: materialise the raw data, reproduce (and push) the patch stage,
and the manifest hash that versions the patches."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path

from srcore.errors import DataError

log = logging.getLogger(__name__)

__all__ = ["dvc", "manifest_hash", "reproduce_patches"]


def dvc(*args: str, cwd: str | os.PathLike = ".") -> str:
    """Run a DVC command in ``cwd``; a failure raises with DVC's own message."""
    # Stage commands call `srcore`: make this interpreter's scripts visible even without an activated venv.
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    res = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True,
                         text=True)
    if res.returncode != 0:
        raise DataError(f"dvc {' '.join(args)} failed: {(res.stderr or res.stdout).strip()[-2000:]}")
    return res.stdout


def reproduce_patches(cwd: str | os.PathLike = ".", pull: bool = True, push: bool = False) -> str:
    """Bring the raw data (``dvc pull`` when a remote has it, else the embedded sample for the
    default data.dvc), then ``dvc repro prepare`` and, with ``push``, ``dvc push`` of the patches
    (where training reads them with ``loader.source: dvc``); returns the patch manifest hash."""
    root = Path(cwd)
    raw = root / "data" / "raw" / "sample"
    if pull:
        try:
            dvc("pull", "data.dvc", cwd=root)
        except DataError as exc:
            log.info("dvc pull did not bring the raw data (%s)", str(exc).splitlines()[0][:200])
    if not raw.exists():
        from srcore.data.sample import write_sample

        write_sample(raw)
        dvc("commit", "-f", "data.dvc", cwd=root)
    dvc("repro", "prepare", cwd=root)
    if push:
        dvc("push", "prepare", cwd=root)
    return manifest_hash(root / "data" / "patches")


def manifest_hash(patches) -> str:
    """sha256 of the patch manifest: the version of the prepared shards. ``patches``: a folder, an
    ``s3://`` prefix or a ``PatchSource``."""
    from srcore.data.patch_source import as_source
    from srcore.data.shards import MANIFEST

    source = as_source(patches)
    data = source.manifest_bytes()
    if data is None:
        raise DataError(f"{source.shown}: no {MANIFEST}; run the prepare stage first")
    return hashlib.sha256(data).hexdigest()
