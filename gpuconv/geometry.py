"""Output-size rules, padding rules and argument validation: the one place every backend uses.

Nothing here touches array data: functions take shapes and hyper-parameters, validate them
(raising ``ValueError``/``TypeError`` that name the argument, its value and what was expected)
and return frozen geometry records that kernels and reference code consume unchanged.

Conventions (NCHW):
  * convolution  x (N, C, H, W), weight (K, C/groups, R, S) -> y (N, K, P, Q)
  * pooling      x (N, C, H, W)                              -> y (N, C, P, Q)
Padding is stored as top/left amounts (``pad_h``/``pad_w``) plus the bottom/right amounts
(``pad_bottom``/``pad_right``); only ``'same'`` at stride > 1 or with an even effective kernel
makes them differ (the extra pixel goes to the bottom/right, as TensorFlow's ``SAME``).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np

IntPair = Union[int, Tuple[int, int]]
Padding = Union[int, Tuple[int, int], str]

INT32_MAX = 2**31 - 1
# Window coordinates in the conv kernels stay below this (cuda/conv2d.cu marks out-of-range
# gathers by adding 2^29, which must not wrap int32).
COORD_LIMIT = 2**29


def check_int(name: str, value, minimum: int, maximum: Optional[int] = INT32_MAX) -> int:
    """``value`` as an int in [``minimum``, ``maximum``]: Python and NumPy integers pass; bools
    (NumPy's are not Integral either) and floats do not. The default maximum is the int32 limit
    of the kernels' arguments; ``maximum=None`` means unbounded."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} of type {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_real(name: str, value, lo: float, hi: float = float("inf"), lo_open: bool = False,
               hi_open: bool = False) -> float:
    """``value`` as a finite float in the interval from ``lo`` to ``hi`` (closed unless ``*_open``);
    bools are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} of type {type(value).__name__}")
    v = float(value)
    below = v <= lo if lo_open else v < lo
    above = v >= hi if hi_open else v > hi
    if not math.isfinite(v) or below or above:
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")
    return v


def pair(name: str, value, minimum: int = 1) -> Tuple[int, int]:
    """Normalise an int or a 2-sequence of ints to a pair, validating each element."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        return (check_int(f"{name}[0]", value[0], minimum), check_int(f"{name}[1]", value[1], minimum))
    v = check_int(name, value, minimum)
    return (v, v)


def check_shape(name: str, shape, rank: int) -> Tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != rank:
        layout = {4: "(N, C, H, W)", 2: "(N, features)", 1: "(N,)"}.get(rank, f"rank {rank}")
        raise ValueError(f"{name} must have rank {rank} {layout}, got shape {shape}")
    return shape


def check_int32_offsets(name: str, shape) -> None:
    """Refuse tensors whose element offsets overflow the int32 arithmetic of the kernels."""
    n = math.prod(int(s) for s in shape)
    if n > INT32_MAX:
        raise ValueError(
            f"{name} has {n} elements (shape {tuple(shape)}); kernels index with int32 offsets, "
            f"so at most {INT32_MAX} elements are supported: split the batch")


@dataclass(frozen=True)
class ConvGeometry:
    """Everything a conv2d kernel needs besides the data pointers."""

    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    P: int
    Q: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    pad_bottom: int
    pad_right: int
    dil_h: int
    dil_w: int
    groups: int

    @property
    def x_shape(self) -> Tuple[int, int, int, int]:
        return (self.N, self.C, self.H, self.W)

    @property
    def w_shape(self) -> Tuple[int, int, int, int]:
        return (self.K, self.C // self.groups, self.R, self.S)

    @property
    def y_shape(self) -> Tuple[int, int, int, int]:
        return (self.N, self.K, self.P, self.Q)

    @property
    def flops(self) -> int:
        """Multiply-adds x 2 of one pass (forward, backward-data and backward-filter cost the same)."""
        return 2 * self.N * self.K * (self.C // self.groups) * self.R * self.S * self.P * self.Q


def _same_padding(size: int, k_eff: int, stride: int) -> Tuple[int, int, int]:
    out = -(-size // stride)  # ceil
    total = max((out - 1) * stride + k_eff - size, 0)
    return total // 2, total - total // 2, out


def conv2d_geometry(x_shape, w_shape, stride: IntPair = 1, padding: Padding = 0,
                    dilation: IntPair = 1, groups: int = 1) -> ConvGeometry:
    """Validate a conv2d call and compute its geometry.

    ``padding`` is an int, a pair, ``'valid'`` (no padding) or ``'same'`` (output size
    ceil(H/stride), extra pixel bottom/right when the total padding is odd).
    """
    N, C, H, W = check_shape("x", x_shape, 4)
    K, Cg, R, S = check_shape("weight", w_shape, 4)
    groups = check_int("groups", groups, 1)
    sh, sw = pair("stride", stride, 1)
    dh, dw = pair("dilation", dilation, 1)
    if min(N, C, H, W) < 1:
        raise ValueError(f"x must have non-empty dimensions, got shape {(N, C, H, W)}")
    if min(K, Cg, R, S) < 1:
        raise ValueError(f"weight must have non-empty dimensions, got shape {(K, Cg, R, S)}")
    if C % groups:
        raise ValueError(f"groups={groups} must divide the input channels C={C}")
    if K % groups:
        raise ValueError(f"groups={groups} must divide the output channels K={K}")
    if Cg != C // groups:
        raise ValueError(
            f"weight has {Cg} input channels per group (shape {(K, Cg, R, S)}) but x has C={C} "
            f"channels and groups={groups}: expected weight.shape[1] == {C // groups}")
    rh, rw = (R - 1) * dh + 1, (S - 1) * dw + 1
    if isinstance(padding, str):
        if padding == "valid":
            ph = pw = pb = pr = 0
            P, Q = (H - rh) // sh + 1, (W - rw) // sw + 1
        elif padding == "same":
            ph, pb, P = _same_padding(H, rh, sh)
            pw, pr, Q = _same_padding(W, rw, sw)
        else:
            raise ValueError(f"padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    else:
        ph, pw = pair("padding", padding, 0)
        pb, pr = ph, pw
        P, Q = (H + 2 * ph - rh) // sh + 1, (W + 2 * pw - rw) // sw + 1
    if H + ph + pb < rh or W + pw + pr < rw:
        raise ValueError(
            f"kernel (effective size {rh}x{rw} with dilation {(dh, dw)}) is larger than the padded "
            f"input {H + ph + pb}x{W + pw + pr}")
    if max(H + ph + pb, W + pw + pr, rh, rw) >= COORD_LIMIT:
        raise ValueError(
            f"padded input {H + ph + pb}x{W + pw + pr} or dilated kernel {rh}x{rw} reaches the "
            f"kernels' coordinate limit {COORD_LIMIT}: reduce padding or dilation")
    g = ConvGeometry(N, C, H, W, K, R, S, P, Q, sh, sw, ph, pw, pb, pr, dh, dw, groups)
    for name, shp in (("x", g.x_shape), ("weight", g.w_shape), ("output", g.y_shape)):
        check_int32_offsets(name, shp)
    return g


@dataclass(frozen=True)
class PoolGeometry:
    """Everything a pooling kernel needs besides the data pointers."""

    N: int
    C: int
    H: int
    W: int
    R: int
    S: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    dil_h: int
    dil_w: int
    P: int
    Q: int
    ceil_mode: bool

    @property
    def x_shape(self) -> Tuple[int, int, int, int]:
        return (self.N, self.C, self.H, self.W)

    @property
    def y_shape(self) -> Tuple[int, int, int, int]:
        return (self.N, self.C, self.P, self.Q)


def pool_output_size(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """PyTorch's pooling output-size rule, ``ceil_mode`` included.

    With ``ceil_mode`` a last window that would start in the right padding is dropped.
    """
    span = size + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def pool2d_geometry(x_shape, kernel_size: IntPair, stride: Optional[IntPair] = None,
                    padding: IntPair = 0, dilation: IntPair = 1,
                    ceil_mode: bool = False) -> PoolGeometry:
    """Validate a pooling call and compute its geometry (stride defaults to the window)."""
    N, C, H, W = check_shape("x", x_shape, 4)
    if min(N, C, H, W) < 1:
        raise ValueError(f"x must have non-empty dimensions, got shape {(N, C, H, W)}")
    kh, kw = pair("kernel_size", kernel_size, 1)
    sh, sw = (kh, kw) if stride is None else pair("stride", stride, 1)
    ph, pw = pair("padding", padding, 0)
    dh, dw = pair("dilation", dilation, 1)
    if isinstance(ceil_mode, str) or ceil_mode not in (True, False):
        raise TypeError(f"ceil_mode must be a bool, got {ceil_mode!r}")
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if ph > eh // 2 or pw > ew // 2:
        raise ValueError(
            f"padding {(ph, pw)} must be at most half the effective window {(eh, ew)}, "
            f"i.e. at most {(eh // 2, ew // 2)}")
    for axis, size, pad, eff in (("height", H, ph, eh), ("width", W, pw, ew)):
        if size + pad + eff > INT32_MAX:
            raise ValueError(
                f"input {axis} {size} plus padding {pad} plus effective window {eff} exceeds "
                f"{INT32_MAX}, the limit of the kernels' int32 coordinates: reduce padding, "
                f"kernel_size or dilation")
    if kh * kw > INT32_MAX:
        raise ValueError(f"kernel_size {(kh, kw)} covers {kh * kw} cells, more than {INT32_MAX} "
                         f"(the kernels count window cells in int32)")
    P = pool_output_size(H, kh, sh, ph, dh, bool(ceil_mode))
    Q = pool_output_size(W, kw, sw, pw, dw, bool(ceil_mode))
    if P < 1 or Q < 1:
        raise ValueError(
            f"kernel_size {(kh, kw)} (effective window {(eh, ew)}) is larger than the padded input "
            f"{(H + 2 * ph, W + 2 * pw)}")
    g = PoolGeometry(N, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, P, Q, bool(ceil_mode))
    check_int32_offsets("x", g.x_shape)
    return g


def avg_pool_divisor(g: PoolGeometry, oh: int, ow: int, count_include_pad: bool,
                     divisor_override: Optional[int]) -> int:
    """PyTorch's average-pooling divisor for output cell (oh, ow) (dilation must be 1); ``oh``
    and ``ow`` may be integer arrays, which broadcast.

    The window is clipped to the padded input; ``count_include_pad`` counts the padded cells
    inside that, otherwise only the real input cells count.
    """
    if divisor_override is not None:
        return divisor_override
    h0, w0 = oh * g.stride_h - g.pad_h, ow * g.stride_w - g.pad_w
    h1, w1 = np.minimum(h0 + g.R, g.H + g.pad_h), np.minimum(w0 + g.S, g.W + g.pad_w)
    if count_include_pad:
        return (h1 - h0) * (w1 - w0)
    return (np.minimum(h1, g.H) - np.maximum(h0, 0)) * (np.minimum(w1, g.W) - np.maximum(w0, 0))


def check_divisor_override(divisor_override) -> Optional[int]:
    if divisor_override is None:
        return None
    return check_int("divisor_override", divisor_override, 1)


# ---- batch normalisation -------------------------------------------------------------------

@dataclass(frozen=True)
class NormGeometry:
    """x (N, C, *spatial) seen as (N, C, S): per-channel statistics over the N*S values of a
    channel (``count``)."""

    N: int
    C: int
    S: int

    @property
    def count(self) -> int:
        return self.N * self.S

    @property
    def stats_shape(self) -> Tuple[int]:
        return (self.C,)


def batch_norm_geometry(x_shape, training: bool) -> NormGeometry:
    """(N, C, S) of a batch-norm input of rank 2 to 4 ((N, C), (N, C, L), (N, C, H, W), as
    PyTorch's batch_norm). Training needs more than one value per channel: the unbiased variance
    of the running statistics divides by count - 1, and a single value normalises to 0."""
    shape = tuple(int(s) for s in x_shape)
    if not 2 <= len(shape) <= 4:
        raise ValueError(f"x must have rank 2, 3 or 4 ((N, C), (N, C, L) or (N, C, H, W)), got shape {shape}")
    if shape[1] < 1:
        raise ValueError(f"x must have at least one channel (dimension 1), got shape {shape}")
    check_int32_offsets("x", shape)
    N, C, S = shape[0], shape[1], math.prod(shape[2:])
    if training and N * S <= 1:
        raise ValueError(f"batch norm in training needs more than one value per channel, got x of "
                         f"shape {shape} ({N * S} per channel)")
    return NormGeometry(N, C, S)


# ---- batch augmentation --------------------------------------------------------------------

FLIP_MODES = ("none", "random", "alternate")
PADDING_MODES = ("zeros", "reflect")


@dataclass(frozen=True)
class AugmentSpec:
    """What ``functional.augment`` does to each image of an (N, C, H, W) batch: a random crop of
    the image padded by ``crop_padding`` on every side (``padding_mode`` zeros or reflect), a
    horizontal flip (``flip``: none, random, alternate) and a ``cutout`` x ``cutout`` square of
    zeros (0: none)."""

    N: int
    C: int
    H: int
    W: int
    crop_padding: int
    padding_mode: str
    flip: str
    cutout: int


def augment_spec(x_shape, crop_padding, padding_mode: str, flip: str, cutout) -> AugmentSpec:
    shape = check_shape("x", x_shape, 4)
    check_int32_offsets("x", shape)
    N, C, H, W = shape
    crop_padding = check_int("crop_padding", crop_padding, 0)
    cutout = check_int("cutout", cutout, 0)
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {', '.join(PADDING_MODES)}, got {padding_mode!r}")
    if flip not in FLIP_MODES:
        raise ValueError(f"flip must be one of {', '.join(FLIP_MODES)}, got {flip!r}")
    if crop_padding > COORD_LIMIT:
        raise ValueError(f"crop_padding must be at most {COORD_LIMIT}, got {crop_padding}")
    if padding_mode == "reflect" and crop_padding >= min(H, W):
        raise ValueError(f"padding_mode 'reflect' needs crop_padding < min(H, W) = {min(H, W)} (a reflection "
                         f"repeats no edge pixel), got crop_padding={crop_padding}")
    if cutout > max(H, W):
        raise ValueError(f"cutout must be at most max(H, W) = {max(H, W)}, got {cutout}")
    return AugmentSpec(N, C, H, W, crop_padding, padding_mode, flip, cutout)
