"""The dropout mask rule shared by every backend: a counter-based hash of (seed, element index).

Element i is kept iff ``mix(mix(i + offset) ^ key(seed)) >> 8 >= round(p * 2**24)``, where ``mix``
is the "lowbias32" xorshift-multiply integer hash in uint32 arithmetic and ``key`` the seed's key
(both in ``gpuconv.counter_hash``); kept elements are scaled by 1/(1-p). ``cuda/elementwise.cu``
computes the same bits on the device, so the NumPy, emulator and CUDA backends draw identical
masks for the same seed.
"""
from __future__ import annotations

import numbers
from typing import Tuple

import numpy as np

from .counter_hash import mix32, seed_key, seed_words

DROPOUT_BITS = 24  # the kept/dropped decision compares the top 24 bits of a 32-bit hash


def dropout_params(p, seed) -> Tuple[int, int, int, float]:
    """Validate (p, seed) and return (seed low 32 bits, seed high 32 bits, threshold, scale)."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    lo, hi = seed_words(seed)
    p = float(p)
    threshold = int(round(p * 2**DROPOUT_BITS))
    scale = 0.0 if p == 1.0 else 1.0 / (1.0 - p)
    return lo, hi, threshold, scale


def dropout_mask(shape, p: float, seed: int, dtype=np.float32, offset: int = 0) -> np.ndarray:
    """The mask (values 0 or 1/(1-p), dtype ``dtype``) for a tensor of ``shape``, on the host."""
    lo, hi, threshold, scale = dropout_params(p, seed)
    n = int(np.prod(shape))
    key = seed_key(lo, hi)
    with np.errstate(over="ignore"):
        i = np.arange(n, dtype=np.uint32) + np.uint32(int(offset) % 2**32)
        keep = (mix32(mix32(i) ^ key) >> np.uint32(8)) >= np.uint32(threshold)
    dt = np.dtype(dtype)
    return np.where(keep, dt.type(scale), dt.type(0)).reshape(shape)
