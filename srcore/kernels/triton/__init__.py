"""Triton kernels for CUDA devices (selective scan, involution).

Triton is optional: ``triton_available()`` says whether it imports; the kernel modules import it
themselves, so importing this package never fails. On CPU the kernels run under Triton's
interpreter when ``TRITON_INTERPRET=1`` is set before triton is first imported (the tests do so).
"""

from __future__ import annotations

import importlib.util
import os

__all__ = ["INSTALL_HINT", "interpreted", "triton_available"]

INSTALL_HINT = "the triton back-end needs Triton: pip install triton (it ships with CUDA builds of torch)"


def triton_available() -> bool:
    """Whether Triton can be imported."""
    return importlib.util.find_spec("triton") is not None


def interpreted() -> bool:
    """Whether Triton runs its interpreter (kernels then take CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
