"""Heavy operators behind one function each, with a reference and faster back-ends."""

from srcore.ops.selective_scan import (
    BACKEND_LABELS,
    available_backends,
    model_scan_backend,
    resolve_backend,
    scan_backend,
    scan_flops,
    selective_scan,
    selective_scan_reference,
)

__all__ = ["BACKEND_LABELS", "available_backends", "model_scan_backend", "resolve_backend", "scan_backend",
           "scan_flops", "selective_scan", "selective_scan_reference"]
