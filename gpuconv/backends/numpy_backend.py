"""The reference backend: vectorised NumPy, float32 and float64, NCHW.

It is both the reference every other backend is checked against and the CPU training path, so
every op is exact (PyTorch's semantics, the rules of docs/design.md) and built around large BLAS calls on
batch chunks small enough to stay in cache:

  * conv2d forward: per chunk a column matrix (n, C*R*S, P*L) and one matmul per image with the
    weight as stored (K, C*R*S); groups are a batch dimension of the matmul. At stride 1 the
    columns of a tap are one contiguous run of the flattened padded input (L = padded width,
    the extra outputs of each row are discarded), otherwise one strided copy per tap (L = Q).
  * backward-filter: the same columns times dy, summed over the images of a chunk.
  * backward-data: at stride 1, when K <= 2C, the forward correlation of dy padded by the
    dilated kernel extent with the flipped filter (the seed's full convolution); otherwise
    weight^T dy per image followed by one strided add per tap, accumulating overlapping windows
    in a fixed order (deterministic).
  * pooling: max copies the window elements once to a contiguous (taps, n, C, P, Q) buffer and
    reduces there; average and L2 sum tap by tap; global windows are one reduction. Max backward
    scatters dy to its indices (np.bincount where windows overlap, accumulating); average/L2
    backward add one strided view per window offset.

Padding is never materialised beyond what the work needs: pooling and the strided convolution
paths copy, tap by tap, only the part of the input a tap reaches (``_axis_taps``), and skip taps
that reach no input at all, so memory and time follow the input, the output and the taps that
touch data, not the padding or dilation (a 1x1 input with padding 2^29 and dilation 2^30 costs
what a 1x1 input costs). The stride-1 convolution pads its input only when the padded plane is
at most a few times the input and output planes (``_flat_fits``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import numpy as np

from ..augment_rng import augment_params
from ..dropout_rng import dropout_mask
from ..geometry import AugmentSpec, ConvGeometry, NormGeometry, PoolGeometry, avg_pool_divisor
from .base import Backend
from .launch.optim import adam_constants, sgd_constants

# Target size of one batch chunk's working buffer (conv columns, max-pool windows): large enough
# for efficient matmuls, small enough to stay in cache together with its inputs and outputs.
_CHUNK_BYTES = 2 << 20


def _chunks(n: int, bytes_per_item: int) -> Iterator[slice]:
    step = max(1, min(n, _CHUNK_BYTES // max(1, bytes_per_item)))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def _axis_taps(k: int, d: int, pad: int, out: int, s: int, size: int) -> List[Tuple[int, slice, slice]]:
    """Along one axis, the window offsets r in [0, k) that reach the input for some output:
    (r, outputs o with 0 <= o*s + r*d - pad < size, the matching input positions), as slices.

    Only offsets between the first and the last that can reach the input are visited, so the
    loop is bounded by the input and output sizes, not by ``k``, the padding or the dilation.
    """
    taps = []
    r_lo = max(0, -(((out - 1) * s - pad) // d))  # r*d - pad + (out-1)*s >= 0
    r_hi = min(k - 1, (size - 1 + pad) // d)       # r*d - pad <= size - 1
    for r in range(r_lo, r_hi + 1):
        off = r * d - pad
        lo = max(0, -(off // s))
        hi = min(out, (size - 1 - off) // s + 1)
        if lo < hi:
            taps.append((r, slice(lo, hi), slice(lo * s + off, (hi - 1) * s + off + 1, s)))
    return taps


def _tap(a: np.ndarray, h0: int, w0: int, P: int, Q: int, sh: int, sw: int) -> np.ndarray:
    """The strided view a[..., h0 + sh*p, w0 + sw*q] of shape (..., P, Q)."""
    return a[..., h0:h0 + (P - 1) * sh + 1:sh, w0:w0 + (Q - 1) * sw + 1:sw]


# ---- convolution ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Taps:
    """A correlation: R x S taps, dilation, stride, output P x Q, and whether it runs ``flat``
    (stride 1 over the padded input, each tap's columns one contiguous run of it)."""

    R: int
    S: int
    P: int
    Q: int
    stride_h: int
    stride_w: int
    dil_h: int
    dil_w: int
    flat: bool


def _flat_fits(H: int, W: int, pads: Tuple[int, int, int, int], P: int, Q: int) -> bool:
    """Whether the padded plane (one extra row) stays within a few input and output planes."""
    top, bottom, left, right = pads
    return (H + top + bottom + 1) * (W + left + right) <= 4 * (H * W + P * Q)


def _make_taps(R: int, S: int, P: int, Q: int, sh: int, sw: int, dh: int, dw: int, H: int, W: int,
               pads: Tuple[int, int, int, int]) -> _Taps:
    return _Taps(R, S, P, Q, sh, sw, dh, dw, sh == sw == 1 and _flat_fits(H, W, pads, P, Q))


def _padded(x: np.ndarray, top: int, bottom: int, left: int, right: int, extra_row: bool) -> np.ndarray:
    """x (n, C, H, W) zero-padded (negative amounts crop); one more zero row when ``extra_row``."""
    H, W = x.shape[2:]
    x = x[:, :, max(0, -top):H - max(0, -bottom), max(0, -left):W - max(0, -right)]
    top, bottom, left, right = max(top, 0), max(bottom, 0), max(left, 0), max(right, 0)
    if top == bottom == left == right == 0 and not extra_row:
        return np.ascontiguousarray(x)
    n, C, H, W = x.shape
    out = np.zeros((n, C, H + top + bottom + int(extra_row), W + left + right), dtype=x.dtype)
    out[:, :, top:top + H, left:left + W] = x
    return out


def _columns(x: np.ndarray, pads: Tuple[int, int, int, int], t: _Taps) -> Tuple[np.ndarray, int]:
    """x (n, C, H, W) and its padding (top, bottom, left, right; negative crops) ->
    (columns (n, C*R*S, P*L), L).

    Flat (stride 1): the columns of tap (r, s) are the flattened padded input from offset
    r*dh*Wp + s*dw, one contiguous copy per tap and per (n, C), computing L = Wp outputs per row
    of which the last Wp - Q are discarded. Otherwise L = Q and each tap copies the strided part
    of the unpadded input it reaches into zeroed columns.
    """
    n, C, H, W = x.shape
    if t.flat:
        xp = _padded(x, *pads, extra_row=True)
        Hp, Wp = xp.shape[2:]
        L = Wp
        flat = xp.reshape(n, C, Hp * Wp)
        cols = np.empty((n, C, t.R, t.S, t.P * L), dtype=x.dtype)
        for r in range(t.R):
            for s in range(t.S):
                start = r * t.dil_h * Wp + s * t.dil_w
                cols[:, :, r, s] = flat[:, :, start:start + t.P * L]
        return cols.reshape(n, C * t.R * t.S, t.P * L), L
    cols = np.zeros((n, C, t.R, t.S, t.P, t.Q), dtype=x.dtype)
    for r, ps, hs in _axis_taps(t.R, t.dil_h, pads[0], t.P, t.stride_h, H):
        for s, qs, ws in _axis_taps(t.S, t.dil_w, pads[2], t.Q, t.stride_w, W):
            cols[:, :, r, s, ps, qs] = x[:, :, hs, ws]
    return cols.reshape(n, C * t.R * t.S, t.P * t.Q), t.Q


def _correlate(x: np.ndarray, wm: np.ndarray, pads: Tuple[int, int, int, int], t: _Taps) -> np.ndarray:
    """Grouped cross-correlation: x (N, C, H, W), wm (G, K/G, C/G*R*S), pads (top, bottom, left,
    right; negative crops) -> (N, K, P, Q), in batch chunks that stay in cache."""
    N, C = x.shape[:2]
    G, Kg, _ = wm.shape
    K = G * Kg
    y = np.empty((N, K, t.P, t.Q), dtype=x.dtype)
    row = x.shape[3] + pads[2] + pads[3] if t.flat else t.Q
    for sl in _chunks(N, C * t.R * t.S * t.P * row * x.itemsize):
        cols, L = _columns(x[sl], pads, t)
        n = cols.shape[0]
        out = np.matmul(wm, cols.reshape(n, G, -1, t.P * L))
        y[sl] = out.reshape(n, K, t.P, L)[..., :t.Q]
    return y


def _conv_taps(g: ConvGeometry) -> _Taps:
    return _make_taps(g.R, g.S, g.P, g.Q, g.stride_h, g.stride_w, g.dil_h, g.dil_w, g.H, g.W,
                      _conv_pads(g))


def _conv_pads(g: ConvGeometry) -> Tuple[int, int, int, int]:
    return g.pad_h, g.pad_bottom, g.pad_w, g.pad_right


def _weight_matrix(weight: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """weight (K, C/G, R, S) -> (G, K/G, C/G*R*S)."""
    G = g.groups
    return np.ascontiguousarray(weight).reshape(G, g.K // G, (g.C // G) * g.R * g.S)


def _flipped_weight_matrix(weight: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """weight (K, C/G, R, S) rotated 180 degrees, input and output channels swapped per group:
    (G, C/G, K/G*R*S), the filter of the stride-1 backward-data correlation."""
    G, Kg, Cg = g.groups, g.K // g.groups, g.C // g.groups
    w = weight[:, :, ::-1, ::-1].reshape(G, Kg, Cg, g.R, g.S).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(w).reshape(G, Cg, Kg * g.R * g.S)


def _backward_data_stride1(dy: np.ndarray, weight: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """dx = dy zero-padded by the dilated kernel extent minus the forward padding, correlated with
    the flipped filter (the seed's full convolution)."""
    eh, ew = (g.R - 1) * g.dil_h, (g.S - 1) * g.dil_w
    pads = (eh - g.pad_h, eh - g.pad_bottom, ew - g.pad_w, ew - g.pad_right)
    t = _make_taps(g.R, g.S, g.H, g.W, 1, 1, g.dil_h, g.dil_w, g.P, g.Q, pads)
    return _correlate(dy, _flipped_weight_matrix(weight, g), pads, t)


def _backward_data_columns(dy: np.ndarray, weight: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """dx via columns: (C*R*S, P*Q) = weight^T dy per image, then one strided add per tap."""
    G, Kg, PQ = g.groups, g.K // g.groups, g.P * g.Q
    wmt = _weight_matrix(weight, g).transpose(0, 2, 1)
    dx = np.zeros(g.x_shape, dtype=dy.dtype)
    rows = _axis_taps(g.R, g.dil_h, g.pad_h, g.P, g.stride_h, g.H)
    cols = _axis_taps(g.S, g.dil_w, g.pad_w, g.Q, g.stride_w, g.W)
    for sl in _chunks(g.N, g.C * g.R * g.S * PQ * dy.itemsize):
        dyc = dy[sl].reshape(-1, G, Kg, PQ)
        n = dyc.shape[0]
        dcols = np.matmul(wmt, dyc).reshape(n, g.C, g.R, g.S, g.P, g.Q)
        dxc = dx[sl]
        for r, ps, hs in rows:
            for s, qs, ws in cols:
                dxc[:, :, hs, ws] += dcols[:, :, r, s, ps, qs]
    return dx


def _backward_filter(dy: np.ndarray, x: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """dweight[k, c, r, s] = sum over n, p, q of dy[n, k, p, q] * x_padded[n, c, p*sh + r*dh, q*sw + s*dw]."""
    G, Kg = g.groups, g.K // g.groups
    t = _conv_taps(g)
    dw = np.zeros((G, Kg, (g.C // G) * g.R * g.S), dtype=x.dtype)
    row = g.W + g.pad_w + g.pad_right if t.flat else g.Q
    for sl in _chunks(g.N, g.C * g.R * g.S * g.P * row * x.itemsize):
        cols, L = _columns(x[sl], _conv_pads(g), t)
        n = cols.shape[0]
        dyc = dy[sl]
        if L != g.Q:  # zero gradient for the discarded outputs of the flat columns
            ext = np.zeros((n, g.K, g.P, L), dtype=dy.dtype)
            ext[..., :g.Q] = dyc
            dyc = ext
        dyc = dyc.reshape(n, G, Kg, g.P * L)
        dw += np.matmul(dyc, cols.reshape(n, G, -1, g.P * L).transpose(0, 1, 3, 2)).sum(axis=0)
    return dw.reshape(g.w_shape)


# ---- pooling -------------------------------------------------------------------------------

def _pool_taps(g: PoolGeometry) -> List[Tuple[int, int, Tuple[slice, slice], Tuple[slice, slice]]]:
    """The window offsets (i, j) that reach the input, in raster order, each with the outputs it
    reaches and the input cells it reads there: (i, j, (output rows, cols), (input rows, cols))."""
    rows = _axis_taps(g.R, g.dil_h, g.pad_h, g.P, g.stride_h, g.H)
    cols = _axis_taps(g.S, g.dil_w, g.pad_w, g.Q, g.stride_w, g.W)
    return [(i, j, (ps, qs), (hs, ws)) for i, ps, hs in rows for j, qs, ws in cols]


def _windows_overlap(g: PoolGeometry) -> bool:
    return g.stride_h < (g.R - 1) * g.dil_h + 1 or g.stride_w < (g.S - 1) * g.dil_w + 1


def _avg_divisors(g: PoolGeometry, count_include_pad: bool, divisor_override: Optional[int]) -> np.ndarray:
    """(P, Q) float64 divisors, PyTorch's rule (geometry.avg_pool_divisor, evaluated on arrays)."""
    oh = np.arange(g.P, dtype=np.int64)[:, None]
    ow = np.arange(g.Q, dtype=np.int64)[None, :]
    d = avg_pool_divisor(g, oh, ow, count_include_pad, divisor_override)
    return np.broadcast_to(np.asarray(d, dtype=np.float64), (g.P, g.Q))


def _is_global(g: PoolGeometry) -> bool:
    """One window covering the whole unpadded input plane."""
    return (g.P == g.Q == 1 and g.pad_h == g.pad_w == 0 and g.dil_h == g.dil_w == 1
            and (g.R, g.S) == (g.H, g.W))


def _window_sum_scatter(grad: np.ndarray, g: PoolGeometry) -> np.ndarray:
    """Adjoint of the zero-padded window sum: grad (N, C, P, Q) -> (N, C, H, W)."""
    N, C = grad.shape[:2]
    if _is_global(g):
        return np.ascontiguousarray(np.broadcast_to(grad, (N, C, g.H, g.W)))
    dx = np.zeros((N, C, g.H, g.W), dtype=grad.dtype)
    for _, _, out, inp in _pool_taps(g):
        dx[(..., *inp)] += grad[(..., *out)]
    return dx


def _window_sum(x: np.ndarray, g: PoolGeometry) -> np.ndarray:
    """Sum over each zero-padded window: x (N, C, H, W) -> (N, C, P, Q)."""
    if _is_global(g):
        return np.ascontiguousarray(x).reshape(g.N, g.C, -1).sum(axis=2).reshape(g.y_shape)
    out = np.zeros(g.y_shape, dtype=x.dtype)
    for _, _, o, inp in _pool_taps(g):
        out[(..., *o)] += x[(..., *inp)]
    return out


def _first_hit(hits, deltas: List[int], shape) -> Tuple[np.ndarray, np.ndarray]:
    """For boolean arrays ``hits`` in order: (the delta of the first true one, any true)."""
    delta = np.zeros(shape, dtype=np.int64)
    found = np.zeros(shape, dtype=bool)
    for hit, d in zip(hits, deltas):
        first = np.greater(hit, found)  # hit and not found before
        if d:
            delta += first.view(np.uint8) * np.int64(d)
        found |= hit
    return delta, found


def _max_pool_chunk(x: np.ndarray, g: PoolGeometry, taps) -> Tuple[np.ndarray, np.ndarray]:
    """x (n, C, H, W) -> (y, indices) over the windows' taps that reach the input.

    The windows are first copied to (taps, n, C, P, Q) (-inf where a tap falls in the padding for
    that output) so that the reductions below run over contiguous memory. Ties: the first
    maximum in raster order; NaN: the first NaN; padding never wins; a window without any input
    element gives -inf and index -1.
    """
    shape = x.shape[:2] + (g.P, g.Q)
    if not taps:
        return np.full(shape, -np.inf, dtype=x.dtype), np.full(shape, -1, dtype=np.int32)
    windows = np.empty((len(taps),) + shape, dtype=x.dtype)
    for t, (_, _, out, inp) in enumerate(taps):
        if out != (slice(0, g.P), slice(0, g.Q)):
            windows[t].fill(-np.inf)
        windows[(t, Ellipsis, *out)] = x[(..., *inp)]
    deltas = [i * g.dil_h * g.W + j * g.dil_w for i, j, _, _ in taps]  # from the window origin
    y = windows.max(axis=0)  # NaN propagates
    delta, _ = _first_hit((w == y for w in windows), deltas, shape)
    nan_out = np.isnan(y)
    if nan_out.any():  # the only windows with no element equal to their maximum
        np.copyto(delta, _first_hit((np.isnan(w) for w in windows), deltas, shape)[0], where=nan_out)
    neg_inf = y == -np.inf
    empty = None
    if neg_inf.any():
        # Padding equals -inf too: the first real element wins; windows without one are empty.
        valid = []
        for _, _, (ps, qs), _ in taps:
            v = np.zeros((g.P, g.Q), dtype=bool)
            v[ps, qs] = True
            valid.append(np.broadcast_to(v, shape))
        inf_delta, found = _first_hit(valid, deltas, shape)
        np.copyto(delta, inf_delta, where=neg_inf)
        empty = neg_inf & ~found
    delta += ((np.arange(g.P, dtype=np.int64) * g.stride_h - g.pad_h)[:, None] * g.W
              + (np.arange(g.Q, dtype=np.int64) * g.stride_w - g.pad_w)[None, :])  # window origins
    idx = delta.astype(np.int32)
    if empty is not None:
        idx[empty] = -1
    return y, idx


def _in_own_window(indices: np.ndarray, g: PoolGeometry) -> np.ndarray:
    """Whether each index names an input cell of its own output's window (max_pool2d_backward's
    rule: any other value, -1 included, routes no gradient).

    int32 arithmetic throughout (the geometry keeps every coordinate of an index inside the plane
    below 2^31; values outside the plane may wrap, and ``inside`` rejects them anyway). An
    offset a lies in [0, span] exactly when its uint32 view is <= span.
    """
    idx = indices.astype(np.int32, copy=False)
    W = np.int32(g.W)
    a = idx // W  # row, then offset from the window's first row
    b = idx - a * W  # column, then offset from the window's first column
    a -= (np.arange(g.P, dtype=np.int32) * np.int32(g.stride_h) - np.int32(g.pad_h))[:, None]
    b -= (np.arange(g.Q, dtype=np.int32) * np.int32(g.stride_w) - np.int32(g.pad_w))[None, :]
    ok = idx >= 0
    ok &= idx < g.H * g.W
    ok &= a.view(np.uint32) <= (g.R - 1) * g.dil_h
    ok &= b.view(np.uint32) <= (g.S - 1) * g.dil_w
    if g.dil_h > 1:
        ok &= a % np.int32(g.dil_h) == 0
    if g.dil_w > 1:
        ok &= b % np.int32(g.dil_w) == 0
    return ok


# ---- batch normalisation -------------------------------------------------------------------
# Statistics and gradient sums are computed in float64 whatever the dtype (two passes: mean, then
# the mean square deviation), so the reference carries no cancellation of its own; results are
# rounded to the dtype of x.

def _channels(a: np.ndarray, g: NormGeometry) -> np.ndarray:
    """(N, C, *) -> float64 view/copy of shape (N, C, S)."""
    return np.asarray(a).reshape(g.N, g.C, g.S).astype(np.float64, copy=False)


def _per_channel(v: Optional[np.ndarray], default: float) -> np.ndarray:
    """(C,) -> float64 (1, C, 1); None -> the scalar ``default``."""
    if v is None:
        return np.float64(default)
    return np.asarray(v, dtype=np.float64)[None, :, None]


# ---- batch augmentation --------------------------------------------------------------------

def _crop_source(origin: np.ndarray, size: int, pad: int, reflect: bool) -> Tuple[np.ndarray, np.ndarray]:
    """Source coordinate (N, size) of each output coordinate of a crop at ``origin`` (N,) of the
    input padded by ``pad``, and whether it lies inside (zero padding)."""
    src = origin[:, None] - pad + np.arange(size)[None, :]
    if reflect:
        src = np.where(src < 0, -src, src)
        src = np.where(src >= size, 2 * (size - 1) - src, src)
        return src, np.ones(src.shape, bool)
    inside = (src >= 0) & (src < size)
    return np.clip(src, 0, max(size - 1, 0)), inside


def _cutout_mask(centre: np.ndarray, size: int, cutout: int) -> np.ndarray:
    """(N, size): True on the cutout rows (or columns) of each image."""
    start = centre[:, None] - cutout // 2
    pos = np.arange(size)[None, :]
    return (pos >= start) & (pos < start + cutout)


class NumpyBackend(Backend):
    """Vectorised NumPy reference (float32 and float64)."""

    name = "numpy"
    xp = np

    # ---- arrays -------------------------------------------------------------------------
    def is_array(self, a) -> bool:
        return isinstance(a, np.ndarray)

    def asarray(self, a, dtype=None) -> np.ndarray:
        if hasattr(a, "get") and not isinstance(a, np.ndarray):  # a device array (CuPy)
            a = a.get()
        return np.asarray(a, dtype=dtype)

    def to_numpy(self, a) -> np.ndarray:
        return np.asarray(a)

    def describe(self) -> str:
        return f"numpy {np.__version__} (CPU reference)"

    # ---- convolution --------------------------------------------------------------------
    def conv2d(self, x, weight, bias, g: ConvGeometry):
        y = _correlate(x, _weight_matrix(weight, g), _conv_pads(g), _conv_taps(g))
        if bias is not None:
            y += bias.reshape(1, g.K, 1, 1)
        return y

    def conv2d_relu(self, x, weight, bias, residual, g: ConvGeometry):
        # The reference of the fused kernels is the unfused composition.
        y = self.conv2d(x, weight, bias, g)
        return self.relu(y if residual is None else self.add(y, residual))

    def conv2d_backward(self, dy, x, weight, g: ConvGeometry, need_dx=True, need_dw=True,
                        need_db=True, through_relu=False):
        dy = np.ascontiguousarray(dy)
        dx = dw = db = None
        if need_dx:
            # The correlation copies K*R*S columns per input pixel, the column route adds
            # C*R*S strided values per output pixel (about twice the cost per element).
            if g.stride_h == g.stride_w == 1 and g.K <= 2 * g.C:
                dx = _backward_data_stride1(dy, weight, g)
            else:
                dx = _backward_data_columns(dy, weight, g)
            if through_relu:
                dx = self.relu_backward(dx, x)
        if need_dw:
            dw = _backward_filter(dy, x, g)
        if need_db:
            db = dy.sum(axis=(0, 2, 3))
        return dx, dw, db

    # ---- pooling ------------------------------------------------------------------------
    def max_pool2d(self, x, g: PoolGeometry):
        if _is_global(g):  # numpy's argmax: the first maximum, or the first NaN
            planes = np.ascontiguousarray(x).reshape(g.N * g.C, g.H * g.W)
            idx = planes.argmax(axis=1)
            y = planes[np.arange(g.N * g.C), idx]
            return y.reshape(g.y_shape), idx.astype(np.int32).reshape(g.y_shape)
        taps = _pool_taps(g)
        y = np.empty(g.y_shape, dtype=x.dtype)
        idx = np.empty(g.y_shape, dtype=np.int32)
        for sl in _chunks(g.N, max(1, len(taps)) * g.C * g.P * g.Q * x.itemsize):
            y[sl], idx[sl] = _max_pool_chunk(x[sl], g, taps)
        return y, idx

    def max_pool2d_backward(self, dy, indices, g: PoolGeometry):
        N, C = g.N, g.C
        plane = g.H * g.W
        keep = _in_own_window(indices, g).reshape(N * C, g.P * g.Q)
        idx = indices.reshape(N * C, g.P * g.Q)
        target = idx + (np.arange(N * C, dtype=np.int64) * plane)[:, None]
        grad = dy.reshape(N * C, g.P * g.Q)
        if not keep.all():
            target, grad = target[keep], grad[keep]
        if not _windows_overlap(g):
            dx = np.zeros(N * C * plane, dtype=dy.dtype)
            dx[target.ravel()] = grad.ravel()
        else:
            dx = np.bincount(target.ravel(), weights=grad.ravel(), minlength=N * C * plane)
            dx = dx.astype(dy.dtype, copy=False)
        return dx.reshape(g.x_shape)

    def avg_pool2d(self, x, g: PoolGeometry, count_include_pad, divisor_override):
        s = _window_sum(x, g)
        s /= _avg_divisors(g, bool(count_include_pad), divisor_override).astype(x.dtype)
        return s

    def avg_pool2d_backward(self, dy, g: PoolGeometry, count_include_pad, divisor_override, dtype):
        d = _avg_divisors(g, bool(count_include_pad), divisor_override).astype(dtype)
        return _window_sum_scatter(dy.astype(dtype, copy=False) / d, g)

    def l2_pool2d(self, x, g: PoolGeometry):
        return np.sqrt(_window_sum(x * x, g))

    def l2_pool2d_backward(self, dy, x, y, g: PoolGeometry):
        pos = y > 0
        ratio = np.divide(dy, y, out=np.zeros_like(dy), where=pos)
        return x * _window_sum_scatter(ratio, g)

    # ---- element-wise -------------------------------------------------------------------
    def relu(self, x):
        return np.maximum(x, x.dtype.type(0))

    def relu_backward(self, dy, y):
        return np.where(y > 0, dy, dy.dtype.type(0))

    def sigmoid(self, x):
        e = np.exp(-np.abs(x))
        return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)

    def sigmoid_backward(self, dy, y):
        return dy * y * (1 - y)

    def tanh(self, x):
        return np.tanh(x)

    def tanh_backward(self, dy, y):
        # (1 - y)(1 + y), not 1 - y*y: near |y| = 1 rounding y*y would cost many ulps of the small
        # result (condition number y^2 / (1 - y^2)); 1 - y is exact there (Sterbenz).
        return dy * ((1 - y) * (1 + y))

    def dropout(self, x, p, seed):
        mask = dropout_mask(x.shape, p, seed, x.dtype)
        return x * mask, mask

    def mul(self, a, b):
        return a * b

    def add(self, a, b):
        return a + b

    # ---- dense layers and loss ----------------------------------------------------------
    # Dense ops and the loss take C-contiguous copies first: BLAS and NumPy's reductions sum in an
    # order that depends on the strides, and the reference gives the same bits for any layout.
    def linear(self, x, weight, bias):
        x, weight = np.ascontiguousarray(x), np.ascontiguousarray(weight)
        y = x @ weight.T
        if bias is not None:
            y += bias
        return y

    def linear_backward(self, dy, x, weight, need_db=True):
        dy, x, weight = np.ascontiguousarray(dy), np.ascontiguousarray(x), np.ascontiguousarray(weight)
        return dy @ weight, dy.T @ x, (dy.sum(axis=0) if need_db else None)

    def softmax_cross_entropy(self, logits, labels, label_smoothing=0.0):
        logits = np.ascontiguousarray(logits)
        N, K = logits.shape
        shifted = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        total = e.sum(axis=1, keepdims=True)
        rows = np.arange(N)
        lab = labels.astype(np.intp, copy=False)
        d = e / total
        if label_smoothing:  # target (1 - e) at the label + e / K everywhere
            keep = 1.0 - label_smoothing
            row_loss = (np.log(total[:, 0]) - keep * shifted[rows, lab]
                        - label_smoothing * shifted.mean(axis=1))
            d[rows, lab] -= keep
            d -= label_smoothing / K
        else:
            row_loss = np.log(total[:, 0]) - shifted[rows, lab]
            d[rows, lab] -= 1
        loss = np.mean(row_loss)
        d /= N
        return np.asarray(loss, dtype=logits.dtype), d

    # ---- batch normalisation ------------------------------------------------------------
    def batch_norm(self, x, running_mean, running_var, weight, bias, g: NormGeometry, training,
                   momentum, eps, relu):
        xs = _channels(x, g)
        if training:
            mean = xs.mean(axis=(0, 2))
            var = np.square(xs - mean[None, :, None]).mean(axis=(0, 2))  # biased
            if running_mean is not None:
                unbiased = var * (g.count / (g.count - 1))
                running_mean[...] = (1 - momentum) * running_mean + momentum * mean
                running_var[...] = (1 - momentum) * running_var + momentum * unbiased
        else:
            mean = running_mean.astype(np.float64)
            var = running_var.astype(np.float64)
        invstd = 1.0 / np.sqrt(var + eps)
        y = (xs - mean[None, :, None]) * invstd[None, :, None] * _per_channel(weight, 1.0) \
            + _per_channel(bias, 0.0)
        if relu:
            y = np.maximum(y, 0.0)
        dt = x.dtype
        return y.astype(dt).reshape(x.shape), mean.astype(dt), invstd.astype(dt)

    def batch_norm_backward(self, dy, x, y, weight, saved_mean, saved_invstd, g: NormGeometry, training):
        d = _channels(dy, g)
        if y is not None:
            d = np.where(np.asarray(y).reshape(d.shape) > 0, d, 0.0)
        invstd = _per_channel(saved_invstd, 1.0)
        xhat = (_channels(x, g) - _per_channel(saved_mean, 0.0)) * invstd
        dbias = d.sum(axis=(0, 2))
        dweight = (d * xhat).sum(axis=(0, 2))
        scale = _per_channel(weight, 1.0) * invstd
        if training:
            m = g.count
            dx = scale * (d - dbias[None, :, None] / m - xhat * (dweight[None, :, None] / m))
        else:
            dx = scale * d
        dt = x.dtype
        return dx.astype(dt).reshape(x.shape), dweight.astype(dt), dbias.astype(dt)

    # ---- batch augmentation -------------------------------------------------------------
    def augment(self, x, indices, seed, epoch, spec: AugmentSpec):
        prm = augment_params(seed, epoch, indices, spec)
        flip, oy, ox, cy, cx = (prm[:, k].astype(np.int64) for k in range(5))
        reflect = spec.padding_mode == "reflect"
        rows, row_in = _crop_source(oy, spec.H, spec.crop_padding, reflect)
        # flipped: output column w shows the cropped column W - 1 - w
        cols, col_in = _crop_source(ox, spec.W, spec.crop_padding, reflect)
        cols = np.where(flip[:, None] == 1, cols[:, ::-1], cols)
        col_in = np.where(flip[:, None] == 1, col_in[:, ::-1], col_in)
        n = np.arange(spec.N)[:, None, None]
        y = x[n, :, rows[:, :, None], cols[:, None, :]].transpose(0, 3, 1, 2)  # (N, C, H, W)
        keep = row_in[:, :, None] & col_in[:, None, :]
        if spec.cutout:
            keep &= ~(_cutout_mask(cy, spec.H, spec.cutout)[:, :, None]
                      & _cutout_mask(cx, spec.W, spec.cutout)[:, None, :])
        return np.where(keep[:, None], y, x.dtype.type(0))

    # ---- optimizer updates (in place) ---------------------------------------------------
    def sgd_step(self, param, grad, buf, lr, momentum, dampening, weight_decay, nesterov, first_step):
        self.sgd_step_dev(param, grad, buf, sgd_constants(param.dtype, lr, momentum, dampening, weight_decay,
                                                          nesterov, first_step))

    def adam_step(self, param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled=False):
        self.adam_step_dev(param, grad, m, v, adam_constants(param.dtype, step, lr, beta1, beta2, eps,
                                                             weight_decay, decoupled))

    def sgd_step_dev(self, param, grad, buf, hp):
        """PyTorch's SGD rule on the constants of ``hp`` (``sgd_constants``: derived in float64,
        rounded once to the parameter's dtype, as the kernels get them)."""
        lr, momentum, one_minus_dampening, weight_decay, nesterov, first_step = hp
        d = grad + weight_decay * param if weight_decay else grad
        if momentum:
            if first_step:
                buf[...] = d
            else:
                buf *= momentum
                buf += one_minus_dampening * d
            d = d + momentum * buf if nesterov else buf
        param -= lr * d

    def adam_step_dev(self, param, grad, m, v, hp):
        """PyTorch's Adam/AdamW rule on the constants of ``hp`` (``adam_constants``)."""
        beta1, one_minus_beta1, beta2, one_minus_beta2, eps, l2, step_size, sqrt_bc2, param_scale = hp
        if param_scale != 1:
            param *= param_scale  # AdamW, whose l2 is 0: the same as the kernel's p * param_scale - ...
        g = grad + l2 * param if l2 else grad
        m *= beta1
        m += one_minus_beta1 * g
        v *= beta2
        v += one_minus_beta2 * (g * g)
        param -= step_size * (m / (np.sqrt(v) / sqrt_bc2 + eps))
