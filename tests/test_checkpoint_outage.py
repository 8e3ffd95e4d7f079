"""Checkpoints ride out an object-store outage: a tiny stage trains on the session's two-node Ray with
its run folder in S3 (a moto server on loopback), and the store is taken away mid-run and brought back
on its port: a forwarder in front of it refuses connections and cuts the open ones meanwhile, while
the server keeps its buckets, as a real store does."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
from pathlib import Path

import boto3
import pytest
from conftest import S3_TEST_ENV, free_port
from test_train import params, prepared

from srcore.errors import CheckpointUploadFailed
from srcore.train.state import read_state

pytestmark = pytest.mark.slow

BUCKET = "ckpt"
# Steps of 100-300 ms (8 patches of 24x24 a batch), checkpoints every 20 steps: the first one comes
# seconds after the store is stopped at step 1 or 2, whatever the delay of the progress events.
# A prefix of its own each session: a run's local checkpoints are kept per run location on the nodes.
PREFIX = f"runs-{uuid.uuid4().hex[:8]}"
RUN = {"teacher.steps": 60, "teacher.val_every": 20, "teacher.log_every": 1, "loader.batch_size": 8,
       "loader.patch_size": 24, "teacher.ray.storage_path": f"s3://{BUCKET}/{PREFIX}"}


class Gate:
    """A TCP forwarder on loopback in front of the S3 server. Closing it refuses new connections and
    cuts the open ones, as a store that went away does; opening it again serves on the same port."""

    def __init__(self, target: int) -> None:
        self.target, self.port = target, free_port()
        self.listener: socket.socket | None = None
        self.conns: set[socket.socket] = set()
        self.lock = threading.Lock()

    def open(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def close(self) -> None:
        with self.lock:
            self.listener.close()
            for c in self.conns:
                c.close()
            self.conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class S3Outage:
    """A moto server behind a :class:`Gate`: ``stop``/``start`` take the store away and bring it back."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
        self.server.start()
        self.gate = Gate(self.server.get_host_and_port()[1])
        self.gate.open()
        self.endpoint = f"http://127.0.0.1:{self.gate.port}"
        self.down_since: float | None = None
        self.up_again: float | None = None

    def stop(self) -> None:
        self.gate.close()
        self.down_since = time.monotonic()

    def start(self) -> None:
        self.gate.open()
        self.up_again = time.monotonic()

    def outage(self, seconds: float) -> None:
        """Stop now, start again ``seconds`` later (in the background)."""
        self.stop()
        timer = threading.Timer(seconds, self.start)
        timer.daemon = True
        timer.start()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return prepared(tmp_path_factory.mktemp("outage"))


@pytest.fixture
def store(monkeypatch):
    for key, value in S3_TEST_ENV.items():
        monkeypatch.setenv(key, value)
    s3 = S3Outage()
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)  # travels with the workers, not the credentials
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    yield s3
    s3.gate.close()
    s3.server.stop()


def _keys(prefix: str) -> list[str]:
    listed = boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for o in listed.get("Contents", []))


def _on_step(step: int, action, seen: list[tuple[float, int]]):
    done = []

    def on_progress(event: dict) -> None:
        seen.append((time.monotonic(), int(event.get("step", 0))))
        if not done and event.get("step", 0) >= step:
            done.append(True)
            action()

    return on_progress


def test_a_store_outage_during_checkpoint_uploads_is_ridden_out(workdir, ray_local, store, caplog):
    """The store goes away for 20 s before the step-20 checkpoint: training goes on meanwhile,
    one console line says uploads are retried and one that they got through, the run completes with
    every checkpoint and the model in the store."""
    from srcore.train.runner import run_stage

    p = params(workdir, **{**RUN, "teacher.name": "outage", "teacher.ray.upload_retry_s": 120})
    seen: list[tuple[float, int]] = []
    with caplog.at_level(logging.WARNING, logger="srcore.train.runner"):
        result = run_stage(p, "teacher", on_progress=_on_step(2, lambda: store.outage(20), seen))
    assert store.up_again is not None
    during = [step for t, step in seen if store.down_since < t < store.up_again]
    assert during and max(during) >= 20, seen  # steps kept coming while the store was down
    warnings = [r.getMessage() for r in caplog.records if "checkpoint_" in r.getMessage()]
    assert any("could not be uploaded" in w and "retried" in w for w in warnings), warnings
    assert any("uploaded to" in w and "after" in w for w in warnings), warnings
    assert result.metrics["step"] == 60 and result.model_path == f"s3://{BUCKET}/{PREFIX}/outage/model.pth"
    keys = _keys(f"{PREFIX}/outage/")
    assert f"{PREFIX}/outage/model.pth" in keys, keys
    assert f"{PREFIX}/outage/checkpoint_00000060/state.json" in keys, keys


def test_an_outage_longer_than_the_retry_window_stops_the_run_and_the_rerun_resumes_locally(
        workdir, ray_local, store):
    """The store stays away past ``upload_retry_s``: the run stops with one line naming the local
    checkpoint and Ray's local log; with the store back, the same command resumes from that local
    checkpoint (newer than anything in the store) and finishes."""
    from srcore.train.runner import run_stage

    p = params(workdir, **{**RUN, "teacher.name": "gone", "teacher.ray.upload_retry_s": 3})
    with pytest.raises(CheckpointUploadFailed) as failed:
        run_stage(p, "teacher", on_progress=_on_step(1, store.stop, []))
    message = str(failed.value)
    assert "\n" not in message and "kept locally at" in message and "Ray's log" in message, message
    local = Path(message.split("kept locally at ")[1].split(";")[0].split(":", 1)[1])
    saved = read_state(local)
    assert saved["step"] >= 20
    ray_log = Path(message.split("Ray's log, until the store has it: ")[1])
    assert ray_log.is_file()  # Ray's lines stay on this machine while the store is away

    store.start()
    result = run_stage(p, "teacher")
    assert result.metrics["step"] == 60
    final = [k for k in _keys(f"{PREFIX}/gone/") if k.endswith("state.json")][-1]
    body = boto3.client("s3").get_object(Bucket=BUCKET, Key=final)["Body"].read()
    assert json.loads(body)["step"] == 60
    # it went on from the local checkpoint, not from scratch (the store held none when it stopped); a
    # local checkpoint of the last step is uploaded as it is
    expected = saved["step"] if saved["step"] < 60 else saved["resumed_from"]
    assert json.loads(body)["resumed_from"] == expected
    assert not local.exists()  # the run is complete in the store: its local copies are gone

