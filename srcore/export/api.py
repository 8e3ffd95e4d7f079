"""``export_model``: export, verify against PyTorch, then (and only then) write the file and its report.

Graphs take any H and W unless ``tile`` fixes their size (to bound memory), or where onnxruntime
cannot run the dynamic graph (its DFT kernel, used by SRConvNet's FFTs, fails on symbolic shapes);
a fixed-size graph is fed tiles by the runtime. The Mamba models' selective scan is exported as
loops over chunks of the sequence (``srcore.ops.scan_loop``), so their graphs do not grow with the
input. fp32 exports must match PyTorch within 1e-4; fp16 exports are compared
with the fp32 model and held to 1e-2 (half precision keeps about three decimal digits).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from srcore.errors import SrcoreError
from srcore.export.exporters import export_onnx, export_torchscript
from srcore.export.runtime import ExportedModel, ExportMeta, load_exported
from srcore.export.verify import ParityReport, check_parity, parity_images, parity_sizes
from srcore.io import atomic_output, atomic_write_text, check_output_file
from srcore.models.base import SRModel

log = logging.getLogger(__name__)

__all__ = ["ExportError", "ExportOptions", "export_model", "report_path", "FIXED_SIZE_ONLY", "TILE_RANGE"]

TOLERANCE = {"float32": 1e-4, "float16": 1e-2}
# Sides of a fixed-size graph: below 16 the runtime's tiles would be mostly context; above 2048
# a single tile would not fit the memory tiling is meant to bound. Any side in between works
# (no divisibility needed: the runtime pads an edge tile up to the graph's size).
TILE_RANGE = (16, 2048)
_Side = Annotated[int, Field(ge=TILE_RANGE[0], le=TILE_RANGE[1])]
# (format, arch) -> why only a fixed input size can be exported.
FIXED_SIZE_ONLY: dict[tuple[str, str], str] = {
    ("onnx", "srconvnet"): "onnxruntime's DFT kernel fails on dynamic sizes (SRConvNet's FFTs)",
}


class ExportError(SrcoreError):
    """A model that cannot be exported as asked, or whose export does not match PyTorch."""


class ExportOptions(BaseModel):
    """How to export: format, fixed input size ``tile`` as (H, W) (an int means square; None:
    dynamic H/W), precision, tolerance."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["onnx", "torchscript"] = "onnx"
    tile: tuple[_Side, _Side] | None = None
    fp16: bool = False
    tolerance: float | None = Field(default=None, gt=0)

    @field_validator("tile", mode="before")
    @classmethod
    def _square(cls, value: object) -> object:
        """One side given: a square graph."""
        return (value, value) if isinstance(value, int) and not isinstance(value, bool) else value

    @property
    def dtype(self) -> str:
        return "float16" if self.fp16 else "float32"


def report_path(out: str | os.PathLike) -> Path:
    """Where the parity report of an exported file goes."""
    out = Path(out)
    return out.with_name(out.name + ".parity.json")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def export_model(model: SRModel, out: str | os.PathLike, options: ExportOptions) -> ParityReport:
    """Export ``model`` to ``out``, verify it, write ``out`` and ``<out>.parity.json``; return the report.

    Raises ``ExportError`` (nothing written, not even ``out``'s folder) if the model cannot be
    exported as asked or the exported graph differs from PyTorch by more than the tolerance.
    """
    fmt, arch = options.format, model.arch
    if options.tile is None and (fmt, arch) in FIXED_SIZE_ONLY:
        raise ExportError(f"{arch} to {fmt}: a dynamic input size is not possible "
                          f"({FIXED_SIZE_ONLY[fmt, arch]}); pass --tile H W (e.g. --tile 64 64) for a "
                          "fixed-size graph that the runtime tiles")
    size = options.tile
    if size is not None and min(size) < model.min_input_size:
        raise ExportError(f"{arch}: --tile {size[0]} {size[1]} is below the model's minimum input of "
                          f"{model.min_input_size} px a side; pass a larger tile")
    out = check_output_file(out)
    report = ParityReport(fmt, arch, model.scale, options.dtype, size,
                          options.tolerance or TOLERANCE[options.dtype])
    # Exported and checked in a scratch folder: only a verified file reaches ``out``.
    with tempfile.TemporaryDirectory(prefix="srcore-export-") as scratch:
        tmp = Path(scratch) / out.name
        _export_checked(model.eval(), tmp, options, report)
        with atomic_output(out) as dest:
            shutil.copyfile(tmp, dest)
    atomic_write_text(report_path(out), json.dumps(report.to_dict(), indent=2) + "\n")
    log.info("exported %s to %s: max abs diff %.2e over %d images", arch, out, report.max_abs_diff,
             len(report.cases))
    return report


def _export_checked(model: SRModel, tmp: Path, options: ExportOptions, report: ParityReport) -> None:
    """Write the export to ``tmp`` and fill ``report``; raise ``ExportError`` unless it passes."""
    fmt, arch, size = options.format, model.arch, options.tile
    meta = ExportMeta(fmt, arch, model.scale, size, options.dtype, 1 if size else model.min_input_size)
    subject = copy.deepcopy(model).half() if options.fp16 else model
    try:
        (export_onnx if fmt == "onnx" else export_torchscript)(subject, tmp, meta)
        exported = load_exported(tmp, fmt=fmt)
    except SrcoreError:
        raise
    except Exception as exc:  # exporters raise many types; the user needs the reason, not the stack
        raise ExportError(f"{arch} to {fmt}: the exporter failed ({_first_line(exc)}); "
                          "no file written") from exc
    reference = ExportedModel("pytorch", ExportMeta(fmt, arch, model.scale, size, "float32"), model)
    try:
        check_parity(reference, exported, report, parity_images(parity_sizes(size)), exported.plan())
    except SrcoreError:
        raise
    except Exception as exc:
        raise ExportError(f"{arch} to {fmt}: the parity check fails to run "
                          f"({_first_line(exc)}); no file written") from exc
    if not report.passed:
        worst = max(report.cases, key=lambda c: c.max_abs_diff)
        raise ExportError(f"{arch} to {fmt} ({options.dtype}): max abs difference "
                          f"{report.max_abs_diff:.2e} exceeds the tolerance {report.tolerance:.0e} "
                          f"(worst: {worst.image} at {worst.size[0]}x{worst.size[1]}); no file written")
