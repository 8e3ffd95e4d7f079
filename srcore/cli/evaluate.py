"""``srcore eval``: models on benchmarks, one table per scale."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from srcore.cli.common import (
    COMPILE_HELP,
    app,
    console,
    emit_json,
    exits_on_error,
    fail,
    load_model_for,
    out,
    resolve_device,
)
from srcore.console import ProgressDisplay
from srcore.errors import SrcoreError


def _check_outputs(json_out: str | None, csv_out: Path | None, md_out: Path | None,
                   save_images: Path | None) -> None:
    from srcore.io import check_output_dir, check_output_file

    for path in (json_out if json_out != "-" else None, csv_out, md_out):
        if path is not None:
            check_output_file(path)
    if save_images is not None:
        check_output_dir(save_images)


def _print_suite(result, stream: Console) -> None:
    for s, rows in result.tables.items():
        sets = [d for d in result.datasets if any(d in r.results for r in rows)]
        table = Table(title=f"x{s}: PSNR-Y / SSIM-Y (border {s})")
        for col in ["model", "params", "GFLOPs", "scan"] + sets:
            table.add_column(col, justify="left" if col == "model" else "right")
        for r in rows:
            table.add_row(r.label, f"{r.params:,}", f"{r.flops_g:.2f}", r.scan_backend or "-",
                          *(f"{r.results[d].psnr_y:.2f} / {r.results[d].ssim_y:.4f}" for d in sets))
        stream.print(table)
        for r in rows:
            if r.tiling:
                console.print(f"[yellow]tiling:[/] {r.tiling}")
    if result.missing:
        console.print(f"[yellow]missing datasets (not evaluated):[/] {', '.join(result.missing)}")
    for s in result.skipped:
        console.print(f"[yellow]skipped:[/] {s} (the weights are for another scale)")


@app.command("eval")
@exits_on_error
def eval_cmd(
    model: Annotated[list[str] | None, typer.Option(
        help="Model preset (see `srcore models`); repeat for several. Default: bicubic, or the "
             "model the --weights name.")] = None,
    dataset: Annotated[list[str] | None, typer.Option(
        help="Benchmark name; repeat for several. 'embedded' needs no files.")] = None,
    suite: Annotated[str | None, typer.Option(
        help="A named set of benchmarks: standard = Set5, Set14, B100, Urban100, Manga109.")] = None,
    scale: Annotated[list[int], typer.Option(
        help="Upscaling factor (2, 3 or 4); repeat for several.")] = [4],  # noqa: B006
    weights: Annotated[list[str] | None, typer.Option(
        help="Checkpoint: srcore, official or BasicSR .pth, or models:/name@alias; repeat for "
             "several.")] = None,
    weights_key: Annotated[str | None, typer.Option(
        help="BasicSR key to read (params_ema or params).")] = None,
    data_root: Annotated[Path | None, typer.Option(
        help="Folder holding <Name>/HR/*.png (default $SRCORE_DATA or ./data/benchmarks).")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    tile: Annotated[int | None, typer.Option(
        help="Process the LR image in tiles of this size (bounded memory); the overlap follows "
             "the model's receptive field.")] = None,
    workers: Annotated[int, typer.Option(
        help="Processes scoring images in parallel (CPU): started once the images left repay their "
             "start-up, then kept for the next dataset and model.")] = 1,
    address: Annotated[str | None, typer.Option(
        help="Ray cluster address: score images on its workers (paths must be visible there).")] = None,
    json_out: Annotated[str | None, typer.Option(
        "--json", help="Write results (with per-image values) as JSON to FILE, or - for stdout.")] = None,
    csv_out: Annotated[Path | None, typer.Option(
        "--csv", help="Write one CSV row per scale, model and dataset.")] = None,
    md_out: Annotated[Path | None, typer.Option("--markdown", help="Write the tables as Markdown.")] = None,
    save_images: Annotated[Path | None, typer.Option(help="Write the SR images under this folder.")] = None,
    compile_: Annotated[bool, typer.Option("--compile", help=COMPILE_HELP)] = False,
) -> None:
    """Evaluate models on benchmarks: PSNR-Y / SSIM-Y (border = scale), one table per scale."""
    from srcore.evaluation import expand_datasets, model_entries, run_suite, total_images
    from srcore.io import atomic_write_text

    models = model or ([] if weights else ["bicubic"])
    names = expand_datasets(([suite] if suite else []) + list(dataset or ([] if suite else ["Set5"])))
    if suite is not None and suite not in ("standard",):
        fail(f"--suite must be 'standard', got {suite!r}")
    if workers < 1:
        fail(f"--workers must be >= 1, got {workers}")
    if compile_ and (workers > 1 or address):
        fail("--compile scores in this process; drop --workers/--address, or --compile")
    try:
        _check_outputs(json_out, csv_out, md_out, save_images)
        dev = resolve_device(device)
        entries = model_entries(models, list(weights or []), scale, dev,
                                lambda name, s, w: load_model_for(name, s, w, weights_key))
        total = total_images(names, data_root) * len(entries) * len(scale)
        with ProgressDisplay(console, "eval", total=total or None, unit="images", transient=True) as display:
            def on_image(dataset: str, _name: str, _done: int, _count: int) -> None:
                display.update(advance=1, description=dataset)

            result = run_suite(entries, names, list(scale), data_root, dev, tile, save_images, on_image,
                               workers, address, compile_)
        payload = result.as_dict()
        if len(entries) == 1 and len(result.tables) == 1:
            row = next(iter(result.tables.values()))[0]
            payload = {"model": row.label, "scale": scale[0], "weights": (weights or [None])[0],
                       "scan_backend": row.scan_backend,
                       "results": {k: v.summary() for k, v in row.results.items()}, **payload}
        _print_suite(result, out if json_out != "-" else console)
        if csv_out is not None:
            atomic_write_text(csv_out, result.to_csv())
            console.print(f"wrote {csv_out}")
        if md_out is not None:
            atomic_write_text(md_out, result.to_markdown())
            console.print(f"wrote {md_out}")
        emit_json(payload, json_out)
    except OSError as exc:
        if isinstance(exc, SrcoreError):  # OutputError: its own message, by exits_on_error
            raise
        fail(f"{exc.filename or ''}: {exc.strerror or exc}")
