"""Launches of ``cuda/batchnorm.cu``: batch normalisation forward and backward, plain or with a
fused ReLU.

Per-channel reductions run in two levels: blocks (chunk, channel) reduce a chunk of a channel's
N*S values, then the chunks are merged in a fixed order: v1 by one thread per channel in a launch
of its own (three launches per training pass), v2 by the first warp of every block of the
element-wise kernel that follows (two launches). The chunking (``stat_chunks``,
``stat_chunks_v2``) depends on the sizes only, so results are bitwise reproducible.
"""
from __future__ import annotations

import functools
import math
from typing import Tuple

import numpy as np

from ...cuda_limits import MAX_GRID
from ...geometry import NormGeometry
from .common import check_elements, ctype, grid_1d, scalar

FILE = "batchnorm.cu"

VERSIONS = {"batch_norm_forward": (1, 2), "batch_norm_backward": (1, 2)}
DEFAULT_VERSIONS = {"batch_norm_forward": 2, "batch_norm_backward": 2}
_KERNELS = {1: ("batch_norm_stats", "batch_norm_finalize", "batch_norm_eval_stats", "batch_norm_apply",
                "batch_norm_backward_reduce", "batch_norm_backward_finalize", "batch_norm_backward_dx"),
            2: ("batch_norm_stats", "batch_norm_apply", "batch_norm_backward_dx")}
NAME_EXPRESSIONS = tuple(f"{k}_v{v}<{t}>" for v, ks in _KERNELS.items() for k in ks
                         for t in ("float", "double"))

DEFINES = {"GC_BN_THREADS": 256}  # threads per block of every batch-norm kernel (-D option)
BLOCK = DEFINES["GC_BN_THREADS"]
MAX_GRID_Y = MAX_GRID[1]  # the reduction kernels loop over blockIdx.y when C is larger
# Chunking of a channel's values: about this many blocks over all channels, but chunks of at
# least MIN_CHUNK values (a block's threads each take several values before the merge).
TARGET_BLOCKS = 512
MIN_CHUNK = 2048
# v2: twice the blocks, chunks of at least 1024 values (four per thread), so that a layer of
# 128 x 64 x 8 x 8 still runs 512 blocks (v1: 256) and keeps DRAM busy.
TARGET_BLOCKS_V2 = 1024
MIN_CHUNK_V2 = 1024


@functools.lru_cache(maxsize=1024)
def stat_chunks(g: NormGeometry, target_blocks: int = TARGET_BLOCKS, min_chunk: int = MIN_CHUNK
                ) -> Tuple[int, int]:
    """(chunks, chunk length) of a channel's N*S values: sizes only, hence reproducible; every
    chunk holds at least one value."""
    count = max(g.count, 1)
    chunks = max(1, min(math.ceil(target_blocks / g.C), math.ceil(count / min_chunk)))
    chunk = math.ceil(count / chunks)
    return math.ceil(count / chunk), chunk


def stat_chunks_v2(g: NormGeometry) -> Tuple[int, int]:
    """(chunks, chunk length) of version 2, for its reductions and its element-wise kernels."""
    return stat_chunks(g, TARGET_BLOCKS_V2, MIN_CHUNK_V2)


def _sizes(g: NormGeometry) -> tuple:
    return np.int32(g.N), np.int32(g.C), np.int32(g.S)


def _reduce_grid(g: NormGeometry, chunks: int) -> Tuple[Tuple[int, int, int], Tuple[int, int, int]]:
    return (chunks, min(g.C, MAX_GRID_Y), 1), (BLOCK, 1, 1)


def _optional(a, fallback) -> tuple:
    """(array to pass, flag): kernels read an optional array only when its flag is 1."""
    return (fallback, np.int32(0)) if a is None else (a, np.int32(1))


def forward(be, x, running_mean, running_var, weight, bias, g: NormGeometry, training: bool,
            momentum: float, eps: float, relu: bool):
    """(y, saved_mean (C,), saved_invstd (C,)); running statistics updated in place in training."""
    check_elements("x", g.N * g.C * g.S)
    v = be.version("batch_norm_forward")
    x = be.contiguous(x)
    dt, t = x.dtype, ctype(x.dtype)
    mean = be.empty((g.C,), dt)
    invstd = be.empty((g.C,), dt)
    c_grid, c_block = grid_1d(g.C, BLOCK)
    if training and v == 2:
        y = _forward_v2(be, x, running_mean, running_var, weight, bias, mean, invstd, g, momentum, eps, relu)
        return y, mean, invstd
    # v1, and evaluation in every version
    if training:
        chunks, chunk = stat_chunks(g)
        part_mean = be.empty((g.C, chunks), dt)
        part_m2 = be.empty((g.C, chunks), dt)
        grid, block = _reduce_grid(g, chunks)
        be.launch(be.function(FILE, f"batch_norm_stats_v1<{t}>"), grid, block,
                  (x, part_mean, part_m2) + _sizes(g) + (np.int32(chunk),))
        track = running_mean is not None
        if track:
            _check_in_place("running_mean", running_mean)
            _check_in_place("running_var", running_var)
        be.launch(be.function(FILE, f"batch_norm_finalize_v1<{t}>"), c_grid, c_block,
                  (part_mean, part_m2, running_mean if track else mean, running_var if track else invstd,
                   mean, invstd, np.int32(g.C), np.int32(g.count), np.int32(chunks), np.int32(chunk),
                   scalar(dt, momentum), scalar(dt, eps), np.int32(track)))
    else:
        be.launch(be.function(FILE, f"batch_norm_eval_stats_v1<{t}>"), c_grid, c_block,
                  (be.contiguous(running_mean), be.contiguous(running_var), mean, invstd, np.int32(g.C),
                   scalar(dt, eps)))
    y = be.empty(x.shape, dt)
    if x.size:
        w, has_w = _optional(weight if weight is None else be.contiguous(weight), mean)
        b, has_b = _optional(bias if bias is None else be.contiguous(bias), mean)
        grid, block = grid_1d(x.size, BLOCK)
        be.launch(be.function(FILE, f"batch_norm_apply_v1<{t}>"), grid, block,
                  (x, mean, invstd, w, b, y) + _sizes(g) + (has_w, has_b, np.int32(bool(relu))))
    return y, mean, invstd


def _forward_v2(be, x, running_mean, running_var, weight, bias, mean, invstd, g: NormGeometry,
                momentum: float, eps: float, relu: bool):
    """Training forward of version 2: statistics, then merge + normalise in one launch."""
    dt, t = x.dtype, ctype(x.dtype)
    chunks, chunk = stat_chunks_v2(g)
    part_mean = be.empty((g.C, chunks), dt)
    part_m2 = be.empty((g.C, chunks), dt)
    grid, block = _reduce_grid(g, chunks)
    be.launch(be.function(FILE, f"batch_norm_stats_v2<{t}>"), grid, block,
              (x, part_mean, part_m2) + _sizes(g) + (np.int32(chunk),))
    track = running_mean is not None
    if track:
        _check_in_place("running_mean", running_mean)
        _check_in_place("running_var", running_var)
    w, has_w = _optional(weight if weight is None else be.contiguous(weight), mean)
    b, has_b = _optional(bias if bias is None else be.contiguous(bias), mean)
    y = be.empty(x.shape, dt)
    be.launch(be.function(FILE, f"batch_norm_apply_v2<{t}>"), grid, block,
              (x, part_mean, part_m2, w, b, running_mean if track else mean, running_var if track else invstd,
               mean, invstd, y) + _sizes(g)
              + (np.int32(chunks), np.int32(chunk), np.int32(chunk), scalar(dt, momentum), scalar(dt, eps),
                 has_w, has_b, np.int32(bool(relu)), np.int32(track)))
    return y


def backward(be, dy, x, y, weight, saved_mean, saved_invstd, g: NormGeometry, training: bool):
    """(dx, dweight (C,), dbias (C,)); ``y`` (the fused forward's output) masks dy where y <= 0."""
    check_elements("x", g.N * g.C * g.S)
    v = be.version("batch_norm_backward")
    dy, x = be.contiguous(dy), be.contiguous(x)
    relu = y is not None
    y = be.contiguous(y) if relu else dy  # never read without relu
    mean, invstd = be.contiguous(saved_mean), be.contiguous(saved_invstd)
    dt, t = x.dtype, ctype(x.dtype)
    if g.count == 0:
        return be.empty(x.shape, dt), be.zeros((g.C,), dt), be.zeros((g.C,), dt)
    dweight = be.empty((g.C,), dt)
    dbias = be.empty((g.C,), dt)
    chunks, chunk = stat_chunks(g) if v == 1 else stat_chunks_v2(g)
    part_g = be.empty((g.C, chunks), dt)
    part_gx = be.empty((g.C, chunks), dt)
    grid, block = _reduce_grid(g, chunks)
    # v2 runs v1's reduction kernel (on its own chunking)
    be.launch(be.function(FILE, f"batch_norm_backward_reduce_v1<{t}>"), grid, block,
              (dy, x, y, mean, part_g, part_gx) + _sizes(g) + (np.int32(chunk), np.int32(relu)))
    w, has_w = _optional(weight if weight is None else be.contiguous(weight), mean)
    dx = be.empty(x.shape, dt)
    if v == 2:
        be.launch(be.function(FILE, f"batch_norm_backward_dx_v2<{t}>"), grid, block,
                  (dy, x, y, mean, invstd, w, part_g, part_gx, dweight, dbias, dx) + _sizes(g)
                  + (np.int32(chunks), np.int32(chunk), has_w, np.int32(relu), np.int32(bool(training))))
        return dx, dweight, dbias
    c_grid, c_block = grid_1d(g.C, BLOCK)
    be.launch(be.function(FILE, f"batch_norm_backward_finalize_v1<{t}>"), c_grid, c_block,
              (part_g, part_gx, invstd, dweight, dbias, np.int32(g.C), np.int32(chunks)))
    grid, block = grid_1d(x.size, BLOCK)
    be.launch(be.function(FILE, f"batch_norm_backward_dx_v1<{t}>"), grid, block,
              (dy, x, y, mean, invstd, w, dweight, dbias, dx) + _sizes(g)
              + (has_w, np.int32(relu), np.int32(bool(training))))
    return dx, dweight, dbias


def _check_in_place(name: str, a) -> None:
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous: it is updated in place")
