"""Launches of ``cuda/linear.cu``: the dense layer y = x @ weight^T + bias and its backward.

Op ``linear_gemm``: v1 runs the tiled GEMM kernel of linear.cu (bias fused); v2 runs the array
library's matmul — cuBLAS through CuPy on a GPU, NumPy on the CPU — then adds the bias with
bias_add_rows. v2 is the default on a GPU (cuBLAS is a tuned library; expected faster than a
simple tiled kernel, not yet measured here); on the emulator v1 is (``launch.default_versions``:
there v2 would be NumPy's matmul checked against NumPy). The bias gradient is always the
column_sum kernel (deterministic, fixed order).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .common import check_elements, ctype, grid_1d

FILE = "linear.cu"

VERSIONS = {"linear_gemm": (1, 2)}
KERNEL_OPS = {"gemm": "linear_gemm"}  # bias_add_rows and column_sum are unversioned helpers
DEFAULT_VERSIONS = {"linear_gemm": 2}
LIBRARY_VERSIONS = {("linear_gemm", 2)}  # the array library's matmul, not a kernel of linear.cu
_TYPES = ("float", "double")
NAME_EXPRESSIONS = tuple(f"{k}_v1<{t}>" for k in ("gemm", "bias_add_rows", "column_sum") for t in _TYPES)

DEFINES = {"GC_GEMM_TILE": 16}  # rows and columns of gemm_v1's tile and block (-D option)
TILE = DEFINES["GC_GEMM_TILE"]


def _check_sizes(**sizes: int) -> None:
    """Refuse int32-overflowing operands before any contiguous copy is made."""
    for name, n in sizes.items():
        check_elements(name, n)


def _matmul(be, a, a_strides: Tuple[int, int], b, b_strides: Tuple[int, int], M: int, N: int, K: int,
            bias=None):
    """C (M, N) = A (M, K) @ B (K, N) (+ bias), A/B given as contiguous buffers plus element strides.

    ``a_strides`` = (stride of m, stride of k) into ``a``; ``b_strides`` = (stride of k, stride of n).
    """
    _check_sizes(A=M * K, B=K * N, C=M * N)
    dt = a.dtype
    if be.version("linear_gemm") == 2:
        view = be.xp.lib.stride_tricks.as_strided
        av = view(a, (M, K), tuple(s * dt.itemsize for s in a_strides))
        bv = view(b, (K, N), tuple(s * dt.itemsize for s in b_strides))
        c = be.xp.ascontiguousarray(be.xp.matmul(av, bv))
        if bias is not None:
            grid, block = grid_1d(c.size, 256)
            be.launch(be.function(FILE, f"bias_add_rows_v1<{ctype(dt)}>"), grid, block,
                      (c, bias, np.int32(M), np.int32(N)))
        return c
    c = be.empty((M, N), dt)
    if c.size == 0:  # an empty batch or layer: nothing to launch (a grid of 0 blocks is invalid)
        return c
    has_bias = bias is not None
    grid = (-(-M // TILE), -(-N // TILE), 1)  # rows (the batch) on grid.x: no 65535-tile limit
    be.launch(be.function(FILE, f"gemm_v1<{ctype(dt)}>"), grid, (TILE, TILE, 1),
              (a, b, bias if has_bias else a, c, np.int32(M), np.int32(N), np.int32(K),
               np.int32(a_strides[0]), np.int32(a_strides[1]), np.int32(b_strides[0]),
               np.int32(b_strides[1]), np.int32(has_bias)))
    return c


def forward(be, x, weight, bias: Optional[object]):
    """x (N, I), weight (O, I), bias (O,) or None -> y (N, O)."""
    if x.ndim != 2 or weight.ndim != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"linear: x must be (N, I) and weight (O, I), got {x.shape} and {weight.shape}")
    n, n_in = x.shape
    n_out = weight.shape[0]
    _check_sizes(x=x.size, weight=weight.size, y=n * n_out)
    x, weight = be.contiguous(x), be.contiguous(weight)
    if bias is not None:
        if bias.shape != (n_out,):
            raise ValueError(f"linear: bias must have shape ({n_out},), got {bias.shape}")
        bias = be.contiguous(bias)
    # y[n, o] = sum_i x[n, i] * weight[o, i]:  A = x (strides n_in, 1), B(k=i, n=o) = weight[o, i].
    return _matmul(be, x, (n_in, 1), weight, (1, n_in), n, n_out, n_in, bias)


def backward(be, dy, x, weight, need_db: bool = True):
    """dy (N, O), x (N, I), weight (O, I) -> (dx (N, I), dweight (O, I), dbias (O,) or None)."""
    n, n_in = x.shape
    n_out = weight.shape[0]
    if dy.shape != (n, n_out):
        raise ValueError(f"linear_backward: dy must have shape {(n, n_out)}, got {dy.shape}")
    _check_sizes(dy=dy.size, x=x.size, weight=weight.size)
    dy, x, weight = be.contiguous(dy), be.contiguous(x), be.contiguous(weight)
    dx = _matmul(be, dy, (n_out, 1), weight, (n_in, 1), n, n_in, n_out)      # dy @ weight
    dw = _matmul(be, dy, (1, n_out), x, (n_in, 1), n_out, n_in, n)           # dy^T @ x
    db = None
    if need_db:
        db = be.empty((n_out,), dy.dtype)
        grid, block = grid_1d(n_out, 128)
        be.launch(be.function(FILE, f"column_sum_v1<{ctype(dy.dtype)}>"), grid, block,
                  (dy, db, np.int32(n), np.int32(n_out)))
    return dx, dw, db
