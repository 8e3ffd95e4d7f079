"""Progress displays in a log (not a terminal): readable lines, one per finished dataset, an end line."""

import io

from rich.console import Console

from srcore.console import ProgressDisplay, fmt


def _log_console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=200), buf


def test_log_lines_per_dataset_and_at_the_end():
    console, buf = _log_console()
    with ProgressDisplay(console, "eval", total=5, unit="images", log_every=3600) as display:
        for _ in range(3):
            display.update(advance=1, description="Set5")
        for _ in range(2):
            display.update(advance=1, description="Set14")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("Set5: 3/5 images") and "ETA" in lines[0]
    assert lines[1].startswith("Set14: 5/5 images") and "elapsed" in lines[1]


def test_timed_lines_carry_fields_and_unknown_totals():
    console, buf = _log_console()
    with ProgressDisplay(console, "preparing", unit="shards", fields=("speed",), log_every=0) as display:
        display.update(advance=1, speed=fmt(2.5, ".2f", " img/s"))
        display.update(advance=1, speed=fmt(float("nan"), ".2f"))
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("preparing: 1 shards, 2.50 img/s")
    assert lines[1].startswith("preparing: 2 shards (")  # a missing value is left out, not printed as nan


def test_no_end_line_when_the_work_failed():
    console, buf = _log_console()
    try:
        with ProgressDisplay(console, "train", total=10, log_every=3600) as display:
            display.update(completed=4)
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert buf.getvalue() == ""


def test_training_bar_in_a_log_and_silent_without_reports():
    from srcore.console import training_bar

    console, buf = _log_console()
    with training_bar(console, "teacher"):
        pass
    assert buf.getvalue() == ""  # a run refused before training prints only its error
    with training_bar(console, "teacher") as on_progress:
        on_progress({"step": 5, "steps": 10, "loss": 0.1234, "samples_per_s": 3.25})
        on_progress({"step": 10, "steps": 10, "loss": 0.05, "samples_per_s": 3.3, "val_psnr_y": 29.0})
    last = buf.getvalue().splitlines()[-1]
    assert last.startswith("teacher: 10/10 steps, loss 0.0500, 3.3 samples/s, val PSNR-Y 29.00 dB")


def test_one_way_to_distil_and_a_version():
    from typer.testing import CliRunner

    from srcore import __version__
    from srcore.cli import app

    runner = CliRunner()
    refused = runner.invoke(app, ["train", "--stage", "distill"])
    assert refused.exit_code == 2 and "srcore distill" in refused.output
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and __version__ in version.output
