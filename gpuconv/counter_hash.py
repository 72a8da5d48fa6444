"""The counter-based hash behind every random draw made on the device (dropout masks, batch
augmentation), in NumPy; ``cuda/counter_hash.cuh`` computes the same bits on the device.

``mix32`` is the "lowbias32" xorshift-multiply integer hash (two multiply rounds) in uint32
arithmetic; a seed (any int, taken modulo 2^64) becomes a 32-bit key
``mix32(lo ^ mix32(hi ^ 0x9E3779B9))`` from its low and high 32-bit words. Draws hash a counter
(an element or image index) together with the key, so any element's value is computed without
the others and every backend draws the same numbers.
"""
from __future__ import annotations

import numbers
from typing import Tuple

import numpy as np

__all__ = ["mix32", "seed_words", "seed_key", "GOLDEN"]

GOLDEN = 0x9E3779B9  # 2^32 / golden ratio: separates the words of a seed, and draw streams


def mix32(x: np.ndarray) -> np.ndarray:
    """lowbias32 of uint32 values (wrapping arithmetic; callers silence overflow warnings)."""
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def seed_words(seed) -> Tuple[int, int]:
    """(low, high) 32-bit words of ``seed`` modulo 2^64; TypeError unless it is an int."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {seed!r} of type {type(seed).__name__}")
    seed = int(seed) % 2**64
    return seed & 0xFFFFFFFF, seed >> 32


def seed_key(lo: int, hi: int) -> np.uint32:
    """The 32-bit key of a seed given as its two words."""
    with np.errstate(over="ignore"):
        return mix32(np.uint32(lo) ^ mix32(np.uint32(hi) ^ np.uint32(GOLDEN)))
