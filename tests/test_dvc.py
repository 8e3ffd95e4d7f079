"""DVC round trips: the pinned sample hash, the prepare stage, a local remote and an S3 remote
served by moto on loopback."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, free_port


def _run(cwd: Path, *args: str, env: dict | None = None) -> str:
    path = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    full_env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": path, **(env or {})}
    res = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"{' '.join(args)} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout + res.stderr


def dvc(cwd: Path, *args: str, env: dict | None = None) -> str:
    return _run(cwd, sys.executable, "-m", "dvc", *args, env=env)


def srcore(cwd: Path, *args: str) -> str:
    return _run(cwd, sys.executable, "-m", "srcore.cli", *args)


def prepare_code_deps() -> list[str]:
    """The code paths dvc.yaml's prepare stage depends on."""
    deps = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["prepare"]["deps"]
    return [d for d in deps if d.startswith("srcore")]


# Imported by the prepare path but unable to change a shard byte: error classes, the atomic
# rename helper, where bytes are read and written (the storage layer) and package markers.
_NO_BYTES = {"srcore.errors", "srcore.io", "srcore.storage", "srcore.kernels"}


def test_prepare_stage_lists_every_module_it_runs():
    code = ("import sys, numpy as np, srcore.data.prepare; from srcore.data.imresize import imresize_np;"
            "imresize_np(np.zeros((8, 8, 3), np.uint8), 0.5);"
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('srcore'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    deps = prepare_code_deps()
    missing = []
    for module in set(out.stdout.split()) - _NO_BYTES:
        path = module.replace(".", "/")
        path = path + "/__init__.py" if (REPO / path).is_dir() else path + ".py"
        if not any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps):
            missing.append(path)
    assert not missing, f"dvc.yaml's prepare stage does not depend on {sorted(missing)}"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A throwaway git+DVC repo with the project's data.dvc, dvc.yaml and params.yaml."""
    root = tmp_path / "proj"
    root.mkdir()
    for name in ("data.dvc", "dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    for dep in prepare_code_deps():
        src, dst = REPO / dep, root / dep
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst)  # with the compiled kernels' cache; .dvcignore keeps it out of the hash
        else:
            shutil.copy(src, dst)
    _run(root, "git", "init", "-q")
    dvc(root, "init", "-q")
    dvc(root, "remote", "add", "-d", "local", str(tmp_path / "remote"))
    params = root / "params.yaml"
    # in this process: the worker count is a run-only setting (no part of the stage's hash), and
    # test_data covers the process pool
    params.write_text(params.read_text().replace("workers: 0 ", "workers: 1 "))
    srcore(root, "data", "sample", "--out", "data/raw/sample")
    return root


@pytest.mark.slow
def test_sample_matches_pinned_hash_and_stage_round_trips(project: Path, tmp_path: Path):
    # data.dvc pins the sample's DVC hash: committing a fresh `srcore data sample` keeps it.
    pinned = yaml.safe_load((REPO / "data.dvc").read_text())["outs"][0]["md5"]
    dvc(project, "commit", "-f", "data.dvc")
    assert yaml.safe_load((project / "data.dvc").read_text())["outs"][0]["md5"] == pinned
    assert "up to date" in dvc(project, "status", "data.dvc")
    dvc(project, "repro", "prepare")
    assert "up to date" in dvc(project, "status")
    assert list((project / "data" / "patches" / "x4").glob("*.parquet"))
    dvc(project, "push")
    patches = project / "data" / "patches"
    before = {p.relative_to(project).as_posix(): p.read_bytes() for p in patches.rglob("*")
              if p.is_file() and ".journal" not in p.parts}  # run state that DVC ignores
    shutil.rmtree(project / "data" / "patches")
    shutil.rmtree(project / ".dvc" / "cache")
    dvc(project, "pull")
    after = {p.relative_to(project).as_posix(): p.read_bytes() for p in patches.rglob("*")
             if p.is_file()}
    assert before == after
    # a changed parameter makes the stage stale
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("step: 120", "step: 60"))
    assert "modified" in dvc(project, "status")
    params.write_text(params.read_text().replace("step: 60", "step: 120"))
    assert "up to date" in dvc(project, "status", "prepare")
    # so does a change to the resize kernel, which shapes every LR byte
    kernel = project / "srcore" / "kernels" / "resize_cpu.py"
    kernel.write_text(kernel.read_text() + "\n# edited\n")
    assert "modified" in dvc(project, "status", "prepare")


@pytest.mark.slow
def test_s3_remote_on_loopback(project: Path):
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
        s3.create_bucket(Bucket="srcore-data")
        dvc(project, "commit", "-f", "data.dvc")
        dvc(project, "repro", "prepare")
        dvc(project, "remote", "add", "s3", "s3://srcore-data/dvc")
        # endpoint and keys go to .dvc/config.local (never committed)
        dvc(project, "remote", "modify", "--local", "s3", "endpointurl", endpoint)
        dvc(project, "remote", "modify", "--local", "s3", "access_key_id", "testing")
        dvc(project, "remote", "modify", "--local", "s3", "secret_access_key", "testing")
        assert "testing" not in (project / ".dvc" / "config").read_text()
        dvc(project, "push", "-r", "s3", env=creds)
        listed = s3.list_objects_v2(Bucket="srcore-data", Prefix="dvc/")
        assert listed["KeyCount"] > 0
        shutil.rmtree(project / "data" / "patches")
        shutil.rmtree(project / ".dvc" / "cache")
        dvc(project, "pull", "-r", "s3", env=creds)
        assert list((project / "data" / "patches" / "x2").glob("*.parquet"))
        # shards straight through boto3 as well (what training workers do with s3:// data)
        shard = sorted((project / "data" / "patches" / "x4").glob("*.parquet"))[0]
        s3.upload_file(str(shard), "srcore-data", "shards/x4/" + shard.name)
        s3.download_file("srcore-data", "shards/x4/" + shard.name, str(project / "copy.parquet"))
        assert (project / "copy.parquet").read_bytes() == shard.read_bytes()
    finally:
        server.stop()
