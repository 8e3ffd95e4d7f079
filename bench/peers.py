"""Peer implementations the benches compare against, loaded the way their users would run them on CPU.

``mamba_ssm_selective_scan_ref()`` returns mamba-ssm's ``selective_scan_ref`` (the official
implementation's CPU numerics) or None when mamba-ssm is not installed. mamba-ssm ships only as a
source package (see ../shared/DESIGN.md: ``MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE pip
install --no-build-isolation --no-deps mamba-ssm``); without its CUDA extension the package's
``__init__`` cannot import, so the loader stands in an empty ``selective_scan_cuda`` and imports
only the ops module, leaving the rest of the package (and its extra dependencies) unloaded.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Callable


def mamba_ssm_selective_scan_ref() -> Callable | None:
    """mamba-ssm's ``selective_scan_ref``, or None when mamba-ssm is not installed."""
    spec = importlib.util.find_spec("mamba_ssm")
    if spec is None:
        return None
    try:
        import selective_scan_cuda  # noqa: F401  (a CUDA build: the package imports as it is)
    except ImportError:
        sys.modules["selective_scan_cuda"] = types.ModuleType("selective_scan_cuda")
        if "mamba_ssm" not in sys.modules:
            package = types.ModuleType("mamba_ssm")
            package.__path__ = list(spec.submodule_search_locations or [])
            sys.modules["mamba_ssm"] = package
    from mamba_ssm.ops.selective_scan_interface import selective_scan_ref

    return selective_scan_ref
