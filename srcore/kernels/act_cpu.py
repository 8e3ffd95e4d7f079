"""Softplus and sigmoid that numba can vectorise, for use inside ``@njit`` kernels.

``fast_softplus(x)`` returns ``(softplus(x), sigmoid(x))``, the value with torch's semantics
(``log1p(exp(x))``, and x itself above 20) and its derivative; ``fast_sigmoid(x)`` is
``1 / (1 + exp(-x))``. For float32 arguments both are built on ``fast_exp`` and a polynomial, so
a loop over steps that calls them compiles to vector code (numba lowers ``math.log1p`` and
``math.exp`` to scalar libm calls, which cost more than the vectorised torch ops they replace);
for float64 arguments they use ``math`` itself, exact to the last bits.

float32 softplus: ``max(x, 0) + log1p(w)`` with ``w = exp(-|x|)`` in (0, 1], and ``log1p(w) =
2 atanh(s)`` with ``s = w / (2 + w)`` <= 1/3, summed as an odd series to s^17 (truncation below
1e-9 relative). It stays accurate in relative terms for tiny w, and above x = 20 it rounds to x.
"""

from __future__ import annotations

import math

import numpy as np
from numba import types
from numba.extending import overload

from srcore.kernels.exp_cpu import fast_exp

__all__ = ["fast_sigmoid", "fast_softplus"]

_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_TWO = np.float32(2.0)
# 1 / (2k + 1) for k = 8 .. 1 (Horner from the top), rounded to float32.
_ATANH = tuple(np.float32(1.0 / (2 * k + 1)) for k in range(8, 0, -1))


def fast_softplus(x):  # pragma: no cover - replaced by the overload inside compiled code
    """(softplus(x), sigmoid(x)); only meaningful inside ``@njit`` code (see the module docstring)."""
    if x > 20.0:
        return x, 1.0
    ex = math.exp(x)
    return math.log1p(ex), ex / (1.0 + ex)


def fast_sigmoid(x):  # pragma: no cover - replaced by the overload inside compiled code
    """1 / (1 + exp(-x)); only meaningful inside ``@njit`` code."""
    return 1.0 / (1.0 + math.exp(-x))


@overload(fast_softplus, jit_options={"fastmath": False})
def _fast_softplus_impl(x):
    if x == types.float32:
        c17, c15, c13, c11, c9, c7, c5, c3 = _ATANH

        def softplus_f32(x):
            w = fast_exp(-abs(x))
            s = w / (_TWO + w)
            s2 = s * s
            p = c17
            p = p * s2 + c15
            p = p * s2 + c13
            p = p * s2 + c11
            p = p * s2 + c9
            p = p * s2 + c7
            p = p * s2 + c5
            p = p * s2 + c3
            p = p * s2 + _ONE
            positive = x > _ZERO
            value = (x if positive else _ZERO) + _TWO * s * p
            slope = (_ONE if positive else w) / (_ONE + w)
            return value, slope

        return softplus_f32
    if isinstance(x, types.Float):
        def softplus_f64(x):
            if x > 20.0:  # torch's threshold: the identity, slope exactly 1
                return x, 1.0
            ex = math.exp(x)
            return math.log1p(ex), ex / (1.0 + ex)

        return softplus_f64
    return None


@overload(fast_sigmoid, jit_options={"fastmath": False})
def _fast_sigmoid_impl(x):
    if x == types.float32:
        return lambda x: _ONE / (_ONE + fast_exp(-x))
    if isinstance(x, types.Float):
        return lambda x: 1.0 / (1.0 + math.exp(-x))
    return None
