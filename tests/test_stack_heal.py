"""``up`` heals a service whose process runs but no longer answers, and ``status`` tells that state
apart, without starting any real server: a stand-in service is a sleeping process whose health
check reads a marker file (present: it answers)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from srcore.stack import ServiceState, StackConfig, StackError, manager
from srcore.stack.process import record, spawn, stop_recorded
from srcore.stack.services import Postgres, PrefectWorker, Service

_SLEEP = [sys.executable, "-c", "import time; time.sleep(300)"]


class Sleeper(Service):
    """A process that answers while its marker file exists (a fresh start creates it)."""

    name = "sleeper"

    @property
    def marker(self):
        return self.cfg.path(f"{self.name}.answers")

    def start(self) -> None:
        spawn(_SLEEP, self.pid_file, self.log_file, dict(os.environ))
        self.marker.touch()

    def healthy(self) -> bool:
        return self.marker.exists()

    def ready(self) -> None:
        pass


class Unstoppable(Sleeper):
    name = "unstoppable"

    def stop(self) -> list[int]:
        raise PermissionError("operation not permitted")


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    """A stack of one stand-in service, with a one-second grace; its processes stopped afterwards."""
    monkeypatch.setattr(manager, "WAVES", ((Sleeper,),))
    config = StackConfig(root=tmp_path / "s", project_dir=tmp_path, answer_grace_s=1)
    yield config
    for name in ("sleeper", "unstoppable"):
        stop_recorded(config.path("run", f"{name}.pid"), grace_s=5)


def test_state_tells_not_answering_apart_from_not_running(cfg):
    svc = Sleeper(cfg)
    assert svc.state() is ServiceState.NOT_RUNNING
    svc.start()
    assert svc.state() is ServiceState.RUNNING
    svc.marker.unlink()
    assert svc.state() is ServiceState.NOT_ANSWERING
    [row] = manager.status(cfg)
    assert row.state is ServiceState.NOT_ANSWERING and not row.healthy and row.pids == svc.pids()


def test_up_restarts_a_silent_service_after_the_grace_saying_so(cfg, caplog):
    manager.up(cfg)
    svc = Sleeper(cfg)
    [old] = svc.pids()
    svc.marker.unlink()
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="srcore.stack.manager"):
        report = manager.up(cfg)
    assert time.monotonic() - t0 < 8
    line = f"sleeper: process {old} alive but not answering for 1 s; restarting it"
    assert report.restarted == {"sleeper": line} and report.started == report.already_running == []
    assert [r.getMessage() for r in caplog.records] == [line]
    [new] = svc.pids()
    assert new != old and svc.state() is ServiceState.RUNNING
    assert not _running(old)


def test_a_service_answering_within_the_grace_is_left_alone(cfg):
    manager.up(cfg)
    svc = Sleeper(cfg)
    pids = svc.pids()
    svc.marker.unlink()
    threading.Timer(0.5, svc.marker.touch).start()
    report = manager.up(cfg.model_copy(update={"answer_grace_s": 10}))
    assert report.already_running == ["sleeper"] and not report.restarted and svc.pids() == pids


def test_the_worker_gets_a_heartbeat_before_it_counts_as_silent(cfg):
    """The worker answers through its heartbeat (every 30 s): after the server was away, its pool
    reads not ready until the next one, which is no reason to restart it and kill its runs."""
    assert PrefectWorker(cfg).answer_grace_s() > 30 and Sleeper(cfg).answer_grace_s() == cfg.answer_grace_s


def test_a_silent_service_that_cannot_be_stopped_names_the_commands_to_run(cfg, monkeypatch):
    monkeypatch.setattr(manager, "WAVES", ((Unstoppable,),))
    manager.up(cfg)
    svc = Unstoppable(cfg)
    [pid] = svc.pids()
    svc.marker.unlink()
    with pytest.raises(StackError, match=rf"run `kill {pid}`, then `srcore stack up --dir {cfg.root}`"):
        manager.up(cfg)
    assert svc.pids() == [pid]  # left as it was


def test_postgres_is_stopped_by_its_fast_shutdown_signal(cfg):
    """SIGTERM is PostgreSQL's smart shutdown (it waits for every client); SIGINT its fast one."""
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(300)")
    ignores_term = [sys.executable, "-c", code]
    proc = subprocess.Popen(ignores_term, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    pid_file = cfg.path("run", "pg.pid")
    record(pid_file, [proc.pid])
    t0 = time.monotonic()
    assert stop_recorded(pid_file, grace_s=20, sig=signal.SIGINT) == [proc.pid]
    assert time.monotonic() - t0 < 10 and not _running(proc.pid)
    assert Postgres(cfg).stop_command([1234]) == "kill -INT 1234"


def test_status_table_shows_each_state_and_exits_1_unless_all_run(cfg, monkeypatch):
    from typer.testing import CliRunner

    import srcore.stack
    from srcore.cli import app

    rows = [manager.ServiceStatus(name, "1", "", pids, state) for name, pids, state in (
        ("postgres", [11], ServiceState.NOT_ANSWERING), ("mlflow", [], ServiceState.NOT_RUNNING),
        ("ray", [12], ServiceState.RUNNING))]
    monkeypatch.setattr(srcore.stack, "status", lambda _cfg: rows)
    res = CliRunner().invoke(app, ["stack", "status", "--dir", str(cfg.root)])
    assert res.exit_code == 1
    table = {line.split()[1]: line for line in res.stdout.splitlines() if line.count("│") > 2}
    assert "not answering" in table["postgres"] and "not running" in table["mlflow"]
    assert "running" in table["ray"] and "not" not in table["ray"]


def _running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
