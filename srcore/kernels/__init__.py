"""Compiled kernels behind ``srcore.ops``: numba on CPU (``scan_cpu``, ``exp_cpu``, ``act_cpu``,
``resize_cpu``), Triton for CUDA (``srcore.kernels.triton``, optional, tested on CPU under Triton's
interpreter)."""
