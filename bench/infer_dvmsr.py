"""DVMSR x4 CPU inference: ours (fused CPU scan) vs the same model, same weights, same input with
mamba-ssm's ``selective_scan_ref`` as its scan (the official implementation's CPU numerics), and
vs srcore's sequential reference scan as a second column.

Each side is timed in its own phase (bench/phases.py), in wall and in process CPU time (the fair
figure on a shared machine; ``--threads 1`` for one thread per side). Without mamba-ssm
installed (see bench/peers.py for how it installs on CPU) its column reads nan.

Run: python bench/infer_dvmsr.py [--sizes 64 128] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
from unittest import mock

import torch
from common import report
from peers import mamba_ssm_selective_scan_ref
from phases import phase

import srcore.models.dvmsr as dvmsr_module
from srcore.models import build


def _mamba_ref_scan(scan_ref):
    """A stand-in for srcore's ``selective_scan`` inside the DVMSR module that calls mamba-ssm's."""

    def scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, backend=None):
        return scan_ref(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)

    return scan


def _phase(model, x, repeats: int) -> tuple[float, float, torch.Tensor]:
    """Wall and CPU ms per forward (bench/phases.py) and the output."""
    with torch.no_grad():
        wall, cpu = phase(lambda: model(x), repeats)
        return 1e3 * wall, 1e3 * cpu, model(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch and numba threads (0: leave as they are); records as infer_dvmsr_t<n>.")
    args = ap.parse_args()
    if args.threads:
        import numba

        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build("dvmsr", 4).eval()
    scan_ref = mamba_ssm_selective_scan_ref()
    rows = []
    for size in args.sizes:
        x = torch.rand(1, 3, size, size)
        t_ours, c_ours, y_ours = _phase(model.set_scan_backend("cpu"), x, args.repeats)
        row = {"lr_size": f"{size}x{size}", "ours_ms": t_ours, "ours_cpu_ms": c_ours}
        nan = float("nan")
        t_peer, c_peer, diff = nan, nan, nan
        if scan_ref is not None:
            with mock.patch.object(dvmsr_module, "selective_scan", _mamba_ref_scan(scan_ref)):
                t_peer, c_peer, y_peer = _phase(model.set_scan_backend(None), x, 1)
            diff = (y_ours - y_peer).abs().max().item()
        row.update(mamba_ssm_ref_ms=t_peer, mamba_ssm_ref_cpu_ms=c_peer, x_vs_mamba_ssm_ref=t_peer / t_ours,
                   x_vs_mamba_ssm_ref_cpu=c_peer / c_ours, max_abs_diff_vs_mamba_ssm_ref=diff)
        t_ref, c_ref, y_ref = _phase(model.set_scan_backend("reference"), x, 1)
        row.update(reference_ms=t_ref, x_vs_reference=t_ref / t_ours, x_vs_reference_cpu=c_ref / c_ours,
                   max_abs_diff_vs_reference=(y_ours - y_ref).abs().max().item())
        rows.append(row)
    model.set_scan_backend(None)
    title = f"DVMSR x4 CPU forward latency, {torch.get_num_threads()} threads (ms, median)"
    report(f"infer_dvmsr_t{args.threads}" if args.threads else "infer_dvmsr", rows, title)


if __name__ == "__main__":
    main()
