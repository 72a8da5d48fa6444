"""The dropout mask rule shared by every backend: a counter-based hash of (seed, element index).

Element i is kept iff ``mix(mix(i + offset) ^ key(seed)) >> 8 >= round(p * 2**24)``, where ``mix``
is the "lowbias32" xorshift-multiply integer hash in uint32 arithmetic; kept elements are scaled by
1/(1-p). ``cuda/elementwise.cu`` computes the same bits on the device, so the NumPy, emulator and
CUDA backends draw identical masks for the same seed.
"""
from __future__ import annotations

import numbers
from typing import Tuple

import numpy as np

DROPOUT_BITS = 24  # the kept/dropped decision compares the top 24 bits of a 32-bit hash


def dropout_params(p, seed) -> Tuple[int, int, int, float]:
    """Validate (p, seed) and return (seed low 32 bits, seed high 32 bits, threshold, scale)."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {seed!r} of type {type(seed).__name__}")
    p = float(p)
    seed = int(seed) % 2**64
    threshold = int(round(p * 2**DROPOUT_BITS))
    scale = 0.0 if p == 1.0 else 1.0 / (1.0 - p)
    return seed & 0xFFFFFFFF, seed >> 32, threshold, scale


def _mix32(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def dropout_mask(shape, p: float, seed: int, dtype=np.float32, offset: int = 0) -> np.ndarray:
    """The mask (values 0 or 1/(1-p), dtype ``dtype``) for a tensor of ``shape``, on the host."""
    lo, hi, threshold, scale = dropout_params(p, seed)
    n = int(np.prod(shape))
    with np.errstate(over="ignore"):
        key = _mix32(np.uint32(lo) ^ _mix32(np.uint32(hi) ^ np.uint32(0x9E3779B9)))
        i = np.arange(n, dtype=np.uint32) + np.uint32(int(offset) % 2**32)
        keep = (_mix32(_mix32(i) ^ key) >> np.uint32(8)) >= np.uint32(threshold)
    dt = np.dtype(dtype)
    return np.where(keep, dt.type(scale), dt.type(0)).reshape(shape)
