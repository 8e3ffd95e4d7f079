"""The ``srcore`` Typer application, its two consoles and what every command shares: the one-line
error exit (``exits_on_error``), JSON output, the device option, parameter overrides and model
loading for commands that take ``--model``/``--weights``."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler

from srcore.console import quiet_mlflow
from srcore.errors import SrcoreError

__all__ = ["app", "console", "emit_json", "exits_on_error", "fail", "load_model_for", "out", "overrides",
           "parse_sets", "resolve_device"]

app = typer.Typer(help="Lightweight single-image super-resolution: models, data, training, evaluation.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
console = Console(stderr=True)  # messages, progress, errors
out = Console()  # results: tables and JSON on stdout

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 2) -> None:
    """Print ``error: message`` and exit with ``code``."""
    # one line, however long: a path in the message must stay whole when copied from the terminal
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code)


def exits_on_error(command: F) -> F:
    """A command whose ``SrcoreError`` (an error the user can fix) ends it with the one-line exit."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except SrcoreError as exc:
            fail(str(exc))

    return run  # type: ignore[return-value]


def emit_json(payload: dict, target: str | None) -> None:
    """``payload`` as JSON to ``target``: a file (written atomically), ``-`` for stdout, or nowhere."""
    if target is None:
        return
    text = json.dumps(payload, indent=2)
    if target == "-":
        out.print_json(text)
    else:
        from srcore.io import atomic_write_bytes

        atomic_write_bytes(target, (text + "\n").encode())
        console.print(f"wrote {target}")


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        fail("--device cuda requested but no CUDA device is available")
    if device not in ("cpu", "cuda"):
        fail(f"--device must be cpu, cuda or auto, got {device!r}")
    return device


def load_model_for(model: str | None, scale: int, weights: str | None, weights_key: str | None = None,
                   offline: bool = False):
    """``model`` with ``weights`` (any spec ``srcore.models.loading`` reads; without ``model`` the
    checkpoint names it), or randomly initialised without weights (said on the console)."""
    from srcore.models import build
    from srcore.models.loading import load_spec

    if weights is None:
        if model != "bicubic":
            console.print(f"[yellow]warning:[/] no --weights given: {model} runs with random initialisation")
        return build(model, scale)
    registered = weights.startswith("models:/")  # a registered model's own scale is checked by the caller
    return load_spec(weights, model, None if registered else scale, weights_key, offline)


def overrides(**values: Any) -> dict:
    """The options the user gave, as parameter overrides (unset ones left out)."""
    return {k: v for k, v in values.items() if v not in (None, [], ())}


def parse_sets(items: list[str] | None) -> dict:
    """``--set KEY=VALUE`` items as overrides (values read as YAML)."""
    import yaml

    out_: dict = {}
    for item in items or []:
        if "=" not in item:
            fail(f"--set expects KEY=VALUE (e.g. teacher.steps=200), got {item!r}")
        key, value = item.split("=", 1)
        out_[key.strip()] = yaml.safe_load(value)
    return out_


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
        quiet_mlflow()


COMPILE_HELP = ("Run the model under torch.compile (dynamic sizes): the first image waits while it compiles "
                "(a minute or more on CPU), later ones run faster.")
PARAMS_OPT = typer.Option(help="Parameters file.")
DEFAULT_PARAMS = Path("params.yaml")
