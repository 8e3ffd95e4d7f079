"""Opt-in torch.compile for inference: same output as eager, on every size, through the CLI too.

The tests compile with the ``aot_eager`` back-end (dynamo's graph capture and AOT tracing, the
parts where a model or the custom scan op can break, without inductor's C++ build, which takes
minutes on a small CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import srcore.inference
from srcore.cli import app
from srcore.inference import compile_model
from srcore.models import build, save_model


@pytest.fixture(autouse=True)
def _aot_eager(monkeypatch):
    monkeypatch.setattr(srcore.inference, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()


def test_compiled_mamba_model_matches_eager_at_several_sizes():
    torch.manual_seed(0)
    model = build("mair_t", 2, embed_dim=12, depths=(2,), d_state=2, scan_len=4).eval()
    compiled = compile_model(model)
    assert compiled.scale == 2 and compiled.arch == "mair"
    with torch.inference_mode():
        for h, w in ((16, 20), (23, 17)):  # one compiled graph serves both (dynamic sizes)
            x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h))
            assert float((compiled(x) - model(x)).abs().max()) <= 1e-5


def test_cli_upscale_compile_matches_eager_and_refuses_onnx(tmp_path):
    from srcore.data.image_io import read_rgb, write_png

    torch.manual_seed(0)
    save_model(tmp_path / "dvmsr.pth", build("dvmsr", 2, embed_dim=12, depths=(1,), d_state=4), "dvmsr")
    write_png(tmp_path / "lr.png", np.random.default_rng(0).integers(0, 256, (20, 26, 3), dtype=np.uint8))
    runner = CliRunner()
    base = ["upscale", str(tmp_path / "lr.png")]
    opts = ["--model", "dvmsr", "--scale", "2", "--weights", str(tmp_path / "dvmsr.pth"), "--device", "cpu"]
    for png, extra in (("eager.png", []), ("compiled.png", ["--compile"])):
        r = runner.invoke(app, [*base, str(tmp_path / png), *opts, *extra])
        assert r.exit_code == 0, r.output
    a, b = (read_rgb(tmp_path / p).astype(int) for p in ("eager.png", "compiled.png"))
    assert a.shape == (40, 52, 3) and np.abs(a - b).max() <= 1
    r = runner.invoke(app, [*base, str(tmp_path / "x.png"), "--onnx", str(tmp_path / "m.onnx"), "--compile"])
    assert r.exit_code == 2 and "--compile applies to PyTorch models" in r.output


def test_cli_eval_compile_needs_one_process():
    r = CliRunner().invoke(app, ["eval", "--dataset", "embedded", "--compile", "--workers", "2"])
    assert r.exit_code == 2 and "--compile scores in this process" in " ".join(r.output.split())
