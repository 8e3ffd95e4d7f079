"""The main job on the embedded default: ``python -m flows.demo`` (what ``make demo`` runs).

Writes the sample data, then runs the ``retrain`` flow on the tiny profile and prints a summary.
Each training stage shows one progress bar; Ray's own output goes to ``ray.log`` in the stage's run
folder (``--verbose`` prints it on the terminal instead).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console()


def _send_pending_logs() -> None:
    """Flow-run logs still queued for the API go out before the server stops; sent afterwards, each
    batch would print "Error logging to API" on the console."""
    from prefect.logging.handlers import APILogHandler

    try:
        APILogHandler().flush()
    except Exception:  # a log that cannot be delivered must not fail a finished job
        pass


@contextmanager
def prefect_api():
    """Use PREFECT_API_URL when set; otherwise run a Prefect server on loopback for the job
    (its log goes to .prefect-server.log) and stop it afterwards."""
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    from srcore.servers import free_port, running_server

    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    prefect = str(Path(sys.executable).parent / "prefect")
    argv = [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with running_server(argv, url + "/health", "the Prefect server", Path(".prefect-server.log")):
        os.environ["PREFECT_API_URL"] = url
        try:
            yield url
        finally:
            _send_pending_logs()


def main(argv: list[str] | None = None) -> int:
    if "--verbose" in (sys.argv[1:] if argv is None else argv):  # Ray's own output back on the terminal
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
    else:
        from srcore.console import quiet_mlflow

        quiet_mlflow()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    from srcore.errors import SrcoreError

    t0 = time.perf_counter()
    try:
        with prefect_api() as url:
            console.print(f"Prefect API: {url} (the UI runs there while the job does)")
            from flows.retrain import retrain  # after PREFECT_API_URL is set: Prefect reads it on import

            summary = retrain(profile="tiny", baseline=True)
    except SrcoreError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        return 2
    minutes = (time.perf_counter() - t0) / 60
    table = Table(title=f"retrain (tiny profile) x{summary['scale']} - {minutes:.1f} min")
    for col in ("model", "params", *[f"{d} PSNR-Y" for d in summary["datasets"]]):
        table.add_column(col, justify="left" if col == "model" else "right")
    rows = [("bicubic", summary["bicubic"]), ("teacher", summary["teacher"]),
            ("student (distilled)", summary["student"])]
    if "student_plain" in summary:
        rows.append(("student (no distillation)", summary["student_plain"]))
    for label, row in rows:
        params = "0" if label == "bicubic" else f"{int(row['params']):,}"
        table.add_row(label, params, *[f"{row[f'{d}_psnr_y']:.2f}" for d in summary["datasets"]])
    console.print(table)
    decision = "promoted to champion" if summary["promoted"] else "kept as challenger"
    console.print(f"registered [bold]{summary['registered_model']}[/] v{summary['version']}: {decision} "
                  f"({summary['reason']})")
    console.print(f"MLflow run {summary['run_id']} in {summary['tracking_uri']}")
    console.print(f"load it: srcore eval --weights models:/{summary['registered_model']}@champion "
                  f"--model dvmsr --dataset sample-val --scale {summary['scale']}")
    console.print("MLflow UI: .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db  (http://127.0.0.1:5000)")
    console.print("Prefect UI: .venv/bin/prefect server start  (http://127.0.0.1:4200)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
