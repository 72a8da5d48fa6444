"""Every pooling kernel version against the NumPy reference, on the CPU emulator (and, marked
``gpu``, through CuPy).

Outputs are NaN/-7 poisoned before each launch. float32 kernels are compared with a float64
reference by max|out - ref| / max|ref| <= 1e-5, float64 kernels by <= 1e-12. Max pooling
indices must be identical to the reference's, including ties, NaN, -inf and padding cases.
The empty-window and zero-norm contracts, whose answers are known by hand, run on the NumPy
backend too.
Backward kernels must give the same bits when run again in another thread and block order, and
v1 and v2 must agree bit for bit.
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close, assert_deterministic, sample

from gpuconv.backends.numpy_backend import NumpyBackend
from gpuconv.emulator import check_orders
from gpuconv.geometry import PoolGeometry, pool2d_geometry

N_RANDOM = 50
DTYPES = (np.float32, np.float64)
REF = NumpyBackend()


def _random_geometry(rng, avg: bool = False) -> PoolGeometry:
    while True:
        N, C = int(rng.integers(1, 3)), int(rng.integers(1, 4))
        H, W = int(rng.integers(1, 12)), int(rng.integers(1, 12))
        kh, kw = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        stride = None if rng.random() < 0.2 else (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        dil = (1, 1) if avg or rng.random() < 0.5 else (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        eh, ew = (kh - 1) * dil[0] + 1, (kw - 1) * dil[1] + 1
        pad = (int(rng.integers(0, eh // 2 + 1)), int(rng.integers(0, ew // 2 + 1)))
        try:
            return pool2d_geometry((N, C, H, W), (kh, kw), stride, pad, dil, bool(rng.random() < 0.4))
        except ValueError:
            continue


def _geometries(avg: bool = False):
    rng = np.random.default_rng(1234 + avg)
    gs = sample([_random_geometry(rng, avg) for _ in range(N_RANDOM)], 8)
    # Fixed cases: overlapping 3x3/2 pad 1 (P3), global pooling (P4), 1x1, ceil_mode tails.
    gs.append(pool2d_geometry((2, 3, 9, 9), 3, 2, 1))
    gs.append(pool2d_geometry((1, 4, 8, 8), 8, 1, 0))
    gs.append(pool2d_geometry((1, 2, 5, 7), 1, 1, 0))
    gs.append(pool2d_geometry((1, 2, 7, 6), 2, 2, 1, 1, True))
    return gs


def _distinct(rng, shape) -> np.ndarray:
    """Values without ties (a random permutation of evenly spaced numbers)."""
    n = int(np.prod(shape))
    return (rng.permutation(n).astype(np.float64) / max(n, 1) - 0.5).reshape(shape)


def _np(be, a):
    return be.to_numpy(a)


MAX_GEOMS = _geometries()
AVG_GEOMS = _geometries(avg=True)


def _own_window_rule(dy: np.ndarray, indices: np.ndarray, g: PoolGeometry) -> np.ndarray:
    """max_pool2d_backward's documented rule, written out loop by loop: each dy goes to the cell
    its index names if that cell is one of the output's own window cells, else nowhere."""
    dx = np.zeros(g.x_shape, dtype=np.float64)
    for n in range(g.N):
        for c in range(g.C):
            for p in range(g.P):
                for q in range(g.Q):
                    cells = {h * g.W + w
                             for h in range(p * g.stride_h - g.pad_h, p * g.stride_h - g.pad_h
                                            + (g.R - 1) * g.dil_h + 1, g.dil_h)
                             for w in range(q * g.stride_w - g.pad_w, q * g.stride_w - g.pad_w
                                            + (g.S - 1) * g.dil_w + 1, g.dil_w)
                             if 0 <= h < g.H and 0 <= w < g.W}
                    i = int(indices[n, c, p, q])
                    if i in cells:
                        dx[n, c, i // g.W, i % g.W] += dy[n, c, p, q]
    return dx


def _tampered(rng, idx: np.ndarray, g: PoolGeometry) -> np.ndarray:
    """max_pool2d's indices with about half replaced: -1, values past either end of the plane,
    and cells of the plane anywhere (mostly outside the own window)."""
    plane = g.H * g.W
    bad = rng.integers(-3, plane + 3, idx.shape)
    bad[rng.random(idx.shape) < 0.1] = np.iinfo(np.int32).max
    bad[rng.random(idx.shape) < 0.1] = np.iinfo(np.int32).min
    return np.where(rng.random(idx.shape) < 0.5, bad, idx).astype(np.int32)


def test_reference_routes_only_indices_of_the_own_window():
    rng = np.random.default_rng(5)
    for g in MAX_GEOMS:
        x = _distinct(rng, g.x_shape)
        idx = _tampered(rng, REF.max_pool2d(x, g)[1], g)
        dy = rng.standard_normal(g.y_shape)
        np.testing.assert_allclose(REF.max_pool2d_backward(dy, idx, g), _own_window_rule(dy, idx, g),
                                   rtol=1e-12, atol=0, err_msg=str(g))


@pytest.mark.parametrize("version", [1, 2])
def test_tampered_indices_route_the_same_gradient_as_the_reference(be, version):
    """Out-of-range indices and in-range cells of another window contribute nothing, on every
    backend, with no check on the host (the kernels gather by the same rule)."""
    rng = np.random.default_rng(9)
    with be.use_versions({"max_pool2d_backward": version}):
        for g in MAX_GEOMS:
            x = _distinct(rng, g.x_shape)
            idx = _tampered(rng, REF.max_pool2d(x, g)[1], g)
            dy = rng.standard_normal(g.y_shape)
            dx = be.max_pool2d_backward(be.asarray(dy, np.float64), be.asarray(idx), g)
            assert_close(_np(be, dx), REF.max_pool2d_backward(dy, idx, g), np.float64, what=str(g))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("version", [1, 2])
def test_max_pool_matches_reference(be, dtype, version):
    rng = np.random.default_rng(7)
    with be.use_versions({"max_pool2d_backward": version}):
        for g in MAX_GEOMS:
            x = _distinct(rng, g.x_shape)
            dy = rng.standard_normal(g.y_shape)
            y_ref, idx_ref = REF.max_pool2d(x, g)
            dx_ref = REF.max_pool2d_backward(dy, idx_ref, g)
            y, idx = be.max_pool2d(be.asarray(x, dtype), g)
            np.testing.assert_array_equal(_np(be, idx), idx_ref, err_msg=str(g))
            np.testing.assert_array_equal(_np(be, y), y_ref.astype(dtype), err_msg=str(g))
            dx = be.max_pool2d_backward(be.asarray(dy, dtype), idx, g)
            assert_close(_np(be, dx), dx_ref, dtype, what=str(g))


def test_max_pool_ties_nan_and_inf_give_reference_indices(be):
    rng = np.random.default_rng(11)
    for i, g in enumerate(MAX_GEOMS):
        x = rng.integers(0, 3, g.x_shape).astype(np.float32)  # many ties
        if i % 3 == 1:
            x[rng.random(g.x_shape) < 0.15] = np.nan
        if i % 3 == 2:
            x[rng.random(g.x_shape) < 0.5] = -np.inf
        y_ref, idx_ref = REF.max_pool2d(x, g)
        y, idx = be.max_pool2d(be.asarray(x), g)
        np.testing.assert_array_equal(_np(be, idx), idx_ref, err_msg=str(g))
        np.testing.assert_array_equal(_np(be, y), y_ref, err_msg=str(g))  # NaN positions equal too


def test_max_pool_window_without_real_cells_gives_minus_inf_and_index_minus_one(any_backend):
    # Dilation 2, padding 1: on a 1-wide input the window taps at -1 and +1 miss the only column.
    g = pool2d_geometry((1, 1, 1, 1), (1, 2), 1, (0, 1), (1, 2))
    x = np.array([[[[3.0]]]], dtype=np.float32)
    y_ref, idx_ref = REF.max_pool2d(x, g)
    y, idx = any_backend.max_pool2d(any_backend.asarray(x), g)
    np.testing.assert_array_equal(_np(any_backend, idx), idx_ref)
    np.testing.assert_array_equal(_np(any_backend, y), y_ref)
    assert (_np(any_backend, idx) == -1).any() and np.isneginf(_np(any_backend, y)).any()
    dx = any_backend.max_pool2d_backward(any_backend.asarray(np.ones(g.y_shape, np.float32)), idx, g)
    dx_ref = REF.max_pool2d_backward(np.ones(g.y_shape, np.float32), idx_ref, g)
    np.testing.assert_array_equal(_np(any_backend, dx), dx_ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("version", [1, 2])
def test_avg_pool_matches_reference(be, dtype, version):
    rng = np.random.default_rng(8)
    with be.use_versions({"avg_pool2d_backward": version}):
        for i, g in enumerate(AVG_GEOMS):
            cip = bool(i % 2)
            div = None if i % 3 else int(rng.integers(1, 7))
            x = rng.standard_normal(g.x_shape)
            dy = rng.standard_normal(g.y_shape)
            y = be.avg_pool2d(be.asarray(x, dtype), g, cip, div)
            assert_close(_np(be, y), REF.avg_pool2d(x, g, cip, div), dtype,
                         what=f"{g} cip={cip} div={div}")
            dx = be.avg_pool2d_backward(be.asarray(dy, dtype), g, cip, div, dtype)
            assert dx.dtype == dtype
            assert_close(_np(be, dx), REF.avg_pool2d_backward(dy, g, cip, div, np.float64), dtype,
                         what=f"{g} cip={cip} div={div}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("version", [1, 2])
def test_l2_pool_matches_reference(be, dtype, version):
    rng = np.random.default_rng(9)
    with be.use_versions({"l2_pool2d_backward": version}):
        for i, g in enumerate(MAX_GEOMS):
            x = rng.standard_normal(g.x_shape)
            if i % 4 == 0:
                x[rng.random(g.x_shape) < 0.6] = 0.0  # some all-zero windows: y = 0
            dy = rng.standard_normal(g.y_shape)
            y_ref = REF.l2_pool2d(x, g)
            y = be.l2_pool2d(be.asarray(x, dtype), g)
            assert_close(_np(be, y), y_ref, dtype, what=str(g))
            dx = be.l2_pool2d_backward(be.asarray(dy, dtype), be.asarray(x, dtype), y, g)
            dx_np = _np(be, dx)
            assert not np.isnan(dx_np).any(), str(g)
            assert_close(dx_np, REF.l2_pool2d_backward(dy, x, y_ref, g), dtype, what=str(g))


def test_l2_pool_backward_is_zero_where_output_is_zero(any_backend):
    g = pool2d_geometry((1, 1, 4, 4), 2)
    x = np.zeros(g.x_shape, np.float32)
    x[0, 0, 0, 0] = 2.0
    y = any_backend.l2_pool2d(any_backend.asarray(x), g)
    dy = any_backend.asarray(np.ones(g.y_shape, np.float32))
    dx = _np(any_backend, any_backend.l2_pool2d_backward(dy, any_backend.asarray(x), y, g))
    expected = np.zeros(g.x_shape, np.float32)
    expected[0, 0, 0, 0] = 1.0  # x * dy / y = 2 / 2
    np.testing.assert_array_equal(dx, expected)


def _backward_calls(be, g, rng):
    """op -> (backend method, its arguments) of each backward op, on inputs made on ``be``."""
    x = rng.standard_normal(g.x_shape).astype(np.float32)
    dy = be.asarray(rng.standard_normal(g.y_shape).astype(np.float32))
    xb = be.asarray(x)
    _, idx = be.max_pool2d(xb, g)
    y2 = be.l2_pool2d(xb, g)
    return {
        "max_pool2d_backward": (dy, idx, g),
        "avg_pool2d_backward": (dy, g, True, None, np.float32),
        "l2_pool2d_backward": (dy, xb, y2, g),
    }


def test_backward_kernels_are_deterministic_and_versions_agree_bitwise(be):
    rng = np.random.default_rng(5)
    for g in (pool2d_geometry((2, 3, 9, 9), 3, 2, 1), pool2d_geometry((1, 2, 11, 10), 3, 1, 1, 1, True),
              pool2d_geometry((1, 1, 7, 13), 2, 1)):
        for op, args in _backward_calls(be, g, rng).items():
            outs = []
            for v in (1, 2):
                with be.use_versions({op: v}):
                    assert_deterministic(be, op, *args, what=f"{op} v{v} on {g}")
                    outs.append(_np(be, getattr(be, op)(*args)))
            assert outs[0].tobytes() == outs[1].tobytes(), f"{op}: v1 and v2 differ on {g}"


def test_pool_accepts_non_contiguous_input(be):
    rng = np.random.default_rng(3)
    g = pool2d_geometry((1, 2, 6, 6), 2)
    x = rng.standard_normal((1, 2, 6, 12)).astype(np.float32)
    xs = be.asarray(x)[:, :, :, ::2]
    y, idx = be.max_pool2d(xs, g)
    y_ref, idx_ref = REF.max_pool2d(np.ascontiguousarray(x[:, :, :, ::2]), g)
    np.testing.assert_array_equal(_np(be, y), y_ref)
    np.testing.assert_array_equal(_np(be, idx), idx_ref)


def test_pool_shared_memory_free_kernels_are_order_independent(emu):
    """Pool kernels use no shared memory or warp ops, but run them in several orders anyway."""
    g = pool2d_geometry((1, 2, 5, 6), 3, 2, 1, 1, True)
    x = np.random.default_rng(1).standard_normal(g.x_shape).astype(np.float32)
    y = np.full(g.y_shape, np.nan, np.float32)
    idx = np.full(g.y_shape, -7, np.int32)
    geo = tuple(np.int32(v) for v in (g.N * g.C, g.H, g.W, g.P, g.Q, g.R, g.S, g.stride_h, g.stride_w,
                                      g.pad_h, g.pad_w, g.dil_h, g.dil_w))
    check_orders(emu.function("pool2d.cu", "max_pool2d_forward_v1<float>"), (1,), (64,), (x, y, idx) + geo)
