import json

import numpy as np
import pytest
from conftest import BENCHMARKS, require
from PIL import Image
from typer.testing import CliRunner

from srcore.cli import app
from srcore.data.benchmarks import load_benchmark
from srcore.errors import DataError

runner = CliRunner()

# Published bicubic PSNR-Y / SSIM-Y on Set5 (the field's reference table).
SET5_BICUBIC = {2: (33.66, 0.9299), 3: (30.39, 0.8682), 4: (28.42, 0.8104)}


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_set5_bicubic_matches_published_table(scale, tmp_path):
    root = require(BENCHMARKS)
    result = runner.invoke(app, ["eval", "--model", "bicubic", "--dataset", "Set5", "--scale", str(scale),
                                 "--data-root", str(root), "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    r = json.loads((tmp_path / "r.json").read_text())["results"]["Set5"]
    psnr, ssim = SET5_BICUBIC[scale]
    assert r["images"] == 5
    assert abs(r["psnr_y"] - psnr) <= 0.03
    assert abs(r["ssim_y"] - ssim) <= 0.002


def _write(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)


def test_lr_cache_tracks_content(tmp_path):
    root, cache = tmp_path / "root", tmp_path / "cache"
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(40, 44, 3), dtype=np.uint8)
    _write(root / "Mine" / "HR" / "a.png", img)
    first = load_benchmark("Mine", 4, root, cache)[0]
    assert first.hr.shape == (40, 44, 3) and first.lr.shape == (10, 11, 3)
    assert len(list(cache.rglob("*.png"))) == 1
    _write(root / "Mine" / "HR" / "a.png", 255 - img)
    second = load_benchmark("Mine", 4, root, cache)[0]
    assert not np.array_equal(first.lr, second.lr)
    assert not list(cache.rglob("*.tmp"))


def test_modcrop_and_color_conversions(tmp_path):
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, size=(35, 37), dtype=np.uint8)
    rgba = rng.integers(0, 256, size=(35, 37, 4), dtype=np.uint8)
    _write(tmp_path / "D" / "HR" / "gray.png", gray)
    _write(tmp_path / "D" / "HR" / "rgba.png", rgba)
    items = load_benchmark("D", 3, tmp_path, tmp_path / "c")
    assert [i.hr.shape for i in items] == [(33, 36, 3), (33, 36, 3)]
    np.testing.assert_array_equal(items[0].hr[..., 0], gray[:33, :36])


def test_bad_benchmark_inputs(tmp_path):
    with pytest.raises(DataError, match="unknown dataset"):
        load_benchmark("NoSuchSet", 4, tmp_path)
    with pytest.raises(DataError, match="not found"):
        load_benchmark("Set5", 4, tmp_path)
    (tmp_path / "Set14" / "HR").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        load_benchmark("Set14", 4, tmp_path)
    (tmp_path / "B100" / "HR").mkdir(parents=True)
    (tmp_path / "B100" / "HR" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match="broken.png"):
        load_benchmark("B100", 4, tmp_path, tmp_path / "cache")
    deep = np.zeros((16, 16, 3), dtype=np.uint16)
    (tmp_path / "Urban100" / "HR").mkdir(parents=True)
    import io
    buf = io.BytesIO()
    Image.fromarray(deep[..., 0]).save(buf, format="PNG")
    (tmp_path / "Urban100" / "HR" / "deep.png").write_bytes(buf.getvalue())
    with pytest.raises(DataError, match="16-bit"):
        load_benchmark("Urban100", 4, tmp_path, tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("*.png"))


def test_cli_errors_exit_nonzero(tmp_path):
    result = runner.invoke(app, ["eval", "--dataset", "Nope", "--data-root", str(tmp_path)])
    assert result.exit_code != 0
    assert "unknown dataset" in result.output
    result = runner.invoke(app, ["eval", "--model", "nomodel", "--dataset", "embedded"])
    assert result.exit_code != 0 and "unknown model" in result.output


def test_embedded_benchmark_needs_no_files(tmp_path):
    result = runner.invoke(app, ["eval", "--dataset", "embedded", "--scale", "2", "--json", "-",
                                 "--save-images", str(tmp_path / "sr")])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout[result.stdout.index("{"):])
    r = payload["results"]["embedded"]
    assert r["images"] == 4 and 25 < r["psnr_y"] < 45
    assert len(list((tmp_path / "sr").rglob("*.png"))) == 4
