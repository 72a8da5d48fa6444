"""The NumPy reference against each op's definition, written from the index equations.

Second link of the chain of trust, after the seed equations (one channel, stride 1, no padding):
every geometry the ops accept — stride, dilation, groups, int/pair/'valid'/'same' padding with the
odd 'same' pixel at the bottom/right, ceil_mode, overlapping and empty pooling windows — checked
in float64 against a transcription of the definition that shares no code with the backend:

    y[n, k, p, q]  = b[k] + sum over c in k's group, r, s of
                     w[k, c, r, s] * x[n, c, p*sh - pad_top + r*dh, q*sw - pad_left + s*dw]
                     (x is zero outside the input)
    dx             = the adjoint of that map: each dy[n, k, p, q] * w[k, c, r, s] added to the
                     input cell the tap reads (no flipped filter, no padded correlation)
    dw[k, c, r, s] = sum over n, p, q of dy[n, k, p, q] * (the cell that tap reads)

and for pooling the window's cells enumerated one by one. The references take only the output
size and the top/left padding from ``gpuconv.geometry`` (the rules that fix them are pinned by
test_geometry.py); everything else is counted here. So a reference bug fails here, not only later
as a kernel that disagrees with the reference.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import assert_close

from gpuconv import functional as F
from gpuconv.dropout_rng import dropout_mask
from gpuconv.geometry import conv2d_geometry, pool2d_geometry

pytestmark = pytest.mark.usefixtures("numpy_default")

N_CONV = 240
N_POOL = 120


# ---- convolution -----------------------------------------------------------------------------------

def _tap_cells(size: int, out: int, stride: int, pad: int, offset: int):
    """Input coordinate of tap ``offset`` for each output position, and whether it is inside."""
    coord = np.arange(out) * stride - pad + offset
    return np.clip(coord, 0, size - 1), (coord >= 0) & (coord < size)


def _taps(x_shape, w_shape, g):
    """For every tap (r, s): (rows, cols, inside mask (P, Q)) of the cells it reads."""
    _, _, H, W = x_shape
    _, _, R, S = w_shape
    for r in range(R):
        rows, vr = _tap_cells(H, g.P, g.stride_h, g.pad_h, r * g.dil_h)
        for s in range(S):
            cols, vc = _tap_cells(W, g.Q, g.stride_w, g.pad_w, s * g.dil_w)
            yield r, s, rows[:, None], cols[None, :], vr[:, None] & vc[None, :]


def conv_definition(x, w, b, g):
    N, C = x.shape[:2]
    K, Cg = w.shape[:2]
    G, Kg = g.groups, K // g.groups
    y = np.zeros((N, K, g.P, g.Q)) + b[None, :, None, None]
    for r, s, rows, cols, inside in _taps(x.shape, w.shape, g):
        cells = x[:, :, rows, cols] * inside                       # (N, C, P, Q)
        for grp in range(G):
            ks, cs = slice(grp * Kg, (grp + 1) * Kg), slice(grp * Cg, (grp + 1) * Cg)
            y[:, ks] += np.einsum("kc,ncpq->nkpq", w[ks, :, r, s], cells[:, cs])
    return y


def conv_backward_definition(dy, x, w, g):
    N, C = x.shape[:2]
    K, Cg = w.shape[:2]
    G, Kg = g.groups, K // g.groups
    dx, dw = np.zeros(x.shape), np.zeros(w.shape)
    for r, s, rows, cols, inside in _taps(x.shape, w.shape, g):
        cells = x[:, :, rows, cols] * inside
        for grp in range(G):
            ks, cs = slice(grp * Kg, (grp + 1) * Kg), slice(grp * Cg, (grp + 1) * Cg)
            contrib = np.einsum("kc,nkpq->ncpq", w[ks, :, r, s], dy[:, ks]) * inside
            np.add.at(dx, (slice(None), cs, rows, cols), contrib)  # repeated cells accumulate
            dw[ks, :, r, s] += np.einsum("nkpq,ncpq->kc", dy[:, ks], cells[:, cs])
    return dx, dw, dy.sum(axis=(0, 2, 3))


def _random_conv(rng):
    """A small random conv call; about a third at stride 1 with 'same' and an even kernel (the
    padding is then asymmetric), with both K <= 2C and K > 2C (the reference's two input-gradient
    routes)."""
    while True:
        groups = int(rng.choice([1, 1, 1, 2, 3]))
        C, K = groups * int(rng.integers(1, 4)), groups * int(rng.integers(1, 5))
        u = rng.random()
        if u < 0.35:
            R, S = int(rng.choice([2, 4])), int(rng.choice([1, 2, 3, 4]))
            stride, padding = 1, "same"
        else:
            R, S = int(rng.integers(1, 5)), int(rng.integers(1, 5))
            stride = (int(rng.integers(1, 4)), int(rng.integers(1, 4))) if rng.random() < 0.6 else 1
            padding = rng.choice(["same", "valid", "int", "pair"])
            padding = {"int": int(rng.integers(0, 3)),
                       "pair": (int(rng.integers(0, 3)), int(rng.integers(0, 3)))}.get(padding, padding)
        dilation = (int(rng.integers(1, 3)), int(rng.integers(1, 3))) if rng.random() < 0.4 else 1
        shape = (int(rng.integers(1, 3)), C, int(rng.integers(1, 10)), int(rng.integers(1, 10)))
        try:
            g = conv2d_geometry(shape, (K, C // groups, R, S), stride, padding, dilation, groups)
        except ValueError:
            continue
        return shape, (K, C // groups, R, S), (stride, padding, dilation, groups), g


def test_conv2d_forward_and_gradients_are_the_definition():
    rng = np.random.default_rng(15)
    seen = set()
    for _ in range(N_CONV):
        xs, ws, args, g = _random_conv(rng)
        x, w, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
        dy = rng.standard_normal((xs[0], ws[0], g.P, g.Q))
        what = f"x {xs} w {ws} stride/padding/dilation/groups {args}"
        assert_close(F.conv2d(x, w, b, *args), conv_definition(x, w, b, g), np.float64, what=f"y {what}")
        dx, dw, db = F.conv2d_backward(dy, x, w, *args)
        rdx, rdw, rdb = conv_backward_definition(dy, x, w, g)
        assert_close(dx, rdx, np.float64, what=f"dx {what}")
        assert_close(dw, rdw, np.float64, what=f"dweight {what}")
        assert_close(db, rdb, np.float64, what=f"dbias {what}")
        stride1 = g.stride_h == g.stride_w == 1
        route = "correlation" if stride1 and g.K <= 2 * g.C else "columns"  # the reference's dx routes
        asymmetric = (g.pad_h, g.pad_w) != (g.pad_bottom, g.pad_right)
        seen.add((route, "stride 1" if stride1 else "strided", asymmetric))
    # Both input-gradient routes at stride 1 with asymmetric padding, and strided 'same'.
    assert {("correlation", "stride 1", True), ("columns", "stride 1", True), ("columns", "strided", True),
            ("correlation", "stride 1", False), ("columns", "strided", False)} <= seen, seen


def test_same_padding_with_an_even_kernel_at_stride_1_by_hand():
    """A 1x1x3x3 input, a 2x2 kernel, 'same': one padding row at the bottom, one column at the
    right. dx[h, w] = sum of the weights whose tap reads (h, w), each times its dy."""
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    w = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    y = F.conv2d(x, w, padding="same")
    want = np.array([[0 + 2 + 9 + 16, 1 + 4 + 12 + 20, 2 + 15],
                     [3 + 8 + 18 + 28, 4 + 10 + 21 + 32, 5 + 24],
                     [6 + 14, 7 + 16, 8]], float)
    np.testing.assert_array_equal(y[0, 0], want)
    dx, _, _ = F.conv2d_backward(np.ones((1, 1, 3, 3)), x, w, padding="same")
    # Cell (h, w) is read by tap (r, s) of output (h - r, w - s) when that output exists.
    want_dx = np.array([[1, 1 + 2, 1 + 2],
                        [1 + 3, 10, 10],
                        [1 + 3, 10, 10]], float)
    np.testing.assert_array_equal(dx[0, 0], want_dx)


# ---- pooling ---------------------------------------------------------------------------------------

def _windows(g):
    """For each output (p, q): the (h, w) cells of its window inside the input, in raster order,
    and the number of window cells inside the padded input [-pad, size + pad)."""
    for p in range(g.P):
        for q in range(g.Q):
            cells, padded = [], 0
            for i in range(g.R):
                h = p * g.stride_h - g.pad_h + i * g.dil_h
                for j in range(g.S):
                    w = q * g.stride_w - g.pad_w + j * g.dil_w
                    padded += -g.pad_h <= h < g.H + g.pad_h and -g.pad_w <= w < g.W + g.pad_w
                    if 0 <= h < g.H and 0 <= w < g.W:
                        cells.append((h, w))
            yield p, q, cells, padded


def max_pool_definition(x, g):
    """First maximum in raster order; the first NaN wins; an empty window gives -inf, index -1."""
    N, C = x.shape[:2]
    y = np.full((N, C, g.P, g.Q), -np.inf)
    idx = np.full((N, C, g.P, g.Q), -1, np.int64)
    for p, q, cells, _ in _windows(g):
        for n in range(N):
            for c in range(C):
                for h, w in cells:
                    v, best = x[n, c, h, w], y[n, c, p, q]
                    if idx[n, c, p, q] < 0 or v > best or (np.isnan(v) and not np.isnan(best)):
                        y[n, c, p, q], idx[n, c, p, q] = v, h * g.W + w
    return y, idx


def avg_pool_definition(x, g, count_include_pad, divisor_override):
    N, C = x.shape[:2]
    y, dx_per_dy = np.zeros((N, C, g.P, g.Q)), []
    for p, q, cells, padded in _windows(g):
        divisor = divisor_override or (padded if count_include_pad else len(cells))
        y[:, :, p, q] = sum((x[:, :, h, w] for h, w in cells), np.zeros((N, C))) / divisor
        dx_per_dy.append((p, q, cells, divisor))
    return y, dx_per_dy


def avg_pool_backward_definition(dy, x_shape, windows):
    dx = np.zeros(x_shape)
    for p, q, cells, divisor in windows:
        for h, w in cells:
            dx[:, :, h, w] += dy[:, :, p, q] / divisor
    return dx


def l2_pool_definition(x, g):
    y = np.zeros(x.shape[:2] + (g.P, g.Q))
    for p, q, cells, _ in _windows(g):
        y[:, :, p, q] = np.sqrt(sum((x[:, :, h, w] ** 2 for h, w in cells), np.zeros(x.shape[:2])))
    return y


def l2_pool_backward_definition(dy, x, y, g):
    """d sqrt(sum x^2) / dx = x / y for each window holding the cell; a window with y == 0
    contributes 0."""
    dx = np.zeros(x.shape)
    for p, q, cells, _ in _windows(g):
        ratio = np.divide(dy[:, :, p, q], y[:, :, p, q], out=np.zeros(x.shape[:2]),
                          where=y[:, :, p, q] > 0)
        for h, w in cells:
            dx[:, :, h, w] += x[:, :, h, w] * ratio
    return dx


def _random_pool(rng, dilation: bool):
    while True:
        k = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
        d = (int(rng.integers(1, 3)), int(rng.integers(1, 3))) if dilation and rng.random() < 0.5 else (1, 1)
        eff = ((k[0] - 1) * d[0] + 1, (k[1] - 1) * d[1] + 1)
        stride = None if rng.random() < 0.2 else (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        pad = (int(rng.integers(0, eff[0] // 2 + 1)), int(rng.integers(0, eff[1] // 2 + 1)))
        shape = tuple(int(rng.integers(1, hi)) for hi in (3, 3, 9, 9))
        kw = dict(kernel_size=k, stride=stride, padding=pad, dilation=d, ceil_mode=bool(rng.random() < 0.5))
        try:
            g = pool2d_geometry(shape, **kw)
        except ValueError:
            continue
        return shape, kw, g


def test_max_pool_values_indices_and_gradient_are_the_definition():
    """Inputs drawn from a few values (many ties) with some NaN; overlapping, dilated, padded and
    ceil_mode windows, some holding no input cell at all."""
    rng = np.random.default_rng(16)
    empty = overlap = 0
    for _ in range(N_POOL):
        shape, kw, g = _random_pool(rng, dilation=True)
        x = rng.integers(-2, 3, size=shape).astype(np.float64)
        x[rng.random(shape) < 0.05] = np.nan
        y, idx = F.max_pool2d(x, **kw)
        ry, ridx = max_pool_definition(x, g)
        np.testing.assert_array_equal(y, ry, err_msg=f"{shape} {kw}")
        np.testing.assert_array_equal(idx, ridx, err_msg=f"{shape} {kw}")
        dy = rng.standard_normal(y.shape)
        dx = F.max_pool2d_backward(dy, idx, shape, **{k: v for k, v in kw.items()})
        rdx = np.zeros(shape)
        for n, c, p, q in np.ndindex(*ridx.shape):
            if ridx[n, c, p, q] >= 0:
                rdx[n, c].flat[ridx[n, c, p, q]] += dy[n, c, p, q]  # windows may share a winner
        assert_close(dx, rdx, np.float64, what=f"max-pool dx {shape} {kw}")
        empty += int((ridx < 0).any())
        overlap += g.stride_h < (g.R - 1) * g.dil_h + 1 or g.stride_w < (g.S - 1) * g.dil_w + 1
    assert empty and overlap


@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool_and_gradient_are_the_definition(count_include_pad):
    rng = np.random.default_rng(17 + count_include_pad)
    clipped = 0
    for i in range(N_POOL):
        shape, kw, g = _random_pool(rng, dilation=False)
        kw.pop("dilation")
        override = int(rng.integers(1, 7)) if i % 5 == 0 else None
        x = rng.standard_normal(shape)
        y = F.avg_pool2d(x, count_include_pad=count_include_pad, divisor_override=override, **kw)
        ry, windows = avg_pool_definition(x, g, count_include_pad, override)
        what = f"{shape} {kw} count_include_pad={count_include_pad} divisor_override={override}"
        assert_close(y, ry, np.float64, what=f"avg-pool y {what}")
        dy = rng.standard_normal(y.shape)
        dx = F.avg_pool2d_backward(dy, shape, count_include_pad=count_include_pad,
                                   divisor_override=override, **kw)
        assert_close(dx, avg_pool_backward_definition(dy, shape, windows), np.float64,
                     what=f"avg-pool dx {what}")
        # ceil_mode windows that reach past the padded input: the divisor is clipped there
        clipped += any(padded < g.R * g.S for _, _, _, padded in _windows(g))
    assert clipped


def test_l2_pool_and_gradient_are_the_definition():
    rng = np.random.default_rng(19)
    zero_windows = 0
    for _ in range(N_POOL):
        shape, kw, g = _random_pool(rng, dilation=False)
        kw.pop("dilation")
        x = rng.standard_normal(shape)
        x[rng.random(shape) < 0.3] = 0.0       # some windows of zeros: y == 0, gradient 0 there
        y = F.l2_pool2d(x, **kw)
        ry = l2_pool_definition(x, g)
        assert_close(y, ry, np.float64, what=f"l2-pool y {shape} {kw}")
        dy = rng.standard_normal(y.shape)
        dx = F.l2_pool2d_backward(dy, x, y, **kw)
        assert_close(dx, l2_pool_backward_definition(dy, x, ry, g), np.float64,
                     what=f"l2-pool dx {shape} {kw}")
        zero_windows += int((ry == 0).any())
    assert zero_windows


# ---- element-wise, dense layer, loss ---------------------------------------------------------------

def test_activations_are_their_definitions():
    x = np.concatenate([np.linspace(-30, 30, 601), [0.0, -0.0, np.nan, 745.0, -745.0, 1e-300]])
    sig = np.array([1 / (1 + math.exp(-v)) if v > -700 else 0.0 for v in np.nan_to_num(x)])
    sig[np.isnan(x)] = np.nan
    np.testing.assert_allclose(F.sigmoid(x), sig, rtol=1e-15, atol=1e-300)
    np.testing.assert_allclose(F.tanh(x), np.array([math.tanh(v) for v in x]), rtol=1e-15)
    relu = F.relu(x)
    assert np.isnan(relu[np.isnan(x)]).all()
    np.testing.assert_array_equal(relu[~np.isnan(x)], [v if v > 0 else 0.0 for v in x[~np.isnan(x)]])
    rng = np.random.default_rng(20)
    dy = rng.standard_normal(x.shape)
    y = np.nan_to_num(relu)
    np.testing.assert_array_equal(F.relu_backward(dy, y), np.where(y > 0, dy, 0.0))
    s = F.sigmoid(np.nan_to_num(x))
    np.testing.assert_allclose(F.sigmoid_backward(dy, s), dy * s * (1 - s), rtol=1e-15, atol=1e-300)
    finite = np.nan_to_num(x)
    sech2 = np.array([1 / math.cosh(v) ** 2 if abs(v) < 700 else 0.0 for v in finite])  # d tanh / dx
    assert_close(F.tanh_backward(dy, F.tanh(finite)), dy * sech2, np.float64, what="tanh backward")
    a, b = rng.standard_normal((2, 3, 5))
    np.testing.assert_array_equal(F.add(a, b), a + b)
    np.testing.assert_array_equal(F.mul(a, b), a * b)


@pytest.mark.parametrize("p", [0.0, 0.25, 0.9])
def test_dropout_zeroes_a_fraction_p_and_scales_the_rest(p):
    x = np.random.default_rng(21).standard_normal(200_000)
    y, mask = F.dropout(x, p, seed=5)
    assert set(np.unique(mask)) <= {0.0, 1 / (1 - p)}
    np.testing.assert_array_equal(y, x * mask)
    assert abs(np.mean(mask == 0) - p) < 0.01
    np.testing.assert_array_equal(mask, dropout_mask(x.shape, p, 5, np.float64))


def test_linear_is_its_definition():
    rng = np.random.default_rng(22)
    x, w, b, dy = (rng.standard_normal(s) for s in ((5, 7), (3, 7), (3,), (5, 3)))
    y = np.array([[sum(x[n, i] * w[o, i] for i in range(7)) + b[o] for o in range(3)] for n in range(5)])
    assert_close(F.linear(x, w, b), y, np.float64, what="linear y")
    dx, dw, db = F.linear_backward(dy, x, w)
    assert_close(dx, np.array([[sum(dy[n, o] * w[o, i] for o in range(3)) for i in range(7)]
                               for n in range(5)]), np.float64, what="linear dx")
    assert_close(dw, np.array([[sum(dy[n, o] * x[n, i] for n in range(5)) for i in range(7)]
                               for o in range(3)]), np.float64, what="linear dweight")
    assert_close(db, dy.sum(axis=0), np.float64, what="linear dbias")
    assert F.linear_backward(dy, x, w, need_db=False)[2] is None


def test_softmax_cross_entropy_is_its_definition():
    """loss = mean over rows of log(sum exp(x)) - x[label]; dlogits = (softmax - onehot) / N;
    rows offset by 700 would overflow a naive exp."""
    rng = np.random.default_rng(23)
    logits = rng.standard_normal((6, 5)) * 3
    logits[2] += 700
    labels = np.array([0, 4, 2, 2, 1, 3])
    loss, d = F.softmax_cross_entropy(logits, labels)
    rows = []
    for n in range(6):
        m = max(logits[n])
        lse = m + math.log(math.fsum(math.exp(v - m) for v in logits[n]))
        rows.append(lse - logits[n, labels[n]])
        soft = [math.exp(v - lse) for v in logits[n]]
        want = [(soft[k] - (k == labels[n])) / 6 for k in range(5)]
        assert_close(d[n], np.array(want), np.float64, what=f"dlogits row {n}")
    assert_close(np.asarray(loss), np.asarray(math.fsum(rows) / 6), np.float64, what="loss")
