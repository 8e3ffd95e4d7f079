"""``srcore stack``: the local production stack (up, status, down, env)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from srcore.cli.common import app, console, exits_on_error, out
from srcore.errors import SrcoreError

stack_app = typer.Typer(help="Local production stack: PostgreSQL, S3 (SeaweedFS), MLflow, Prefect, "
                        "2-node Ray.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
_STACK_DIR_OPT = typer.Option("--dir", help="Folder holding the stack's data, logs, PID files and env file.")
_DEFAULT_DIR = Path(".stack")
_STATE_COLOURS = {"running": "green", "not answering": "yellow", "not running": "red"}


def _stack_config(root: Path, port_base: int | None = None):
    from srcore.stack import StackConfig

    try:
        return StackConfig.load(root, port_base=port_base)
    except ValueError as exc:  # pydantic's: a bad port base or folder
        raise SrcoreError(str(exc)) from None


@stack_app.command("up")
@exits_on_error
def stack_up_cmd(
    root: Annotated[Path, _STACK_DIR_OPT] = _DEFAULT_DIR,
    port_base: Annotated[int | None, typer.Option(help="First of the stack's loopback ports (kept after "
                                                       "the first up).")] = None,
) -> None:
    """Start every service that is not running, restart one that runs but no longer answers (a second
    `up` is a no-op) and write <dir>/env."""
    from srcore.stack import up

    cfg = _stack_config(root, port_base)
    report = up(cfg)
    for name in report.started:
        console.print(f"started {name} (ready after {report.ready_after_s[name]:.1f} s)")
    for name in report.restarted:
        console.print(f"restarted {name} (ready after {report.ready_after_s[name]:.1f} s)")
    if report.already_running:
        console.print(f"already running: {', '.join(report.already_running)}")
    console.print(f"stack up in {report.total_s:.1f} s; endpoints in {cfg.env_file} "
                  f"(eval \"$(srcore stack env --dir {root})\")")


@stack_app.command("status")
@exits_on_error
def stack_status_cmd(root: Annotated[Path, _STACK_DIR_OPT] = _DEFAULT_DIR) -> None:
    """Each service's version, endpoint, processes and state; exit 1 unless all are running.

    "not answering" is a process that runs but fails its health check (`srcore stack up` restarts it);
    "not running" is no process at all."""
    from srcore.stack import status

    rows = status(_stack_config(root))
    table = Table("service", "version", "endpoint", "pids", "state")
    for r in rows:
        table.add_row(r.name, r.version, r.endpoint, " ".join(map(str, r.pids)) or "-",
                      f"[{_STATE_COLOURS[r.state.value]}]{r.state.value}[/]")
    out.print(table)
    if not all(r.healthy for r in rows):
        raise typer.Exit(1)


@stack_app.command("down")
@exits_on_error
def stack_down_cmd(root: Annotated[Path, _STACK_DIR_OPT] = _DEFAULT_DIR) -> None:
    """Stop exactly the processes `up` started; data stays for the next `up`."""
    from srcore.stack import down

    for name, pids in down(_stack_config(root)).items():
        console.print(f"stopped {name}: {len(pids)} process(es)" if pids else f"{name}: not running")


@stack_app.command("env")
@exits_on_error
def stack_env_cmd(root: Annotated[Path, _STACK_DIR_OPT] = _DEFAULT_DIR) -> None:
    """Print `export KEY=value` lines for a shell: eval "$(srcore stack env)"."""
    import shlex

    from srcore.stack.config import read_env_file

    for key, value in read_env_file(_stack_config(root).env_file).items():
        out.print(f"export {key}={shlex.quote(value)}", soft_wrap=True, highlight=False, markup=False)
