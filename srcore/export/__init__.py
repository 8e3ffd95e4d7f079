"""Exporting a model to ONNX or TorchScript, checked against PyTorch before the file is written.

``export_model(model, out, ExportOptions(...))`` writes ``out`` only when the exported graph,
run by its own runtime (onnxruntime, ``torch.jit.load``), matches the PyTorch model on random and
real images within the tolerance; otherwise it raises ``ExportError`` and leaves nothing behind.
``load_exported(path)`` runs an exported file like a model (``.scale``, NCHW float in [0, 1]).
"""

from srcore.export.api import ExportError, ExportOptions, export_model
from srcore.export.runtime import ExportedModel, load_exported
from srcore.export.verify import ParityCase, ParityReport

__all__ = ["ExportError", "ExportOptions", "export_model", "ExportedModel", "load_exported", "ParityCase",
           "ParityReport"]
