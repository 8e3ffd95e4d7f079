"""A benchmark suite over models and scales: one table per scale, as JSON, CSV and Markdown.

``run_suite(entries, datasets, scales, ...)`` evaluates every (scale, model, dataset) that exists
and returns a :class:`SuiteResult`: per scale, one row per model with PSNR-Y/SSIM-Y per dataset,
parameters and FLOPs (fvcore convention at a 1x3x256x256 LR input), the selective-scan back-end
its Mamba blocks ran on (None without any), and the per-image values.
Datasets whose folder is absent are listed once in ``missing`` and the rest still run.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from srcore.data.benchmarks import EMBEDDED, SAMPLE_VAL, count_images, dataset_folder, resolve_root
from srcore.errors import ConfigError, DataError
from srcore.evaluation.dataset import DatasetResult, OnImage, evaluate_dataset
from srcore.inference import compile_model, plan_tiles
from srcore.metrics.efficiency import count_flops, count_params
from srcore.models.base import SRModel
from srcore.ops import model_scan_backend

__all__ = ["SUITES", "ModelEntry", "ModelRow", "SuiteResult", "expand_datasets", "model_entries",
           "run_suite"]

SUITES = {"standard": ("Set5", "Set14", "B100", "Urban100", "Manga109")}
FLOPS_INPUT = (1, 3, 256, 256)


@dataclass(frozen=True)
class ModelEntry:
    """A model to evaluate: ``label`` for the tables, ``build(scale)`` gives the network at that
    scale, or None when it has no such scale (a checkpoint trained for one scale)."""

    label: str
    build: Callable[[int], SRModel | None]


@dataclass
class ModelRow:
    """One model at one scale: its architecture, size and results per dataset."""

    label: str
    arch: str
    params: int
    flops_g: float
    results: dict[str, DatasetResult] = field(default_factory=dict)
    tiling: str | None = None
    scan_backend: str | None = None


@dataclass
class SuiteResult:
    """Tables per scale plus what could not run (datasets absent, models without that scale)."""

    datasets: list[str]
    missing: list[str]
    tables: dict[int, list[ModelRow]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        def row(r: ModelRow) -> dict:
            return {"model": r.label, "arch": r.arch, "params": r.params, "flops_g": r.flops_g,
                    "tiling": r.tiling, "scan_backend": r.scan_backend,
                    "results": {d: {**v.summary(), "per_image": v.per_image} for d, v in r.results.items()}}

        return {"datasets": self.datasets, "missing_datasets": self.missing, "skipped": self.skipped,
                "tables": {f"x{s}": [row(r) for r in rows] for s, rows in self.tables.items()}}

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["scale", "model", "arch", "params", "flops_g", "dataset", "images", "psnr_y", "ssim_y"])
        for s, rows in self.tables.items():
            for r in rows:
                for d, v in r.results.items():
                    w.writerow([s, r.label, r.arch, r.params, f"{r.flops_g:.3f}", d, v.images,
                                f"{v.psnr_y:.4f}", f"{v.ssim_y:.6f}"])
        return buf.getvalue()

    def to_markdown(self) -> str:
        parts = []
        for s, rows in self.tables.items():
            sets = [d for d in self.datasets if any(d in r.results for r in rows)]
            head = ["Model", "Params", "FLOPs (G)"] + sets
            lines = [f"### x{s} (PSNR-Y / SSIM-Y)", "", "| " + " | ".join(head) + " |",
                     "|" + "|".join([":---"] + ["---:"] * (len(head) - 1)) + "|"]
            for r in rows:
                cells = [f"{r.results[d].psnr_y:.2f} / {r.results[d].ssim_y:.4f}" if d in r.results else "-"
                         for d in sets]
                lines.append("| " + " | ".join([r.label, f"{r.params:,}", f"{r.flops_g:.2f}"] + cells) + " |")
            parts.append("\n".join(lines))
        if self.missing:
            parts.append("Missing datasets (not evaluated): " + ", ".join(self.missing))
        return "\n\n".join(parts) + "\n"


def expand_datasets(names: list[str]) -> list[str]:
    """Dataset names with suite names (``standard``) expanded, duplicates dropped, order kept."""
    out: list[str] = []
    for n in names:
        for d in SUITES.get(n, (n,)):
            if d not in out:
                out.append(d)
    return out


def _efficiency(model: SRModel) -> tuple[int, float]:
    with torch.no_grad():
        device = next(model.parameters(), torch.empty(0)).device
        flops = count_flops(model, torch.rand(*FLOPS_INPUT, device=device))
    return count_params(model), flops[0] / 1e9


def run_suite(entries: list[ModelEntry], datasets: list[str], scales: list[int],
              data_root: str | os.PathLike | None = None, device: str = "cpu", tile: int | None = None,
              save_dir: str | os.PathLike | None = None, on_image: OnImage | None = None, workers: int = 1,
              address: str | None = None, compile: bool = False) -> SuiteResult:
    """Evaluate every model at every scale on every present dataset (see the module docstring);
    ``compile``: score each model under ``torch.compile`` (``srcore.inference.compile_model``; in
    this process only, so not with ``workers`` > 1 or ``address``)."""
    if compile and (workers > 1 or address):
        raise ValueError("compile=True scores in this process; it cannot go with workers > 1 or address")
    for d in datasets:
        if d not in (EMBEDDED, SAMPLE_VAL):
            dataset_folder(d, data_root)  # refuses names that are neither known nor present
    present = [d for d in datasets if count_images(d, data_root) > 0]
    if not present:
        raise DataError(f"none of {', '.join(datasets)} found under {resolve_root(data_root)}; expected "
                        "<root>/<Name>/HR/*.png (pass --data-root or set SRCORE_DATA)")
    result = SuiteResult(datasets=present, missing=[d for d in datasets if d not in present])
    for scale in scales:
        rows = []
        for entry in entries:
            model = entry.build(scale)
            if model is None:
                result.skipped.append(f"{entry.label} x{scale}")
                continue
            model = model.to(device).eval()
            plan = plan_tiles(model, tile) if tile is not None else None
            params, flops_g = _efficiency(model)
            row = ModelRow(entry.label, model.arch, params, flops_g,
                           tiling=None if plan is None else plan.describe(model.arch),
                           scan_backend=model_scan_backend(model, device))
            scored = compile_model(model) if compile else model
            for d in present:
                sub = None if save_dir is None else os.path.join(save_dir, entry.label.replace("/", "_"))
                row.results[d] = evaluate_dataset(scored, d, scale, data_root, device, plan, sub, on_image,
                                                  workers, address)
            rows.append(row)
        result.tables[scale] = rows
    return result


def model_entries(models: list[str], weights: list[str], scales: list[int], device: str,
                  load: Callable[[str | None, int, str | None], SRModel]) -> list[ModelEntry]:
    """One suite entry per model/weights pair of ``srcore eval`` (weights alone: the checkpoint names
    its model); ``load(preset, scale, weights)`` builds one. Refuses counts that do not pair up and
    weights of another scale than the only one asked for."""
    if weights and len(models) > 1 and len(models) != len(weights):
        raise ConfigError(f"{len(models)} --model and {len(weights)} --weights: give one --model per "
                          "--weights, or one --model for all, or none (the checkpoints name their model)")
    if not weights:
        return [ModelEntry(m, lambda s, m=m: load(m, s, None).to(device)) for m in models]
    entries = []
    for i, w in enumerate(weights):
        name = models[i] if len(models) == len(weights) else (models[0] if models else None)
        net = load(name, scales[0], w).to(device)
        if len(scales) == 1 and net.scale != scales[0]:
            raise ConfigError(f"the weights are for x{net.scale}, but --scale is {scales[0]}")
        entries.append(ModelEntry(f"{net.arch} ({w if w.startswith('models:/') else Path(w).name})",
                                  lambda s, net=net: net if s == net.scale else None))
    return entries
