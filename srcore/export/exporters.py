"""Writing a model as an ONNX or TorchScript graph, with its ``ExportMeta`` inside the file.

ONNX first goes through torch's TorchScript-based exporter (``dynamo=False``): on this CPU it
exports our models several times faster than the dynamo-based one and gives the same graphs.
Where it has no translation for an operator (SRConvNet's ``fft_rfft2``) the dynamo-based
exporter (``dynamo=True``, onnxscript) takes over. TorchScript is ``torch.jit.trace``.
Mamba models are traced with the selective scan's ``loop`` back-end (``scan_backend("loop")``,
``srcore.ops.scan_loop``): the numba CPU kernel is opaque to both tracers, and the loop back-end's
TorchScript loops stay loops (ONNX ``Loop``), so the graph takes any input size and its size does
not depend on the one traced. MaIR's scan orders are computed inside the graph for the same reason.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path

import torch

from srcore.export.runtime import META_KEY, ExportMeta
from srcore.models.base import SRModel
from srcore.ops import scan_backend

log = logging.getLogger(__name__)

__all__ = ["export_onnx", "export_torchscript", "OPSET"]

OPSET = 18
_MAX_SIDE = 4096  # upper bound of a dynamic side; the exporter needs a finite range


def _example(size: tuple[int, int] | None, dtype: torch.dtype) -> torch.Tensor:
    h, w = size or (32, 32)  # 32 is divisible by every model's stripe: a neutral trace size
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)).to(dtype)


@contextlib.contextmanager
def _tracing(model: SRModel):
    """The model as tracers should see it: eval mode, no grad, the traceable selective scan."""
    with torch.no_grad(), scan_backend("loop"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints are expected; parity is checked
        yield model.eval()


def _onnx_torchscript(model: SRModel, x: torch.Tensor, path: str, dynamic: bool) -> None:
    axes = {"lr": {2: "height", 3: "width"}, "sr": {2: "out_height", 3: "out_width"}} if dynamic else None
    torch.onnx.export(model, (x,), path, dynamo=False, opset_version=OPSET, input_names=["lr"],
                      output_names=["sr"], dynamic_axes=axes)


def _onnx_dynamo(model: SRModel, x: torch.Tensor, path: str, dynamic: bool) -> None:
    shapes = None
    if dynamic:
        dim = torch.export.Dim
        shapes = ({2: dim("height", min=8, max=_MAX_SIDE), 3: dim("width", min=8, max=_MAX_SIDE)},)
    program = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=shapes, opset_version=OPSET,
                                input_names=["lr"], output_names=["sr"], verbose=False)
    program.save(path)


def _compact_names(proto) -> None:
    """Give every intermediate value a short name and nodes none: the exporter names them by module
    path ("/layers.0/residual_group/blocks.0/self_attention/Unsqueeze_12_output_0"), which made up
    a third of MaIR-T's graph file (6.3 MB -> 4.6 MB). Graph inputs, outputs and weights keep theirs.
    One mapping for the whole model, loop bodies included, as they refer to outer values by name."""
    import onnx

    keep = {v.name for v in (*proto.graph.input, *proto.graph.output)}
    keep |= {t.name for t in proto.graph.initializer}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        return name if not name or name in keep else names.setdefault(name, f"t{len(names)}")

    def walk(graph) -> None:
        for value in (*graph.input, *graph.output, *graph.value_info):
            value.name = short(value.name)
        for node in graph.node:
            node.name = ""
            node.input[:] = [short(x) for x in node.input]
            node.output[:] = [short(x) for x in node.output]
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)

    walk(proto.graph)


def export_onnx(model: SRModel, path: str | os.PathLike, meta: ExportMeta) -> None:
    """Write ``model`` as ONNX (opset ``OPSET``); dynamic H/W when ``meta.size`` is None."""
    import onnx
    from torch.onnx.errors import UnsupportedOperatorError

    x = _example(meta.size, getattr(torch, meta.dtype))
    with _tracing(model) as m:
        try:
            _onnx_torchscript(m, x, str(path), meta.size is None)
        except UnsupportedOperatorError as exc:
            log.info("%s: %s; using the dynamo-based ONNX exporter", meta.arch, str(exc).splitlines()[0])
            _onnx_dynamo(m, x, str(path), meta.size is None)
    proto = onnx.load(str(path))
    _compact_names(proto)
    proto.metadata_props.add(key=META_KEY, value=meta.to_json())
    proto.doc_string = (f"srcore {meta.arch} x{meta.scale}: lr (N, 3, H, W) {meta.dtype} RGB in [0, 1] -> "
                        f"sr (N, 3, {meta.scale}H, {meta.scale}W)")
    onnx.save(proto, str(path))


def export_torchscript(model: SRModel, path: str | os.PathLike, meta: ExportMeta) -> None:
    """Write ``model`` as a traced TorchScript module with ``meta`` as the extra file ``srcore.json``."""
    x = _example(meta.size, getattr(torch, meta.dtype))
    with _tracing(model) as m:
        traced = torch.jit.trace(m, (x,), check_trace=False)  # parity is checked afterwards, on more inputs
    torch.jit.save(traced, str(Path(path)), _extra_files={META_KEY: meta.to_json()})
