"""Cases for srcore's Triton kernels, run by ``test_kernels_triton.py`` in a child process.

Triton decides when it is first imported whether its kernels (its own helpers included) run in
the interpreter, so these cases run in a fresh interpreter started with TRITON_INTERPRET=1 and
print, per case, the relative error of every output and gradient against the torch reference.
Shapes are tiny (the interpreter runs each program in numpy) but cross chunk boundaries, end in a
partial chunk, use a state size that is not a power of two and groups > 1. The NSS cases check the
scan that reads a map through MaIR's four scan orders against gather -> scan -> scatter, per order.

Run: TRITON_INTERPRET=1 python tests/triton_interpreter_cases.py
(``run_all("cuda")`` runs the same cases compiled on a GPU: ``bench/gpu_check.py``.)
"""

from __future__ import annotations

import json

import torch

from srcore.kernels.triton.involution import involution_triton
from srcore.kernels.triton.selective_scan import selective_scan_triton
from srcore.models.mair import VMM, MaIRConfig
from srcore.ops import selective_scan
from srcore.ops.involution import involution
from srcore.ops.nss import nss_indices
from srcore.ops.nss_scan import nss_selective_scan

# name -> (bsz, dim, state, length, groups, chunk, with D / z / delta_bias / softplus)
SCAN_CASES = {
    "partial_last_chunk_groups2_full": (2, 4, 3, 37, 2, 16, True),  # 3 chunks; N padded to 4
    "plain_three_groups": (1, 6, 4, 24, 3, 8, False),  # blocks of 2 channels inside each group
    "one_partial_chunk_full": (1, 8, 5, 19, 1, 32, True),
}
# half-precision inputs to the scan: name -> dtype (the tolerances live with the test)
DTYPE_CASES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# name -> (bsz, channels per order, state, height, width, stripe, shift, chunk)
NSS_CASES = {
    "stripes4_chunks8": (2, 3, 3, 5, 7, 4, False, 8),  # L=35: 5 chunks, the last partial
    "shifted_stripes4_one_chunk": (1, 2, 2, 6, 5, 4, True, 32),
}
# name -> (channels, groups, kernel size, height, width)
INVOLUTION_CASES = {
    "k3_groups2": (4, 2, 3, 5, 7),
    "k5_one_group": (6, 1, 5, 4, 3),
    "k1_group_per_channel": (3, 3, 1, 2, 5),
}


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)).item()


def _scan_inputs(bsz, dim, state, length, groups, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(bsz, dim, length, generator=g), torch.randn(bsz, dim, length, generator=g) * 0.5,
            -torch.rand(dim, state, generator=g) * 3, torch.randn(bsz, groups, state, length, generator=g),
            torch.randn(bsz, groups, state, length, generator=g), torch.randn(dim, generator=g),
            torch.randn(bsz, dim, length, generator=g), torch.randn(dim, generator=g) * 0.5)


def scan_case(bsz, dim, state, length, groups, chunk, full, device="cpu") -> dict[str, float]:
    """Forward, last state and every gradient of the Triton scan vs the float64 reference."""
    base = [t.to(device) for t in _scan_inputs(bsz, dim, state, length, groups)]
    results = {}
    for name in ("reference", "triton"):
        args = [(t.double() if name == "reference" else t.clone()).requires_grad_() for t in base]
        u, delta, A, B, C, D, z, bias = args
        opt = dict(D=D, z=z, delta_bias=bias, delta_softplus=True) if full else {}
        if name == "reference":
            y, last = selective_scan(u, delta, A, B, C, **opt, return_last_state=True, backend="reference")
        else:
            y, last = selective_scan_triton(u, delta, A, B, C, **opt, chunk=chunk)
        (y.square().mean() + (last * 0.3).sum()).backward()
        used = args if full else args[:5]
        results[name] = [y.detach(), last.detach()] + [a.grad for a in used]
    names = ["y", "last", "d_u", "d_delta", "d_A", "d_B", "d_C", "d_D", "d_z", "d_delta_bias"]
    return {n: rel_err(t, r) for n, r, t in zip(names, results["reference"], results["triton"], strict=False)}


def scan_dispatch_case(device="cpu") -> dict[str, float]:
    """``selective_scan(..., backend="triton")`` with 3-dim B and C, through the public entry point."""
    u, delta, A, B, C, D, z, bias = (t.to(device) for t in _scan_inputs(1, 4, 2, 10, 1, seed=1))
    kw = dict(D=D, z=z, delta_bias=bias, delta_softplus=True)
    y = selective_scan(u, delta, A, B[:, 0], C[:, 0], **kw, backend="triton")
    y_ref = selective_scan(u.double(), delta.double(), A.double(), B[:, 0].double(), C[:, 0].double(),
                           **{k: v.double() if torch.is_tensor(v) else v for k, v in kw.items()},
                           backend="reference")
    return {"y": rel_err(y, y_ref)}


def scan_dtype_case(dtype: torch.dtype, device="cpu") -> dict[str, float]:
    """The Triton scan given half-precision inputs: its relative error against the float64 reference
    (it accumulates in float32) and whether the output keeps the caller's dtype (1.0) or not (0.0)."""
    u, delta, A, B, C, *_ = (t.to(device) for t in _scan_inputs(2, 8, 4, 96, 1, seed=5))
    delta = delta.abs() * 0.2
    y = selective_scan_triton(*(t.to(dtype) for t in (u, delta, A, B, C)), chunk=32)[0]
    ref = selective_scan(u.double(), delta.double(), A.double(), B.double(), C.double(), backend="reference")
    return {"y": rel_err(y, ref), "dtype_kept": float(y.dtype == dtype)}


def nss_case(bsz, dc, state, h, w, stripe, shift, chunk, device="cpu") -> dict[str, float]:
    """Fused NSS scan (float32) vs gather -> reference scan -> scatter (float64): y and every gradient
    for each of the four orders (d_u is the sum over the orders)."""
    g = torch.Generator().manual_seed(3)
    length, k = h * w, 4
    base = (torch.randn(bsz, dc, length, generator=g), torch.randn(bsz, k * dc, length, generator=g) * 0.5,
            -torch.rand(k * dc, state, generator=g) * 3, torch.randn(bsz, k, state, length, generator=g),
            torch.randn(bsz, k, state, length, generator=g), torch.randn(k * dc, generator=g),
            torch.randn(k * dc, generator=g) * 0.5)
    base = tuple(t.to(device) for t in base)
    order, _ = nss_indices(h, w, stripe, shift)
    order = order.to(device)
    results = {}
    for name in ("reference", "triton"):
        args = [(t.double() if name == "reference" else t.clone()).requires_grad_() for t in base]
        u, delta, A, B, C, D, bias = args
        if name == "triton":
            y, _ = selective_scan_triton(u, delta, A, B, C, D, None, bias, True, chunk=chunk, index=order)
        else:
            y = nss_selective_scan(u, delta, A, B, C, order, D=D, delta_bias=bias, delta_softplus=True,
                                   backend="reference")
        y.square().mean().backward()
        results[name] = [y.detach()] + [a.grad for a in args]
    out = {"d_u": rel_err(results["triton"][1], results["reference"][1])}
    # per order: channels k*dc..(k+1)*dc of y, delta, A, D, bias; group k of B and C
    names = ["y", None, "d_delta", "d_A", "d_B", "d_C", "d_D", "d_delta_bias"]
    for i, n in enumerate(names):
        if n is None:
            continue
        dim = 1 if n in ("y", "d_delta", "d_B", "d_C") else 0
        ref, got = results["reference"][i], results["triton"][i]
        for seq in range(k):
            part = slice(seq, seq + 1) if n in ("d_B", "d_C") else slice(seq * dc, (seq + 1) * dc)
            out[f"{n}_order{seq}"] = rel_err(got.narrow(dim, part.start, part.stop - part.start),
                                             ref.narrow(dim, part.start, part.stop - part.start))
    return out


def mair_vmm_case(device="cpu") -> dict[str, float]:
    """MaIR's VMM on the triton back-end (fused NSS scan) vs the same module on the reference scan
    (gathered sequences): output, input gradient and the SSM parameters' gradients."""
    torch.manual_seed(4)
    vmm = VMM(8, MaIRConfig(d_state=3, ssm_ratio=1.0, scan_len=4), shift=True).to(device)
    x = torch.randn(1, 5, 6, 8).to(device)
    results = {}
    for backend in ("reference", "triton"):
        vmm.scan_backend = backend
        vmm.zero_grad()
        xs = x.clone().requires_grad_()
        out = vmm(xs)
        out.square().sum().backward()
        results[backend] = [out.detach(), xs.grad, vmm.x_proj_weight.grad.clone(), vmm.A_logs.grad.clone(),
                            vmm.dt_projs_bias.grad.clone()]
    names = ["out", "d_x", "d_x_proj_weight", "d_A_logs", "d_dt_projs_bias"]
    return {n: rel_err(t, r) for n, r, t in zip(names, results["reference"], results["triton"], strict=True)}


def involution_case(channels, groups, k, h, w, device="cpu") -> dict[str, float]:
    """Output and both gradients of the Triton involution vs the unfold reference in float64."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, channels, h, w, generator=g).to(device)
    weight = torch.randn(2, groups * k * k, h, w, generator=g).to(device)
    results = {}
    for name in ("unfold", "triton"):
        xs = (x.double() if name == "unfold" else x.clone()).requires_grad_()
        ws = (weight.double() if name == "unfold" else weight.clone()).requires_grad_()
        if name == "unfold":
            out = involution(xs, ws, k, groups, backend="unfold")
        else:
            out = involution_triton(xs, ws, k, groups)
        out.square().sum().backward()
        results[name] = [out.detach(), xs.grad, ws.grad]
    names = ["out", "d_x", "d_weight"]
    return {n: rel_err(t, r) for n, r, t in zip(names, results["unfold"], results["triton"], strict=True)}


def run_all(device: str = "cpu") -> dict[str, dict[str, float]]:
    out = {f"scan/{n}": scan_case(*c, device=device) for n, c in SCAN_CASES.items()}
    out["scan/dispatch"] = scan_dispatch_case(device)
    out.update({f"dtype/{n}": scan_dtype_case(d, device) for n, d in DTYPE_CASES.items()})
    out.update({f"nss/{n}": nss_case(*c, device=device) for n, c in NSS_CASES.items()})
    out["nss/mair_vmm"] = mair_vmm_case(device)
    out.update({f"involution/{n}": involution_case(*c, device=device) for n, c in INVOLUTION_CASES.items()})
    return out


if __name__ == "__main__":
    print(json.dumps(run_all()))
