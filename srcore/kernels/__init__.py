"""Compiled kernels behind ``srcore.ops`` (CPU via numba; CUDA back-ends are optional)."""
