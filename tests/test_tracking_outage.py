"""Training rides out a tracking-server outage, quietly.

A real MLflow server (SQLite store) is killed with SIGKILL, its whole process group, while a stage
run is fed points, and restarted on the same port with the same store. Feeding never waits on it;
the outage costs one WARNING when it starts and one when the server answers again, and nothing
else (no urllib3 retries, no system-metrics failures); every point reaches the run, in order, at
its step. A full buffer drops the oldest points and says how many; a stage that ends while the
server is away ends within a bounded time, with one line saying how many points were not sent.
MLflow's own HTTP settings are left at their defaults: the outage is what it is in production.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from srcore.config import Params
from srcore.servers import free_port, start_server, stop_server
from srcore.tracking.buffer import SENDER_THREAD, quiet_thread
from srcore.tracking.live import MONITOR_THREAD, StageRun, stage_run

pytestmark = pytest.mark.slow  # a real MLflow server, killed and started again

PUT_BOUND_S = 0.1  # what one progress callback may take, server or no server
OUTAGE_S = 10.0


@dataclass
class TrackingServer:
    """An MLflow server that can be killed and started again on the same port and store."""

    root: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port",
                str(self.port), "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination", str(self.root / "artifacts"), "--workers", "1"]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = start_server(argv, self.uri + "/health", "the outage test's MLflow server",
                                 log_file=self.root / "server.log", env=env, timeout=120)

    def kill(self) -> None:
        """As a crash does: no chance to answer or close connections (uvicorn and its workers)."""
        assert self.proc is not None
        os.killpg(os.getpgid(self.proc.pid), signal.SIGKILL)
        self.proc.wait()
        self.proc = None


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    server = TrackingServer(tmp_path_factory.mktemp("mlflow-outage"))
    server.start()
    yield server
    if server.proc is not None:
        stop_server(server.proc)


@pytest.fixture
def server(tracking_server, tmp_path, monkeypatch):
    """The module's server, up, as this test's tracking URI; the test runs in its own folder."""
    if tracking_server.proc is None:
        tracking_server.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server.uri)
    monkeypatch.chdir(tmp_path)
    return tracking_server


class Feeder:
    """The driver's progress thread: one rank-0 log event (four metrics) every ``every`` seconds,
    each callback timed."""

    def __init__(self, run: StageRun, every: float = 0.05) -> None:
        self.run, self.every, self.steps, self.slowest = run, every, 0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._feed, name="srcore-progress", daemon=True)

    def _feed(self) -> None:
        while not self._stop.is_set():
            self.feed_one()
            time.sleep(self.every)

    def feed_one(self) -> None:
        step = self.steps + 1
        event = {"kind": "log", "step": step, "steps": 10**6, "loss_rec": 1.0 / step, "lr": 1e-3,
                 "samples_per_s": 100.0 + step, "memory_peak_mb": 50.0}
        start = time.monotonic()
        self.run.on_event(event)
        self.slowest = max(self.slowest, time.monotonic() - start)
        self.steps = step

    def __enter__(self) -> Feeder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _wait_for(check, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} within {timeout:g} s"
        time.sleep(0.1)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow import MlflowClient

    return [(m.step, m.value) for m in MlflowClient(uri, uri).get_metric_history(run_id, key)]


def test_an_outage_costs_two_lines_and_no_point(server, caplog, capfd, monkeypatch):
    # the system-metrics monitor asks the server every second, so it meets the outage too
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    caplog.set_level(logging.WARNING)
    with stage_run(Params(), "teacher", name="outage") as run, Feeder(run) as feeder:
        _wait_for(lambda: feeder.steps >= 20, "20 points fed", 30)
        server.kill()
        killed_at = feeder.steps
        time.sleep(OUTAGE_S)
        assert feeder.steps > killed_at + OUTAGE_S / feeder.every / 3, "progress stopped with the server"
        server.start()
        _wait_for(lambda: run.buffer.reachable, "the buffer sees the server again", 60)
    assert feeder.slowest < PUT_BOUND_S, f"a progress callback waited {feeder.slowest:.2f} s"

    lines = _warnings(caplog)
    down = [m for m in lines if "is unreachable" in m]
    back = [m for m in lines if "is back:" in m]
    assert len(down) == 1 and len(back) == 1 and len(lines) == 2, lines
    assert server.uri in down[0] and "training goes on" in down[0]
    assert server.uri in back[0] and "held points sent" in back[0] and "dropped" not in back[0]
    retries = [r for r in caplog.records if r.name.startswith("urllib3")]
    assert not retries, [r.getMessage() for r in retries]
    err = capfd.readouterr().err
    assert "Retrying" not in err and "Failed to" not in err, err[-3000:]

    losses = _history(server.uri, run.run_id, "train_loss_rec")
    assert losses == [(s, 1.0 / s) for s in range(1, feeder.steps + 1)]  # every point, in order
    speeds = _history(server.uri, run.run_id, "train_samples_per_s")
    assert speeds == [(s, 100.0 + s) for s in range(1, feeder.steps + 1)]
    assert run.buffer.sent == run.points == 4 * feeder.steps and run.buffer.dropped == 0


def test_a_full_buffer_drops_the_oldest_and_says_how_many(server, caplog):
    from mlflow import MlflowClient

    caplog.set_level(logging.WARNING)
    client = MlflowClient(server.uri, server.uri)
    run_id = client.create_run(client.get_experiment_by_name("Default").experiment_id).info.run_id
    run = StageRun.start(client, run_id, server.uri, server.uri, capacity=20)  # five events' points
    server.kill()
    feeder = Feeder(run)
    for _ in range(50):
        feeder.feed_one()
    assert feeder.slowest < PUT_BOUND_S
    _wait_for(lambda: not run.buffer.reachable, "the buffer sees the outage", 15)
    server.start()
    _wait_for(lambda: run.buffer.reachable, "the buffer sees the server again", 60)
    assert run.close(10) == (0, 0)  # all sent, the drops reported already

    back = [m for m in _warnings(caplog) if "is back:" in m]
    assert len(back) == 1 and "20 held points sent, 180 older points dropped" in back[0], back
    assert _history(server.uri, run_id, "train_loss_rec") == [(s, 1.0 / s) for s in range(46, 51)]


def test_a_stage_ending_while_the_server_is_away_ends_within_a_bound(server, caplog, monkeypatch):
    import mlflow

    monkeypatch.setenv("SRCORE_TRACKING_TIMEOUT", "2")  # what the held points may wait at the end
    caplog.set_level(logging.WARNING)
    with stage_run(Params(), "teacher", name="ends-away") as run:
        feeder = Feeder(run)
        for _ in range(5):
            feeder.feed_one()
        _wait_for(lambda: run.buffer.pending == 0, "the first points sent", 15)
        server.kill()
        for _ in range(5):
            feeder.feed_one()
        run.end_tags["model_path"] = "model.pth"
        ending = time.monotonic()
    took = time.monotonic() - ending
    assert took < 2 + 5, f"the end of the stage took {took:.1f} s"
    assert mlflow.active_run() is None

    lines = _warnings(caplog)
    assert len(lines) == 2 and "is unreachable" in lines[0], lines  # when it went; what it did not get
    assert lines[1].startswith(f"MLflow run {run.run_id} at {server.uri}")
    lacks = "lacks 20 points, its tags model_path, its status FINISHED ([Errno 111] Connection refused)"
    assert lacks in lines[1], lines[1]
    assert lines[1].endswith("the stage's result is kept")


def test_retry_warnings_stay_off_for_the_tracking_threads_only(caplog):
    caplog.set_level(logging.WARNING)
    quiet_thread(SENDER_THREAD)
    quiet_thread(MONITOR_THREAD)
    pool = logging.getLogger("urllib3.connectionpool")

    def retrying() -> None:
        pool.warning("Retrying after connection broken, in %s", threading.current_thread().name)

    for name in (SENDER_THREAD, MONITOR_THREAD, "srcore-progress"):
        thread = threading.Thread(target=retrying, name=name)
        thread.start()
        thread.join()
    retrying()
    assert [r.getMessage().rsplit(" ", 1)[-1] for r in caplog.records] == ["srcore-progress", "MainThread"]
