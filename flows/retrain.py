"""Flow ``retrain``: preprocess -> train_teacher -> distill -> evaluate -> register, as subflows.

With ``prepare=False`` no patches are made here: training reads the ones ``loader.source`` names
(``dvc``: the version ``dvc.lock`` pins, from the DVC remote), so the flow needs no local data at
all, as on a cluster with no shared disk. With ``loader.source: dvc`` the preprocessing pushes the
patches it makes.

With ``baseline`` the student is also trained without distillation (same recipe, run
``<student.name>-plain``) and evaluated beside the others, so the table shows what the teacher
added; only the distilled student is registered.

Re-running with nothing changed hits every cache: no preprocessing, no training, the same
registered champion. One MLflow parent run ``retrain-<flow run>`` holds the teacher's and the
student's runs (the student's tagged with the teacher's run id) and the evaluation runs.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows.common import DEFAULT_PARAMS, params_with
from flows.distill import distill
from flows.evaluate import evaluate
from flows.preprocess import preprocess
from flows.register import register
from flows.train_teacher import train_teacher
from srcore.data.patch_source import patch_source
from srcore.data.versioning import manifest_hash
from srcore.errors import ConfigError
from srcore.tracking.live import parent_run


def summary_markdown(summary: dict[str, Any]) -> str:
    """The final table of a retrain run (the flow run's Prefect artifact)."""
    datasets = summary["datasets"]
    head = ["model", "params", "FLOPs (G)", "latency (ms)", "peak mem (MB)",
            *[f"{d} PSNR-Y / SSIM-Y" for d in datasets]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label in ("bicubic", "teacher", "student", "student_plain"):
        if label not in summary:
            continue
        m = summary[label]
        cells = [label, f"{m.get('params', 0):,.0f}", f"{m.get('flops_g', float('nan')):.2f}",
                 f"{m.get('latency_ms', float('nan')):.1f}", f"{m.get('peak_mem_mb', float('nan')):.1f}",
                 *[f"{m[f'{d}_psnr_y']:.2f} / {m[f'{d}_ssim_y']:.4f}" for d in datasets]]
        lines.append("| " + " | ".join(cells) + " |")
    decision = "promoted to champion" if summary.get("promoted") else "kept as challenger"
    lines += ["", f"x{summary['scale']}: `{summary['registered_model']}` v{summary['version']} {decision} "
              f"({summary['reason']}); MLflow run `{summary['run_id']}`."]
    return "\n".join(lines) + "\n"


_NO_DISTILLATION = {"student.w_out": 0.0, "student.w_feat": 0.0, "student.w_depth": 0.0}


@flow(name="retrain", log_prints=True)
def retrain(params_file: str = DEFAULT_PARAMS, profile: str | None = None,
            overrides: dict[str, Any] | None = None, address: str | None = None, pull: bool = True,
            gate_metric: str = "sample-val_psnr_y", margin: float = 0.0, max_params: int | None = None,
            max_latency_ms: float | None = None, max_flops_g: float | None = None,
            baseline: bool = False, prepare: bool = True) -> dict[str, Any]:
    logger = get_run_logger()
    params = params_with(params_file, profile, overrides)  # fail fast on bad parameters
    if params.teacher.scale != params.student.scale:  # found now, not after the teacher has trained
        raise ConfigError(f"teacher.scale {params.teacher.scale} and student.scale {params.student.scale} "
                          "differ; the student learns from this teacher, so set both alike")
    if prepare:
        manifest = preprocess(pull, push=params.loader.source == "dvc")
    else:  # prepared (and pushed) elsewhere: train on what loader.source finds, nothing local needed
        manifest = manifest_hash(patch_source(params.prepare.out, params.loader.source))
    with parent_run(f"retrain-{flow_run.get_name() or 'local'}", {"stage": "retrain",
                                                                  "profile": str(params.profile)}) as parent:
        teacher = train_teacher(manifest, params_file, profile, overrides, address, parent_run_id=parent)
        extra = {**(overrides or {}), "student.teacher": teacher["model_path"]}
        student = distill(manifest, params_file=params_file, profile=profile, overrides=extra,
                          address=address, parent_run_id=parent, teacher_run_id=teacher["run_id"])
        datasets = list(params.eval.datasets)
        scale = params.student.scale
        size, threads = params.eval.efficiency_size, params.eval.efficiency_threads
        ev_student, ev_teacher, bicubic = (evaluate(path, datasets, scale, parent, size, threads) for path in
                                           (student["model_path"], teacher["model_path"], "bicubic"))
        if baseline:
            plain_overrides = {**extra, **_NO_DISTILLATION, "student.name": f"{params.student.name}-plain"}
            plain = distill(manifest, params_file=params_file, profile=profile, address=address,
                            overrides=plain_overrides, parent_run_id=parent)
            ev_plain = evaluate(plain["model_path"], datasets, scale, parent, size, threads)
        reg = register("distill", student["model_path"], ev_student, teacher["model_path"], params_file,
                       profile, extra, gate_metric, margin, max_params, max_latency_ms,
                       student.get("history"), run_id=student["run_id"], max_flops_g=max_flops_g)
    summary = {"datasets": datasets, "scale": scale, "bicubic": bicubic, "teacher": ev_teacher,
               "student": ev_student,
               "teacher_model": teacher["model_path"], "student_model": student["model_path"], **reg}
    if baseline:
        summary["student_plain"] = ev_plain
    create_markdown_artifact(markdown=summary_markdown(summary), key="retrain-summary",
                             description="bicubic vs teacher vs student, and the registry's decision")
    logger.info("retrain finished: %s", {k: v for k, v in summary.items() if k not in ("teacher", "student")})
    return summary

