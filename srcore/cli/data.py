"""``srcore data``: the embedded sample set and patch preprocessing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from srcore.cli.common import app, console, exits_on_error, overrides
from srcore.console import ProgressDisplay, fmt

data_app = typer.Typer(help="Training data: the embedded sample set and patch preprocessing.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("sample")
@exits_on_error
def data_sample_cmd(
    out: Annotated[Path, typer.Option(
        help="Folder to write train/*.png and val/HR/*.png into.")] = Path("data/raw/sample"),
) -> None:
    """Write the embedded DF2K-like sample set (scikit-image's colour images); byte-reproducible."""
    from srcore.data.sample import write_sample
    from srcore.io import check_output_dir

    counts = write_sample(check_output_dir(out))
    console.print(f"wrote {counts['train']} training and {counts['val']} validation images to {out}")


@data_app.command("prepare")
@exits_on_error
def data_prepare_cmd(
    params: Annotated[Path, typer.Option(help="Parameters file (section 'prepare').")] = Path("params.yaml"),
    input_dir: Annotated[list[str] | None, typer.Option(
        "--input", help="Raw HR folder or s3://bucket/prefix; repeat for several (overrides params).",
    )] = None,
    out_dir: Annotated[str | None, typer.Option(
        "--out", help="Output folder or s3://bucket/prefix for x{s}/*.parquet.")] = None,
    scale: Annotated[list[int] | None, typer.Option(help="Scale to prepare; repeat for several.")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (0 = all cores).")] = None,
    on_bad: Annotated[str | None, typer.Option(help="skip (report and continue) or fail.")] = None,
    executor: Annotated[str | None, typer.Option(
        help="local (process pool) or ray (one task per shard).")] = None,
    address: Annotated[str | None, typer.Option(
        help="Ray cluster HOST:PORT (implies --executor ray).")] = None,
) -> None:
    """Cut HR/LR sub-image pairs into Parquet shards (resumable; only stale shards are rebuilt)."""
    from srcore.config import load_params
    from srcore.data.prepare import prepare

    cfg = load_params(params, overrides(**{
        "prepare.input": input_dir[0] if input_dir and len(input_dir) == 1 else input_dir,
        "prepare.out": out_dir,
        "prepare.scales": scale, "prepare.workers": workers, "prepare.on_bad": on_bad,
        "prepare.executor": executor or ("ray" if address else None),
        "prepare.address": address})).prepare
    with ProgressDisplay(console, "preparing", unit="shards", fields=("speed",)) as display:
        images = [0]

        def done(n: int) -> None:
            images[0] += n
            rate = images[0] / max(display.elapsed(), 1e-9)
            display.update(advance=1, speed=fmt(rate, ".2f", " img/s"))

        summary = prepare(cfg, on_progress=done,
                          on_total=lambda _images, shards: display.update(total=shards))
    rows = ", ".join(f"x{s}: {n} pairs" for s, n in summary.rows.items())
    console.print(f"{summary.images} images -> {rows} in {summary.out} "
                  f"({summary.built_shards} shards built, {summary.reused_shards} up to date)")
    if summary.bad:
        console.print(f"[yellow]{len(summary.bad)} image(s) skipped:[/]")
        for b in summary.bad:
            console.print(f"  {b['reason']}")
