"""Model efficiency: parameters, FLOPs, activations, latency and peak memory.

FLOPs follow fvcore's convention (one multiply-add = one FLOP). They are counted with
``torch.utils.flop_counter.FlopCounterMode`` (which counts a multiply-add as two, hence the
halving), extended with fvcore's formulas for the ops it also counts (normalisations,
upsampling, adaptive pooling) and with the selective scan at 9*B*L*D*N. ``fvcore_plain``
additionally leaves out what fvcore cannot see in the official implementations: the selective
scan itself (mamba-ssm's CUDA kernel is opaque to tracing), and everything but the declared
children of modules that set ``fvcore_visible`` (whole fused blocks such as mamba_inner_fn).
"""

from __future__ import annotations

import copy
import math
import statistics
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from srcore.ops.selective_scan import SCAN_OP, scan_flops

__all__ = ["EfficiencyReport", "count_params", "count_flops", "count_activations", "measure_latency",
           "measure_peak_memory", "profile_model"]

aten = torch.ops.aten


def _numel(shape) -> int:
    return math.prod(shape)


# Formulas receive argument shapes (FlopCounterMode's convention) and return 2x fvcore FLOPs.
def _norm_affine(x_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * 5 * _numel(x_shape)


def _batch_norm(x_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * _numel(x_shape)


def _upsample_bilinear(x_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * 4 * _numel(out_shape)


def _adaptive_pool(x_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * _numel(x_shape)


def _scan(u_shape, delta_shape, a_shape, *args, out_shape=None, **kwargs) -> int:
    # delta's channels, not u's: several scan orders may share one u (MaIR's NSS scans).
    b, d, length = delta_shape
    return 2 * scan_flops(b, length, d, a_shape[1])




def _fvcore_mapping() -> dict:
    mapping = {
        aten.native_layer_norm: _norm_affine,
        aten.native_group_norm: _norm_affine,
        aten._native_batch_norm_legit_no_training: _batch_norm,
        aten.upsample_bilinear2d: _upsample_bilinear,
        aten._adaptive_avg_pool2d: _adaptive_pool,
    }
    mapping[SCAN_OP.overloadpacket] = _scan  # the counter keys ops by packet
    return mapping


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _total(counts: dict) -> int:
    return sum(counts.values()) if counts else 0


@torch.no_grad()
def count_flops(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(FLOPs with everything counted, FLOPs as plain fvcore sees the official model).

    Counted on the CPU whatever the model's device: the selective scan is one custom op there
    (``SCAN_OP``, counted at 9*B*L*D*N), while on CUDA it runs as Triton or mamba-ssm kernels that
    the counter cannot see. FLOPs do not depend on the device, so the numbers are the same.
    """
    if x.device.type != "cpu":
        model, x = copy.deepcopy(model).cpu(), x.cpu()
    with FlopCounterMode(display=False, depth=None, custom_mapping=_fvcore_mapping()) as counter:
        model(x)
    per_module = counter.get_flop_counts()
    scan = SCAN_OP.overloadpacket

    def without_scan(counts: dict) -> int:
        return sum(v for op, v in (counts or {}).items() if op is not scan)

    full = _total(per_module.get("Global", {}))
    root = type(model).__name__
    hidden = full - without_scan(per_module.get("Global", {}))  # every selective scan
    for name, mod in model.named_modules():
        visible = getattr(mod, "fvcore_visible", None)
        if visible is None:
            continue
        key = f"{root}.{name}" if name else root
        inside = without_scan(per_module.get(key, {}))
        shown = sum(without_scan(per_module.get(f"{key}.{child}", {})) for child in visible)
        hidden += inside - shown
    return full // 2, (full - hidden) // 2


class _ConvOutputs(TorchDispatchMode):
    """Sums the elements of every convolution output (the NTIRE 'activations' count)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func._overloadpacket in (aten.convolution, aten.cudnn_convolution, aten.mkldnn_convolution):
            self.total += out.numel()
        return out


@torch.no_grad()
def count_activations(model: nn.Module, x: torch.Tensor) -> int:
    with _ConvOutputs() as counter:
        model(x)
    return counter.total


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_latency(model: nn.Module, x: torch.Tensor, warmup: int = 2, repeats: int = 5,
                    threads: int | None = None, min_run_time: float = 0.2) -> float:
    """Median time of one forward pass in milliseconds, with ``torch.utils.benchmark``: ``warmup``
    passes, then ``blocked_autorange`` (blocks of several calls, device-synchronised, on ``threads``
    threads, default the current count) until ``min_run_time`` seconds and ``repeats`` blocks."""
    from torch.utils import benchmark

    for _ in range(warmup):
        model(x)
    _sync(x.device)
    timer = benchmark.Timer("model(x)", globals={"model": model, "x": x},
                            num_threads=threads or torch.get_num_threads())
    times: list[float] = []
    while len(times) < repeats:
        times.extend(timer.blocked_autorange(min_run_time=min_run_time).times)
    return statistics.median(times) * 1000


class _LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of tensor storage alive during a forward pass, counted op by op.

    Sampling the process RSS misses the peak on CPU: the allocator keeps freed blocks mapped, so
    after a warm-up the RSS hardly grows. Counting storages instead (weak references, so a
    freed activation stops counting at once) gives the CPU figure CUDA's allocator reports.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def _prune(self) -> None:
        for key, (ref, nbytes) in list(self.live.items()):
            if ref.expired():
                del self.live[key]
                self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._prune()
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.live:
                    self.live[key] = (StorageWeakRef(storage), storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


@torch.no_grad()
def measure_peak_memory(model: nn.Module, x: torch.Tensor) -> float:
    """Peak extra memory of one forward pass in MB: CUDA's max allocated on GPU; on CPU the peak
    of tensor storage created by the pass and alive at once (weights and input excluded)."""
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        base = torch.cuda.memory_allocated(x.device)
        model(x)
        torch.cuda.synchronize(x.device)
        return (torch.cuda.max_memory_allocated(x.device) - base) / 2**20
    with _LiveTensorBytes() as tracker:
        y = model(x)
    del y
    return tracker.peak / 2**20


@dataclass
class EfficiencyReport:
    model: str
    scale: int
    input: str
    params: int
    flops_g: float
    flops_fvcore_plain_g: float
    activations_m: float
    latency_ms: float
    peak_mem_mb: float

    def as_dict(self) -> dict:
        return asdict(self)


def profile_model(model: nn.Module, name: str, scale: int, height: int = 256, width: int = 256,
                  device: torch.device | str = "cpu", repeats: int = 5, warmup: int = 2,
                  threads: int | None = None) -> EfficiencyReport:
    """All efficiency numbers for ``model`` at a 1x3xHxW input (latency on ``threads`` CPU threads)."""
    device = torch.device(device)
    model = model.to(device).eval()
    x = torch.rand(1, 3, height, width, device=device)
    flops, plain = count_flops(model, x)
    return EfficiencyReport(
        model=name, scale=scale, input=f"{height}x{width}", params=count_params(model),
        flops_g=flops / 1e9, flops_fvcore_plain_g=plain / 1e9,
        activations_m=count_activations(model, x) / 1e6,
        latency_ms=measure_latency(model, x, warmup=warmup, repeats=repeats, threads=threads),
        peak_mem_mb=measure_peak_memory(model, x))
