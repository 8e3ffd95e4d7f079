"""DVC operations the pipeline needs: materialise the raw data, reproduce the patch stage, and find
the pinned patches in the DVC remote (where training reads them on a cluster with no shared disk)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from srcore.errors import DataError

log = logging.getLogger(__name__)

__all__ = ["dvc", "manifest_hash", "pushed_patches", "reproduce_patches"]


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


def _locked_md5(repo: Path, out: str) -> str:
    """The directory md5 ``dvc.lock`` records for the stage output ``out``."""
    import yaml

    lock = repo / "dvc.lock"
    try:
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    except FileNotFoundError:
        raise DataError(f"{lock} not found: `dvc repro prepare` records the patches' version there; run it "
                        "(and `dvc push`) first") from None
    for stage in stages.values():
        for o in stage.get("outs", []):
            if Path(o.get("path", "")) == Path(out) and str(o.get("md5", "")).endswith(".dir"):
                return o["md5"]
    raise DataError(f"{lock} pins no folder {out}; run `dvc repro prepare` and `dvc push`, or set "
                    "loader.source: prepared")


def pushed_patches(out: str, repo: str | os.PathLike = "."):
    """The prepared patches at ``out`` (a DVC stage output) as ``dvc.lock`` pins them, read from the
    DVC remote: each file is the remote's content-addressed object, listed by the pinned
    directory object. Nothing local is read but ``dvc.lock`` and DVC's config."""
    import dvc.api
    from dvc.exceptions import DvcException

    from srcore.data.patch_source import PatchSource
    from srcore.storage import join, read_bytes

    root = Path(repo)
    if Path(out).is_absolute():
        out = os.path.relpath(out, root.resolve())
    pin = _locked_md5(root, out)
    try:
        url = dvc.api.get_url(out, repo=str(root))
    except DvcException as exc:
        raise DataError(f"{out}: no DVC remote to read the pinned patches from ({str(exc).strip()[:200]}); "
                        "add one (`dvc remote add -d NAME s3://...`) and `dvc push`") from None
    try:
        listing = json.loads(read_bytes(url))
    except FileNotFoundError:
        raise DataError(f"{url}: the patches dvc.lock pins ({out}, {pin}) are not in the DVC remote; "
                        "run `dvc push`") from None
    objects = url.rsplit("/", 2)[0]  # the remote's files/md5 folder: objects are <md5[:2]>/<md5[2:]>
    files = {e["relpath"]: join(objects, f"{e['md5'][:2]}/{e['md5'][2:]}") for e in listing}
    return PatchSource(f"{out} @ {url}", objects, files, url, pin)
