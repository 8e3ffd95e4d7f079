import pytest
import torch
from torch.autograd import gradcheck

from srcore.ops import available_backends, scan_backend, selective_scan

FAST = [b for b in available_backends("cpu") if b != "reference"]


def _inputs(bsz=2, dim=8, state=4, length=50, groups=1, dtype=torch.float64, a_scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(bsz, dim, length, generator=g, dtype=dtype)
    delta = torch.randn(bsz, dim, length, generator=g, dtype=dtype)
    A = -torch.rand(dim, state, generator=g, dtype=dtype) * a_scale
    B = torch.randn(bsz, groups, state, length, generator=g, dtype=dtype)
    C = torch.randn(bsz, groups, state, length, generator=g, dtype=dtype)
    D = torch.randn(dim, generator=g, dtype=dtype)
    z = torch.randn(bsz, dim, length, generator=g, dtype=dtype)
    bias = torch.randn(dim, generator=g, dtype=dtype)
    return u, delta, A, B, C, D, z, bias


def _run(args, backend, **kw):
    u, delta, A, B, C, D, z, bias = args
    return selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True, backend=backend,
                          **kw)


def _grads(base, backend):
    args = [t.clone().requires_grad_() for t in base]
    y, h = _run(args, backend, return_last_state=True)
    (y.square().mean() + h.sum()).backward()
    return [a.grad for a in args]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("groups", [1, 2])
def test_values_match_reference(backend, groups):
    args = _inputs(groups=groups)
    y_ref, h_ref = _run(args, "reference", return_last_state=True)
    y, h = _run(args, backend, return_last_state=True)
    assert torch.allclose(y, y_ref, rtol=1e-10, atol=1e-10)
    assert torch.allclose(h, h_ref, rtol=1e-10, atol=1e-10)


def test_three_dim_b_c_and_plain_call():
    u, delta, A, B, C, *_ = _inputs()
    y_ref = selective_scan(u, delta, A, B[:, 0], C[:, 0], backend="reference")
    for b in FAST:
        assert torch.allclose(selective_scan(u, delta, A, B[:, 0], C[:, 0], backend=b), y_ref, atol=1e-10)


@pytest.mark.parametrize("a_scale", [1.0, 50.0])
def test_float32_long_sequence_is_exact_to_rounding(a_scale):
    # L = 16384 in float32 against the float64 reference, including large delta*A.
    args64 = _inputs(bsz=1, dim=4, state=16, length=16384, a_scale=a_scale, seed=3)
    y64 = _run(args64, "reference")
    y32 = _run(tuple(t.float() for t in args64), "cpu")
    rel = ((y32.double() - y64).abs().max() / y64.abs().max()).item()
    assert rel <= 1e-5


@pytest.mark.parametrize("backend", FAST)
def test_gradients_gradcheck(backend):
    args = [t.clone().requires_grad_() for t in _inputs(bsz=1, dim=4, state=3, length=17, groups=2)]
    # The hand-written cpu backward is checked element by element; torch's autograd-derived one by
    # gradcheck's fast mode (random projections), which costs two evaluations instead of ~900.
    assert gradcheck(lambda *t: _run(t, backend), args, fast_mode=backend != "cpu")


def test_gradients_match_reference_float32():
    base = _inputs(bsz=2, dim=6, state=5, length=300, dtype=torch.float32, seed=5)
    grads = {b: _grads(base, b) for b in ("reference", "cpu")}
    for g_ref, g in zip(grads["reference"], grads["cpu"], strict=True):
        assert torch.allclose(g, g_ref, rtol=1e-4, atol=1e-5)


def test_cpu_chunking_boundaries_are_seamless(monkeypatch):
    import importlib

    cpu_op = importlib.import_module("srcore.kernels.scan_cpu_op")

    base = _inputs(bsz=2, dim=4, state=3, length=100, groups=2)
    full = _run(base, "cpu")
    monkeypatch.setattr(cpu_op, "_CHUNK_STEPS", 16)  # 7 chunks, the last one partial
    assert torch.allclose(_run(base, "cpu"), full, atol=1e-12)
    grads = {b: _grads(base, b) for b in ("reference", "cpu")}
    for g_ref, g in zip(grads["reference"], grads["cpu"], strict=True):
        assert torch.allclose(g, g_ref, rtol=1e-9, atol=1e-10)


def test_scan_backend_context_sets_the_default(monkeypatch):
    import importlib

    ss = importlib.import_module("srcore.ops.selective_scan")
    used = []
    for name in ("_scan_reference", "selective_scan_cpu", "_scan_torch"):
        real = getattr(ss, name)
        monkeypatch.setattr(ss, name, lambda *a, _n=name, _f=real: used.append(_n) or _f(*a))
    u, delta, A, B, C, *_ = _inputs(length=5)
    with scan_backend("torch"):
        selective_scan(u, delta, A, B, C)
        with scan_backend("reference"):
            selective_scan(u, delta, A, B, C)
            selective_scan(u, delta, A, B, C, backend="cpu")  # an explicit argument wins
        selective_scan(u, delta, A, B, C)
    selective_scan(u, delta, A, B, C)  # restored: chosen by device
    assert used == ["_scan_torch", "_scan_reference", "selective_scan_cpu", "_scan_torch",
                    "selective_scan_cpu"]
    with pytest.raises(ValueError, match="unknown selective-scan backend"), scan_backend("magic"):
        pass


def test_bad_arguments():
    u, delta, A, B, C, *_ = _inputs()
    with pytest.raises(ValueError, match="unknown selective-scan backend"):
        selective_scan(u, delta, A, B, C, backend="magic")
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(u, delta, A[:3], B, C)
    with pytest.raises(ValueError, match=r"\(B, D, L\)"):
        selective_scan(u, delta[..., :5], A, B, C)
    if "cuda" not in available_backends("cpu"):
        with pytest.raises(ValueError, match="mamba-ssm"):
            selective_scan(u, delta, A, B, C, backend="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_backends_match_reference():
    args = _inputs(bsz=2, dim=16, state=8, length=512, dtype=torch.float32)
    y_ref = _run(args, "reference")
    cuda_args = tuple(t.cuda() for t in args)
    for b in available_backends("cuda"):
        if b in ("cpu",):
            continue
        y = _run(cuda_args, b).cpu()
        assert ((y - y_ref).abs().max() / y_ref.abs().max()) < 1e-4, b


def test_resolve_backend_and_model_report(monkeypatch):
    """The back-end the reports name is the one ``selective_scan`` picks: by device, by the
    ``scan_backend`` context, or forced on the model."""
    import importlib

    from srcore.models import build
    from srcore.ops import model_scan_backend, resolve_backend

    assert resolve_backend(None, "cpu") == "cpu"
    with scan_backend("torch"):
        assert resolve_backend(None, "cpu") == "torch"
        assert resolve_backend("reference", "cpu") == "reference"
    ops_mod = importlib.import_module("srcore.ops.selective_scan")
    monkeypatch.setattr(ops_mod, "triton_available", lambda: True)
    assert resolve_backend(None, "cuda") == "triton"
    monkeypatch.setattr(ops_mod, "triton_available", lambda: False)
    assert resolve_backend(None, "cuda") == "torch"
    with pytest.raises(ValueError, match="needs CPU tensors"):
        resolve_backend("cpu", "cuda")

    dvmsr = build("dvmsr", 4, depths=(1, 1))
    assert model_scan_backend(dvmsr, "cpu") == "numba-cpu"
    assert model_scan_backend(dvmsr, "cuda") == "torch"  # Triton made unavailable above
    assert model_scan_backend(dvmsr.set_scan_backend("reference"), "cpu") == "reference"
    with scan_backend("torch"):
        assert model_scan_backend(build("mair_t", 4, depths=(1, 1)), "cpu") == "torch"
    assert model_scan_backend(build("rlfn", 4), "cpu") is None


def test_profile_and_eval_report_the_scan_backend(tmp_path, monkeypatch):
    """Both commands put ``model_scan_backend``'s answer for the model and device they ran in the
    console table and the JSON (its own logic is tested above; a full Mamba model is too slow here)."""
    import json

    from typer.testing import CliRunner

    import srcore.evaluation.suite as suite
    import srcore.ops as ops
    from srcore.cli import common as cli

    asked = []

    def report(model, device):
        asked.append((model.arch, str(device)))
        return "triton" if model.arch == "rlfn" else None

    monkeypatch.setattr(ops, "model_scan_backend", report)
    monkeypatch.setattr(suite, "model_scan_backend", report)
    monkeypatch.setattr(cli.out, "width", 200)  # room for every column of the tables
    runner, app = CliRunner(), cli.app
    out = tmp_path / "p.json"
    result = runner.invoke(app, ["profile", "--model", "rlfn", "--input", "16x16", "--repeats", "1",
                                 "--device", "cpu", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["scan_backend"] == "triton" and asked == [("rlfn", "cpu")]
    assert "triton" in result.output and "scan" in result.output

    result = runner.invoke(app, ["eval", "--model", "rlfn", "--model", "bicubic", "--dataset", "embedded",
                                 "--device", "cpu", "--json", str(tmp_path / "e.json")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "e.json").read_text())["tables"]["x4"]
    assert [r["scan_backend"] for r in rows] == ["triton", None]
    assert [line.split("│")[4].strip() for line in result.output.splitlines() if line.startswith("│ ")] == \
        ["triton", "-"]


ALL_OPTIONS = ("D", "z", "delta_bias", "delta_softplus")


@pytest.mark.parametrize("options", [(), ("D",), ("z",), ("delta_bias",), ("delta_softplus",),
                                     ("D", "z", "delta_softplus"), ALL_OPTIONS])
def test_cpu_fused_options_match_reference(options):
    # The numba kernel applies bias, softplus, D and the gate itself (selective_scan uses that
    # without gradients; the op's own backward is checked through a direct call): every subset,
    # values and gradients, with delta large enough that softplus takes its linear branch (x > 20).
    from srcore.kernels.scan_cpu_op import selective_scan_cpu

    u, delta, A, B, C, D, z, bias = _inputs(bsz=2, dim=4, state=3, length=40, groups=2, seed=7)
    delta = delta * 12
    given = {"D": D, "z": z, "delta_bias": bias, "delta_softplus": True}
    kw = {k: v for k, v in given.items() if k in options}
    with torch.no_grad():
        y_ref = selective_scan(u, delta, A, B, C, **kw, backend="reference")
        torch.testing.assert_close(selective_scan(u, delta, A, B, C, **kw, backend="cpu"), y_ref,
                                   rtol=1e-9, atol=1e-10)
    results = {}
    for name in ("reference", "fused"):
        leaves = [t.clone().requires_grad_() for t in (u, delta, A, B, C)]
        opt = {k: (v.clone().requires_grad_() if torch.is_tensor(v) else v) for k, v in kw.items()}
        if name == "reference":
            y, last = selective_scan(*leaves, **opt, return_last_state=True, backend="reference")
        else:
            y, last = selective_scan_cpu(*leaves, opt.get("D"), opt.get("z"), opt.get("delta_bias"),
                                         opt.get("delta_softplus", False))
        (y.square().mean() + last.sum()).backward()
        extra = [v.grad for v in opt.values() if torch.is_tensor(v)]
        results[name] = [y, last] + [t.grad for t in leaves] + extra
    for ref, got in zip(results["reference"], results["fused"], strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-10)


def test_cpu_float32_fused_forward_matches_the_unfused_one():
    # float32 softplus and sigmoid inside the kernel are polynomials (srcore.kernels.act_cpu):
    # within float32 rounding of torch's, so model outputs do not move.
    args = _inputs(bsz=1, dim=8, state=16, length=600, dtype=torch.float32, seed=9)
    with torch.no_grad():
        fused = _run(args, "cpu")
    leaves = [t.clone().requires_grad_() for t in args]
    unfused = _run(leaves, "cpu").detach()  # gradients wanted: bias, softplus, D, z in torch
    ref = _run(tuple(t.double() for t in args), "reference")
    assert ((fused.double() - ref).abs().max() / ref.abs().max()).item() <= 2e-6
    torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-6)


def test_scan_loop_matches_the_reference_across_chunk_seams():
    g = torch.Generator().manual_seed(0)
    for length, groups in ((1, 1), (63, 1), (65, 2), (300, 4)):
        u, delta = torch.randn(2, 8, length, generator=g), torch.randn(2, 8, length, generator=g)
        A = -torch.rand(8, 3, generator=g) * 3
        B, C = torch.randn(2, 2, groups, 3, length, generator=g).unbind(0)
        D, bias, z = torch.randn(2, 8, generator=g).unbind(0) + (torch.randn(2, 8, length, generator=g),)
        ref, ref_last = selective_scan(u, delta, A, B, C, D, z, bias, True, True, backend="reference")
        got, last = selective_scan(u, delta, A, B, C, D, z, bias, True, True, backend="loop")
        assert torch.allclose(got, ref, atol=1e-5) and torch.allclose(last, ref_last, atol=1e-5)


def test_scan_loop_refuses_gradients():
    u = torch.randn(1, 2, 5, requires_grad=True)
    with pytest.raises(ValueError, match="backend='loop' is for inference"):
        selective_scan(u, u.detach(), -torch.ones(2, 1), torch.ones(1, 1, 5), torch.ones(1, 1, 5),
                       backend="loop")


# Relative error allowed for half-precision inputs against the float64 reference, with the state
# accumulated in float32: the inputs alone round to 8 (bf16) or 11 (fp16) significant bits, 2e-3
# and 2.4e-4 each, and an output sums a few such terms (measured: 3.5e-3 and 6.4e-4 on the case
# below). The same scan accumulated in the half type misses both (5e-2 and 5.3e-3), so an
# accumulation in the caller's dtype fails the test.
HALF_TOLERANCE = {"bf16": 1e-2, "fp16": 2e-3}
_HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _half_case():
    g = torch.Generator().manual_seed(0)
    length = 256
    return (torch.randn(2, 8, length, generator=g), torch.rand(2, 8, length, generator=g) * 0.1,
            -torch.rand(8, 4, generator=g), torch.randn(2, 1, 4, length, generator=g),
            torch.randn(2, 1, 4, length, generator=g))


@pytest.mark.parametrize("backend", ["reference", "cpu", "torch", "loop"])
@pytest.mark.parametrize("name", sorted(_HALF))
def test_half_inputs_accumulate_in_fp32_and_keep_their_dtype(backend, name):
    args = _half_case()
    ref = selective_scan(*(t.double() for t in args), backend="reference")
    y = selective_scan(*(t.to(_HALF[name]) for t in args), backend=backend)
    assert y.dtype == _HALF[name]
    assert ((y.double() - ref).abs().max() / ref.abs().max()).item() <= HALF_TOLERANCE[name]


@pytest.mark.parametrize("name", sorted(_HALF))
def test_half_tolerance_catches_a_half_precision_accumulation(name):
    from srcore.ops.selective_scan import _scan_reference

    args = _half_case()
    ref = selective_scan(*(t.double() for t in args), backend="reference")
    y, _ = _scan_reference(*(t.to(_HALF[name]) for t in args))  # the state kept in the half type
    assert ((y.double() - ref).abs().max() / ref.abs().max()).item() > HALF_TOLERANCE[name]


_COLD_PROCESS = """
import json, numpy as np, torch
from srcore.data.imresize import imresize_np
from srcore.kernels import resize_cpu, scan_cpu
from srcore.metrics import ssim_kernel
from srcore.metrics.quality import ssim_y
from srcore.models.presets import build

model = build("dvmsr", 2, embed_dim=4, depths=[1])  # other sizes than the warm-up's
model(torch.rand(3, 3, 20, 20, requires_grad=True)).mean().backward()  # a training step
with torch.no_grad():  # inference (the gate inside the kernel) on a batch and on one image
    model(torch.rand(3, 3, 20, 20))
    model(torch.rand(1, 3, 20, 20))
image = np.random.default_rng(1).random((24, 24, 3))
for pixels in (image, image.astype(np.float32), (image * 255).astype(np.uint8)):
    imresize_np(pixels, scale=0.5)
ssim_y(image, image[::-1].copy())
kernels = (scan_cpu.scan_forward, scan_cpu.scan_backward, resize_cpu.resize_axis1, ssim_kernel.ssim_mean)
print(json.dumps({k.__name__: sum(k.stats.cache_misses.values()) for k in kernels}))
"""


def test_the_kernel_cache_warm_up_leaves_what_training_and_evaluation_run_compiled_on_disk():
    """``make install`` compiles the numba kernels once (srcore.models.kernel_cache): afterwards a new
    process that trains a Mamba model, runs it on a batch and on one image, resizes and scores images
    loads every kernel it calls from the cache and compiles none (numba compiles once per dtype and
    array layout, and a batch's gate reaches the scan as a strided view)."""
    import json
    import subprocess
    import sys

    from srcore.models.kernel_cache import warm_kernel_cache

    assert warm_kernel_cache(processes=1) >= 0  # in this process: the test's own cost stays small
    done = subprocess.run([sys.executable, "-c", _COLD_PROCESS], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    misses = json.loads(done.stdout.strip().splitlines()[-1])
    assert misses == {"scan_forward": 0, "scan_backward": 0, "resize_axis1": 0, "ssim_mean": 0}, misses
