"""CUDA's launch limits (compute capability 7.0 and later) and the one check of a launch
configuration against them, used by both executors: the emulator and the CuPy path refuse the
same launches with the same message.
"""
from __future__ import annotations

from typing import Tuple, Type

import numpy as np

MAX_GRID = (2**31 - 1, 65535, 65535)
MAX_BLOCK = (1024, 1024, 64)
MAX_THREADS_PER_BLOCK = 1024
# Dynamic shared memory a launch may ask for without cudaFuncSetAttribute's opt-in (which
# gpuconv's kernels never need), and the opt-in maximum of sm_90 (227 KiB), which the emulator
# models for kernels of its users.
MAX_SHARED_DEFAULT = 48 * 1024
MAX_SHARED_OPTIN = 227 * 1024

Dim3 = Tuple[int, int, int]


def _dims(value, what: str, limits: Dim3, error: Type[Exception]) -> Dim3:
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        value = (value,)
    if not isinstance(value, (tuple, list)) or not 1 <= len(value) <= 3:
        raise error(f"{what} must be an int or a tuple of 1 to 3 ints, got {value!r}")
    out = [1, 1, 1]
    for i, v in enumerate(value):
        if not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_)):
            raise error(f"{what}[{i}] must be an int, got {type(v).__name__} {v!r}")
        if not 1 <= int(v) <= limits[i]:
            raise error(f"{what}[{i}] = {int(v)} is outside CUDA's limit 1..{limits[i]}")
        out[i] = int(v)
    return out[0], out[1], out[2]


def check_launch(grid, block, shared_mem, max_shared: int = MAX_SHARED_DEFAULT,
                 error: Type[Exception] = ValueError) -> Tuple[Dim3, Dim3, int]:
    """(grid, block, shared_mem) as 3-tuples and an int, or ``error`` naming what is outside
    CUDA's limits."""
    g = _dims(grid, "grid", MAX_GRID, error)
    b = _dims(block, "block", MAX_BLOCK, error)
    if b[0] * b[1] * b[2] > MAX_THREADS_PER_BLOCK:
        raise error(f"block {b} has {b[0] * b[1] * b[2]} threads, CUDA allows at most "
                    f"{MAX_THREADS_PER_BLOCK}")
    if isinstance(shared_mem, (bool, np.bool_)) or not isinstance(shared_mem, (int, np.integer)) \
            or not 0 <= int(shared_mem) <= max_shared:
        raise error(f"shared_mem must be an int in 0..{max_shared}, got {shared_mem!r}")
    return g, b, int(shared_mem)
