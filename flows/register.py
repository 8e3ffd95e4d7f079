"""Flow ``register``: MLflow run + registered model version + champion promotion.

``run_id`` (the stage's live-tracked run) is completed with the evaluation and the model; without
it a new run is opened. The same model file under the same policy is registered once.

A tracking server that dies mid-way fails the attempt within seconds (MLflow's HTTP retries are
bounded in ``log_and_register``); the task then retries 4 times, 10/30/60/120 s apart, so a
restarted server has almost 4 minutes to come back (on a busy host MLflow's start alone can take
over a minute). A retry completes the version an earlier attempt created (found by the model
file's digest), never adds another."""

from __future__ import annotations

from typing import Any

from prefect import flow, task

from flows.common import DEFAULT_PARAMS, digest, file_digest, params_with
from srcore.tracking.publish import log_and_register
from srcore.tracking.registry import PromotionPolicy


def _register_key(_ctx, args: dict[str, Any]) -> str:
    # The same model file under the same policy is registered once in a store: reruns keep the champion.
    from srcore.tracking.runs import store_identity

    policy = (args["gate_metric"], args["margin"], args["max_params"], args["max_latency_ms"],
              args.get("max_flops_g"))
    return "register-" + digest(store_identity(), args["stage"], file_digest(args["model_path"]), *policy)


@task(name="mlflow-log-register", retries=4, retry_delay_seconds=[10, 30, 60, 120],
      cache_key_fn=_register_key, persist_result=True)
def register_task(params_file: str, profile: str | None, overrides: dict | None, stage: str, model_path: str,
                  metrics: dict[str, float], teacher_path: str | None, gate_metric: str, margin: float,
                  max_params: int | None, max_latency_ms: float | None,
                  history: list[dict] | None = None, run_id: str | None = None,
                  max_flops_g: float | None = None) -> dict[str, Any]:
    params = params_with(params_file, profile, overrides)
    policy = PromotionPolicy(gate_metric, margin, max_params, max_latency_ms, max_flops_g)
    return log_and_register(params, stage, model_path, metrics, history=history, teacher_path=teacher_path,
                            policy=policy, run_id=run_id)


@flow(name="register", log_prints=True)
def register(stage: str, model_path: str, metrics: dict[str, float], teacher_path: str | None = None,
             params_file: str = DEFAULT_PARAMS, profile: str | None = None, overrides: dict | None = None,
             gate_metric: str = "sample-val_psnr_y", margin: float = 0.0, max_params: int | None = None,
             max_latency_ms: float | None = None, history: list[dict] | None = None,
             run_id: str | None = None, max_flops_g: float | None = None) -> dict[str, Any]:
    return register_task(params_file, profile, overrides, stage, model_path, metrics, teacher_path,
                         gate_metric, margin, max_params, max_latency_ms, history, run_id, max_flops_g)
