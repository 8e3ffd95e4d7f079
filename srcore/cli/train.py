"""``srcore train`` and ``srcore distill``: one training stage each, as the flows run it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from srcore.cli.common import (
    DEFAULT_PARAMS,
    PARAMS_OPT,
    app,
    console,
    exits_on_error,
    fail,
    overrides,
    parse_sets,
)
from srcore.config import Stage

_PROFILE_OPT = typer.Option(help="Profile from params.yaml 'profiles' (e.g. tiny).")
_SET_OPT = typer.Option("--set", help="Override a parameter: KEY=VALUE (repeatable).")
_INIT_OPT = typer.Option(help="Start from these weights instead of random: a checkpoint or run folder, "
                         "an official file (plain or BasicSR params/params_ema), s3:// URI or "
                         "models:/name@alias; loaded strictly into the configured model.")


def _train(stage: Stage, params: Path, profile: str | None, sets: list[str] | None, address: str | None,
           name: str | None, extra: dict) -> None:
    from srcore.config import load_params
    from srcore.console import train_with_progress
    from srcore.train.stop import TrainingInterrupted

    cfg = load_params(params, {**parse_sets(sets), **extra}, profile=profile)
    try:
        # Logged to MLFLOW_TRACKING_URI when set, else to the local store (mlflow.db here).
        result, _run = train_with_progress(cfg, stage, console, address=address, name=name)
    except TrainingInterrupted as exc:  # the shell's convention for a run ended by a signal
        fail(str(exc), 128 + exc.signum)
    m = result.metrics
    console.print(f"[bold]{result.name}[/]: step {m.get('step')}, loss {m.get('loss', float('nan')):.4f}, "
                  f"val PSNR-Y {m.get('val_psnr_y', float('nan')):.2f} dB")
    console.print(f"model: {result.model_path}")


@app.command("train")
@exits_on_error
def train_cmd(
    params: Annotated[Path, PARAMS_OPT] = DEFAULT_PARAMS,
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
        fail(f"--stage {stage!r}: `srcore train` trains the teacher; distil a student with `srcore distill`")
    _train("teacher", params, profile, sets, address, resume, overrides(**{"teacher.init": init}))


@app.command("distill")
@exits_on_error
def distill_cmd(
    params: Annotated[Path, PARAMS_OPT] = DEFAULT_PARAMS,
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
           overrides(**{"student.teacher": teacher, "student.init": init}))
