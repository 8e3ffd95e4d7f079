"""Exported files run like a model: ``load_exported(path)(x)`` with ``x`` (B, 3, H, W) float in [0, 1].

An exported file carries its own description (architecture, scale, fixed input size or none,
dtype): ONNX in its ``metadata_props``, TorchScript in an extra file ``srcore.json``. A graph of
fixed size (``size``, H x W, not necessarily square) takes any input up to that size: smaller
inputs are padded (edge pixels repeated) and the output cropped, and ``ExportedModel.plan()``
gives the tiling that feeds it (each tile plus its context is exactly H x W), so
``srcore.inference.upscale_tensor`` runs it on images of any size.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from srcore.errors import SrcoreError
from srcore.inference import TilePlan, plan_tiles

__all__ = ["ExportMeta", "ExportedModel", "load_exported", "fixed_overlap", "META_KEY"]

META_KEY = "srcore.json"


@dataclass(frozen=True)
class ExportMeta:
    """What a runtime needs to know about an exported graph."""

    format: str  # "onnx" | "torchscript"
    arch: str
    scale: int
    size: tuple[int, int] | None  # fixed (H, W) of the graph's input, None when dynamic
    dtype: str  # "float32" | "float16"
    min_input_size: int = 1  # the model's smallest input side (a fixed-size graph pads, so 1)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str, source: str) -> ExportMeta:
        try:
            d = json.loads(text)
            size = tuple(d["size"]) if d["size"] else None
            least = int(d.get("min_input_size", 1))
            return cls(d["format"], d["arch"], int(d["scale"]), size, d["dtype"], least)
        except (ValueError, KeyError, TypeError):
            raise SrcoreError(f"{source}: not an srcore export (no valid {META_KEY} metadata); "
                              "export it with `srcore export`") from None


def fixed_overlap(size: int) -> int:
    """Context per side when tiling for a fixed-size graph of shorter side ``size``: 16 px as usual,
    less for small graphs (a core keeps at least half of each side)."""
    return min(16, size // 4)


class ExportedModel:
    """An exported graph with the model calling convention: ``(B, 3, H, W)`` float32 in, float32 out.

    ``eval``/``parameters`` make it usable wherever ``srcore.inference`` expects a module."""

    def __init__(self, path: str | os.PathLike, meta: ExportMeta, run) -> None:
        self.path, self.meta, self._run = Path(path), meta, run

    @property
    def scale(self) -> int:
        return self.meta.scale

    @property
    def arch(self) -> str:
        return self.meta.arch

    @property
    def min_input_size(self) -> int:
        return self.meta.min_input_size

    def eval(self) -> ExportedModel:
        return self

    def parameters(self):
        return iter(())

    def plan(self, tile: int | None = None, overlap: int | None = None) -> TilePlan | None:
        """Tiling for this graph: a fixed-size graph always tiles so that tile + context is its
        size (``tile`` is then ignored); a dynamic one tiles like a model when ``tile`` is given."""
        if self.meta.size is None:
            return plan_tiles(self, tile, overlap) if tile else None
        h, w = self.meta.size
        ov = fixed_overlap(min(h, w))
        return TilePlan(h - 2 * ov, ov, exact=False, radius=None, tile_w=w - 2 * ov)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.meta.size is not None:
            fh, fw = self.meta.size
            if h > fh or w > fw:
                raise SrcoreError(f"{self.path}: graph has a fixed input size {fh}x{fw}, got {h}x{w}; "
                                  "tile the image with ExportedModel.plan()")
            # Edge padding up to the fixed size; the padded part of the output is cropped away.
            x = F.pad(x, (0, fw - w, 0, fh - h), mode="replicate") if (h, w) != (fh, fw) else x
        y = self._run(x.to(getattr(torch, self.meta.dtype)))
        return y[..., :h * self.scale, :w * self.scale].float()


def _onnx_runner(path: Path, device: str, threads: int | None):
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=providers)
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0]).to(x.device)

    return run


def _read_onnx_meta(path: Path) -> ExportMeta:
    import onnx

    try:
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception as exc:  # onnx raises several types (DecodeError, ValidationError) for bad files
        raise SrcoreError(f"{path}: not a readable ONNX file ({type(exc).__name__}: {exc})") from None
    return ExportMeta.from_json(props.get(META_KEY, ""), str(path))


def load_exported(path: str | os.PathLike, device: str = "cpu", fmt: str | None = None,
                  threads: int | None = None) -> ExportedModel:
    """Open an ``srcore export`` file for inference on ``device``; ``fmt`` ("onnx" or "torchscript")
    defaults to what the suffix says (``.onnx`` is ONNX, anything else TorchScript). ``threads``
    caps onnxruntime's intra-op threads (TorchScript follows ``torch.set_num_threads``)."""
    path = Path(path)
    if not path.is_file():
        raise SrcoreError(f"{path}: no such file; export one with `srcore export`")
    if (fmt or ("onnx" if path.suffix == ".onnx" else "torchscript")) == "onnx":
        return ExportedModel(path, _read_onnx_meta(path), _onnx_runner(path, device, threads))
    extra = {META_KEY: ""}
    try:
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except RuntimeError as exc:
        raise SrcoreError(f"{path}: not a TorchScript file ({str(exc).splitlines()[0]}); "
                          "ONNX files must end in .onnx") from None
    module.eval()
    meta = ExportMeta.from_json(extra[META_KEY] or "", str(path))

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(x.to(device))

    return ExportedModel(path, meta, run)
