"""Generate docs/model_zoo.md and docs/model_zoo_psnr_params.png from measurements.

Efficiency rows come from ``srcore.metrics.efficiency.profile_model``; PSNR from
``srcore.evaluation`` on Set5 x4 for every model that has official weights.

The export table (format, file size, export time, max abs diff against PyTorch, latency, fraction of
the CPU's fp32 peak) is copied from the last ``python bench/export.py`` run (bench/results/export.json).

Run: python docs/make_model_zoo.py --weights-dir ../shared/weights --data-root ../shared/data/benchmarks
     python docs/make_model_zoo.py --update dvmsr mair_t mair_s   # re-profile these rows only
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from srcore.evaluation import evaluate_dataset  # noqa: E402
from srcore.metrics.efficiency import measure_latency, measure_peak_memory, profile_model  # noqa: E402
from srcore.models import build, load_model, preset_names  # noqa: E402

HERE = Path(__file__).resolve().parent
EXPORT_JSON = HERE.parent / "bench" / "results" / "export.json"
# (label, preset, weights file or None for bicubic)
WEIGHTED = [("bicubic", "bicubic", None), ("DVMSR (NTIRE 2024)", "dvmsr", "dvmsr_ntire2024_x4.pth"),
            ("DVMSR (release, EMA)", "dvmsr", "dvmsr_release_x4.pth"),
            ("IBMDN", "ibmdn", "ibmdn_ntire2025_x4.pth"), ("RLFN", "rlfn", "rlfn_ntire2024_x4.pth")]


def plot(scores: list[dict]) -> None:
    """The PSNR-vs-parameters scatter, with labels placed so that models of equal size stay readable."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    right = max(s["params"] for s in scores) / 1e3
    for s in scores:
        x, y = s["params"] / 1e3, s["psnr_y"]
        ax.scatter(x, y)
        at_edge = x == right
        # of models with the same size, the best is labelled above and the others below
        top = y == max(o["psnr_y"] for o in scores if o["params"] == s["params"])
        ax.annotate(s["label"], (x, y), textcoords="offset points", fontsize=8,
                    xytext=(-6 if at_edge else 6, 5 if top else -11), ha="right" if at_edge else "left")
    ax.set_xlabel("parameters (K)")
    ax.set_ylabel("Set5 x4 PSNR-Y (dB)")
    ax.set_title("PSNR vs parameters (official weights)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(HERE / "model_zoo_psnr_params.png", dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--weights-dir", type=Path)
    ap.add_argument("--data-root", type=Path)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--plot-only", action="store_true",
                    help="redraw the plot from the recorded model_zoo.json without measuring again")
    ap.add_argument("--memory-only", action="store_true",
                    help="measure only the peak memory again (it does not depend on machine load, unlike "
                         "latency) and rewrite the tables from the recorded model_zoo.json")
    ap.add_argument("--update", nargs="+", metavar="PRESET",
                    help="re-profile only these presets' efficiency rows; keep the other rows and the Set5 "
                         "scores as recorded")
    args = ap.parse_args()
    recorded = json.loads((HERE / "model_zoo.json").read_text())
    if args.update:
        rows = {r["model"]: r for r in recorded["efficiency"]}
        for name in args.update:
            rows[name] = _profile(name, args.repeats)
            print(f"profiled {name}")
        write([rows[n] for n in preset_names() if n in rows], recorded["set5_x4"])
        return
    if args.plot_only:
        plot(recorded["set5_x4"])
        return
    if args.memory_only:
        for r in recorded["efficiency"]:
            model, x = build(r["model"], 4).eval(), torch.rand(1, 3, 256, 256)
            with torch.no_grad():
                r["peak_mem_mb"] = measure_peak_memory(model, x)
            print(f"measured {r['model']}: {r['peak_mem_mb']:.0f} MB")
        write(recorded["efficiency"], recorded["set5_x4"])
        return
    if args.weights_dir is None or args.data_root is None:
        ap.error("--weights-dir and --data-root are required to measure (or pass --plot-only)")
    torch.manual_seed(0)

    rows = []
    for name in preset_names():
        rows.append(_profile(name, args.repeats))
        print(f"profiled {name}")

    scores = []
    for label, name, weights in WEIGHTED:
        model = (build(name, 4) if weights is None
                 else load_model(args.weights_dir / weights, name=name, scale=4))
        res = evaluate_dataset(model, "Set5", 4, args.data_root)
        params = sum(p.numel() for p in model.parameters())
        scores.append({"label": label, "model": name, "params": params,
                       "psnr_y": res.psnr_y, "ssim_y": res.ssim_y})
        print(f"evaluated {label}: {res.psnr_y:.2f}")
    write(rows, scores)
    plot(scores)


def _profile(name: str, repeats: int) -> dict:
    """One efficiency row: profile at 256x256 plus the latency at 64x64."""
    model = build(name, 4).eval()
    r = profile_model(model, name, 4, 256, 256, "cpu", repeats=repeats, warmup=1).as_dict()
    with torch.no_grad():
        r["latency_64_ms"] = measure_latency(model, torch.rand(1, 3, 64, 64), warmup=1, repeats=repeats)
    return r


def _export_lines() -> list[str]:
    """The export table from the last bench/export.py run, or nothing when there is none."""
    if not EXPORT_JSON.exists():
        return []
    bench = json.loads(EXPORT_JSON.read_text())
    rows, meta = bench["rows"], bench["meta"]
    lines = ["", "## Exported models (`python bench/export.py`)", "",
             f"Latency per LR image of the size the bench ran at, CPU ({meta['threads']} threads), random "
             "weights; export time includes tracing, writing and the parity check on three sizes; "
             "of_peak is the fraction of the cores' fp32 peak; a fixed-size graph says so in `graph`.", "",
             "| model | format | graph | file (MB) | export (s) | max abs diff | ms | x eager | of_peak |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['format']} | {r['graph']} | {r['file_mb']:.2f} | "
                     f"{r['export_s']:.0f} | {r['max_abs_diff']:.1e} | {r['ms']:.0f} | {r['ratio']:.2f} | "
                     f"{r['of_peak']:.3f} |")
    return lines


def write(rows: list[dict], scores: list[dict]) -> None:
    """model_zoo.md and model_zoo.json from the measured rows."""
    lines = [
        "# Model zoo",
        "",
        "Generated by `python docs/make_model_zoo.py` (do not edit by hand). x4, CPU "
        f"({torch.get_num_threads()} threads), FLOPs in the fvcore convention at a 1x3x256x256 LR input",
        "with the selective scan counted as 9·B·L·D·N; \"plain fvcore\" is what fvcore reports for the",
        "official implementation (it cannot see inside mamba-ssm's fused kernel). Activations: elements of",
        "all convolution outputs. Latency: median of repeats after warm-up, random weights. Peak memory:",
        "the most extra tensor storage alive at once during a 256x256 forward, counted op by op.",
        "",
        "| model | params | GFLOPs | GFLOPs (plain fvcore) | activations (M) "
        "| peak memory 256x256 (MB) | latency 64x64 (ms) | latency 256x256 (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params']:,} | {r['flops_g']:.2f} | "
                     f"{r['flops_fvcore_plain_g']:.2f} | "
                     f"{r['activations_m']:.1f} | {r['peak_mem_mb']:.0f} | {r['latency_64_ms']:.0f} | "
                     f"{r['latency_ms']:.0f} |")
    lines += ["", "## Set5 x4 with official weights (PSNR-Y / SSIM-Y, border 4)", "",
              "| model | params | PSNR-Y | SSIM-Y |", "|---|---:|---:|---:|"]
    for s in scores:
        lines.append(f"| {s['label']} | {s['params']:,} | {s['psnr_y']:.2f} | {s['ssim_y']:.4f} |")
    lines += _export_lines()
    lines += ["", "![PSNR vs parameters](model_zoo_psnr_params.png)", ""]
    (HERE / "model_zoo.md").write_text("\n".join(lines))
    (HERE / "model_zoo.json").write_text(json.dumps({"efficiency": rows, "set5_x4": scores}, indent=2) + "\n")


if __name__ == "__main__":
    main()
