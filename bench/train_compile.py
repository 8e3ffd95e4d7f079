"""``torch.compile`` (inductor) of the training step on the CPU against eager, same run: the tiny
profile's teacher and student (DVMSR, batch 8, 24x24 LR patches, 2 threads), the pipeline's own
``setup`` and ``train_step`` on the same fixed batches. Reports the compile time (the first steps)
and the steady-state step time after it, and the speed-up.

Run: python bench/train_compile.py [--steps 30] [--warmup 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import ROOT, report

from srcore.config import load_params
from srcore.train.loop import setup, train_step


def _batches(n: int, batch: int, patch: int, scale: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(batch, 3, patch, patch, generator=g),
             torch.rand(batch, 3, patch * scale, patch * scale, generator=g)) for _ in range(n)]


def _run(stage: str, compiled: bool, steps: int, warmup: int) -> dict[str, float]:
    """One model's training steps; the student is trained on its own (no teacher in the timing)."""
    params = load_params(ROOT / "params.yaml", profile="tiny")
    arch = params.stage(stage)
    train = params.teacher.model_copy(update={"model": arch.model, "model_overrides": arch.model_overrides,
                                              "compile": compiled})
    config = {"stage": "teacher", "train": train.model_dump(mode="json"),
              "loader": params.loader.model_dump(mode="json"), "shards": "", "cwd": ".", "run_dir": "unused",
              "faults": {}}
    torch.manual_seed(0)
    state = setup(config, 0, 1, torch.device("cpu"))
    state.runner = torch.compile(state.trainable) if compiled else state.trainable
    batches = _batches(steps + warmup, params.loader.batch_size, params.loader.patch_size, train.scale)
    t0 = time.perf_counter()
    times = []
    for i, (lr_img, hr_img) in enumerate(batches):
        t = time.perf_counter()
        train_step(state, lr_img, hr_img)
        if i >= warmup:
            times.append(time.perf_counter() - t)
        elif i == warmup - 1:
            first = time.perf_counter() - t0
    return {"first_steps_s": first, "step_ms": 1e3 * statistics.median(times),
            "loss": float(torch.stack(list(state.window)[-5:]).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps after the warm-up")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps (compilation)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    for label, stage in (("teacher", "teacher"), ("student", "distill")):
        eager = _run(stage, False, args.steps, args.warmup)
        comp = _run(stage, True, args.steps, args.warmup)
        rows.append({"model": label, "eager_step_ms": eager["step_ms"], "compiled_step_ms": comp["step_ms"],
                     "speedup": eager["step_ms"] / comp["step_ms"], "compile_s": comp["first_steps_s"],
                     "eager_first_s": eager["first_steps_s"],
                     "break_even_steps": (comp["first_steps_s"] - eager["first_steps_s"])
                     / max(1e-9, (eager["step_ms"] - comp["step_ms"]) / 1e3),
                     "loss_eager": eager["loss"], "loss_compiled": comp["loss"]})
    report("train_compile", rows, "Training step on the CPU: inductor-compiled vs eager (tiny profile)")


if __name__ == "__main__":
    main()
