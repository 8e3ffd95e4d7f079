"""``srcore`` command line: models, evaluation, profiling, upscaling."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from srcore.console import ProgressDisplay, fmt
from srcore.errors import SrcoreError

app = typer.Typer(help="Lightweight single-image super-resolution: models, data, training, evaluation.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
console = Console(stderr=True)
out = Console()

def _fail(message: str, code: int = 2) -> None:
    # one line, however long: a path in the message must stay whole when copied from the terminal
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code)


def _emit_json(payload: dict, target: str | None) -> None:
    if target is None:
        return
    text = json.dumps(payload, indent=2)
    if target == "-":
        out.print_json(text)
    else:
        from srcore.io import atomic_write_bytes

        atomic_write_bytes(target, (text + "\n").encode())
        console.print(f"wrote {target}")


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        _fail("--device cuda requested but no CUDA device is available")
    if device not in ("cpu", "cuda"):
        _fail(f"--device must be cpu, cuda or auto, got {device!r}")
    return device


def _print_version(value: bool) -> None:
    if value:
        from srcore import __version__

        out.print(f"srcore {__version__}")
        raise typer.Exit()


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
         version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])
    if not verbose:
        _quiet_mlflow()


def _quiet_mlflow() -> None:
    """MLflow prints its INFO lines (the system-metrics monitor starting and stopping, ...) through
    its own handler, at the level ``MLFLOW_LOGGING_LEVEL`` gives when it is imported; the console
    shows its warnings only (``-v`` shows everything). Processes started from here inherit it."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    if "mlflow" in sys.modules:  # already imported (and configured) in this process
        logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"].upper())


@app.command("models")
def models_cmd(scale: Annotated[int, typer.Option(help="Scale to count parameters at.")] = 4) -> None:
    """List every model preset with its parameter count."""
    from srcore.metrics.efficiency import count_params
    from srcore.models import build, list_presets

    table = Table(title=f"srcore models (x{scale})")
    for col in ("name", "arch", "params", "description"):
        table.add_column(col, justify="right" if col == "params" else "left")
    for p in list_presets():
        table.add_row(p.name, p.arch, f"{count_params(build(p.name, scale)):,}", p.description)
    out.print(table)


def _load(model: str | None, scale: int, weights: str | None, weights_key: str | None = None,
          offline: bool = False):
    """``model`` with ``weights`` (any spec ``srcore.train.weights`` reads; without ``model`` the
    checkpoint names it), or randomly initialised without weights."""
    from srcore.models import build
    from srcore.train.weights import load_spec

    if weights is None:
        if model != "bicubic":
            console.print(f"[yellow]warning:[/] no --weights given: {model} runs with random initialisation")
        return build(model, scale)
    registered = weights.startswith("models:/")  # a registered model's own scale is checked by the caller
    return load_spec(weights, model, None if registered else scale, weights_key, offline)


def _eval_entries(models: list[str], weights: list[str], weights_key: str | None, scales: list[int],
                  device: str) -> list:
    """One suite entry per --model/--weights pair (weights alone: the checkpoint names its model)."""
    from srcore.errors import ConfigError
    from srcore.evaluation import ModelEntry

    if weights and len(models) > 1 and len(models) != len(weights):
        raise ConfigError(f"{len(models)} --model and {len(weights)} --weights: give one --model per "
                          "--weights, or one --model for all, or none (the checkpoints name their model)")
    if not weights:
        return [ModelEntry(m, lambda s, m=m: _load(m, s, None, None).to(device)) for m in models]
    entries = []
    for i, w in enumerate(weights):
        name = models[i] if len(models) == len(weights) else (models[0] if models else None)
        net = _load(name, scales[0], w, weights_key)
        net = net.to(device)
        if len(scales) == 1 and net.scale != scales[0]:
            raise ConfigError(f"the weights are for x{net.scale}, but --scale is {scales[0]}")
        entries.append(ModelEntry(f"{net.arch} ({w if w.startswith('models:/') else Path(w).name})",
                                  lambda s, net=net: net if s == net.scale else None))
    return entries


def _check_eval_outputs(json_out: str | None, csv_out: Path | None, md_out: Path | None,
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
    workers: Annotated[int, typer.Option(help="Processes scoring images in parallel (CPU).")] = 1,
    address: Annotated[str | None, typer.Option(
        help="Ray cluster address: score images on its workers (paths must be visible there).")] = None,
    json_out: Annotated[str | None, typer.Option(
        "--json", help="Write results (with per-image values) as JSON to FILE, or - for stdout.")] = None,
    csv_out: Annotated[Path | None, typer.Option(
        "--csv", help="Write one CSV row per scale, model and dataset.")] = None,
    md_out: Annotated[Path | None, typer.Option("--markdown", help="Write the tables as Markdown.")] = None,
    save_images: Annotated[Path | None, typer.Option(help="Write the SR images under this folder.")] = None,
) -> None:
    """Evaluate models on benchmarks: PSNR-Y / SSIM-Y (border = scale), one table per scale."""
    from srcore.evaluation import expand_datasets, run_suite, total_images
    from srcore.io import atomic_write_text

    models = model or ([] if weights else ["bicubic"])
    names = expand_datasets(([suite] if suite else []) + list(dataset or ([] if suite else ["Set5"])))
    try:
        if suite is not None and suite not in ("standard",):
            _fail(f"--suite must be 'standard', got {suite!r}")
        if workers < 1:
            _fail(f"--workers must be >= 1, got {workers}")
        _check_eval_outputs(json_out, csv_out, md_out, save_images)
        dev = _resolve_device(device)
        entries = _eval_entries(models, list(weights or []), weights_key, scale, dev)
        total = total_images(names, data_root) * len(entries) * len(scale)
        with ProgressDisplay(console, "eval", total=total or None, unit="images", transient=True) as display:
            def on_image(dataset: str, _name: str, _done: int, _count: int) -> None:
                display.update(advance=1, description=dataset)

            result = run_suite(entries, names, list(scale), data_root, dev, tile, save_images, on_image,
                               workers, address)
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
        _emit_json(payload, json_out)
    except SrcoreError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"{exc.filename or ''}: {exc.strerror or exc}")


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        if h < 1 or w < 1:
            raise ValueError
    except ValueError:
        _fail(f"--input must look like 256x256, got {text!r}")
    return h, w


@app.command("profile")
def profile_cmd(
    model: Annotated[str | None, typer.Option(help="Model preset.")] = None,
    all_models: Annotated[bool, typer.Option("--all", help="Profile every zoo model.")] = False,
    scale: Annotated[int, typer.Option(help="Upscaling factor.")] = 4,
    input_size: Annotated[str, typer.Option("--input", help="LR input HxW.")] = "256x256",
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    repeats: Annotated[int, typer.Option(help="Timed repeats (median reported).")] = 5,
    weights: Annotated[str | None, typer.Option(
        help="Optional checkpoint (its config decides the model).")] = None,
    json_out: Annotated[str | None, typer.Option(
        "--json", help="Write JSON to FILE, or - for stdout.")] = None,
) -> None:
    """Parameters, FLOPs (fvcore convention, scan counted), activations, latency, peak memory."""
    from srcore.metrics.efficiency import profile_model
    from srcore.models import build, load_model, preset_names
    from srcore.ops import model_scan_backend

    if not all_models and model is None:
        _fail("give --model NAME or --all")
    h, w = _parse_size(input_size)
    dev = _resolve_device(device)
    names = preset_names() if all_models else [model]
    rows = []
    try:
        with ProgressDisplay(console, "profiling", total=len(names), unit="models",
                             transient=True) as display:
            for name in names:
                display.update(description=f"profiling {name}")
                net = load_model(weights, name=name, scale=scale) if weights else build(name, scale)
                row = profile_model(net, name, scale, h, w, dev, repeats=repeats).as_dict()
                rows.append({**row, "scan_backend": model_scan_backend(net, dev)})
                display.update(advance=1)
    except SrcoreError as exc:
        _fail(str(exc))
    table = Table(title=f"efficiency x{scale}, input 1x3x{h}x{w}, {dev}")
    cols = [("model", "model"), ("params", "params"), ("flops_g", "GFLOPs"),
            ("flops_fvcore_plain_g", "GFLOPs (plain fvcore)"), ("activations_m", "acts (M)"),
            ("latency_ms", "latency (ms)"), ("peak_mem_mb", "peak mem (MB)"), ("scan_backend", "scan")]
    for _, title in cols:
        table.add_column(title, justify="left" if title == "model" else "right")
    for r in rows:
        table.add_row(r["model"], f"{r['params']:,}", f"{r['flops_g']:.2f}",
                      f"{r['flops_fvcore_plain_g']:.2f}",
                      f"{r['activations_m']:.2f}", f"{r['latency_ms']:.1f}", f"{r['peak_mem_mb']:.0f}",
                      r["scan_backend"] or "-")
    out.print(table) if json_out != "-" else console.print(table)
    _emit_json(rows[0] if len(rows) == 1 else {"rows": rows}, json_out)


def _upscale_jobs(image: Path, output: Path) -> list[tuple[Path, Path]]:
    """(input, output) pairs: one image -> one PNG, or a folder's images -> ``<output>/<stem>.png``.
    Every destination is checked here, before a model is loaded or anything computed."""
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


@app.command("upscale")
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
) -> None:
    """Super-resolve one image, or every image of a folder into another folder (PNG files)."""
    from srcore.data.image_io import read_rgb, write_png
    from srcore.errors import DataError
    from srcore.inference import upscale_image
    from srcore.models.base import check_input_size

    failed: list[str] = []
    try:
        jobs = _upscale_jobs(image, output)
        if weights is None and model != "bicubic" and onnx is None:
            _fail(f"{model} needs --weights (a checkpoint or models:/name@alias); without them it would "
                  "write the output of random weights. Only bicubic runs without weights")
        dev = _resolve_device(device)
        if onnx is None:
            net, tiling = _load(model, scale, weights, None, offline).to(dev).eval(), tile
        else:
            from srcore.export import load_exported

            net = load_exported(onnx, dev, fmt="onnx")
            tiling = net.plan(tile)
        if net.scale != scale:
            _fail(f"the {'ONNX file' if onnx else 'weights'} is for x{net.scale}, but --scale is {scale}")
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
    except SrcoreError as exc:
        _fail(str(exc))
    if failed:
        _fail(f"{len(failed)} of {len(jobs)} images could not be read or were too small: "
              f"{', '.join(failed)}", 1)


@app.command("export")
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
             "16..2048. Runtimes tile larger images into it. Default: dynamic H/W; Mamba models "
             "(dvmsr, mair) and SRConvNet to ONNX need it.")] = None,
    fp16: Annotated[bool, typer.Option(help="Half precision weights and input (CUDA runtimes); "
                                            "checked against fp32 within 1e-2 instead of 1e-4.")] = False,
    offline: Annotated[bool, typer.Option(help="Load models:/ weights from the local cache only.")] = False,
) -> None:
    """Export a model to ONNX or TorchScript; the file is written only if it matches PyTorch.

    The exported graph is run by its own runtime on random and real images at two sizes and
    compared with PyTorch (max abs difference <= 1e-4 in fp32); the report is written next to the
    file as FILE.parity.json. Run an ONNX export with `srcore upscale --onnx FILE`.
    """
    from pydantic import ValidationError

    from srcore.export import ExportOptions, export_model
    from srcore.export.api import TILE_RANGE
    from srcore.io import check_output_file

    if weights is None:
        _fail(f"export needs --weights (a checkpoint or models:/name@alias); without them {model} "
              "would be exported with random weights")
    try:
        options = ExportOptions(format=fmt, tile=tile, fp16=fp16)
    except ValidationError as exc:
        sides = {0: "height", 1: "width"}
        problems = dict.fromkeys(
            f"--{e['loc'][0]}" + (f" {sides[e['loc'][1]]}" if len(e["loc"]) > 1 else "") + f": {e['msg']}"
            for e in exc.errors())
        hint = (f" (each side {TILE_RANGE[0]}..{TILE_RANGE[1]}, e.g. --tile 64 64)" if tile else
                " (onnx or torchscript)")
        _fail("; ".join(problems) + hint)
    try:
        check_output_file(out_file)
        net = _load(model, scale, weights, weights_key, offline).eval()
        report = export_model(net, out_file, options)
    except SrcoreError as exc:
        _fail(str(exc))
    table = Table(title=f"{report.arch} x{report.scale} -> {report.format} ({report.dtype}), "
                        f"input {'x'.join(map(str, report.size)) if report.size else 'dynamic'}")
    for col in ("image", "LR size", "max abs diff"):
        table.add_column(col)
    for c in report.cases:
        table.add_row(c.image, f"{c.size[0]}x{c.size[1]}", f"{c.max_abs_diff:.2e}")
    out.print(table)
    console.print(f"wrote {out_file} (max abs diff {report.max_abs_diff:.2e} <= {report.tolerance:.0e})")


data_app = typer.Typer(help="Training data: the embedded sample set and patch preprocessing.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("sample")
def data_sample_cmd(
    out: Annotated[Path, typer.Option(
        help="Folder to write train/*.png and val/HR/*.png into.")] = Path("data/raw/sample"),
) -> None:
    """Write the embedded DF2K-like sample set (scikit-image's colour images); byte-reproducible."""
    from srcore.data.sample import write_sample
    from srcore.io import check_output_dir

    try:
        counts = write_sample(check_output_dir(out))
    except SrcoreError as exc:
        _fail(str(exc))
    console.print(f"wrote {counts['train']} training and {counts['val']} validation images to {out}")


def _overrides(**values) -> dict:
    return {k: v for k, v in values.items() if v not in (None, [], ())}


@data_app.command("prepare")
def data_prepare_cmd(
    params: Annotated[Path, typer.Option(help="Parameters file (section 'prepare').")] = Path("params.yaml"),
    input_dir: Annotated[str | None, typer.Option(
        "--input", help="Raw HR folder or s3://bucket/prefix (overrides params).")] = None,
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

    try:
        cfg = load_params(params, _overrides(**{
            "prepare.input": input_dir, "prepare.out": out_dir,
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
    except SrcoreError as exc:
        _fail(str(exc))
    rows = ", ".join(f"x{s}: {n} pairs" for s, n in summary.rows.items())
    console.print(f"{summary.images} images -> {rows} in {summary.out} "
                  f"({summary.built_shards} shards built, {summary.reused_shards} up to date)")
    if summary.bad:
        console.print(f"[yellow]{len(summary.bad)} image(s) skipped:[/]")
        for b in summary.bad:
            console.print(f"  {b['reason']}")


def _parse_sets(items: list[str] | None) -> dict:
    import yaml

    out = {}
    for item in items or []:
        if "=" not in item:
            _fail(f"--set expects KEY=VALUE (e.g. teacher.steps=200), got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def _train(stage: str, params: Path, profile: str | None, sets: list[str] | None, address: str | None,
           name: str | None, extra: dict) -> None:
    from srcore.config import load_params
    from srcore.console import training_bar
    from srcore.tracking.live import run_tracked_stage
    from srcore.train.stop import TrainingInterrupted

    verbose = logging.getLogger().isEnabledFor(logging.DEBUG)  # --verbose: Ray's own output stays visible
    try:
        cfg = load_params(params, {**_parse_sets(sets), **extra}, profile=profile)
        # Logged to MLFLOW_TRACKING_URI when set, else to the local store (mlflow.db here).
        with training_bar(console, name or stage) as on_progress:
            result, _run = run_tracked_stage(cfg, stage, address=address, name=name, on_progress=on_progress,
                                             quiet_ray=not verbose,
                                             announce=lambda run: console.print(f"MLflow: {run.url}"))
    except TrainingInterrupted as exc:  # the shell's convention for a run ended by a signal
        _fail(str(exc), 128 + exc.signum)
    except SrcoreError as exc:
        _fail(str(exc))
    m = result.metrics
    console.print(f"[bold]{result.name}[/]: step {m.get('step')}, loss {m.get('loss', float('nan')):.4f}, "
                  f"val PSNR-Y {m.get('val_psnr_y', float('nan')):.2f} dB")
    console.print(f"model: {result.model_path}")


_PARAMS_OPT = typer.Option(help="Parameters file.")
_PROFILE_OPT = typer.Option(help="Profile from params.yaml 'profiles' (e.g. tiny).")
_SET_OPT = typer.Option("--set", help="Override a parameter: KEY=VALUE (repeatable).")
_INIT_OPT = typer.Option(help="Start from these weights instead of random: a checkpoint or run folder, "
                         "an official file (plain or BasicSR params/params_ema), s3:// URI or "
                         "models:/name@alias; loaded strictly into the configured model.")


@app.command("train")
def train_cmd(
    params: Annotated[Path, _PARAMS_OPT] = Path("params.yaml"),
    stage: Annotated[str, typer.Option(
        help="Only 'teacher' (plain training, the default); distil with `srcore distill`.")] = "teacher",
    address: Annotated[str | None, typer.Option(
        help="Ray cluster address (default: start a local Ray).")] = None,
    resume: Annotated[str | None, typer.Option(
        help="Run name to continue (default: the stage's name).")] = None,
    profile: Annotated[str | None, _PROFILE_OPT] = None,
    sets: Annotated[list[str] | None, _SET_OPT] = None,
    init: Annotated[str | None, _INIT_OPT] = None,
) -> None:
    """Train a model (the teacher section) on the prepared shards with Ray Train; re-running a
    name resumes it. --init fine-tunes from existing weights (e.g. an official release)."""
    if stage != "teacher":
        _fail(f"--stage {stage!r}: `srcore train` trains the teacher; distil a student with `srcore distill`")
    _train("teacher", params, profile, sets, address, resume, _overrides(**{"teacher.init": init}))


@app.command("distill")
def distill_cmd(
    params: Annotated[Path, _PARAMS_OPT] = Path("params.yaml"),
    teacher: Annotated[str | None, typer.Option(
        help="Teacher: checkpoint, run folder, models:/name@alias.")] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address.")] = None,
    resume: Annotated[str | None, typer.Option(help="Run name to continue.")] = None,
    profile: Annotated[str | None, _PROFILE_OPT] = None,
    sets: Annotated[list[str] | None, _SET_OPT] = None,
    init: Annotated[str | None, _INIT_OPT] = None,
) -> None:
    """Distil a student from a frozen teacher (section 'student' of params.yaml); --init starts the
    student from existing weights."""
    _train("distill", params, profile, sets, address, resume,
           _overrides(**{"student.teacher": teacher, "student.init": init}))


stack_app = typer.Typer(help="Local production stack: PostgreSQL, S3 (SeaweedFS), MLflow, Prefect, "
                        "2-node Ray.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
_STACK_DIR_OPT = typer.Option("--dir", help="Folder holding the stack's data, logs, PID files and env file.")


def _stack_config(root: Path, port_base: int | None = None):
    from srcore.stack import StackConfig

    try:
        return StackConfig.load(root, port_base=port_base)
    except (SrcoreError, ValueError) as exc:
        _fail(str(exc))


@stack_app.command("up")
def stack_up_cmd(
    root: Annotated[Path, _STACK_DIR_OPT] = Path(".stack"),
    port_base: Annotated[int | None, typer.Option(help="First of the stack's loopback ports (kept after "
                                                       "the first up).")] = None,
) -> None:
    """Start every service that is not running (a second `up` is a no-op) and write <dir>/env."""
    from srcore.stack import up

    cfg = _stack_config(root, port_base)
    try:
        report = up(cfg)
    except SrcoreError as exc:
        _fail(str(exc))
    for name in report.started:
        console.print(f"started {name} (ready after {report.ready_after_s[name]:.1f} s)")
    if report.already_running:
        console.print(f"already running: {', '.join(report.already_running)}")
    console.print(f"stack up in {report.total_s:.1f} s; endpoints in {cfg.env_file} "
                  f"(eval \"$(srcore stack env --dir {root})\")")


@stack_app.command("status")
def stack_status_cmd(root: Annotated[Path, _STACK_DIR_OPT] = Path(".stack")) -> None:
    """Each service's version, endpoint, processes and health; exit 1 unless all are healthy."""
    from srcore.stack import status

    rows = status(_stack_config(root))
    table = Table("service", "version", "endpoint", "pids", "health")
    for r in rows:
        table.add_row(r.name, r.version, r.endpoint, " ".join(map(str, r.pids)) or "-",
                      "[green]healthy[/]" if r.healthy else "[red]down[/]")
    out.print(table)
    if not all(r.healthy for r in rows):
        raise typer.Exit(1)


@stack_app.command("down")
def stack_down_cmd(root: Annotated[Path, _STACK_DIR_OPT] = Path(".stack")) -> None:
    """Stop exactly the processes `up` started; data stays for the next `up`."""
    from srcore.stack import down

    try:
        stopped = down(_stack_config(root))
    except SrcoreError as exc:
        _fail(str(exc))
    for name, pids in stopped.items():
        console.print(f"stopped {name}: {len(pids)} process(es)" if pids else f"{name}: not running")


@stack_app.command("env")
def stack_env_cmd(root: Annotated[Path, _STACK_DIR_OPT] = Path(".stack")) -> None:
    """Print `export KEY=value` lines for a shell: eval "$(srcore stack env)"."""
    import shlex

    from srcore.stack.config import read_env_file

    try:
        values = read_env_file(_stack_config(root).env_file)
    except SrcoreError as exc:
        _fail(str(exc))
    for key, value in values.items():
        out.print(f"export {key}={shlex.quote(value)}", soft_wrap=True, highlight=False, markup=False)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
