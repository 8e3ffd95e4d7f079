"""Parity of an exported graph with its PyTorch model: max |exported - pytorch| over test images.

The test images are random pixels and crops of real photographs (the embedded benchmark, so no
files are needed) at two sizes. Outputs are compared as float in [0, 1] before rounding to
uint8; a fixed-size graph and the PyTorch model are tiled the same way, so the difference
measures the graph, not the tiling.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from srcore.data.benchmarks import embedded_hr
from srcore.inference import TilePlan, to_tensor, upscale_tensor

__all__ = ["ParityCase", "ParityReport", "parity_images", "parity_sizes", "check_parity"]


@dataclass(frozen=True)
class ParityCase:
    image: str  # "random" or the real image's name
    size: tuple[int, int]  # LR (H, W)
    max_abs_diff: float


@dataclass
class ParityReport:
    """The verdict written next to every exported file (``<file>.parity.json``)."""

    format: str
    arch: str
    scale: int
    dtype: str
    size: tuple[int, int] | None
    tolerance: float
    cases: list[ParityCase] = field(default_factory=list)

    @property
    def max_abs_diff(self) -> float:
        return max((c.max_abs_diff for c in self.cases), default=float("nan"))

    @property
    def passed(self) -> bool:
        return bool(self.cases) and self.max_abs_diff <= self.tolerance

    def to_dict(self) -> dict:
        return {**asdict(self), "max_abs_diff": self.max_abs_diff, "passed": self.passed}


def parity_sizes(size: tuple[int, int] | None) -> list[tuple[int, int]]:
    """LR sizes to compare at. A dynamic graph: the trace size (``srcore.export.exporters``) and two
    it never saw, one non-square, one odd-sided; a fixed-size graph: its own size and one that needs
    tiling with a partial tile."""
    if size is None:
        return [(32, 32), (48, 40), (21, 35)]
    h, w = size
    return [(h, w), (h + h // 2 + 3, w + w // 2 + 5)]


def parity_images(sizes: list[tuple[int, int]], seed: int = 0) -> list[tuple[str, torch.Tensor]]:
    """One random image and one real crop per size, as (label, 1x3xHxW float in [0, 1])."""
    rng = np.random.default_rng(seed)
    name, photo = embedded_hr()[0]
    images = []
    for h, w in sizes:
        images.append(("random", to_tensor(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))))
        ph, pw = photo.shape[:2]
        y, x = (ph - h) // 2, (pw - w) // 2
        images.append((name, to_tensor(photo[y:y + h, x:x + w])))
    return images


def check_parity(reference: Callable[[torch.Tensor], torch.Tensor], exported, report: ParityReport,
                 images: list[tuple[str, torch.Tensor]], plan: TilePlan | None) -> ParityReport:
    """Fill ``report.cases`` with max |exported - reference| per image; both are tiled by ``plan``."""
    for label, x in images:
        try:
            ref = upscale_tensor(reference, x, tile=plan).float()
        except Exception as exc:  # say which side failed: the model itself, not its export
            raise RuntimeError(f"the PyTorch model itself fails ({type(exc).__name__}: {exc})") from exc
        got = upscale_tensor(exported, x, tile=plan).float()
        if got.shape != ref.shape:
            diff = float("inf")
        else:
            diff = float((got - ref).abs().max())
            diff = float("inf") if diff != diff else diff  # NaN fails the check
        report.cases.append(ParityCase(label, tuple(x.shape[-2:]), diff))
    return report
