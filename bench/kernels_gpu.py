"""GPU kernels: srcore's Triton selective scan vs mamba-ssm's CUDA kernel vs the pure-torch back-end,
and the Triton involution vs the shift back-end, on one CUDA device.

Shapes: DVMSR (B=1, D=120, N=16, one group, L=128*128 for a 128x128 LR) and MaIR-S (B=1, four scan
orders of D=84 as four groups, D=336, N=16, L=64*64). The NSS table is MaIR-S's four scans of one
64x64 map: the fused Triton kernel reading the map through each order against gather -> scan ->
scatter with each back-end (mamba-ssm's is the peer). Forward and forward+backward, median of
CUDA-event timings after a warm-up, each back-end in its own phase. ``bw_frac`` is the bytes that
must cross memory once (inputs read, outputs written) over the time, as a fraction of the device's
peak bandwidth (memory clock x bus width from the device properties).

Needs a CUDA device (it exits with a message otherwise). mamba-ssm's column needs a CUDA build of
mamba-ssm (pip install 'srcore[cuda]'); it reads nan without one.

Run: python bench/kernels_gpu.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import statistics
import sys

import torch
from common import report

from srcore.ops import selective_scan
from srcore.ops.involution import involution
from srcore.ops.nss import nss_indices
from srcore.ops.nss_scan import gather_sequences, nss_selective_scan

# name -> (batch, channels, state, length, groups)
SCAN_SHAPES = {"dvmsr_128": (1, 120, 16, 128 * 128, 1), "mair_s_64": (1, 336, 16, 64 * 64, 4)}
# name -> (batch, channels per order, state, height, width, stripe)
NSS_SHAPES = {"mair_s_64": (1, 84, 16, 64, 64, 4)}
# name -> (batch, channels, groups, kernel, height, width)
INVOLUTION_SHAPES = {"ibmdn_128": (1, 64, 4, 3, 128, 128)}


def _cuda_time_ms(fn, repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _peak_bandwidth() -> float:
    props = torch.cuda.get_device_properties(0)
    clock_khz = getattr(props, "memory_clock_rate", 0)
    bus_bits = getattr(props, "memory_bus_width", 0)
    return 2 * clock_khz * 1e3 * bus_bits / 8 if clock_khz and bus_bits else float("nan")


def _scan_inputs(bsz, dim, state, length, groups, grad):
    dev = torch.device("cuda")
    t = [torch.randn(bsz, dim, length, device=dev), torch.randn(bsz, dim, length, device=dev) * 0.5,
         -torch.rand(dim, state, device=dev) * 4, torch.randn(bsz, groups, state, length, device=dev),
         torch.randn(bsz, groups, state, length, device=dev), torch.randn(dim, device=dev),
         torch.randn(bsz, dim, length, device=dev), torch.randn(dim, device=dev)]
    return [x.requires_grad_(grad) for x in t]


def _scan_bytes(bsz, dim, state, length, groups, backward):
    bdl, bnl = 4 * bsz * dim * length, 4 * bsz * groups * state * length
    fwd = 4 * bdl + 2 * bnl  # u, delta, z in, y out; B, C in
    return fwd + (7 * bdl + 4 * bnl if backward else 0)  # + u, delta, z, dy in, three grads out; B, C, dB, dC


def _run_scan(args: list[torch.Tensor], backend: str, backward: bool) -> None:
    u, delta, A, B, C, D, z, bias = args
    with torch.set_grad_enabled(backward):
        y = selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True, backend=backend)
        if backward:
            y.sum().backward()


def _run_involution(x, weight, k: int, groups: int, backend: str, backward: bool) -> None:
    with torch.set_grad_enabled(backward):
        out = involution(x, weight, k, groups, backend=backend)
        if backward:
            out.sum().backward()


def _scan_rows(repeats: int, peak: float) -> list[dict]:
    backends = ["triton", "torch"] + (["cuda"] if importlib.util.find_spec("mamba_ssm") else [])
    rows = []
    for name, shape in SCAN_SHAPES.items():
        for backward in (False, True):
            row = {"shape": name, "pass": "fwd+bwd" if backward else "fwd"}
            for backend in backends:
                run = functools.partial(_run_scan, _scan_inputs(*shape, backward), backend, backward)
                row[f"{backend}_ms"] = _cuda_time_ms(run, repeats)
            row.setdefault("cuda_ms", float("nan"))
            row["triton_vs_mamba_ssm"] = row["cuda_ms"] / row["triton_ms"]
            row["triton_vs_torch"] = row["torch_ms"] / row["triton_ms"]
            row["triton_bw_frac"] = _scan_bytes(*shape, backward) / (row["triton_ms"] * 1e-3) / peak
            rows.append(row)
    return rows


def _run_nss(args: list[torch.Tensor], order: torch.Tensor, backend: str, backward: bool) -> None:
    """The four scans of one map: fused (``nss``) or gather -> ``backend`` scan -> scatter."""
    u, delta, A, B, C, D, bias = args
    bsz, dc, length = u.shape
    with torch.set_grad_enabled(backward):
        if backend == "nss":
            y = nss_selective_scan(u, delta, A, B, C, order, D=D, delta_bias=bias, delta_softplus=True,
                                   backend="triton")
        else:
            xs = gather_sequences(u.unsqueeze(1).expand(bsz, 4, dc, length), order).reshape(bsz, -1, length)
            ds = gather_sequences(delta.view(bsz, 4, dc, length), order).reshape(bsz, -1, length)
            ys = selective_scan(xs, ds, A, gather_sequences(B, order), gather_sequences(C, order), D=D,
                                delta_bias=bias, delta_softplus=True, backend=backend)
            y = gather_sequences(ys.view(bsz, 4, dc, length), torch.argsort(order, dim=1))
        if backward:
            y.sum().backward()


def _nss_bytes(bsz, dc, state, length, backward):
    """Bytes the fused NSS scan must move: the map once, the four orders' delta, B, C, y, the index."""
    map_, seqs, bnl = 4 * bsz * dc * length, 4 * bsz * 4 * dc * length, 4 * bsz * 4 * state * length
    fwd = map_ + 2 * seqs + 2 * bnl + 4 * 4 * length  # u, delta in, y out; B, C; int32 orders
    # backward: u, delta, dy in, du, d_delta out; B, C in, dB, dC out
    return fwd + (2 * map_ + 3 * seqs + 4 * bnl if backward else 0)


def _nss_inputs(bsz, dc, state, length, grad):
    """u (B, Dc, L) shared by the four orders; delta (B, 4 Dc, L); A; B, C (B, 4, N, L); D; delta_bias."""
    dev, dim = torch.device("cuda"), 4 * dc
    t = [torch.randn(bsz, dc, length, device=dev), torch.randn(bsz, dim, length, device=dev) * 0.5,
         -torch.rand(dim, state, device=dev) * 4, torch.randn(bsz, 4, state, length, device=dev),
         torch.randn(bsz, 4, state, length, device=dev), torch.randn(dim, device=dev),
         torch.randn(dim, device=dev)]
    return [x.requires_grad_(grad) for x in t]


def _nss_rows(repeats: int, peak: float) -> list[dict]:
    backends = ["nss", "triton", "torch"] + (["cuda"] if importlib.util.find_spec("mamba_ssm") else [])
    rows = []
    for name, (bsz, dc, state, h, w, stripe) in NSS_SHAPES.items():
        order = nss_indices(h, w, stripe, False, "cuda")[0]
        for backward in (False, True):
            row = {"shape": name, "pass": "fwd+bwd" if backward else "fwd"}
            for backend in backends:
                args = _nss_inputs(bsz, dc, state, h * w, backward)
                label = "fused" if backend == "nss" else f"gather_{backend}"
                run = functools.partial(_run_nss, args, order, backend, backward)
                row[f"{label}_ms"] = _cuda_time_ms(run, repeats)
            row.setdefault("gather_cuda_ms", float("nan"))
            row["fused_vs_gather_mamba_ssm"] = row["gather_cuda_ms"] / row["fused_ms"]
            row["fused_vs_gather_triton"] = row["gather_triton_ms"] / row["fused_ms"]
            moved = _nss_bytes(bsz, dc, state, h * w, backward)
            row["fused_bw_frac"] = moved / (row["fused_ms"] * 1e-3) / peak
            rows.append(row)
    return rows


def _involution_rows(repeats: int, peak: float) -> list[dict]:
    rows = []
    for name, (bsz, ch, groups, k, h, w) in INVOLUTION_SHAPES.items():
        for backward in (False, True):
            row = {"shape": name, "pass": "fwd+bwd" if backward else "fwd"}
            for backend in ("triton", "shift"):
                x = torch.randn(bsz, ch, h, w, device="cuda", requires_grad=backward)
                weight = torch.randn(bsz, groups * k * k, h, w, device="cuda", requires_grad=backward)
                run = functools.partial(_run_involution, x, weight, k, groups, backend, backward)
                row[f"{backend}_ms"] = _cuda_time_ms(run, repeats)
            row["triton_vs_shift"] = row["shift_ms"] / row["triton_ms"]
            moved = 4 * bsz * (2 * ch + groups * k * k) * h * w * (2 if backward else 1)
            row["triton_bw_frac"] = moved / (row["triton_ms"] * 1e-3) / peak
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/kernels_gpu.py needs a CUDA device (torch.cuda.is_available() is False); "
                 "the CPU benches are bench/selective_scan.py and bench/infer_dvmsr.py")
    peak = _peak_bandwidth()
    device = torch.cuda.get_device_name(0)
    report("kernels_gpu_scan", _scan_rows(args.repeats, peak), f"selective scan on {device} (ms, median)")
    report("kernels_gpu_nss", _nss_rows(args.repeats, peak),
           f"MaIR's four NSS scans of one map on {device} (ms, median)")
    report("kernels_gpu_involution", _involution_rows(args.repeats, peak),
           f"involution on {device} (ms, median)")


if __name__ == "__main__":
    main()
