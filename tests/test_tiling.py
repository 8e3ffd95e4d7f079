"""Tiled inference: arguments checked up front, overlap from the measured receptive field, and
output equal to whole-image inference for every model whose receptive field is bounded."""

import logging

import pytest
import torch
from torch import nn

from srcore.errors import ConfigError
from srcore.inference import TilePlan, plan_tiles, receptive_radius, upscale_tensor
from srcore.models import build, list_presets

# Mamba presets and SRConvNet shrunk: same architecture (global scans, pooling), fast enough for a test.
_SMALL = {"dvmsr": {"embed_dim": 8, "depths": (1,)}, "mair": {"embed_dim": 8, "depths": (1,)},
          "srconvnet": {"dim": 16, "num_blocks": 2, "num_heads": 2}}
# Measured: a one-pixel change reaches the whole image through global pooling (IBMDN's CCA,
# SRConvNet's dynamic convolution and Fourier unit, RLFN's ESA pooling) or scans (DVMSR, MaIR).
_GLOBAL = {"dvmsr", "dvmsr_teacher", "mair_t", "mair_s", "srconvnet", "ibmdn", "rlfn"}


def _preset(name: str, scale: int = 2) -> nn.Module:
    arch = next(p.arch for p in list_presets() if p.name == name)
    torch.manual_seed(0)
    return build(name, scale, **_SMALL.get(arch, {})).eval()


class _ConvStack(nn.Module):
    """A purely local model: ``depth`` 3x3 convs (receptive radius = depth) and a pixel shuffle."""

    scale = 2

    def __init__(self, depth: int) -> None:
        super().__init__()
        layers = [nn.Conv2d(3, 8, 3, padding=1)] + [nn.Conv2d(8, 8, 3, padding=1) for _ in range(depth - 2)]
        self.body = nn.Sequential(*layers, nn.Conv2d(8, 12, 3, padding=1), nn.PixelShuffle(2))

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("name", [p.name for p in list_presets()])
def test_every_preset_tiles_exactly_or_says_how_far_off(name, caplog):
    model = _preset(name)
    # Global models get a short overlap here only to keep the probe small (3x3 tiles).
    overlap = 8 if name in _GLOBAL else None
    plan = plan_tiles(model, 16, overlap)
    x = torch.rand(1, 3, 37, 41, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole = model(x)
        tiled = upscale_tensor(model, x, plan)
    assert tiled.shape == whole.shape
    if name in _GLOBAL:
        assert plan.radius is None and not plan.exact and plan.probe_max_dev > 0
        assert "approximate" in plan.describe(name)
        with caplog.at_level(logging.WARNING, logger="srcore.inference"), torch.no_grad():
            upscale_tensor(model, x, 16, overlap)
        assert "approximate" in caplog.text
    else:
        assert plan.exact and plan.overlap == plan.radius
        assert (tiled - whole).abs().max() <= 1e-4


def test_overlap_covers_a_receptive_field_wider_than_the_old_fixed_margin():
    model = _ConvStack(12).eval()
    assert receptive_radius(model) == 12
    x = torch.rand(1, 3, 70, 90)
    with torch.no_grad():
        assert (upscale_tensor(model, x, 16) - model(x)).abs().max() <= 1e-5
        short = plan_tiles(model, 16, overlap=4)
        assert not short.exact and short.probe_max_dev > 1e-3
        assert "below its receptive field of 12" in short.describe("stack")


def test_bicubic_radius_is_its_kernel_support():
    assert receptive_radius(build("bicubic", 4)) == 2


@pytest.mark.parametrize("tile, overlap", [(8, None), (0, None), (-5, None), (16, -1), (True, None),
                                           (16.5, None)])
def test_bad_tile_arguments_are_refused_up_front(tile, overlap):
    with pytest.raises(ConfigError, match="--tile"):
        plan_tiles(build("bicubic", 2), tile, overlap)
    with pytest.raises(ConfigError):
        upscale_tensor(build("bicubic", 2), torch.rand(1, 3, 40, 40), tile, overlap)


def test_a_plan_is_reused_without_measuring_again():
    plan = TilePlan(tile=16, overlap=2, exact=True, radius=2)
    model = build("bicubic", 2)
    x = torch.rand(1, 3, 33, 35)
    assert torch.allclose(upscale_tensor(model, x, plan), model(x), atol=1e-5)
