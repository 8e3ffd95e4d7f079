"""Loading registered models: a sick tracking server costs a bounded time and one error line,
loading creates nothing on the server or on disk, and ``--offline`` reuses the cached version."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from srcore.cli import app
from srcore.errors import CheckpointError, ConfigError
from srcore.models import build, save_model
from srcore.tracking.registry import load_registered_model

NAME = "srcore-dvmsr-x4"


def _serve(behaviour: str):
    """A loopback HTTP server whose /health answers 200 and every other path either returns 503
    (``"503"``) or never answers in time (``"hang"``)."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            if self.path.rstrip("/").endswith("/health"):
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"OK")
                return
            if behaviour == "hang":
                time.sleep(20)
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = _answer

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(params=["503", "hang"])
def sick_server(request, monkeypatch):
    server = _serve(request.param)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("SRCORE_TRACKING_TIMEOUT", "4")
    yield request.param
    server.shutdown()


def test_sick_server_fails_within_the_bound_with_one_line(sick_server, tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(src)
    result = CliRunner().invoke(app, ["upscale", str(src), str(tmp_path / "out.png"), "--model", "dvmsr",
                                      "--weights", f"models:/{NAME}@champion", "--device", "cpu"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert text.startswith("error:") and text.count("error:") == 1 and "models:/" in text
    assert ("within 4 s" in text) if sick_server == "hang" else ("503" in text)
    assert not (tmp_path / "out.png").exists()


def test_loading_without_a_tracking_uri_creates_no_local_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no tracking store"):
        load_registered_model(f"models:/{NAME}@champion")
    assert list(tmp_path.iterdir()) == []


def _register(store: Path, source: Path) -> str:
    """Register ``source/artifacts/model.pth`` as version 1 with alias champion, in a SQLite store."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{store}"
    client = MlflowClient(uri, uri)
    client.create_registered_model(NAME)
    version = client.create_model_version(NAME, source=str(source))
    client.set_registered_model_alias(NAME, "champion", version.version)
    return uri


def _offline_scenario(tmp_path: Path) -> None:
    """Register, load read-only, then load offline from the cache (run in a fresh interpreter)."""
    from mlflow import MlflowClient

    os.environ["SRCORE_CACHE"] = str(tmp_path / "cache")
    torch.manual_seed(0)
    model = build("dvmsr", 4, embed_dim=8, depths=(1,))
    (tmp_path / "packaged" / "artifacts").mkdir(parents=True)
    save_model(tmp_path / "packaged" / "artifacts" / "model.pth", model, "dvmsr")
    uri = _register(tmp_path / "mlflow.db", tmp_path / "packaged")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.chdir(tmp_path)

    loaded = load_registered_model(f"models:/{NAME}@champion")
    x = torch.rand(1, 3, 9, 11)
    with torch.no_grad():
        expected = model.eval()(x)
        assert torch.equal(loaded.eval()(x), expected)
    assert MlflowClient(uri, uri).get_experiment_by_name("srcore") is None  # loading logged nothing

    with pytest.raises(CheckpointError, match="not in the local cache"):
        load_registered_model(f"models:/{NAME}@staging", offline=True)
    os.environ["MLFLOW_TRACKING_URI"] = "http://127.0.0.1:9"  # nothing listens: offline must not ask
    offline = load_registered_model(f"models:/{NAME}@champion", offline=True)
    with torch.no_grad():
        assert torch.equal(offline.eval()(x), expected)
    src = tmp_path / "in.png"
    Image.fromarray(np.zeros((12, 12, 3), dtype=np.uint8)).save(src)
    args = ["upscale", str(src), str(tmp_path / "out.png"), "--model", "dvmsr",
            "--weights", f"models:/{NAME}@champion"]
    result = CliRunner().invoke(app, [*args, "--offline", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "out.png").size == (48, 48)


@pytest.mark.slow  # a fresh SQLite store runs MLflow's schema migrations (about 10-30 s)
def test_load_reads_only_and_offline_reuses_the_cached_version(tmp_path):
    # A fresh interpreter: MLflow keeps process-wide state (stores, clients, URIs) that tests run
    # earlier in the session leave behind, and this test is about what a new command sees.
    code = (f"import sys, pathlib; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import test_reliability_tracking as t; t._offline_scenario(pathlib.Path({str(tmp_path)!r}))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
