"""Images whose header claims more pixels than the limit are refused from the header, before any
pixel is decoded, with one line naming the file and the setting: `srcore upscale`, `srcore eval`,
`srcore data prepare` and the served model (HTTP 400, in tests/test_serving.py) alike."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from srcore.cli import app
from srcore.config import PrepareParams
from srcore.data.image_io import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, decode_rgb, max_image_pixels, read_rgb
from srcore.data.prepare import prepare
from srcore.errors import ConfigError, DataError

runner = CliRunner()


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width`` x ``height`` RGB pixels over a few bytes of payload."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


# Far over Pillow's own ceiling (its DecompressionBombError), and just over ours (below Pillow's).
BOMBS = {"60000x60000": (60000, 60000), "over-limit": (8000, 4200)}


def _one_line(result) -> str:
    assert result.exit_code != 0
    assert "Traceback" not in result.output and "DecompressionBomb" not in result.output, result.output
    text = " ".join(result.output.split())
    assert text.count("error:") == 1, result.output  # after a progress line, if any
    return text[text.index("error:"):]


@pytest.mark.parametrize("size", BOMBS.values(), ids=BOMBS.keys())
def test_decoder_refuses_from_the_header(size):
    assert size[0] * size[1] > DEFAULT_MAX_PIXELS
    with pytest.raises(DataError, match=rf"big\.png: .*over the limit of {DEFAULT_MAX_PIXELS:,}"):
        decode_rgb(bomb_png(*size), "big.png")


def test_the_limit_is_configurable_and_validated(tmp_path, monkeypatch):
    path = tmp_path / "img.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "600")
    assert read_rgb(path).shape == (20, 30, 3)
    monkeypatch.setenv(MAX_PIXELS_ENV, "599")
    with pytest.raises(DataError, match=rf"30x20 is 600 pixels, over the limit of 599.*{MAX_PIXELS_ENV}"):
        read_rgb(path)
    for bad in ("lots", "0", str(10**12)):
        monkeypatch.setenv(MAX_PIXELS_ENV, bad)
        with pytest.raises(ConfigError, match=MAX_PIXELS_ENV):
            max_image_pixels()


@pytest.mark.parametrize("size", BOMBS.values(), ids=BOMBS.keys())
def test_upscale_says_one_line(tmp_path, size):
    src = tmp_path / "bomb.png"
    src.write_bytes(bomb_png(*size))
    line = _one_line(runner.invoke(app, ["upscale", str(src), str(tmp_path / "out.png"), "--scale", "2"]))
    assert "bomb.png" in line and "over the limit" in line
    assert not (tmp_path / "out.png").exists()


def test_eval_says_one_line(tmp_path):
    hr = tmp_path / "Set5" / "HR"
    hr.mkdir(parents=True)
    (hr / "bomb.png").write_bytes(bomb_png(60000, 60000))
    result = runner.invoke(app, ["eval", "--dataset", "Set5", "--scale", "2", "--data-root", str(tmp_path),
                                 "--device", "cpu"], env={"SRCORE_CACHE": str(tmp_path / "cache")})
    line = _one_line(result)
    assert "bomb.png" in line and "over the limit" in line


def test_prepare_reports_the_bomb_as_a_bad_image(tmp_path):
    src = tmp_path / "raw"
    src.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 72, 3), np.uint8)).save(src / "good.png")
    (src / "bomb.png").write_bytes(bomb_png(60000, 60000))
    params = PrepareParams(input=str(src), out=str(tmp_path / "out"), scales=(2,), crop_size=48, step=24,
                           images_per_shard=2, rows_per_group=4, workers=1)
    summary = prepare(params)
    assert summary.images == 2 and summary.rows[2] > 0
    [bad] = summary.bad
    assert "bomb.png" in bad["reason"] and "over the limit" in bad["reason"]
    cfg = tmp_path / "params.yaml"
    cfg.write_text("prepare: {crop_size: 48, step: 24, images_per_shard: 2, rows_per_group: 4}\n")
    result = runner.invoke(app, ["data", "prepare", "--params", str(cfg), "--input", str(src),
                                 "--out", str(tmp_path / "out2"), "--scale", "2", "--workers", "1",
                                 "--on-bad", "fail"])
    line = _one_line(result)
    assert "bomb.png" in line and "over the limit" in line
