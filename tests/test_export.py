"""ONNX / TorchScript export: parity with PyTorch, fixed-size graphs tiled, clear refusals, the CLI."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from conftest import WEIGHTS, require

from srcore.export import ExportedModel, ExportError, ExportOptions, export_model, load_exported
from srcore.export.api import report_path
from srcore.inference import upscale_tensor
from srcore.models import build, save_model

TINY_RLFN = {"feature_channels": 8, "mid_channels": 8, "esa_channels": 4, "num_blocks": 1}


def _tiny_rlfn():
    torch.manual_seed(0)
    return build("rlfn", 2, **TINY_RLFN).eval()


@pytest.mark.parametrize(("fmt", "suffix", "tile"),
                         [("onnx", ".onnx", None), ("torchscript", ".pt", (32, 24))])
def test_export_matches_pytorch_and_runs_at_other_sizes(tmp_path, fmt, suffix, tile):
    model = _tiny_rlfn()
    out = tmp_path / f"rlfn{suffix}"
    report = export_model(model, out, ExportOptions(format=fmt, tile=tile))
    assert report.passed and report.max_abs_diff <= 1e-4
    assert len({c.size for c in report.cases}) >= 2
    assert {c.image for c in report.cases} >= {"random", "astronaut"}
    saved = json.loads(report_path(out).read_text())
    assert saved["passed"] and saved["max_abs_diff"] == report.max_abs_diff

    exported = load_exported(out)
    assert exported.scale == 2 and exported.meta.size == tile
    x = torch.rand(1, 3, 37, 29, generator=torch.Generator().manual_seed(3))
    plan = exported.plan()
    if tile:  # a non-square graph is fed non-square tiles: core plus context on each side is H x W
        assert tuple(c + 2 * plan.overlap for c in plan.core) == tile
    got = upscale_tensor(exported, x, tile=plan)
    # PyTorch through the same wrapper: edge tiles of a fixed-size graph are padded to its size.
    want = upscale_tensor(ExportedModel("pytorch", exported.meta, model), x, tile=plan)
    assert got.shape == (1, 3, 74, 58)
    assert float((got - want).abs().max()) <= 1e-4


MAMBA_SMALL = {"dvmsr": {"embed_dim": 12, "depths": (1,), "d_state": 4},
               "mair_t": {"embed_dim": 12, "depths": (2,), "d_state": 2, "scan_len": 4}}


@pytest.mark.parametrize(("fmt", "suffix"), [("onnx", ".onnx"), ("torchscript", ".pt")])
@pytest.mark.parametrize("name", sorted(MAMBA_SMALL))
def test_mamba_models_export_with_a_dynamic_size(tmp_path, name, fmt, suffix):
    torch.manual_seed(0)
    model = build(name, 2, **MAMBA_SMALL[name]).eval()
    for p in model.parameters():  # away from the init, so a wrong scan order or chunk seam shows
        p.data += 0.05 * torch.randn_like(p)
    out = tmp_path / f"{name}{suffix}"
    report = export_model(model, out, ExportOptions(format=fmt))
    sizes = {c.size for c in report.cases}
    assert report.passed and report.size is None and len(sizes) >= 3
    assert any(h != w for h, w in sizes) and sizes - {(32, 32)}  # non-square, and not the traced size
    weights_bytes = 4 * sum(p.numel() for p in model.parameters())
    assert out.stat().st_size <= weights_bytes + 2_000_000  # the graph adds little to the weights
    exported = load_exported(out)
    assert exported.meta.size is None and exported.plan() is None
    # a size the parity check did not use, run whole (no tiles)
    x = torch.rand(1, 3, 37, 26, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = model(x)
    assert float((exported(x) - want).abs().max()) <= 1e-4
    if fmt == "onnx":  # the scan is a loop in the graph, not unrolled over the traced length
        import onnx

        assert "Loop" in {n.op_type for n in onnx.load(str(out)).graph.node}


@pytest.mark.parametrize(("fmt", "suffix"), [("onnx", ".onnx"), ("torchscript", ".pt")])
def test_mair_exports_at_a_fixed_non_square_tile_within_tolerance(tmp_path, fmt, suffix):
    torch.manual_seed(0)
    model = build("mair_t", 2, embed_dim=12, depths=(1,), d_state=2, scan_len=4).eval()
    out = tmp_path / f"mair{suffix}"
    report = export_model(model, out, ExportOptions(format=fmt, tile=(16, 24)))
    # the scan ran as traced ops, not the numba kernel: the exported graph reproduces PyTorch
    assert report.passed and report.max_abs_diff <= 1e-4 and report.size == (16, 24)
    assert {c.size for c in report.cases} == {(16, 24), (27, 41)}  # the second one is tiled
    assert load_exported(out).meta.size == (16, 24)


def test_export_beyond_tolerance_writes_nothing(tmp_path):
    out = tmp_path / "new" / "rlfn.onnx"  # not even the missing folder is created
    with pytest.raises(ExportError, match="exceeds the tolerance"):
        export_model(_tiny_rlfn(), out, ExportOptions(format="onnx", tolerance=1e-12))
    assert not out.exists() and not report_path(out).exists() and list(tmp_path.iterdir()) == []


def test_not_an_export_is_refused(tmp_path):
    from srcore.errors import SrcoreError

    bogus = tmp_path / "x.onnx"
    bogus.write_bytes(b"not a model")
    with pytest.raises(SrcoreError, match="x.onnx"):
        load_exported(bogus)


def test_cli_export_then_upscale_with_onnx_matches_pytorch(tmp_path):
    from typer.testing import CliRunner

    from srcore.cli import app
    from srcore.data.image_io import read_rgb, write_png

    ckpt = tmp_path / "rlfn.pth"
    save_model(ckpt, _tiny_rlfn(), "rlfn")
    rng = np.random.default_rng(0)
    write_png(tmp_path / "lr.png", rng.integers(0, 256, (40, 52, 3), dtype=np.uint8))
    runner = CliRunner()
    onnx_file = tmp_path / "rlfn.onnx"
    r = runner.invoke(app, ["export", "--model", "rlfn", "--scale", "2", "--weights", str(ckpt),
                            "--out", str(onnx_file)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["upscale", str(tmp_path / "lr.png"), str(tmp_path / "onnx.png"), "--onnx",
                            str(onnx_file), "--scale", "2", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["upscale", str(tmp_path / "lr.png"), str(tmp_path / "torch.png"), "--model",
                            "rlfn", "--scale", "2", "--weights", str(ckpt), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    a, b = read_rgb(tmp_path / "onnx.png").astype(int), read_rgb(tmp_path / "torch.png").astype(int)
    assert a.shape == (80, 104, 3) and np.abs(a - b).max() <= 1


def test_cli_fixed_non_square_graph_is_fed_tiles_of_its_own_size(tmp_path):
    from typer.testing import CliRunner

    from srcore.cli import app
    from srcore.data.image_io import read_rgb, write_png
    from srcore.inference import to_tensor, to_uint8

    model = _tiny_rlfn()
    save_model(tmp_path / "rlfn.pth", model, "rlfn")
    lr = np.random.default_rng(1).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    write_png(tmp_path / "lr.png", lr)
    onnx_file = tmp_path / "new" / "rlfn.onnx"  # the missing folder is created
    r = _cli("--model", "rlfn", "--scale", "2", "--weights", str(tmp_path / "rlfn.pth"), "--out",
             str(onnx_file), "--tile", "24", "36")
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["upscale", str(tmp_path / "lr.png"), str(tmp_path / "sr.png"), "--onnx",
                                 str(onnx_file), "--scale", "2", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    exported = load_exported(onnx_file)
    plan = exported.plan()
    assert exported.meta.size == (24, 36) and plan.core == (12, 24)  # 6 px of context each side
    # PyTorch fed the same 24x36 tiles gives the same pixels
    want = to_uint8(upscale_tensor(ExportedModel("pytorch", exported.meta, model), to_tensor(lr), tile=plan))
    got = read_rgb(tmp_path / "sr.png").astype(int)
    assert got.shape == (80, 104, 3) and np.abs(got - want.astype(int)).max() <= 1


def _cli(*args: str):
    from typer.testing import CliRunner

    from srcore.cli import app

    return CliRunner().invoke(app, ["export", *args])


@pytest.mark.parametrize(("args", "expected"), [
    (["--model", "nosuch"], r"unknown model 'nosuch'; available: .*rlfn"),
    (["--weights", "{tmp}/missing.pth"], r"missing\.pth: weights file not found; check the path"),
    (["--model", "ibmdn"], r"weights are for 'rlfn', not 'ibmdn'; pass --model rlfn"),
    (["--scale", "4"], r"weights are for x2, not x4; pass --scale 2"),
    (["--tile", "8", "64"], r"--tile height: .*greater than or equal to 16 \(each side 16\.\.2048"),
    (["--tile", "64", "4096"], r"--tile width: .*less than or equal to 2048"),
    (["--format", "tflite"], r"--format: .*'onnx' or 'torchscript'"),
    (["--out", "{tmp}/rlfn.pth/x.onnx"], r"rlfn\.pth: exists and is not a folder; choose another"),
    (["--no-weights"], r"export needs --weights"),
])
def test_cli_export_refuses_bad_input_in_one_line(tmp_path, args, expected):
    ckpt = tmp_path / "rlfn.pth"
    save_model(ckpt, _tiny_rlfn(), "rlfn")
    given = {"--model": "rlfn", "--scale": "2", "--weights": str(ckpt), "--out": str(tmp_path / "rlfn.onnx")}
    if args == ["--no-weights"]:
        del given["--weights"]
        args = []
    args = [a.format(tmp=tmp_path) for a in args]
    for key in list(given):
        if key in args:
            del given[key]
    r = _cli(*[x for kv in given.items() for x in kv], *args)
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())  # one message (the console wraps it at its width), no traceback
    assert text.startswith("error:") and text.count("error:") == 1 and "Traceback" not in text, r.output
    assert re.search(expected, text), r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rlfn.pth"]


def test_cli_export_help_explains_formats_tile_and_fp16():
    text = " ".join(_cli("--help").output.split())  # words only: the help box wraps phrases
    for word in ("onnxruntime", "torchscript", "--tile", "height", "width", "--fp16", "1e-2", "parity.json"):
        assert word in text, word


def test_cli_official_dvmsr_onnx_runs_whole_images_like_pytorch(tmp_path):
    from typer.testing import CliRunner

    from srcore.cli import app
    from srcore.data.image_io import read_rgb, write_png

    weights = str(require(WEIGHTS / "dvmsr_ntire2024_x4.pth"))
    write_png(tmp_path / "lr.png", np.random.default_rng(4).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    onnx_file = tmp_path / "dvmsr.onnx"
    r = _cli("--model", "dvmsr", "--scale", "4", "--weights", weights, "--out", str(onnx_file))
    assert r.exit_code == 0, r.output
    assert load_exported(onnx_file).meta.size is None
    runner = CliRunner()
    for args, png in ((["--onnx", str(onnx_file)], "onnx.png"), (["--model", "dvmsr", "--weights", weights],
                                                                  "torch.png")):
        r = runner.invoke(app, ["upscale", str(tmp_path / "lr.png"), str(tmp_path / png), "--scale", "4",
                                "--device", "cpu", *args])
        assert r.exit_code == 0, r.output
        assert "approximate" not in r.output  # no tiling on either side
    a, b = read_rgb(tmp_path / "onnx.png").astype(int), read_rgb(tmp_path / "torch.png").astype(int)
    assert a.shape == (200, 280, 3) and np.abs(a - b).max() <= 1
