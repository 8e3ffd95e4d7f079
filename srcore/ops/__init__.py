"""Heavy operators behind one function each, with a reference and faster back-ends."""

from srcore.ops.selective_scan import available_backends, scan_flops, selective_scan, selective_scan_reference

__all__ = ["selective_scan", "selective_scan_reference", "available_backends", "scan_flops"]
