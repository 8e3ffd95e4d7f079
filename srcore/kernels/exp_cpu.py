"""An exponential that numba can vectorise, for use inside ``@njit`` kernels.

``fast_exp(x)`` is ``exp(x)``: for float32 arguments a branch-free Cody-Waite reduction plus a
degree-7 Taylor polynomial (relative error about 2 ulp on the whole float32 range, results
clamped to the normal range), for float64 arguments ``math.exp`` itself.

Why hand-written: numba lowers ``math.exp`` to a scalar libm call, and vectorising it needs
Intel's SVML with a patched LLVM, which the PyPI builds of llvmlite do not have. A loop over the
state dimension that calls ``fast_exp`` on float32 compiles to straight-line vector code instead.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

__all__ = ["fast_exp"]

_LOG2E = np.float32(1.4426950408889634)
# ln 2 split in a high part with trailing zero bits (k * _LN2_HI is exact) and the remainder.
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_X_MIN = np.float32(-87.0)  # exp(-87) ~ 1.6e-38, still a normal float32
_X_MAX = np.float32(88.0)
_ONE = np.float32(1.0)
_HALF = np.float32(0.5)
# 1/k! for k = 7 .. 2 (Horner from the top), rounded to float32.
_TAYLOR = tuple(np.float32(1.0 / math.factorial(k)) for k in range(7, 1, -1))


@intrinsic
def _int32_bits_as_float32(typingctx, bits):
    """Reinterpret the bits of an int32 as a float32 (a plain LLVM bitcast)."""
    if bits != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


def fast_exp(x):  # pragma: no cover - replaced by the overload inside compiled code
    """exp(x); only meaningful inside ``@njit`` code (see the module docstring)."""
    return math.exp(x)


@overload(fast_exp, jit_options={"fastmath": False})
def _fast_exp_impl(x):
    if x == types.float32:
        c7, c6, c5, c4, c3, c2 = _TAYLOR

        def exp_f32(x):
            x = min(max(x, _X_MIN), _X_MAX)
            k = np.floor(x * _LOG2E + _HALF)
            f = (x - k * _LN2_HI) - k * _LN2_LO  # |f| <= ln2 / 2
            p = c7
            p = p * f + c6
            p = p * f + c5
            p = p * f + c4
            p = p * f + c3
            p = p * f + c2
            p = p * f + _ONE
            p = p * f + _ONE
            scale = _int32_bits_as_float32(np.int32((np.int32(k) + np.int32(127)) << np.int32(23)))
            return p * scale

        return exp_f32
    if isinstance(x, types.Float):
        return lambda x: math.exp(x)
    return None
