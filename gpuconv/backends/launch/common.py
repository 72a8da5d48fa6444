"""What every launch module shares: 1-D grid sizing, the int32 size check, dtype -> C type."""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np

from ...geometry import INT32_MAX

# Grid-stride kernels are launched with at most this many blocks: enough to fill every SM of an
# H100/H200 many times over, and small enough that the unsigned loop counter cannot wrap.
MAX_GRID_STRIDE_BLOCKS = 65535


_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def ctype(dtype) -> str:
    """C type name of a floating dtype: "float" or "double"."""
    t = _CTYPES.get(dtype)  # an array's dtype: one dict lookup on every launch
    if t is None:
        t = _CTYPES.get(np.dtype(dtype))
        if t is None:
            raise TypeError(f"kernels take float32 or float64 arrays, got dtype {np.dtype(dtype)}")
    return t


def scalar(dtype, value):
    """A NumPy scalar of the kernel parameter's type (np.float32 / np.float64)."""
    return np.dtype(dtype).type(value)


def check_elements(name: str, n: int) -> int:
    """Refuse element counts whose offsets overflow the kernels' int32 arithmetic."""
    n = int(n)
    if n > INT32_MAX:
        raise ValueError(
            f"{name} has {n} elements; kernels index with int32 offsets, so at most {INT32_MAX} "
            f"elements are supported: split the batch")
    return n


def grid_1d(n: int, block: int = 256) -> Tuple[Tuple[int, int, int], Tuple[int, int, int]]:
    """(grid, block) for a grid-stride loop over ``n`` items (at least one block)."""
    blocks = max(1, min(math.ceil(n / block), MAX_GRID_STRIDE_BLOCKS))
    return (blocks, 1, 1), (block, 1, 1)
