"""The registered model: an MLflow pyfunc around an srcore checkpoint, fit to serve any image size.

MLflow's PyTorch flavour exports a shape-specialised graph; instead we log our checkpoint as an
artifact and rebuild the model from its stored config when loaded.

Input contract of ``predict`` (also the REST body ``{"inputs": ...}`` of ``mlflow models serve``):

- an image as uint8 pixels, ``(H, W, 3)`` or a batch ``(N, H, W, 3)`` (RGB, 0..255; JSON: nested
  lists of integers); floats and other dtypes are refused with a message, never rescaled;
- or base64-encoded PNG/JPEG files (the compact encoding): a list of strings in JSON, a 1-D object
  array of strings from Python.

An image over the pixel limit (``SRCORE_MAX_IMAGE_PIXELS`` of the serving process) is refused from
its header, before decoding, like an unreadable one: HTTP 400 with the reason.

Output: uint8 ``(N, sH, sW, 3)`` for pixel input; a list of base64 PNG strings for base64 input.
Params (per request): ``tile`` (LR tile size, 0 = whole image). Model config (at load): ``device``
(``auto``, ``cpu``, ``cuda``), ``tile`` (default tile size), ``runtime``: ``torch`` (the model
itself) or ``onnx`` (the model exported at load with dynamic H/W, checked against PyTorch by
``srcore.export``, and run by onnxruntime), and ``compile`` (with the ``torch`` runtime: run the
model under ``torch.compile``, see ``srcore.inference.compile_model``). The environment rebuilds
from the logged files alone: the ``srcore`` package travels as ``code_paths`` and torch is pinned.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from importlib import metadata
from pathlib import Path

import mlflow.pyfunc
import numpy as np

log = logging.getLogger(__name__)

__all__ = ["SRPyfunc", "signature", "input_example", "pip_requirements", "log_model_version", "log_onnx",
           "decode_input", "MODEL_ARTIFACT", "DEFAULT_CONFIG"]

MODEL_ARTIFACT = "model"
DEFAULT_CONFIG = {"device": "auto", "tile": 256, "runtime": "torch", "compile": False}
RUNTIMES = ("torch", "onnx")
# What the library imports at run time (not the training/tracking stack): pinned to this install.
_RUNTIME_PACKAGES = ("torch", "numpy", "pydantic", "einops", "numba", "pillow", "pyyaml", "onnx",
                     "onnxruntime")


def InputError(message: str):  # noqa: N802 - reads as the exception it builds
    """A request that breaks the input contract; MLflow's scoring server answers it with HTTP 400."""
    from mlflow.exceptions import MlflowException

    return MlflowException.invalid_parameter_value(message)


def _decode_b64(items: list, dtype_hint: str) -> list[np.ndarray]:
    from srcore.data.image_io import decode_rgb
    from srcore.errors import SrcoreError

    images = []
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise InputError(f"item {i}: expected a base64 PNG string, got {type(text).__name__} "
                             f"({dtype_hint})")
        try:
            images.append(decode_rgb(base64.b64decode(text, validate=True), name=f"item {i}"))
        except (binascii.Error, ValueError) as exc:
            raise InputError(f"item {i}: not a base64-encoded image ({exc})") from None
        except SrcoreError as exc:  # unreadable, unsupported or over the pixel limit
            raise InputError(str(exc)) from None
    return images


def _pixels(batch: np.ndarray) -> np.ndarray:
    if batch.dtype == object:  # JSON passes through as Python ints (or floats, which we refuse)
        kinds = {type(v) for v in batch.ravel()[:4096]}
        if not kinds <= {int, np.int64, np.uint8}:
            found = sorted(k.__name__ for k in kinds)
            raise InputError(f"pixels must be uint8 integers 0..255, got {found}; send integers "
                             "(not floats in [0, 1]) or base64 PNG strings")
        batch = batch.astype(np.int64)
        if batch.min(initial=0) < 0 or batch.max(initial=0) > 255:
            raise InputError("pixels must be in 0..255 (uint8)")
        batch = batch.astype(np.uint8)
    if batch.dtype != np.uint8:
        raise InputError(f"pixels must be uint8 (0..255), got dtype {batch.dtype}; convert with "
                         "np.asarray(img, dtype=np.uint8) or send base64 PNG strings")
    if batch.ndim == 3:
        batch = batch[None]
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise InputError(f"expected an (H, W, 3) or (N, H, W, 3) RGB image, got shape {batch.shape}")
    return batch


def decode_input(model_input) -> tuple[list[np.ndarray], bool]:
    """``model_input`` -> (HxWx3 uint8 images, whether they came as base64); see the module docstring."""
    if isinstance(model_input, str):
        return _decode_b64([model_input], "str"), True
    if hasattr(model_input, "to_numpy") and not isinstance(model_input, np.ndarray):  # pandas
        model_input = model_input.to_numpy()
        if model_input.ndim == 2 and model_input.shape[1] == 1:  # one column of base64 strings
            model_input = model_input.ravel()
    if isinstance(model_input, list) and model_input and isinstance(model_input[0], str):
        return _decode_b64(model_input, "list"), True
    batch = np.asarray(model_input) if not isinstance(model_input, np.ndarray) else model_input
    if batch.ndim == 1 and batch.dtype == object and batch.size and isinstance(batch[0], str):
        return _decode_b64(list(batch), "array"), True
    if batch.dtype.kind in "US":
        return _decode_b64([str(v) for v in batch.ravel()], "array"), True
    return list(_pixels(batch)), False


class SRPyfunc(mlflow.pyfunc.PythonModel):
    """``predict``: uint8 (H, W, 3) / (N, H, W, 3) or base64 images -> SR images (module docstring)."""

    def load_context(self, context) -> None:
        import torch

        from srcore.models import load_model

        config = {**DEFAULT_CONFIG, **(context.model_config or {})}
        device, runtime = str(config["device"]), str(config["runtime"])
        if runtime not in RUNTIMES:
            raise InputError(f"model_config runtime: {runtime!r} is not one of {', '.join(RUNTIMES)}")
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.tile = int(config["tile"] or 0) or None
        self.model = load_model(context.artifacts[MODEL_ARTIFACT]).to(self.device).eval()
        if runtime == "onnx":
            self.model = self._exported(self.model)
        elif bool(config["compile"]):
            from srcore.inference import compile_model

            self.model = compile_model(self.model)
        log.info("loaded %s x%d on %s with %s (tile %s)", self.model.arch, self.model.scale, self.device,
                 runtime, self.tile)

    def _exported(self, model):
        """``model`` as a verified dynamic-size ONNX graph run by onnxruntime (the file lives as long as
        this object)."""
        import tempfile

        from srcore.export import ExportError, ExportOptions, export_model, load_exported

        self._scratch = tempfile.TemporaryDirectory(prefix="srcore-serve-")
        path = Path(self._scratch.name) / f"{model.arch}.onnx"
        try:
            export_model(model.cpu(), path, ExportOptions(format="onnx"))
        except ExportError as exc:
            raise InputError(f"model_config runtime 'onnx': {exc}; serve it with runtime 'torch'") from None
        return load_exported(path, self.device, fmt="onnx")

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would validate against them
        from srcore.data.image_io import check_pixels, png_bytes
        from srcore.errors import SrcoreError
        from srcore.inference import upscale_image
        from srcore.models.base import check_input_size

        images, as_b64 = decode_input(model_input)
        tile = int((params or {}).get("tile", -1))
        tile = self.tile if tile < 0 else (tile or None)
        outputs = []
        for i, img in enumerate(images):
            try:
                check_pixels(img.shape[1], img.shape[0], f"item {i}")
                check_input_size(self.model, img.shape[0], img.shape[1], f"item {i}")
            except SrcoreError as exc:
                raise InputError(str(exc)) from None
            outputs.append(upscale_image(self.model, img, self.device, tile=tile))
        if as_b64:
            return [base64.b64encode(png_bytes(o)).decode("ascii") for o in outputs]
        if len({o.shape for o in outputs}) > 1:
            raise InputError("a pixel batch must hold images of one size; send one request per size")
        return np.stack(outputs)


def signature():
    """Object tensor in (so MLflow passes JSON through for our dtype checks instead of casting floats
    to uint8), the SR pixels out, and the per-request ``tile`` param."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(object), (-1,))]),
                          outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
                          params=ParamSchema([ParamSpec("tile", "long", -1)]))


def input_example() -> np.ndarray:
    """A small real uint8 RGB image (16x16 crop of the embedded benchmark) shown in the MLflow UI."""
    from srcore.data.benchmarks import embedded_hr

    _, img = embedded_hr()[0]
    h, w = img.shape[:2]
    return np.ascontiguousarray(img[h // 2:h // 2 + 16, w // 2:w // 2 + 16])


def pip_requirements() -> list[str]:
    """The run-time packages pinned to this environment's versions, torch included."""
    reqs = [f"mlflow=={metadata.version('mlflow')}"]
    for name in _RUNTIME_PACKAGES:
        version = metadata.version(name).split("+")[0]  # drop local tags such as +cpu
        reqs.append(f"{name}=={version}")
    return reqs


def log_model_version(model_path: str | os.PathLike, registered_name: str | None = None,
                      config: dict | None = None) -> str | None:
    """Log ``model_path`` as the pyfunc ``model`` of the active run (registering it as
    ``registered_name`` when given); returns the registered version."""
    import srcore

    info = mlflow.pyfunc.log_model(
        name="model", python_model=SRPyfunc(), artifacts={MODEL_ARTIFACT: str(model_path)},
        signature=signature(), input_example=input_example(), pip_requirements=pip_requirements(),
        code_paths=[str(Path(srcore.__file__).parent)], model_config={**DEFAULT_CONFIG, **(config or {})},
        metadata={"input_format": "uint8 RGB (H, W, 3) or (N, H, W, 3), or base64 PNG strings; see README"},
        registered_model_name=registered_name)
    return None if info.registered_model_version is None else str(info.registered_model_version)


def log_onnx(model) -> dict[str, str]:
    """Export ``model`` to ONNX (dynamic size) and log the file and its parity report under
    ``onnx/`` of the active run; returns tags saying what was logged or why not."""
    import tempfile

    from srcore.export import ExportError, ExportOptions, export_model
    from srcore.export.api import FIXED_SIZE_ONLY, report_path

    if ("onnx", model.arch) in FIXED_SIZE_ONLY:
        reason = f"fixed-size only ({FIXED_SIZE_ONLY['onnx', model.arch]}); use `srcore export --tile H W`"
        return {"onnx": "not exported", "onnx.reason": reason}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{model.arch}-x{model.scale}.onnx"
        try:
            report = export_model(model, out, ExportOptions(format="onnx"))
        except ExportError as exc:
            log.warning("ONNX export not logged: %s", exc)
            return {"onnx": "not exported", "onnx.reason": str(exc)[:500]}
        mlflow.log_artifact(str(out), "onnx")
        mlflow.log_artifact(str(report_path(out)), "onnx")
    return {"onnx": f"onnx/{out.name}", "onnx.max_abs_diff": f"{report.max_abs_diff:.3g}"}
