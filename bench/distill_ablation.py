"""Does distillation pay at this scale? The same small students, same steps and seeds, trained with no
distillation, output, feature and multi-depth distillation, and with teachers of increasing strength.

Every run trains with the pipeline's own steps (``srcore.train.loop.train_in_process``: the same
``setup``/``compute_loss``/``train_step`` Ray Train runs, in one process) on the embedded sample set's
x4 patches, then is scored on Set5 and Set14 x4 (PSNR-Y, border = scale). Results go to
``bench/results/distill_ablation.json`` after every run, so an interrupted study resumes where it
stopped (runs with the same recipe are not trained again); ``docs/distillation.md`` and its plot are
generated from that file.

    python bench/distill_ablation.py                       # the whole study (about an hour on 2 idle cores)
    python bench/distill_ablation.py --students dvmsr --seeds 0   # a quick look
    python bench/distill_ablation.py --report-only         # regenerate the doc from the results

Needs ``../shared`` (Set5/Set14 and the official teacher weights).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from common import RESULTS, ROOT

from srcore.config import DistillParams, LoaderParams, TrainParams, load_params
from srcore.io import atomic_write_bytes, atomic_write_text

log = logging.getLogger("distill_ablation")

SHARED = ROOT.parent / "shared"
RESULT_FILE = RESULTS / "distill_ablation.json"
DOC = ROOT / "docs" / "distillation.md"
PLOT = ROOT / "docs" / "distillation.png"
BENCHMARKS = ("Set5", "Set14")
SCALE = 4

# The students: the demo's DVMSR narrowed further, and IBMDN at a third of the release width.
STUDENTS: dict[str, dict[str, Any]] = {
    "dvmsr": {"model": "dvmsr", "model_overrides": {"embed_dim": 16, "depths": [1, 1]}},
    "ibmdn": {"model": "ibmdn", "model_overrides": {
        "channels": 16, "num_blocks": 2,
        "placement": [["bsconv", "involution", "bsconv"], ["involution", "bsconv", "involution"]]}},
}


@dataclass(frozen=True)
class Teacher:
    """A frozen teacher: a file and, for official files, the preset that reads it."""

    key: str
    label: str
    spec: str
    preset: str | None = None


def teachers(work: Path) -> dict[str, Teacher]:
    weights = SHARED / "weights"
    return {
        "tiny": Teacher("tiny", "tiny teacher (trained here)", str(work / "teacher-tiny.pth")),
        "rlfn": Teacher("rlfn", "RLFN (NTIRE 2024 release)", str(weights / "rlfn_ntire2024_x4.pth"), "rlfn"),
        "dvmsr": Teacher("dvmsr", "DVMSR (release)", str(weights / "dvmsr_release_x4.pth"), "dvmsr"),
    }


@dataclass(frozen=True)
class Variant:
    """One way to train the student: loss weights and the teacher (None: no distillation)."""

    key: str
    label: str
    teacher: str | None = None
    weights: dict[str, Any] = field(default_factory=dict)


# Method variants use the RLFN release as teacher (strong, cheap to run); teacher-strength
# variants use output distillation, the one term that needs no feature alignment across
# architectures.
METHODS: list[Variant] = [
    Variant("none", "no distillation"),
    Variant("out-rlfn", "output KD", "rlfn", {"w_out": 1.0}),
    Variant("feat-rlfn", "feature KD (deep features)", "rlfn", {"w_feat": 1.0}),
    Variant("depth-rlfn", "multi-depth KD", "rlfn", {"w_depth": 1.0}),
    Variant("featnorm-rlfn", "feature KD, relative to the teacher's scale", "rlfn",
            {"w_feat": 1.0, "feat_norm": "teacher"}),
]
VARIANTS: dict[str, list[Variant]] = {
    "dvmsr": [*METHODS,
              Variant("out-tiny", "output KD, tiny teacher", "tiny", {"w_out": 1.0}),
              Variant("out-dvmsr", "output KD, DVMSR teacher", "dvmsr", {"w_out": 1.0})],
    "ibmdn": METHODS,
}

NO_DISTILL = {"w_out": 0.0, "w_feat": 0.0, "w_depth": 0.0}


def recipe(args: argparse.Namespace) -> dict[str, Any]:
    """The training recipe every run shares (the tiny profile's, at the study's length)."""
    return {"steps": args.steps, "lr": 2.0e-3, "milestones": [0.7, 0.9], "ema_decay": 0.98,
            "val_dataset": "sample-val", "amp": False, "patch_size": args.patch, "batch_size": args.batch}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _config(stage: str, train: dict[str, Any], rec: dict[str, Any], shards: Path, seed: int,
            threads: int) -> dict:
    loader = LoaderParams(patch_size=rec["patch_size"], batch_size=rec["batch_size"], seed=seed,
                          shuffle_buffer=64).model_dump(mode="json")
    cls = DistillParams if stage == "distill" else TrainParams
    train = cls(**{k: v for k, v in rec.items() if k not in ("patch_size", "batch_size")}, **train,
                scale=SCALE, seed=seed, ray={"cpus_per_worker": threads}).model_dump(mode="json")
    return {"stage": stage, "train": train, "loader": loader, "shards": str(shards), "cwd": str(ROOT),
            "run_dir": str(shards.parent), "faults": {}}


def _score(model) -> dict[str, float]:
    from srcore.evaluation import evaluate_dataset

    root = SHARED / "data" / "benchmarks"
    return {d: evaluate_dataset(model, d, SCALE, data_root=root).psnr_y for d in BENCHMARKS}


def _train(config: dict) -> tuple[Any, float]:
    from srcore.train.loop import train_in_process

    t0 = time.perf_counter()
    state = train_in_process(config)
    return state.export.eval(), time.perf_counter() - t0


def prepare_patches(work: Path) -> Path:
    """x4 patches of the embedded sample set (written once, reused)."""
    from srcore.data.prepare import prepare
    from srcore.data.sample import write_sample

    out = work / "patches"
    if not (out / "manifest.json").is_file():
        write_sample(work / "sample")
        prepare(load_params(None, {"prepare.input": str(work / "sample" / "train"), "prepare.out": str(out),
                                   "prepare.scales": [SCALE], "prepare.crop_size": 240,
                                   "prepare.step": 120}).prepare)
    return out


class Study:
    """The results file: every finished run and teacher score, keyed by what produced it."""

    def __init__(self, path: Path, rec: dict[str, Any]) -> None:
        self.path, self.recipe = path, rec
        self.data: dict[str, Any] = {"recipe": rec, "runs": {}, "teachers": {}}
        if path.is_file():
            old = json.loads(path.read_text())
            if old.get("recipe") == rec:
                self.data = old
            else:
                log.warning("%s holds another recipe; starting a new study", path)

    def save(self) -> None:
        """Write, merging what other study processes (e.g. one per student) wrote meanwhile."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.path.is_file():
                disk = json.loads(self.path.read_text())
                if disk.get("recipe") == self.recipe:
                    for part in ("runs", "teachers"):
                        for key, value in disk[part].items():
                            self.data[part].setdefault(key, value)
            atomic_write_text(self.path, json.dumps(self.data, indent=1) + "\n")


def train_tiny_teacher(work: Path, shards: Path, rec: dict[str, Any], study: Study, threads: int) -> None:
    """The demo's kind of teacher: DVMSR trained from scratch here, with the same recipe and steps."""
    from srcore.models import save_model

    path = work / "teacher-tiny.pth"
    if path.is_file() and "tiny" in study.data["teachers"]:
        return
    model, seconds = _train(_config("teacher", {"model": "dvmsr", "model_overrides": {
        "embed_dim": 32, "depths": [2, 2]}}, rec, shards, seed=0, threads=threads))
    save_model(path, model, "dvmsr")
    params = sum(p.numel() for p in model.parameters())
    study.data["teachers"]["tiny"] = {"train_s": seconds, "params": params}
    study.save()


def score_teachers(all_teachers: dict[str, Teacher], study: Study) -> None:
    from srcore.models.loading import load_teacher

    for t in all_teachers.values():
        entry = study.data["teachers"].setdefault(t.key, {})
        if "psnr_y" not in entry:
            model = load_teacher(t.spec, SCALE, t.preset).eval()
            params = sum(p.numel() for p in model.parameters())
            entry.update(label=t.label, params=params, psnr_y=_score(model))
            study.save()


def run_all(args: argparse.Namespace) -> Study:
    work = Path(args.work)
    rec = recipe(args)
    study = Study(Path(args.results), rec)
    shards = prepare_patches(work)
    all_teachers = teachers(work)
    torch.set_num_threads(args.threads)
    # seed-major: a study stopped early still has every variant, with fewer seeds
    plan = [(s, v, seed) for seed in args.seeds for s in args.students for v in VARIANTS[s]
            if not args.variants or v.key in args.variants]
    if any(v.teacher == "tiny" for _, v, _ in plan):
        train_tiny_teacher(work, shards, rec, study, args.threads)
    score_teachers({k: t for k, t in all_teachers.items()
                    if any(v.teacher == k for _, v, _ in plan)}, study)
    for i, (student, variant, seed) in enumerate(plan, 1):
        key = f"{student}/{variant.key}/seed{seed}"
        if key in study.data["runs"]:
            continue
        base = {"name": key.replace("/", "-"), **STUDENTS[student]}
        if variant.teacher is None:
            config = _config("teacher", base, rec, shards, seed, args.threads)
        else:
            t = all_teachers[variant.teacher]
            config = _config("distill", {**base, **NO_DISTILL, **variant.weights, "teacher": t.spec,
                                         "teacher_model": t.preset}, rec, shards, seed, args.threads)
        model, seconds = _train(config)
        scores = _score(model)
        study.data["runs"][key] = {"student": student, "variant": variant.key, "seed": seed,
                                   "train_s": seconds, "threads": args.threads, "psnr_y": scores}
        study.save()
        log.info("[%d/%d] %s: %s in %.0f s", i, len(plan), key,
                 ", ".join(f"{d} {v:.3f}" for d, v in scores.items()), seconds)
    return study


# ---------------------------------------------------------------- the report (docs/distillation.md)


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (student, variant): mean/std per benchmark, gain over no distillation (paired by
    seed), and whether the Set5 and Set14 gains both exceed the seed spread."""
    rows = []
    runs = data["runs"]
    for student, variants in VARIANTS.items():
        plain = {r["seed"]: r for r in runs.values() if r["student"] == student and r["variant"] == "none"}
        for v in variants:
            done = sorted((r for r in runs.values() if r["student"] == student and r["variant"] == v.key),
                          key=lambda r: r["seed"])
            if not done:
                continue
            row: dict[str, Any] = {"student": student, "variant": v.key, "label": v.label,
                                   "teacher": v.teacher, "seeds": [r["seed"] for r in done],
                                   "train_s": statistics.fmean(r["train_s"] for r in done)}
            beats = v.teacher is not None
            improved = [all(r["psnr_y"][d] > plain[r["seed"]]["psnr_y"][d] for d in BENCHMARKS)
                        for r in done if r["seed"] in plain]
            row["improved"] = (sum(improved), len(improved)) if v.teacher is not None else None
            for d in BENCHMARKS:
                mean, std = _stats([r["psnr_y"][d] for r in done])
                row[d] = (mean, std)
                paired = [r["psnr_y"][d] - plain[r["seed"]]["psnr_y"][d] for r in done if r["seed"] in plain]
                if v.teacher is not None and paired:
                    plain_std = _stats([plain[r["seed"]]["psnr_y"][d] for r in done if r["seed"] in plain])[1]
                    gain = statistics.fmean(paired)
                    row[f"{d}_gain"] = gain
                    beats = beats and len(paired) > 1 and gain > max(std, plain_std)
                else:
                    beats = False
            row["beats_spread"] = beats
            rows.append(row)
    return rows


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(BENCHMARKS), figsize=(11, 4), sharey=False)
    labels = [f"{r['student']}\n{r['variant']}" for r in rows]
    for ax, d in zip(axes, BENCHMARKS, strict=True):
        means = [r[d][0] for r in rows]
        stds = [r[d][1] for r in rows]
        colors = ["#999999" if r["teacher"] is None else "#3b75af" for r in rows]
        ax.bar(range(len(rows)), means, yerr=stds, color=colors, capsize=3)
        low = min(m - s for m, s in zip(means, stds, strict=True))
        high = max(m + s for m, s in zip(means, stds, strict=True))
        ax.set_ylim(low - 0.1, high + 0.1)
        ax.set_xticks(range(len(rows)), labels, rotation=60, fontsize=7)
        ax.set_title(f"{d} x4 PSNR-Y (mean ± std over seeds)")
    fig.tight_layout()
    buf = path.with_suffix(".tmp.png")
    fig.savefig(buf, dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.read_bytes())
    buf.unlink()


def write_report(data: dict[str, Any]) -> None:
    rows = summarise(data)
    if not rows:
        raise SystemExit(f"no finished runs in {RESULT_FILE}; run the study first")
    _plot(rows, PLOT)
    rec = data["recipe"]
    seeds = sorted({r["seed"] for r in data["runs"].values()})
    command = (f"python bench/distill_ablation.py --steps {rec['steps']} --batch {rec['batch_size']} "
               f"--patch {rec['patch_size']} --seeds {' '.join(map(str, seeds))}")
    lines = ["# Distillation study", "",
             "Generated by `bench/distill_ablation.py` from `bench/results/distill_ablation.json`; "
             "do not edit.",
             "", f"Command: `{command}` (resumable; one process per `--students` entry may run side by "
             "side, they share the results file).", "",
             f"Every run: {rec['steps']} steps, batch {rec['batch_size']} of {rec['patch_size']}x"
             f"{rec['patch_size']} LR patches from the embedded sample set (x4), Adam lr {rec['lr']} "
             f"halved at {rec['milestones']}, EMA {rec['ema_decay']}. "
             "Scores: PSNR-Y on Set5 and Set14 x4 (border 4) of the EMA weights. "
             "Seeds change the initialisation and the patch stream; a distilled run and the plain run of "
             "the same seed see the same patches, so gains are paired by seed.", "",
             "## Teachers", "", "| teacher | params | Set5 | Set14 |", "|---|---:|---:|---:|"]
    for key, t in data["teachers"].items():
        if "psnr_y" in t:
            lines.append(f"| {t.get('label', key)} | {t['params']:,} | {t['psnr_y']['Set5']:.2f} | "
                         f"{t['psnr_y']['Set14']:.2f} |")
    lines += ["", "## Students", "",
              "| student | variant | teacher | seeds | Set5 PSNR-Y | Set14 PSNR-Y | gain Set5 | gain Set14 "
              "| seeds better on both | beats seed spread | train s/run |",
              "|---|---|---|---:|---:|---:|---:|---:|:-:|:-:|---:|"]
    for r in rows:
        gains = [f"{r[f'{d}_gain']:+.3f}" if f"{d}_gain" in r else "" for d in BENCHMARKS]
        scores = " | ".join(f"{r[d][0]:.3f} ± {r[d][1]:.3f}" for d in BENCHMARKS)
        better = "{}/{}".format(*r["improved"]) if r["improved"] else ""
        lines.append(f"| {r['student']} | {r['label']} | {r['teacher'] or ''} | {len(r['seeds'])} | "
                     f"{scores} | {gains[0]} | {gains[1]} | {better} | "
                     f"{'yes' if r['beats_spread'] else 'no'} | {r['train_s']:.0f} |")
    winners = [r for r in rows if r["beats_spread"]]
    lines += ["", "A variant *beats the seed spread* when its mean gain over no distillation "
              "(paired by seed) exceeds both its own and the plain student's standard deviation on Set5 "
              "and on Set14. *Seeds better on both*: how many seeds the distilled run beat the plain run "
              "of the same seed on Set5 and on Set14. Train time is wall time on a shared 2-core machine "
              "with up to five runs side by side; compare it only roughly.", "",
              "## Finding", ""]
    if winners:
        best = max(winners, key=lambda r: r["Set5_gain"] + r["Set14_gain"])
        lines.append("Distillation beats the plain student by more than the seed spread for: "
                     + ", ".join(f"{r['student']} {r['label']}"
                                 + (f" ({r['teacher']})" if r["teacher"] else "") for r in winners)
                     + f". Best: {best['student']} {best['label']} ({best['Set5_gain']:+.3f} dB Set5, "
                     f"{best['Set14_gain']:+.3f} dB Set14).")
    else:
        lines.append("No variant beats the plain student by more than the seed spread at this scale "
                     "(steps, data and student size above); the table shows the measured gains.")
    steady = [r for r in rows if r["improved"] and r["improved"][0] == r["improved"][1] > 1]
    if steady:
        named = (f"{r['student']} {r['label']} ({r['Set5_gain']:+.3f} / {r['Set14_gain']:+.3f} dB)"
                 for r in steady)
        lines += ["", "Better than the plain run of the same seed on every seed, on both benchmarks: "
                  + ", ".join(named) + "."]
    lines += ["", "![PSNR-Y per variant](distillation.png)", ""]
    atomic_write_text(DOC, "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", nargs="+", choices=sorted(STUDENTS), default=list(STUDENTS))
    parser.add_argument("--variants", nargs="+", default=None,
                        help="Only these variant keys (e.g. none out-rlfn).")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--patch", type=int, default=24, help="LR patch side.")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads per run (1 keeps a shared machine from stalling the runs).")
    parser.add_argument("--work", default=str(RESULTS / "distill-work"), help="Patches and the tiny teacher.")
    parser.add_argument("--results", default=str(RESULT_FILE))
    parser.add_argument("--report-only", action="store_true", help="Only regenerate docs/distillation.md.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name in ("Set5", "Set14"):
        if not (SHARED / "data" / "benchmarks" / name).is_dir():
            raise SystemExit(f"{SHARED / 'data' / 'benchmarks' / name} not found: the study needs ../shared")
    if not args.report_only:
        run_all(args)
    write_report(json.loads(Path(args.results).read_text()))
    print(f"wrote {DOC.relative_to(ROOT)} and {PLOT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
