"""`srcore upscale` refuses what it cannot do before any compute, with one line naming the path:
bad destinations, learned models without weights, inputs below a model's minimum size; it
upscales whole folders and says when it drops an alpha channel."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import srcore.inference
from srcore.cli import app
from srcore.data.image_io import read_rgb
from srcore.errors import DataError
from srcore.models import build, list_presets, save_model
from srcore.models.base import check_input_size

runner = CliRunner()


def _png(path: Path, h: int = 20, w: int = 24, channels: int = 3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, channels), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def no_compute(monkeypatch):
    """Fail the test if the model is run: refusals must come before any compute."""
    def boom(*args, **kwargs):
        raise AssertionError("the model ran before the refusal")

    monkeypatch.setattr(srcore.inference, "upscale_image", boom)


def _one_line_error(result) -> str:
    """The error message, checked to be a single message, with all white space removed (rich wraps
    long messages, paths included, at the test console's width)."""
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    text = "".join(result.output.split())
    assert text.startswith("error:") and text.count("error:") == 1, result.output
    return text


def _says(line: str, *parts: str | Path) -> bool:
    return all("".join(str(p).split()) in line for p in parts)


def test_output_whose_parent_is_a_file_is_refused_before_compute(tmp_path, no_compute):
    src = _png(tmp_path / "in.png")
    (tmp_path / "afile").write_text("x")
    line = _one_line_error(runner.invoke(app, ["upscale", str(src), str(tmp_path / "afile" / "out.png")]))
    assert _says(line, tmp_path / "afile", "not a folder")


def test_output_that_is_an_existing_folder_is_refused_before_compute(tmp_path, no_compute):
    src = _png(tmp_path / "in.png")
    (tmp_path / "outdir").mkdir()
    line = _one_line_error(runner.invoke(app, ["upscale", str(src), str(tmp_path / "outdir")]))
    assert _says(line, tmp_path / "outdir", "is a folder")


def test_unwritable_output_folder_is_refused_before_compute(tmp_path, no_compute):
    src = _png(tmp_path / "in.png")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):  # root ignores permission bits; /proc refuses new files even to root
            if not Path("/proc/self").is_dir():
                pytest.skip("running as root without /proc: no folder here is unwritable")
            locked = Path("/proc")
        line = _one_line_error(runner.invoke(app, ["upscale", str(src), str(locked / "out.png")]))
        assert _says(line, locked, "not writable")
    finally:
        (tmp_path / "locked").chmod(0o755)


def test_learned_model_without_weights_is_refused(tmp_path, no_compute):
    src = _png(tmp_path / "in.png")
    out = str(tmp_path / "o.png")
    line = _one_line_error(runner.invoke(app, ["upscale", str(src), out, "--model", "rlfn"]))
    assert _says(line, "--weights")
    assert not (tmp_path / "o.png").exists()


def test_rlfn_input_below_its_minimum_is_refused_by_name(tmp_path, no_compute):
    src = _png(tmp_path / "tiny.png", h=10, w=12)
    weights = tmp_path / "rlfn.pth"
    save_model(weights, build("rlfn", 4), "rlfn")
    args = ["upscale", str(src), str(tmp_path / "o.png"), "--model", "rlfn", "--weights", str(weights)]
    line = _one_line_error(runner.invoke(app, [*args, "--device", "cpu"]))
    assert _says(line, src, "minimum input of 15x15")


@pytest.mark.parametrize("name", [p.name for p in list_presets()])
def test_every_model_runs_at_its_minimum_input_and_refuses_below(name):
    model = build(name, 2).eval()
    least = model.min_input_size
    with torch.no_grad():
        assert model(torch.rand(1, 3, least, least + 1)).shape[-2:] == (2 * least, 2 * least + 2)
    check_input_size(model, least, least)
    if least > 1:
        with pytest.raises(DataError, match=f"minimum input of {least}x{least}"):
            check_input_size(model, least - 1, least + 5, "img.png")


def test_rgba_input_warns_once_that_alpha_is_dropped(tmp_path, caplog):
    src = _png(tmp_path / "rgba.png", channels=4)
    with caplog.at_level(logging.WARNING):
        result = runner.invoke(app, ["upscale", str(src), str(tmp_path / "o.png"), "--scale", "2"])
    assert result.exit_code == 0, result.output
    alpha = [r for r in caplog.records if "alpha channel dropped" in r.getMessage()]
    assert len(alpha) == 1 and "rgba.png" in alpha[0].getMessage()
    assert read_rgb(tmp_path / "o.png").shape == (40, 48, 3)


def test_folder_in_folder_out_reports_unreadable_files(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _png(src / "a.png", seed=1)
    _png(src / "b.jpg", h=16, w=18, seed=2)
    (src / "notes.txt").write_text("not an image, and not an image name")
    result = runner.invoke(app, ["upscale", str(src), str(tmp_path / "out"), "--scale", "2"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png"]
    assert read_rgb(tmp_path / "out" / "b.png").shape == (32, 36, 3)
    (src / "c.png").write_bytes(b"broken")
    result = runner.invoke(app, ["upscale", str(src), str(tmp_path / "out2"), "--scale", "2"])
    assert result.exit_code == 1 and "c.png" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in (tmp_path / "out2").iterdir()) == ["a.png", "b.png"]


def test_folder_output_onto_the_input_folder_is_refused(tmp_path, no_compute):
    src = tmp_path / "in"
    src.mkdir()
    _png(src / "a.png")
    line = _one_line_error(runner.invoke(app, ["upscale", str(src), str(src)]))
    assert _says(line, src, "is the input folder")
