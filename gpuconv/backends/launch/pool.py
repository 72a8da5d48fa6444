"""Launches of ``cuda/pool2d.cu``: max / average / L2 pooling, forward and backward.

Forward kernels run one thread per output cell (v1 only). Backward kernels are gathers over
the windows covering each input cell: v1 one thread per cell, v2 (default) one thread per run of
4 cells of an input row; v1 and v2 give identical bits.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ...geometry import PoolGeometry
from .common import check_elements, ctype, grid_1d

FILE = "pool2d.cu"

VERSIONS = {
    "max_pool2d_forward": (1,),
    "max_pool2d_backward": (1, 2),
    "avg_pool2d_forward": (1,),
    "avg_pool2d_backward": (1, 2),
    "l2_pool2d_forward": (1,),
    "l2_pool2d_backward": (1, 2),
}
DEFAULT_VERSIONS = {
    "max_pool2d_forward": 1,
    "max_pool2d_backward": 2,
    "avg_pool2d_forward": 1,
    "avg_pool2d_backward": 2,
    "l2_pool2d_forward": 1,
    "l2_pool2d_backward": 2,
}
NAME_EXPRESSIONS = tuple(f"{op}_v{v}<{t}>" for op, vs in VERSIONS.items() for v in vs
                         for t in ("float", "double"))

BLOCK = 256
DEFINES = {"GC_POOL_RUN": 4}  # input cells per thread of the v2 backward kernels (-D option)
RUN = DEFINES["GC_POOL_RUN"]


def _geometry_args(g: PoolGeometry) -> tuple:
    return tuple(np.int32(v) for v in (g.N * g.C, g.H, g.W, g.P, g.Q, g.R, g.S, g.stride_h, g.stride_w,
                                       g.pad_h, g.pad_w, g.dil_h, g.dil_w))


def _check_sizes(g: PoolGeometry) -> None:
    check_elements("x", g.N * g.C * g.H * g.W)
    check_elements("output", g.N * g.C * g.P * g.Q)


def _check_avg(g: PoolGeometry, divisor_override: Optional[int]) -> tuple:
    if g.dil_h != 1 or g.dil_w != 1:
        raise ValueError(f"average pooling takes no dilation, got dilation {(g.dil_h, g.dil_w)}")
    if divisor_override is not None and (isinstance(divisor_override, bool)
                                         or int(divisor_override) < 1):
        raise ValueError(f"divisor_override must be None or an int >= 1, got {divisor_override!r}")
    return (0 if divisor_override is None else int(divisor_override),)


def _backward_items(be, op: str, g: PoolGeometry) -> tuple:
    """(version, number of work items) of a backward gather kernel."""
    v = be.version(op)
    runs = -(-g.W // RUN) if v == 2 else g.W
    return v, g.N * g.C * g.H * runs


def max_forward(be, x, g: PoolGeometry):
    """x (N, C, H, W) -> (y (N, C, P, Q), indices int32 (N, C, P, Q))."""
    _check_sizes(g)
    x = be.contiguous(x)
    y = be.empty(g.y_shape, x.dtype)
    idx = be.empty(g.y_shape, np.int32)
    fn = be.function(FILE, f"max_pool2d_forward_v{be.version('max_pool2d_forward')}<{ctype(x.dtype)}>")
    grid, block = grid_1d(y.size, BLOCK)
    be.launch(fn, grid, block, (x, y, idx) + _geometry_args(g))
    return y, idx


def max_backward(be, dy, indices, g: PoolGeometry):
    """dy, indices (N, C, P, Q) -> dx (N, C, H, W): each dy routed to its argmax cell."""
    _check_sizes(g)
    if indices.dtype != np.int32:
        raise TypeError(f"indices must be int32, got {indices.dtype}")
    dy, indices = be.contiguous(dy), be.contiguous(indices)
    dx = be.empty(g.x_shape, dy.dtype)
    v, items = _backward_items(be, "max_pool2d_backward", g)
    fn = be.function(FILE, f"max_pool2d_backward_v{v}<{ctype(dy.dtype)}>")
    grid, block = grid_1d(items, BLOCK)
    be.launch(fn, grid, block, (dy, indices, dx) + _geometry_args(g))
    return dx


def avg_forward(be, x, g: PoolGeometry, count_include_pad: bool, divisor_override: Optional[int]):
    """x (N, C, H, W) -> y (N, C, P, Q), PyTorch's divisor rule."""
    _check_sizes(g)
    extra = (np.int32(bool(count_include_pad)),) + tuple(np.int32(d) for d in _check_avg(g, divisor_override))
    x = be.contiguous(x)
    y = be.empty(g.y_shape, x.dtype)
    fn = be.function(FILE, f"avg_pool2d_forward_v{be.version('avg_pool2d_forward')}<{ctype(x.dtype)}>")
    grid, block = grid_1d(y.size, BLOCK)
    be.launch(fn, grid, block, (x, y) + _geometry_args(g) + extra)
    return y


def avg_backward(be, dy, g: PoolGeometry, count_include_pad: bool, divisor_override: Optional[int],
                 dtype):
    """dy (N, C, P, Q) -> dx (N, C, H, W) of ``dtype``."""
    _check_sizes(g)
    extra = (np.int32(bool(count_include_pad)),) + tuple(np.int32(d) for d in _check_avg(g, divisor_override))
    dy = be.contiguous(dy.astype(dtype, copy=False))
    dx = be.empty(g.x_shape, dtype)
    v, items = _backward_items(be, "avg_pool2d_backward", g)
    fn = be.function(FILE, f"avg_pool2d_backward_v{v}<{ctype(dtype)}>")
    grid, block = grid_1d(items, BLOCK)
    be.launch(fn, grid, block, (dy, dx) + _geometry_args(g) + extra)
    return dx


def l2_forward(be, x, g: PoolGeometry):
    """x (N, C, H, W) -> y = sqrt(window sum of x^2) (N, C, P, Q)."""
    _check_sizes(g)
    x = be.contiguous(x)
    y = be.empty(g.y_shape, x.dtype)
    fn = be.function(FILE, f"l2_pool2d_forward_v{be.version('l2_pool2d_forward')}<{ctype(x.dtype)}>")
    grid, block = grid_1d(y.size, BLOCK)
    be.launch(fn, grid, block, (x, y) + _geometry_args(g))
    return y


def l2_backward(be, dy, x, y, g: PoolGeometry):
    """dy, y (N, C, P, Q), x (N, C, H, W) -> dx = x * sum of dy/y over covering windows."""
    _check_sizes(g)
    dy, x, y = be.contiguous(dy), be.contiguous(x), be.contiguous(y)
    dx = be.empty(g.x_shape, x.dtype)
    v, items = _backward_items(be, "l2_pool2d_backward", g)
    fn = be.function(FILE, f"l2_pool2d_backward_v{v}<{ctype(x.dtype)}>")
    grid, block = grid_1d(items, BLOCK)
    be.launch(fn, grid, block, (dy, x, y, dx) + _geometry_args(g))
    return dx
