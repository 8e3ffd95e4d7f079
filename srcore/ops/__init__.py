"""Heavy operators behind one function each, with a reference and faster back-ends."""

from srcore.ops.selective_scan import (
    available_backends,
    scan_backend,
    scan_flops,
    selective_scan,
    selective_scan_reference,
)

__all__ = ["available_backends", "scan_backend", "scan_flops", "selective_scan", "selective_scan_reference"]
