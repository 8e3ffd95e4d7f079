"""``srcore export``: a model to ONNX or TorchScript, written only if it matches PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from srcore.cli.common import app, console, exits_on_error, fail, load_model_for, out


def _options(fmt: str, tile: tuple[int, int] | None, fp16: bool):
    """The export options, or the one-line exit naming each bad option."""
    from pydantic import ValidationError

    from srcore.export import ExportOptions
    from srcore.export.api import TILE_RANGE

    try:
        return ExportOptions(format=fmt, tile=tile, fp16=fp16)
    except ValidationError as exc:
        sides = {0: "height", 1: "width"}
        problems = dict.fromkeys(
            f"--{e['loc'][0]}" + (f" {sides[e['loc'][1]]}" if len(e["loc"]) > 1 else "") + f": {e['msg']}"
            for e in exc.errors())
        hint = (f" (each side {TILE_RANGE[0]}..{TILE_RANGE[1]}, e.g. --tile 64 64)" if tile else
                " (onnx or torchscript)")
        fail("; ".join(problems) + hint)


@app.command("export")
@exits_on_error
def export_cmd(
    out_file: Annotated[Path, typer.Option("--out", help="File to write: .onnx for ONNX, e.g. .pt for "
                                                        "TorchScript; missing folders are created.")],
    model: Annotated[str, typer.Option(help="Model preset (see `srcore models`).")] = "rlfn",
    scale: Annotated[int, typer.Option(help="Upscaling factor.")] = 4,
    weights: Annotated[str | None, typer.Option(help="Checkpoint: srcore, official or BasicSR .pth, "
                                                     "or models:/name@alias (required).")] = None,
    weights_key: Annotated[str | None, typer.Option(help="BasicSR key (params_ema or params).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="onnx (runs in onnxruntime) or torchscript "
                                                      "(torch.jit.load, no srcore needed).")] = "onnx",
    tile: Annotated[tuple[int, int] | None, typer.Option(
        help="Fixed graph input size: two numbers, height and width (--tile 64 64 for square), each "
             "16..2048, to bound memory; runtimes tile larger images into it. Default: dynamic H/W "
             "(SRConvNet to ONNX needs a fixed size).")] = None,
    fp16: Annotated[bool, typer.Option(help="Half precision weights and input (CUDA runtimes); "
                                            "checked against fp32 within 1e-2 instead of 1e-4.")] = False,
    offline: Annotated[bool, typer.Option(help="Load models:/ weights from the local cache only.")] = False,
) -> None:
    """Export a model to ONNX or TorchScript; the file is written only if it matches PyTorch.

    The exported graph is run by its own runtime on random and real images at several sizes and
    compared with PyTorch (max abs difference <= 1e-4 in fp32); the report is written next to the
    file as FILE.parity.json. Run an ONNX export with `srcore upscale --onnx FILE`.
    """
    from srcore.export import export_model
    from srcore.io import check_output_file

    if weights is None:
        fail(f"export needs --weights (a checkpoint or models:/name@alias); without them {model} "
             "would be exported with random weights")
    options = _options(fmt, tile, fp16)
    check_output_file(out_file)
    net = load_model_for(model, scale, weights, weights_key, offline).eval()
    report = export_model(net, out_file, options)
    table = Table(title=f"{report.arch} x{report.scale} -> {report.format} ({report.dtype}), "
                        f"input {'x'.join(map(str, report.size)) if report.size else 'dynamic'}")
    for col in ("image", "LR size", "max abs diff"):
        table.add_column(col)
    for c in report.cases:
        table.add_row(c.image, f"{c.size[0]}x{c.size[1]}", f"{c.max_abs_diff:.2e}")
    out.print(table)
    console.print(f"wrote {out_file} (max abs diff {report.max_abs_diff:.2e} <= {report.tolerance:.0e})")
