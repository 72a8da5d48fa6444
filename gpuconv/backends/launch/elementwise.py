"""Launches of ``cuda/elementwise.cu``: activations, their backward, dropout, add, mul.

Op ``elementwise`` has versions 1 (scalar grid-stride loop) and 2 (4-wide aligned accesses, the
default); a call selected for v2 whose arrays are not aligned to 4 elements runs v1.
"""
from __future__ import annotations

import numpy as np

from ...dropout_rng import dropout_params
from .common import check_elements, ctype, grid_1d, scalar

FILE = "elementwise.cu"

UNARY_OPS = ("relu_forward", "sigmoid_forward", "tanh_forward")
BINARY_OPS = ("relu_backward", "sigmoid_backward", "tanh_backward", "add", "mul")
KERNELS = UNARY_OPS + BINARY_OPS + ("dropout_forward",)

VERSIONS = {"elementwise": (1, 2)}
KERNEL_OPS = {k: "elementwise" for k in KERNELS}  # every kernel here follows the one op's version
DEFAULT_VERSIONS = {"elementwise": 2}
NAME_EXPRESSIONS = tuple(f"{k}_v{v}<{t}>" for k in KERNELS for v in (1, 2) for t in ("float", "double"))

BLOCK = 256


def _name(be, kernel: str, arrays, dtype) -> str:
    v = be.version("elementwise")
    if v == 2:
        align = 4 * np.dtype(dtype).itemsize
        if any(be.data_ptr(a) % align for a in arrays):
            v = 1
    return f"{kernel}_v{v}<{ctype(dtype)}>"


def _launch_map(be, kernel: str, inputs, outputs, extra=()) -> None:
    n = inputs[0].size
    if n == 0:
        return
    dtype = inputs[0].dtype
    name = _name(be, kernel, tuple(inputs) + tuple(outputs), dtype)
    items = n // 4 if name.startswith(f"{kernel}_v2") else n
    grid, block = grid_1d(max(items, 1), BLOCK)
    fn = be.function(FILE, name)
    be.launch(fn, grid, block, tuple(inputs) + tuple(outputs) + (np.int32(n),) + tuple(extra))


def unary(be, op: str, x):
    """y = f(x) for op in UNARY_OPS; any shape, float32/float64."""
    if op not in UNARY_OPS:
        raise ValueError(f"op must be one of {UNARY_OPS}, got {op!r}")
    check_elements("x", x.size)
    x = be.contiguous(x)
    y = be.empty(x.shape, x.dtype)
    _launch_map(be, op, (x,), (y,))
    return y


def binary(be, op: str, a, b):
    """y = f(a, b) element-wise for op in BINARY_OPS; a and b have the same shape and dtype."""
    if op not in BINARY_OPS:
        raise ValueError(f"op must be one of {BINARY_OPS}, got {op!r}")
    if a.shape != b.shape:
        raise ValueError(f"{op}: operands must have the same shape, got {a.shape} and {b.shape}")
    if a.dtype != b.dtype:
        raise TypeError(f"{op}: operands must have the same dtype, got {a.dtype} and {b.dtype}")
    check_elements("a", a.size)
    a, b = be.contiguous(a), be.contiguous(b)
    y = be.empty(a.shape, a.dtype)
    _launch_map(be, op, (a, b), (y,))
    return y


def _as_int32(u: int) -> np.int32:
    return np.array(u, dtype=np.uint32).view(np.int32)[()]


def dropout(be, x, p: float, seed: int, offset: int = 0):
    """(y, mask): mask in {0, 1/(1-p)} of x's dtype, the rule of ``gpuconv.dropout_rng``."""
    lo, hi, threshold, scale = dropout_params(p, seed)
    check_elements("x", x.size)
    x = be.contiguous(x)
    y = be.empty(x.shape, x.dtype)
    mask = be.empty(x.shape, x.dtype)
    _launch_map(be, "dropout_forward", (x,), (y, mask),
                (_as_int32(lo), _as_int32(hi), _as_int32(int(offset) % 2**32), np.int32(threshold),
                 scalar(x.dtype, scale)))
    return y, mask
