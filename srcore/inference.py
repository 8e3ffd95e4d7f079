"""Running a model on images: uint8 in, uint8 out, optionally tile by tile for bounded memory.

Tiling contract: the LR image is cut into ``tile`` x ``tile`` cores; each core is run with
``overlap`` pixels of real image context on every side that has image, and only the core's part of
the output is kept. When ``overlap`` covers the model's receptive field the result equals
whole-image inference (up to float rounding). :func:`plan_tiles` measures the receptive field of a
model once (perturb one input pixel, see how far the output changes) and picks the overlap; for a
model whose receptive field is the whole image (global pooling, FFT, selective scans) tiling cannot
be exact, and the plan carries the deviation measured on a probe image so the caller can say so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from srcore.errors import ConfigError
from srcore.models.base import SRModel

log = logging.getLogger(__name__)

__all__ = ["TilePlan", "compile_model", "plan_tiles", "receptive_radius", "to_tensor", "to_uint8",
           "upscale_image", "upscale_jobs", "upscale_tensor"]

MIN_TILE = 16
# Probe side for the receptive-field measurement: larger than every local model's radius so far
# (bicubic 2, a stack of 3x3 convs ~ its depth), small enough to be cheap for the Mamba models.
_PROBE = 48
# Context given to models whose receptive field is global: past ~32 LR pixels a one-pixel change
# moves their output by less than 1e-3 (measured on the zoo), so more context buys little.
GLOBAL_OVERLAP = 32


# torch.compile's back-end; inductor generates fused C++/Triton kernels.
COMPILE_BACKEND = "inductor"


def compile_model(model: SRModel) -> SRModel:
    """``model`` under ``torch.compile`` for inference, with dynamic H and W (one compiled graph for
    every image size). The result still has the model's attributes (scale, arch, ...). The first
    call compiles (a minute or more on a small CPU), so it pays over many images: measured on 96x96
    CPU inputs, 1.45x for RLFN and 1.2x for DVMSR, the same output to 1e-6. The selective scan stays
    one opaque custom op inside the compiled graph."""
    return torch.compile(model, dynamic=True, backend=COMPILE_BACKEND)


def to_tensor(img: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """HxWx3 uint8 -> 1x3xHxW float32 in [0, 1] (a view of an HxWx3 array: channels last)."""
    # numpy passes, not torch ops, on the CPU (here and in to_uint8): each torch op on an image is an
    # OpenMP parallel region whose threads wait for one another, which stalls for milliseconds when
    # other processes hold the cores. The arithmetic is the same float32, so are the bits.
    x = np.divide(img, np.float32(255), dtype=np.float32, order="C")
    return torch.from_numpy(x).permute(2, 0, 1)[None].to(device)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """1x3xHxW float -> HxWx3 uint8 (clamp to [0, 1], x255, round half to even), the evaluation
    convention."""
    img = x[0].detach()
    if img.device.type != "cpu" or img.dtype != torch.float32:
        return img.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    a = np.clip(img.numpy(), 0, 1)  # a new array in the tensor's memory layout
    np.multiply(a, np.float32(255), out=a)
    np.rint(a, out=a)
    with np.errstate(invalid="ignore"):  # NaN (a broken model): whatever byte the cast gives, silently
        return a.astype(np.uint8).transpose(1, 2, 0)


@dataclass(frozen=True)
class TilePlan:
    """How to tile one model: core ``tile`` size, ``overlap`` context per side, and whether the
    result equals whole-image inference (``exact``); ``probe_max_dev`` is the largest deviation
    (in [0, 1] units) seen on a probe image when it is not. ``tile_w`` makes cores non-square
    (``tile`` high, ``tile_w`` wide), for exported graphs of a fixed H x W size."""

    tile: int
    overlap: int
    exact: bool
    radius: int | None
    probe_max_dev: float = 0.0
    tile_w: int | None = None

    @property
    def core(self) -> tuple[int, int]:
        """Core (height, width) of a tile."""
        return self.tile, self.tile_w or self.tile

    def describe(self, arch: str) -> str:
        """One line for the user: what tiling does to this model's output."""
        if self.exact:
            return f"{arch}: tiles of {self.tile} with {self.overlap} px context reproduce whole-image output"
        why = ("its receptive field is the whole image (global pooling, FFT or scans)" if self.radius is None
               else f"an overlap of {self.overlap} px is below its receptive field of {self.radius} px")
        return (f"{arch}: tiled output is approximate, {why}; on a probe image tiles differed "
                f"from whole-image output by up to {self.probe_max_dev * 255:.2f}/255; "
                "omit --tile for exact results")


def _check_int(name: str, value: int, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


@torch.inference_mode()
def receptive_radius(model: SRModel, probe: int = _PROBE) -> int | None:
    """Radius (LR pixels) beyond which one input pixel leaves the output bit-for-bit unchanged,
    measured by perturbing the centre pixel of a random ``probe`` x ``probe`` image; ``None`` when
    the change reaches the probe's border (a global receptive field)."""
    device = next(model.parameters(), torch.empty(0)).device
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, probe, probe, generator=gen).to(device)
    c = probe // 2
    bumped = x.clone()
    bumped[..., c, c] = 1.0 - bumped[..., c, c]
    diff = (model(bumped) - model(x)).abs().amax(dim=(0, 1))
    s = diff.shape[-1] // probe
    changed = diff.reshape(probe, s, probe, s).amax(dim=(1, 3)).nonzero()
    if changed.numel() == 0:
        return 0
    radius = int((changed - c).abs().max())
    # Reaching the border means the influence was cut off by the probe, not that it ends there.
    return None if radius >= c - 1 else radius


def plan_tiles(model: SRModel, tile: int, overlap: int | None = None) -> TilePlan:
    """Validate ``tile``/``overlap`` and choose the overlap from the model's receptive field.

    Raises :class:`ConfigError` for a tile below ``MIN_TILE`` or a negative overlap. A user-given
    ``overlap`` smaller than the receptive field is honoured but marked approximate."""
    tile = _check_int("--tile", tile, MIN_TILE)
    if overlap is not None:
        overlap = _check_int("--tile-overlap", overlap, 0)
    radius = receptive_radius(model.eval())
    if overlap is None:
        overlap = GLOBAL_OVERLAP if radius is None else radius
    exact = radius is not None and overlap >= radius
    plan = TilePlan(tile, overlap, exact, radius)
    if not exact:
        plan = TilePlan(tile, overlap, exact, radius, _probe_deviation(model, plan))
    return plan


@torch.inference_mode()
def _probe_deviation(model: SRModel, plan: TilePlan) -> float:
    """Max |tiled - whole| on a random image just wide enough that no tile sees all of it (two
    cores plus one overlap; cores capped at 48 px to keep the probe cheap)."""
    device = next(model.parameters(), torch.empty(0)).device
    core = min(plan.tile, 48)
    side = 2 * core + plan.overlap + 8
    x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(1)).to(device)
    probe = TilePlan(core, plan.overlap, plan.exact, plan.radius)
    return float((_tiled(model, x, probe) - model(x)).abs().max())


def _spans(length: int, core: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(input start, input end, core start, core end) per tile along one axis. Every input window
    is ``core + 2 * overlap`` wide where the image allows (a short last core borrows more context
    instead of running on a sliver the model may refuse); extra context never changes the core."""
    width = min(length, core + 2 * overlap)
    spans = []
    for c0 in range(0, length, core):
        c1 = min(c0 + core, length)
        i0 = max(0, min(c0 - overlap, length - width))
        spans.append((i0, max(min(length, c1 + overlap), i0 + width), c0, c1))
    return spans


def _tiled(model: SRModel, x: torch.Tensor, plan: TilePlan) -> torch.Tensor:
    s = model.scale
    b, c, h, w = x.shape
    out = x.new_zeros(b, c, h * s, w * s)
    core_h, core_w = plan.core
    for i0, i1, y0, y1 in _spans(h, core_h, plan.overlap):
        for j0, j1, x0, x1 in _spans(w, core_w, plan.overlap):
            sr = model(x[..., i0:i1, j0:j1])
            top, left, hh, ww = (y0 - i0) * s, (x0 - j0) * s, (y1 - y0) * s, (x1 - x0) * s
            out[..., y0 * s:y1 * s, x0 * s:x1 * s] = sr[..., top:top + hh, left:left + ww]
    return out


@torch.inference_mode()
def upscale_tensor(model: SRModel, x: torch.Tensor, tile: int | TilePlan | None = None,
                   overlap: int | None = None) -> torch.Tensor:
    """Super-resolve ``x`` (B, 3, H, W), whole or by tiles (a :class:`TilePlan`, or a tile size and
    optional overlap from which a plan is made; see the module docstring)."""
    if tile is None:
        return model(x)
    plan = tile
    if not isinstance(plan, TilePlan):
        plan = plan_tiles(model, tile, overlap)
        if not plan.exact:
            log.warning(plan.describe(getattr(model, "arch", type(model).__name__)))
    if x.shape[-2] <= plan.core[0] and x.shape[-1] <= plan.core[1]:
        return model(x)
    return _tiled(model, x, plan)


def upscale_image(model: SRModel, lr: np.ndarray, device: torch.device | str = "cpu",
                  tile: int | TilePlan | None = None, overlap: int | None = None) -> np.ndarray:
    """Super-resolve an HxWx3 uint8 image to uint8."""
    return to_uint8(upscale_tensor(model, to_tensor(lr, device), tile, overlap))


def upscale_jobs(image: Path, output: Path) -> list[tuple[Path, Path]]:
    """(input, output) pairs of ``srcore upscale``: one image -> one PNG, or a folder's images ->
    ``<output>/<stem>.png``. Every destination is checked here, before a model is loaded or anything
    computed."""
    from srcore.data.image_io import image_files
    from srcore.errors import DataError
    from srcore.io import OutputError, check_output_dir, check_output_file

    if image.is_dir():
        sources = image_files(image)
        if not sources:
            raise DataError(f"{image}: no images (.png, .jpg, ...) in this folder")
        if output.resolve() == image.resolve():
            raise OutputError(f"{output}: is the input folder; the PNGs would replace the inputs")
        folder = check_output_dir(output)
        jobs = [(src, folder / f"{src.stem}.png") for src in sources]
        stems = [src.stem for src in sources]
        clash = sorted({s for s in stems if stems.count(s) > 1})
        if clash:
            raise DataError(f"{image}: several images named {clash[0]}.* would all write {clash[0]}.png")
    elif image.is_file():
        if output.suffix.lower() != ".png" and not output.is_dir():
            raise OutputError(f"{output}: upscale writes PNG; give a name ending in .png")
        if output.exists() and output.resolve() == image.resolve():
            raise OutputError(f"{output}: is the input image; choose another output path")
        jobs = [(image, output)]
    else:
        raise DataError(f"{image}: no such image or folder")
    for _, dst in jobs:
        check_output_file(dst)
    return jobs
