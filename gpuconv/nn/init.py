"""Weight initialisers. Values are drawn on the host from a seeded ``numpy.random.Generator``
(so one seed gives the same weights on every backend) and moved to a backend by the caller.

Fan convention (PyTorch's): for a weight of shape (out, in, *kernel) the receptive field is
prod(kernel), fan_in = in * receptive field, fan_out = out * receptive field.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import numpy as np

__all__ = ["fans", "he_normal", "glorot_uniform", "zeros", "as_generator"]


def as_generator(rng) -> np.random.Generator:
    """``rng`` as a Generator: a Generator is used as is, an int seeds a new one, None gives an
    unseeded one (different weights on every run)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, (int, np.integer)) and not isinstance(rng, bool)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy.random.Generator, an int seed or None, got {rng!r}")


def fans(shape: Sequence[int]) -> Tuple[int, int]:
    """(fan_in, fan_out) of a weight of shape (out, in, *kernel); rank >= 2."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"shape must have rank >= 2 (out, in, *kernel), got {shape}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def he_normal(shape: Sequence[int], rng: np.random.Generator, dtype=np.float32,
              gain: float = math.sqrt(2.0)) -> np.ndarray:
    """Kaiming normal (fan_in mode, ReLU gain sqrt 2): N(0, gain^2 / fan_in), shape ``shape``."""
    fan_in, _ = fans(shape)
    std = gain / math.sqrt(fan_in)
    return (as_generator(rng).standard_normal(tuple(shape)) * std).astype(dtype)


def glorot_uniform(shape: Sequence[int], rng: np.random.Generator, dtype=np.float32,
                   gain: float = 1.0) -> np.ndarray:
    """Xavier/Glorot uniform: U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = fans(shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return as_generator(rng).uniform(-bound, bound, size=tuple(shape)).astype(dtype)


def zeros(shape: Sequence[int], dtype=np.float32) -> np.ndarray:
    return np.zeros(tuple(shape), dtype=dtype)
