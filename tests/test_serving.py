"""The registered pyfunc: its input contract, its rebuildable environment, and `mlflow models serve`."""

from __future__ import annotations

import base64
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import _start_server, _stop, free_port

from srcore.models import build, save_model

NAME = "srcore-rlfn-x2"


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A tiny RLFN logged and registered through the register stage's packaging, in a SQLite store."""
    import mlflow

    from srcore.tracking.packaging import log_model_version

    root = tmp_path_factory.mktemp("serving")
    torch.manual_seed(0)
    ckpt = root / "rlfn.pth"
    tiny = build("rlfn", 2, feature_channels=8, mid_channels=8, esa_channels=4, num_blocks=1)
    save_model(ckpt, tiny, "rlfn")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    exp = mlflow.create_experiment("serving", artifact_location=(root / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=exp):
        version = log_model_version(ckpt, NAME)
    yield {"uri": uri, "model": f"models:/{NAME}/{version}", "ckpt": ckpt, "root": root}
    # MLflow keeps both URIs process-wide: leave neither behind for the tests that follow
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


@pytest.fixture(scope="module")
def pyfunc(registered):
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(registered["model"])


def _lr() -> np.ndarray:
    from srcore.data.benchmarks import embedded_hr

    _, img = embedded_hr()[0]
    return np.ascontiguousarray(img[100:148, 120:180])


def test_pyfunc_contract(pyfunc):
    from mlflow.exceptions import MlflowException

    lr = _lr()
    single = pyfunc.predict(lr)
    assert single.dtype == np.uint8 and single.shape == (1, 96, 120, 3)
    batch = pyfunc.predict(np.stack([lr, lr]))
    assert batch.shape == (2, 96, 120, 3) and np.array_equal(batch[1], single[0])
    with pytest.raises(MlflowException, match="uint8"):
        pyfunc.predict(lr.astype(np.float32) / 255)
    with pytest.raises(MlflowException, match="RGB"):
        pyfunc.predict(lr[..., :2].copy())

    from srcore.data.image_io import decode_rgb, png_bytes

    encoded = base64.b64encode(png_bytes(lr)).decode()
    [out] = pyfunc.predict(np.asarray([encoded], dtype=object))
    assert np.array_equal(decode_rgb(base64.b64decode(out)), single[0])


def test_pyfunc_refuses_images_over_the_pixel_limit_as_bad_input(pyfunc, monkeypatch):
    from mlflow.exceptions import MlflowException
    from test_hostile_images import bomb_png

    from srcore.data.image_io import MAX_PIXELS_ENV

    bomb = base64.b64encode(bomb_png(60000, 60000)).decode()
    with pytest.raises(MlflowException, match="item 0: .*over the limit") as caught:
        pyfunc.predict(np.asarray([bomb], dtype=object))
    assert caught.value.get_http_status_code() == 400
    monkeypatch.setenv(MAX_PIXELS_ENV, "100")  # decoded pixels are held to the same limit
    with pytest.raises(MlflowException, match="48x48 is 2,304 pixels, over the limit of 100") as caught:
        pyfunc.predict(np.zeros((48, 48, 3), np.uint8))
    assert caught.value.get_http_status_code() == 400


def test_logged_environment_rebuilds(registered, pyfunc):
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(registered["model"]))
    reqs = (local / "requirements.txt").read_text()
    assert "torch==" in reqs and "srcore" not in reqs
    assert (local / "code" / "srcore" / "models" / "rlfn.py").is_file()
    meta = pyfunc.metadata
    assert meta.signature is not None and meta.saved_input_example_info is not None


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.mark.slow
def test_served_model_answers_like_srcore_upscale(registered, tmp_path):
    from test_hostile_images import bomb_png
    from typer.testing import CliRunner

    from srcore.cli import app
    from srcore.data.image_io import decode_rgb, png_bytes, read_rgb, write_png

    lr = _lr()
    write_png(tmp_path / "lr.png", lr)
    args = ["upscale", str(tmp_path / "lr.png"), str(tmp_path / "sr.png"), "--model", "rlfn", "--scale", "2",
            "--weights", str(registered["ckpt"]), "--device", "cpu"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    expected = read_rgb(tmp_path / "sr.png")

    port = free_port()
    bin_dir = Path(sys.executable).parent  # the server execs `uvicorn` from PATH
    mlflow_bin = str(bin_dir / "mlflow")
    env = {"MLFLOW_TRACKING_URI": registered["uri"], "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    proc = _start_server([mlflow_bin, "models", "serve", "-m", registered["model"], "--env-manager", "local",
                          "--host", "127.0.0.1", "--port", str(port)],
                         f"http://127.0.0.1:{port}/ping", env=env,
                         timeout=180)
    try:
        url = f"http://127.0.0.1:{port}/invocations"
        status, body = _post(url, {"inputs": [base64.b64encode(png_bytes(lr)).decode()]})
        assert status == 200, body
        served = decode_rgb(base64.b64decode(body["predictions"][0]))
        assert np.array_equal(served, expected)
        status, body = _post(url, {"inputs": lr.tolist()})
        assert status == 200 and np.array_equal(np.asarray(body["predictions"], dtype=np.uint8)[0], expected)
        status, body = _post(url, {"inputs": (lr / 255.0).tolist()})
        assert status == 400 and "uint8" in body.get("message", "")
        status, body = _post(url, {"inputs": [base64.b64encode(bomb_png(60000, 60000)).decode()]})
        assert status == 400 and "over the limit" in body.get("message", ""), body
    finally:
        _stop(proc)


def test_pyfunc_runs_on_onnxruntime_like_torch(registered, pyfunc):
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    on_ort = mlflow.pyfunc.load_model(registered["model"], model_config={"runtime": "onnx", "tile": 0})
    assert type(on_ort.unwrap_python_model().model).__name__ == "ExportedModel"
    lr = _lr()
    got, want = on_ort.predict(lr).astype(int), pyfunc.predict(lr, params={"tile": 0}).astype(int)
    assert got.shape == (1, 96, 120, 3) and np.abs(got - want).max() <= 1
    with pytest.raises(MlflowException, match="runtime: 'tflite' is not one of torch, onnx"):
        mlflow.pyfunc.load_model(registered["model"], model_config={"runtime": "tflite"})


def test_pyfunc_compiled_on_request_answers_like_eager(registered, pyfunc, monkeypatch):
    import mlflow.pyfunc

    import srcore.inference

    monkeypatch.setattr(srcore.inference, "COMPILE_BACKEND", "aot_eager")  # no C++ build in the suite
    compiled = mlflow.pyfunc.load_model(registered["model"], model_config={"compile": True, "tile": 0})
    assert type(compiled.unwrap_python_model().model).__name__ == "OptimizedModule"
    lr = _lr()
    assert np.array_equal(compiled.predict(lr), pyfunc.predict(lr, params={"tile": 0}))
