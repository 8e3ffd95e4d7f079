"""``srcore models`` and ``srcore profile``: the zoo's presets and their efficiency."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from srcore.cli.common import app, console, emit_json, exits_on_error, fail, out, resolve_device
from srcore.console import ProgressDisplay


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


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        if h < 1 or w < 1:
            raise ValueError
    except ValueError:
        fail(f"--input must look like 256x256, got {text!r}")
    return h, w


_COLUMNS = [("model", "model"), ("params", "params"), ("flops_g", "GFLOPs"),
            ("flops_fvcore_plain_g", "GFLOPs (plain fvcore)"), ("activations_m", "acts (M)"),
            ("latency_ms", "latency (ms)"), ("peak_mem_mb", "peak mem (MB)"), ("scan_backend", "scan")]


def _table(rows: list[dict], scale: int, h: int, w: int, dev: str) -> Table:
    table = Table(title=f"efficiency x{scale}, input 1x3x{h}x{w}, {dev}")
    for _, title in _COLUMNS:
        table.add_column(title, justify="left" if title == "model" else "right")
    for r in rows:
        table.add_row(r["model"], f"{r['params']:,}", f"{r['flops_g']:.2f}",
                      f"{r['flops_fvcore_plain_g']:.2f}",
                      f"{r['activations_m']:.2f}", f"{r['latency_ms']:.1f}", f"{r['peak_mem_mb']:.0f}",
                      r["scan_backend"] or "-")
    return table


@app.command("profile")
@exits_on_error
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
        fail("give --model NAME or --all")
    h, w = _parse_size(input_size)
    dev = resolve_device(device)
    names = preset_names() if all_models else [model]
    rows = []
    with ProgressDisplay(console, "profiling", total=len(names), unit="models", transient=True) as display:
        for name in names:
            display.update(description=f"profiling {name}")
            net = load_model(weights, name=name, scale=scale) if weights else build(name, scale)
            row = profile_model(net, name, scale, h, w, dev, repeats=repeats).as_dict()
            rows.append({**row, "scan_backend": model_scan_backend(net, dev)})
            display.update(advance=1)
    table = _table(rows, scale, h, w, dev)
    out.print(table) if json_out != "-" else console.print(table)
    emit_json(rows[0] if len(rows) == 1 else {"rows": rows}, json_out)
