"""``srcore upscale``: super-resolve an image or a folder of images, with a model or an exported file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from srcore.cli.common import COMPILE_HELP, app, console, exits_on_error, fail, load_model_for, resolve_device


@app.command("upscale")
@exits_on_error
def upscale_cmd(
    image: Annotated[Path, typer.Argument(help="LR image, or a folder of images, to super-resolve.")],
    output: Annotated[Path, typer.Argument(help="Where to write the SR PNG (a folder when IMAGE is one).")],
    model: Annotated[str, typer.Option(help="Model preset.")] = "bicubic",
    scale: Annotated[int, typer.Option(help="Upscaling factor.")] = 4,
    weights: Annotated[str | None, typer.Option(help="Checkpoint path or models:/name@alias.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    tile: Annotated[int | None, typer.Option(help="Tile size for large images.")] = None,
    offline: Annotated[bool, typer.Option(help="Load models:/ weights from the local cache only.")] = False,
    onnx: Annotated[Path | None, typer.Option(help="Run this ONNX file (from `srcore export`) instead of "
                                                   "--model/--weights; a fixed-size graph is fed tiles of "
                                                   "its own H x W (--tile is then ignored).")] = None,
    compile_: Annotated[bool, typer.Option("--compile", help=COMPILE_HELP)] = False,
) -> None:
    """Super-resolve one image, or every image of a folder into another folder (PNG files)."""
    from srcore.data.image_io import read_rgb, write_png
    from srcore.errors import DataError
    from srcore.inference import upscale_image, upscale_jobs
    from srcore.models.base import check_input_size

    failed: list[str] = []
    jobs = upscale_jobs(image, output)
    if weights is None and model != "bicubic" and onnx is None:
        fail(f"{model} needs --weights (a checkpoint or models:/name@alias); without them it would "
             "write the output of random weights. Only bicubic runs without weights")
    if compile_ and onnx is not None:
        fail("--compile applies to PyTorch models; an --onnx file runs in onnxruntime as it is")
    dev = resolve_device(device)
    if onnx is None:
        net, tiling = load_model_for(model, scale, weights, None, offline).to(dev).eval(), tile
        if compile_:
            from srcore.inference import compile_model

            net = compile_model(net)
    else:
        from srcore.export import load_exported

        net = load_exported(onnx, dev, fmt="onnx")
        tiling = net.plan(tile)
    if net.scale != scale:
        fail(f"the {'ONNX file' if onnx else 'weights'} is for x{net.scale}, but --scale is {scale}")
    for src, dst in jobs:
        try:
            lr = read_rgb(src)
            check_input_size(net, lr.shape[0], lr.shape[1], str(src))
        except DataError as exc:
            if len(jobs) == 1:
                raise
            console.print(f"[yellow]skipped:[/] {exc}")
            failed.append(src.name)
            continue
        write_png(dst, upscale_image(net, lr, dev, tile=tiling))
        console.print(f"wrote {dst}")
    if failed:
        fail(f"{len(failed)} of {len(jobs)} images could not be read or were too small: "
             f"{', '.join(failed)}", 1)
