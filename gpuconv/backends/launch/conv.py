"""Launches of ``cuda/conv2d.cu``: conv2d forward, backward-data, backward-filter and bias gradient.

Ops and versions (see the header of conv2d.cu for what each version changes):
  * ``conv2d_forward``          1 direct, 2 tiled implicit GEMM (default; its 8 x 8-per-thread
                                wide tile for large float layers, see WIDE_TILE), 3 direct with weights in
                                shared memory (for 1-3 input channels), 4 the implicit GEMM on TF32
                                tensor cores (float32 only; not default, unmeasured, and of lower
                                precision: TF32 operands give about 1e-3 relative error, see PRECISION)
  * ``conv2d_backward_data``    1 gather per input cell, 2 tiled implicit GEMM through a stride-
                                divisibility predicate, 3 the implicit GEMM split into stride phases,
                                each a dense stride-1 GEMM over the taps reaching it (default), 4 the
                                GEMM of v2 on TF32 tensor cores (float32 only, lower precision)
  * ``conv2d_backward_filter``  1 one thread per weight, 2 implicit GEMM with a fixed split of the
                                N*P*Q reduction and an ordered sum of the partials, 3 the GEMM with
                                its lanes along N*P*Q, a tile sized from C*R*S and K, and the bias
                                gradient as one more column (default; ``backward`` uses it for dw
                                and db together), 4 the split GEMM of v2 on TF32 tensor cores
                                (float32 only, lower precision)
  * ``conv2d_backward_bias``    1 one thread per channel, 2 two-stage ordered reduction (default)
Every backward result is bitwise reproducible: split counts depend on the sizes (and the tile
width) only.

Without a ``version=`` argument, each call asks the backend which version and tile width to run
for its geometry and dtype (``be.select``; ``gpuconv.backends.select``).

Fused epilogues (every version): the forward applies the bias, a residual add and a ReLU to each
output value before storing it (``forward(..., residual=, relu=)``, the kernels' ``epilogue``
flags ``EPILOGUE``), and backward-data can return the gradient through the ReLU whose output is
the conv's input x (``backward_data(..., relu_y=x)``: dx where x > 0). Both give the same bits as
the unfused ops (conv2d, add, relu; relu_backward after the conv's dx).
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Tuple

import numpy as np

from ...cuda_limits import MAX_GRID
from ...geometry import ConvGeometry
from .common import check_elements, ctype, grid_1d

FILE = "conv2d.cu"

VERSIONS = {
    "conv2d_forward": (1, 2, 3, 4),
    "conv2d_backward_data": (1, 2, 3, 4),
    "conv2d_backward_filter": (1, 2, 3, 4),
    "conv2d_backward_bias": (1, 2),
}
DEFAULT_VERSIONS = {
    "conv2d_forward": 2,
    "conv2d_backward_data": 3,
    "conv2d_backward_filter": 3,
    "conv2d_backward_bias": 2,
}

# Versions that compute with TF32 operands (10-bit mantissa) instead of FP32: tests and benchmarks
# hold them to gpuconv.tolerances.TF32_RTOL. Every other version is full precision.
TF32_VERSIONS = (("conv2d_forward", 4), ("conv2d_backward_data", 4), ("conv2d_backward_filter", 4))
PRECISION = {key: "tf32" for key in TF32_VERSIONS}
# Versions that exist for float32 only: float64 inputs are refused with a ValueError.
FLOAT32_ONLY = set(TF32_VERSIONS)

_TYPES = ("float", "double")
# Sizes the kernels and this module share, passed to every compile as -D options: the one source.
DEFINES = {
    "GC_CONV_THREADS": 256,       # threads of every conv kernel but v4
    "GC_CONV_MIN_BLOCKS": 2,      # __launch_bounds__ minimum resident blocks (128 registers at most)
    "GC_CONV_TILE_AREA": 4096,    # BM * BN of the implicit-GEMM tiles
    "GC_CONV_V3_KB": 8,           # output channels per thread of forward v3
    "GC_CONV_V3_CHUNK": 256,      # reduction indices forward v3 stages in shared memory per pass
    "GC_CONV_V4_THREADS": 128,    # threads of the TF32 kernels, v4 of each GEMM (4 warps)
    "GC_CONV_V4_MIN_BLOCKS": 4,
    "GC_CONV_V4_TILE": 64,        # rows and columns of the TF32 kernels' output tile
    "GC_CONV_EPI_BIAS": 1,        # forward epilogue flags: add bias[k],
    "GC_CONV_EPI_RESIDUAL": 2,    # ... add residual (of y's shape),
    "GC_CONV_EPI_RELU": 4,        # ... then ReLU
}
EPILOGUE = {"bias": DEFINES["GC_CONV_EPI_BIAS"], "residual": DEFINES["GC_CONV_EPI_RESIDUAL"],
            "relu": DEFINES["GC_CONV_EPI_RELU"]}
TILE_WIDTHS = (16, 32, 64)  # BN of the implicit-GEMM kernels (the template argument)
# Forward v2's wide tile: BN = 64 columns, 8 x 8 outputs per thread (256 x 64, float only), taken
# for float when the layer has more than 32 columns per group and the 256-row tiles still make at
# least WIDE_TILE_MIN_BLOCKS blocks (a constant, not the device's SM count: about two blocks per SM
# of the GPUs in gpuconv.tools.suites); the 4 x 4 tiles otherwise. Part of v2's own rule (tile
# None), not a selector candidate.
WIDE_TILE = (64, 8)
WIDE_TILE_MIN_BLOCKS = 256
# Versions whose tile width the selector may choose (by timing): BN of the 4 x 4-per-thread tiles;
# otherwise (tile None) the version's own rule (_tile_width, and forward v2's wide tile).
TILES = {(op, 2): TILE_WIDTHS for op in ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_filter")}
TILE_AREA = DEFINES["GC_CONV_TILE_AREA"]
BLOCK = DEFINES["GC_CONV_THREADS"]
MAX_GRID_Y = MAX_GRID[1]  # the tiled kernels loop over blockIdx.y, so a larger count is folded
MAX_GRID_Z = MAX_GRID[2]  # backward-data v3 loops over blockIdx.z (its phases) likewise

NAME_EXPRESSIONS = tuple(
    [f"conv2d_{k}_v1<{t}>" for k in ("forward", "backward_data", "backward_filter", "backward_bias")
     for t in _TYPES]
    + [f"conv2d_forward_v2<{t}, {bn}, 4>" for t in _TYPES for bn in TILE_WIDTHS]
    + [f"conv2d_forward_v2<float, {WIDE_TILE[0]}, {WIDE_TILE[1]}>"]
    + [f"conv2d_{k}_v2<{t}, {bn}>" for k in ("backward_data", "backward_filter")
       for t in _TYPES for bn in TILE_WIDTHS]
    + [f"conv2d_backward_data_v3<{t}, {bn}, {m}>" for t in _TYPES for bn in TILE_WIDTHS
       for m in ("true", "false")]
    + [f"conv2d_forward_v3<{t}>" for t in _TYPES]
    + ["conv2d_forward_v4<float>"]
    + [f"conv2d_backward_filter_v3<{t}, {bm}, {bn}>" for t in _TYPES for bm in TILE_WIDTHS
       for bn in TILE_WIDTHS]
    + [f"conv2d_backward_filter_v3_sum<{t}>" for t in _TYPES]
    + [f"conv2d_{k}_v4<float>" for k in ("backward_data", "backward_filter")]
    + [f"conv2d_backward_bias_v2<{t}>" for t in _TYPES]
    + [f"conv2d_sum_splits<{t}>" for t in _TYPES])

# Filter-gradient split: aim for this many blocks in all (a constant, not the device's SM count,
# so the same sizes give the same bits on every GPU), each split reducing at least
# FILTER_MIN_STEPS steps of its tile's reduction.
FILTER_TARGET_BLOCKS = 256
FILTER_MIN_STEPS = 16
# Filter-gradient v3 split: aim for this many blocks, each split at least FILTER_V3_MIN_STEPS steps
# of its reduction, and the partial results (written once, read once) at most 1 / FILTER_V3_PARTIAL
# of the elements of dy and x the GEMM reads.
FILTER_V3_TARGET_BLOCKS = 256
FILTER_V3_MIN_STEPS = 8
FILTER_V3_PARTIAL = 1
# Bias-gradient chunks: each block of stage 1 sums at least this many elements of one channel.
BIAS_TARGET_BLOCKS = 256
BIAS_MIN_CHUNK = 2048
V3_CHANNELS = DEFINES["GC_CONV_V3_KB"]
V4_TILE = DEFINES["GC_CONV_V4_TILE"]
V4_BLOCK = DEFINES["GC_CONV_V4_THREADS"]
if TILE_AREA != V4_TILE * V4_TILE:  # backward-filter v4 takes filter_splits' split of 64-row tiles
    raise ValueError(f"GC_CONV_TILE_AREA ({TILE_AREA}) must be GC_CONV_V4_TILE squared ({V4_TILE}**2)")


@functools.lru_cache(maxsize=1024)
def _geometry_args(g: ConvGeometry) -> Tuple[np.int32, ...]:
    """The 16 int32 geometry parameters every conv kernel takes (GC_CONV_GEOMETRY_PARAMS)."""
    return tuple(np.int32(v) for v in (g.N, g.C, g.H, g.W, g.K, g.R, g.S, g.P, g.Q, g.stride_h,
                                       g.stride_w, g.pad_h, g.pad_w, g.dil_h, g.dil_w, g.groups))


_INT32 = {False: np.int32(0), True: np.int32(1)}


def _tile_width(cols: int) -> int:
    """The narrowest GEMM tile width that covers ``cols`` columns (64 beyond)."""
    for bn in TILE_WIDTHS:
        if cols <= bn:
            return bn
    return TILE_WIDTHS[-1]


def _pick(be, op: str, version: Optional[int], g: ConvGeometry, dtype, run) -> Tuple[int, Optional[int]]:
    """(version, tile width or None) of this call: ``version`` when given, else the backend's choice
    for the geometry and dtype (``run(version, tile)`` launches a candidate, should it time them)."""
    if version is None:
        choice = be.select(op, g, dtype, run)  # checked when it was chosen
        return choice.version, choice.tile
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version not in VERSIONS[op]:
        raise ValueError(f"{op}: version must be one of {VERSIONS[op]}, got {version!r}")
    return int(version), None


def _dtype_of(x, w) -> np.dtype:
    if x.dtype is not w.dtype and x.dtype != w.dtype:
        raise TypeError(f"conv2d: x and weight must share a dtype, got {x.dtype} and {w.dtype}")
    ctype(x.dtype)
    return x.dtype


def _check_float32_only(op: str, v: int, dtype) -> None:
    if (op, v) in FLOAT32_ONLY and dtype != np.float32:
        others = ", ".join(str(k) for k in VERSIONS[op] if (op, k) not in FLOAT32_ONLY)
        raise ValueError(f"{op} v{v} (TF32 tensor cores) needs float32 inputs, got {dtype}; "
                         f"use version {others} for float64")


@functools.lru_cache(maxsize=1024)
def _forward_plan(g: ConvGeometry, v: int, t: str, bn: Optional[int] = None,
                  wide_min_blocks: int = WIDE_TILE_MIN_BLOCKS):
    """(kernel, grid, block) of forward version ``v`` for geometry ``g`` and C type ``t``; v2 with a
    tile width ``bn`` runs that width's 4 x 4 tile, without (None) its rule: the narrowest width that
    covers the output channels, and the wide tile from ``wide_min_blocks`` of its blocks on."""
    Kg = g.K // g.groups
    M = g.N * g.P * g.Q
    if v == 1:
        grid, block = grid_1d(check_elements("output", M * g.K), BLOCK)
        return f"conv2d_forward_v1<{t}>", grid, block
    if v == 2:
        wide_rows = TILE_AREA * (WIDE_TILE[1] // 4) ** 2 // WIDE_TILE[0]
        if bn is None and t == "float" and _tile_width(Kg) == WIDE_TILE[0] \
                and math.ceil(M / wide_rows) >= wide_min_blocks:
            grid = (math.ceil(M / wide_rows), min(g.groups * math.ceil(Kg / WIDE_TILE[0]), MAX_GRID_Y), 1)
            return f"conv2d_forward_v2<float, {WIDE_TILE[0]}, {WIDE_TILE[1]}>", grid, (BLOCK, 1, 1)
        bn = bn or _tile_width(Kg)
        grid = (math.ceil(M / (TILE_AREA // bn)), min(g.groups * math.ceil(Kg / bn), MAX_GRID_Y), 1)
        return f"conv2d_forward_v2<{t}, {bn}, 4>", grid, (BLOCK, 1, 1)
    if v == 3:
        grid = (math.ceil(M / BLOCK), min(g.groups * math.ceil(Kg / V3_CHANNELS), MAX_GRID_Y), 1)
        return f"conv2d_forward_v3<{t}>", grid, (BLOCK, 1, 1)
    grid = (math.ceil(M / V4_TILE), min(g.groups * math.ceil(Kg / V4_TILE), MAX_GRID_Y), 1)
    return "conv2d_forward_v4<float>", grid, (V4_BLOCK, 1, 1)


def epilogue_flags(bias: bool, residual: bool, relu: bool) -> np.int32:
    """The forward kernels' ``epilogue`` argument."""
    return np.int32(EPILOGUE["bias"] * bias + EPILOGUE["residual"] * residual + EPILOGUE["relu"] * relu)


def forward(be, x, w, b, g: ConvGeometry, version: Optional[int] = None, *, residual=None,
            relu: bool = False):
    """y (N, K, P, Q) = conv2d(x (N, C, H, W), w (K, C/groups, R, S)) + b (K,) or no bias; then,
    in the same kernel's epilogue, + residual (N, K, P, Q) when given, and max(., 0) when relu."""
    dtype = _dtype_of(x, w)
    v, bn = _pick(be, "conv2d_forward", version, g, dtype,
                  lambda v, bn: _forward(be, x, w, b, g, v, bn, dtype, residual, relu))
    return _forward(be, x, w, b, g, v, bn, dtype, residual, relu)


def _forward(be, x, w, b, g: ConvGeometry, v: int, bn: Optional[int], dtype, residual, relu: bool):
    t = ctype(dtype)
    _check_float32_only("conv2d_forward", v, dtype)
    x, w = be.contiguous(x), be.contiguous(w)
    flags = epilogue_flags(b is not None, residual is not None, relu)
    b = w if b is None else be.contiguous(b)  # any array of the right type when there is none
    residual = w if residual is None else be.contiguous(residual)
    y = be.empty(g.y_shape, dtype)
    name, grid, block = _forward_plan(g, v, t, bn, WIDE_TILE_MIN_BLOCKS)
    be.launch(be.function(FILE, name), grid, block, (x, w, b, residual, y, flags) + _geometry_args(g))
    return y


def forward_relu(be, x, w, b, residual, g: ConvGeometry, version: Optional[int] = None):
    """relu(conv2d(x, w) + b + residual) in one launch: Backend.conv2d_relu."""
    return forward(be, x, w, b, g, version, residual=residual, relu=True)


@functools.lru_cache(maxsize=1024)
def _backward_data_plan(g: ConvGeometry, v: int, t: str, bn: Optional[int] = None):
    """(kernel, grid, block) of backward-data version ``v`` (tile width ``bn`` as for forward)."""
    if v == 1:
        grid, block = grid_1d(check_elements("x", g.N * g.C * g.H * g.W), BLOCK)
        return f"conv2d_backward_data_v1<{t}>", grid, block
    Cg = g.C // g.groups
    if v == 4:
        grid = (math.ceil(g.N * g.H * g.W / V4_TILE), min(g.groups * math.ceil(Cg / V4_TILE), MAX_GRID_Y), 1)
        return "conv2d_backward_data_v4<float>", grid, (V4_BLOCK, 1, 1)
    bn = bn or _tile_width(Cg)  # v3: always its rule's (only v2 is in TILES)
    y = min(g.groups * math.ceil(Cg / bn), MAX_GRID_Y)
    if v == 2:
        grid = (math.ceil(g.N * g.H * g.W / (TILE_AREA // bn)), y, 1)
        return f"conv2d_backward_data_v2<{t}, {bn}>", grid, (BLOCK, 1, 1)
    # v3: blockIdx.z walks the stride phases that hold cells (a stride past the image leaves the
    # others empty); x covers the largest phase, (0, 0).
    rows = g.N * math.ceil(g.H / g.stride_h) * math.ceil(g.W / g.stride_w)
    phases = min(g.stride_h, g.H) * min(g.stride_w, g.W)
    grid = (math.ceil(rows / (TILE_AREA // bn)), y, min(phases, MAX_GRID_Z))
    mask = "true" if phase_taps(g) <= PHASE_MASK_TAPS else "false"
    return f"conv2d_backward_data_v3<{t}, {bn}, {mask}>", grid, (BLOCK, 1, 1)


PHASE_MASK_TAPS = 32  # backward-data v3 tests taps against a 32-bit mask per row up to this many


def phase_taps(g: ConvGeometry) -> int:
    """The most taps (r, s) that reach one stride phase of backward-data v3: per axis, the r in
    [0, R) with r * dil congruent to a given residue modulo stride are every stride/gcd-th one."""
    per_h = math.ceil(g.R / (g.stride_h // math.gcd(g.stride_h, g.dil_h)))
    per_w = math.ceil(g.S / (g.stride_w // math.gcd(g.stride_w, g.dil_w)))
    return per_h * per_w


def backward_data(be, dy, w, g: ConvGeometry, version: Optional[int] = None, *, relu_y=None):
    """dx (N, C, H, W) from dy (N, K, P, Q) and w (K, C/groups, R, S); with ``relu_y`` (N, C, H, W),
    the output of a ReLU that x is, the gradient at that ReLU's input: dx where relu_y > 0, else 0."""
    dtype = _dtype_of(dy, w)
    v, bn = _pick(be, "conv2d_backward_data", version, g, dtype,
                  lambda v, bn: _backward_data(be, dy, w, g, v, bn, dtype, relu_y))
    return _backward_data(be, dy, w, g, v, bn, dtype, relu_y)


def _backward_data(be, dy, w, g: ConvGeometry, v: int, bn: Optional[int], dtype, relu_y):
    _check_float32_only("conv2d_backward_data", v, dtype)
    dy, w = be.contiguous(dy), be.contiguous(w)
    through_relu = relu_y is not None
    relu_y = be.contiguous(relu_y) if through_relu else w  # any array of the right type when none
    dx = be.empty(g.x_shape, dtype)
    name, grid, block = _backward_data_plan(g, v, ctype(dtype), bn)
    be.launch(be.function(FILE, name), grid, block,
              (dy, w, relu_y, dx, _INT32[through_relu]) + _geometry_args(g))
    return dx


@functools.lru_cache(maxsize=1024)
def filter_splits(g: ConvGeometry, dtype, rows: Optional[int] = None) -> Tuple[int, int, int]:
    """(tile rows, splits, chunk) of conv2d_backward_filter_v2 for geometry ``g`` and tile rows
    ``rows`` (None: the narrowest that covers the output channels).

    Depends on the sizes, dtype and tile only, so every run (and every GPU) with the same tile adds
    the same partial sums in the same order.
    """
    Kg, CRS = g.K // g.groups, (g.C // g.groups) * g.R * g.S
    rows = rows or _tile_width(Kg)
    cols = TILE_AREA // rows
    step = 64 // np.dtype(dtype).itemsize  # BK of the kernel
    M = g.N * g.P * g.Q
    tiles = math.ceil(Kg / rows) * g.groups * math.ceil(CRS / cols)
    splits = max(1, min(math.ceil(FILTER_TARGET_BLOCKS / tiles), math.ceil(M / (step * FILTER_MIN_STEPS)),
                        65535, (2**31 - 1) // (g.K * CRS)))
    chunk = math.ceil(math.ceil(M / splits) / step) * step
    splits = math.ceil(M / chunk)
    return rows, splits, chunk


@functools.lru_cache(maxsize=1024)
def _backward_filter_plan(g: ConvGeometry, v: int, dtype: np.dtype, bn: Optional[int] = None):
    """Launches of backward-filter version ``v``: (kernel, grid, block, extra args, splits) and,
    when the reduction is split, the launch that sums the partial results in a fixed order."""
    t = ctype(dtype)
    if v == 1:
        grid, block = grid_1d(check_elements("weight", math.prod(g.w_shape)), BLOCK)
        return (f"conv2d_backward_filter_v1<{t}>", grid, block, (), 1), None
    # v4's 64 x 64 tile with BK = 16 floats splits the reduction as v2 does with 64-row tiles
    rows, splits, chunk = filter_splits(g, dtype, V4_TILE if v == 4 else bn)
    Kg, CRS = g.K // g.groups, (g.C // g.groups) * g.R * g.S
    grid = (math.ceil(CRS / (TILE_AREA // rows)), min(g.groups * math.ceil(Kg / rows), MAX_GRID_Y), splits)
    name, block = ((f"conv2d_backward_filter_v2<{t}, {rows}>", BLOCK) if v == 2
                   else ("conv2d_backward_filter_v4<float>", V4_BLOCK))
    main = (name, grid, (block, 1, 1), (np.int32(chunk),), splits)
    if splits == 1:
        return main, None
    n = math.prod(g.w_shape)
    grid, block = grid_1d(n, BLOCK)
    return main, (f"conv2d_sum_splits<{t}>", grid, block,
                  (np.int32(n), np.int32(splits), np.int32(n), np.int32(1)))


@functools.lru_cache(maxsize=1024)
def filter_v3_plan(g: ConvGeometry, dtype, bias: bool) -> Tuple[int, int, int, int]:
    """(tile rows, tile columns, splits, chunk) of conv2d_backward_filter_v3 for geometry ``g``,
    with the bias column when ``bias``. Sizes only: the same partial sums in the same order on
    every run and GPU."""
    Kg, cols = g.K // g.groups, (g.C // g.groups) * g.R * g.S + bool(bias)
    rows, width = _tile_width(Kg), _tile_width(cols)
    step = 128 // np.dtype(dtype).itemsize  # BK of the kernel
    M = g.N * g.P * g.Q
    tiles = math.ceil(Kg / rows) * g.groups * math.ceil(cols / width)
    outputs = g.K * cols
    inputs = M * g.K + g.N * g.C * g.H * g.W
    splits = max(1, min(math.ceil(FILTER_V3_TARGET_BLOCKS / tiles),
                        math.ceil(M / (step * FILTER_V3_MIN_STEPS)),
                        inputs // (FILTER_V3_PARTIAL * outputs), 65535, (2**31 - 1) // outputs))
    chunk = math.ceil(math.ceil(M / splits) / step) * step
    return rows, width, math.ceil(M / chunk), chunk


def _backward_filter_v3(be, dy, x, g: ConvGeometry, dtype, bias: bool):
    """(dw, db | None) by conv2d_backward_filter_v3 and, when split, its ordered sum."""
    t = ctype(dtype)
    rows, width, splits, chunk = filter_v3_plan(g, dtype, bias)
    Kg, crs = g.K // g.groups, (g.C // g.groups) * g.R * g.S
    cols = crs + bool(bias)
    dw = be.empty(g.w_shape, dtype)
    db = be.empty((g.K,), dtype) if bias else None
    # Unsplit: straight into dw and db; split: into partial[split, k, column], bias column included.
    partial = be.empty((splits, g.K, cols), dtype) if splits > 1 else None
    out = (dw, db if bias else dw, np.int32(crs), _INT32[False]) if partial is None else \
        (partial, partial, np.int32(cols), _INT32[True])
    grid = (math.ceil(cols / width), min(g.groups * math.ceil(Kg / rows), MAX_GRID_Y), splits)
    be.launch(be.function(FILE, f"conv2d_backward_filter_v3<{t}, {rows}, {width}>"), grid, (BLOCK, 1, 1),
              (dy, x) + out[:2] + (np.int32(chunk),) + out[2:] + (_INT32[bias],) + _geometry_args(g))
    if partial is not None:
        n = g.K * cols
        be.launch(be.function(FILE, f"conv2d_backward_filter_v3_sum<{t}>"),
                  (min(math.ceil(n / 32), MAX_GRID[0]), 1, 1), (BLOCK, 1, 1),
                  (partial, dw, db if bias else dw, np.int32(g.K), np.int32(cols), np.int32(crs),
                   np.int32(splits)))
    return dw, db


def backward_filter(be, dy, x, g: ConvGeometry, version: Optional[int] = None, bias: bool = False):
    """dw (K, C/groups, R, S) from dy (N, K, P, Q) and x (N, C, H, W); with ``bias``, the pair
    (dw, db (K,)), computed together by version 3 (the other versions add a bias launch). The
    selector times each candidate on the whole call, db included when ``bias``."""
    dtype = _dtype_of(dy, x)
    v, bn = _pick(be, "conv2d_backward_filter", version, g, dtype,
                  lambda v, bn: _backward_filter(be, dy, x, g, v, bn, dtype, bias))
    return _backward_filter(be, dy, x, g, v, bn, dtype, bias)


def _backward_filter(be, dy, x, g: ConvGeometry, v: int, bn: Optional[int], dtype, bias: bool):
    _check_float32_only("conv2d_backward_filter", v, dtype)
    dy, x = be.contiguous(dy), be.contiguous(x)
    if v == 3:
        dw, db = _backward_filter_v3(be, dy, x, g, dtype, bool(bias))
        return (dw, db) if bias else dw
    dw = be.empty(g.w_shape, dtype)
    (name, grid, block, extra, splits), sum_splits = _backward_filter_plan(g, v, dtype, bn)
    partial = dw if splits == 1 else be.empty((splits,) + g.w_shape, dtype)
    be.launch(be.function(FILE, name), grid, block, (dy, x, partial) + extra + _geometry_args(g))
    if sum_splits is not None:
        name, grid, block, extra = sum_splits
        be.launch(be.function(FILE, name), grid, block, (partial, dw) + extra)
    return (dw, backward_bias(be, dy, g)) if bias else dw


@functools.lru_cache(maxsize=1024)
def bias_chunks(g: ConvGeometry) -> Tuple[int, int]:
    """(chunks, chunk length) of conv2d_backward_bias_v2: sizes only, hence reproducible."""
    total = g.N * g.P * g.Q
    chunks = max(1, min(math.ceil(BIAS_TARGET_BLOCKS / g.K), math.ceil(total / BIAS_MIN_CHUNK)))
    chunk = math.ceil(total / chunks)
    return math.ceil(total / chunk), chunk


@functools.lru_cache(maxsize=1024)
def _backward_bias_plan(g: ConvGeometry, v: int, t: str):
    """Launches of bias-gradient version ``v``: (kernel, grid, block, size args, chunks) and, when
    the sum is chunked, the launch that adds the chunks in a fixed order."""
    sizes = (np.int32(g.N), np.int32(g.K), np.int32(g.P * g.Q))
    if v == 1:
        grid, block = grid_1d(g.K, BLOCK)
        return (f"conv2d_backward_bias_v1<{t}>", grid, block, sizes, 1), None
    chunks, chunk = bias_chunks(g)
    main = (f"conv2d_backward_bias_v2<{t}>", (chunks, min(g.K, MAX_GRID_Y), 1), (BLOCK, 1, 1),
            sizes + (np.int32(chunk),), chunks)
    if chunks == 1:
        return main, None
    grid, block = grid_1d(g.K, BLOCK)
    return main, (f"conv2d_sum_splits<{t}>", grid, block,
                  (np.int32(g.K), np.int32(chunks), np.int32(1), np.int32(chunks)))


def backward_bias(be, dy, g: ConvGeometry, version: Optional[int] = None):
    """db (K,) = dy (N, K, P, Q) summed over N, P, Q."""
    v, _ = _pick(be, "conv2d_backward_bias", version, g, dy.dtype,
                 lambda v, bn: _backward_bias(be, dy, g, v))
    return _backward_bias(be, dy, g, v)


def _backward_bias(be, dy, g: ConvGeometry, v: int):
    (name, grid, block, extra, chunks), sum_chunks = _backward_bias_plan(g, v, ctype(dy.dtype))
    dy = be.contiguous(dy)
    db = be.empty((g.K,), dy.dtype)
    partial = db if chunks == 1 else be.empty((g.K, chunks), dy.dtype)
    be.launch(be.function(FILE, name), grid, block, (dy, partial) + extra)
    if sum_chunks is not None:
        name, grid, block, extra = sum_chunks
        be.launch(be.function(FILE, name), grid, block, (partial, db) + extra)
    return db


def backward(be, dy, x, w, g: ConvGeometry, need_dx: bool = True, need_dw: bool = True,
             need_db: bool = True, through_relu: bool = False):
    """(dx (N, C, H, W) | None, dw (K, C/groups, R, S) | None, db (K,) | None); ``through_relu``:
    x is a ReLU's output and dx is taken at that ReLU's input (backward_data's ``relu_y``)."""
    dx = backward_data(be, dy, w, g, relu_y=x if through_relu else None) if need_dx else None
    if need_dw and need_db:
        dw, db = backward_filter(be, dy, x, g, bias=True)
    else:
        dw = backward_filter(be, dy, x, g) if need_dw else None
        db = backward_bias(be, dy, g) if need_db else None
    return dx, dw, db
