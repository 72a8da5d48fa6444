"""First link of the chain of trust: the seed's equations as literal loops, one channel, tiny sizes.

Each reference below is a word-for-word transcription of an equation (single image, single
channel, stride 1, no padding); the NumPy backend, fed the same numbers as (1, 1, H, W) tensors,
must reproduce it.
"""
import numpy as np
import pytest

from gpuconv import functional as F

pytestmark = pytest.mark.usefixtures("numpy_default")


def seed_forward(a, w, b):
    """z[i, j] = sum_m sum_n w[m, n] * a[i + m, j + n] + b   (eq. 7)."""
    M, Nk = w.shape
    out = np.zeros((a.shape[0] - M + 1, a.shape[1] - Nk + 1))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            z = 0.0
            for m in range(M):
                for n in range(Nk):
                    z += w[m, n] * a[i + m, j + n]
            out[i, j] = z + b
    return out


def seed_filter_gradient(a, delta, M, Nk):
    """dC/dw[m, n] = sum_i sum_j delta[i, j] * a[i + m, j + n]   (eq. 13-14)."""
    dw = np.zeros((M, Nk))
    for m in range(M):
        for n in range(Nk):
            for i in range(delta.shape[0]):
                for j in range(delta.shape[1]):
                    dw[m, n] += delta[i, j] * a[i + m, j + n]
    return dw


def seed_input_gradient(delta, w):
    """The FULL convolution of delta with the FLIPPED filter: delta is zero-padded by M-1 / N-1 on
    every side and cross-correlated with w rotated by 180 degrees."""
    M, Nk = w.shape
    flipped = w[::-1, ::-1]
    padded = np.zeros((delta.shape[0] + 2 * (M - 1), delta.shape[1] + 2 * (Nk - 1)))
    padded[M - 1:M - 1 + delta.shape[0], Nk - 1:Nk - 1 + delta.shape[1]] = delta
    out = np.zeros((delta.shape[0] + M - 1, delta.shape[1] + Nk - 1))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            for m in range(M):
                for n in range(Nk):
                    out[i, j] += flipped[m, n] * padded[i + m, j + n]
    return out


def seed_max_pool(a, N):
    """Max over each N x N block; the winning unit (first in raster order) is recorded."""
    out = np.zeros((a.shape[0] // N, a.shape[1] // N))
    winner = {}
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            best = None
            for m in range(N):
                for n in range(N):
                    v = a[i * N + m, j * N + n]
                    if best is None or v > best:
                        best, winner[i, j] = v, (i * N + m, j * N + n)
            out[i, j] = best
    return out, winner


def seed_max_pool_backward(delta, winner, shape):
    """The whole error of a pooled unit goes to its recorded winner, nothing to the others."""
    da = np.zeros(shape)
    for (i, j), (h, w) in winner.items():
        da[h, w] += delta[i, j]
    return da


def seed_avg_pool(a, N):
    out = np.zeros((a.shape[0] // N, a.shape[1] // N))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = sum(a[i * N + m, j * N + n] for m in range(N) for n in range(N)) / (N * N)
    return out


def seed_avg_pool_backward(delta, N, shape):
    """Each unit of a block receives the block's error times 1 / (N * N)."""
    da = np.zeros(shape)
    for i in range(delta.shape[0]):
        for j in range(delta.shape[1]):
            for m in range(N):
                for n in range(N):
                    da[i * N + m, j * N + n] += delta[i, j] / (N * N)
    return da


def seed_l2_pool(a, N):
    out = np.zeros((a.shape[0] // N, a.shape[1] // N))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = np.sqrt(sum(a[i * N + m, j * N + n] ** 2 for m in range(N) for n in range(N)))
    return out


def seed_l2_pool_backward(delta, a, N):
    """d sqrt(sum a^2) / da = a / sqrt(sum a^2), times the block's error."""
    da = np.zeros(a.shape)
    y = seed_l2_pool(a, N)
    for i in range(delta.shape[0]):
        for j in range(delta.shape[1]):
            for m in range(N):
                for n in range(N):
                    da[i * N + m, j * N + n] = a[i * N + m, j * N + n] * delta[i, j] / y[i, j]
    return da


def as4d(a):
    return a[None, None]


SIZES = [(5, 5, 2, 2), (6, 4, 3, 2), (7, 7, 3, 3), (4, 6, 1, 3)]


@pytest.mark.parametrize("H,W,M,Nk", SIZES)
def test_forward_is_the_seed_cross_correlation(H, W, M, Nk):
    rng = np.random.default_rng(H * 100 + W * 10 + M)
    a, w, b = rng.standard_normal((H, W)), rng.standard_normal((M, Nk)), rng.standard_normal()
    z = F.conv2d(as4d(a), as4d(w), np.array([b]))
    np.testing.assert_allclose(z[0, 0], seed_forward(a, w, b), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("H,W,M,Nk", SIZES)
def test_filter_and_input_gradients_are_the_seed_equations(H, W, M, Nk):
    rng = np.random.default_rng(H * 100 + W * 10 + Nk)
    a, w = rng.standard_normal((H, W)), rng.standard_normal((M, Nk))
    delta = rng.standard_normal((H - M + 1, W - Nk + 1))
    dx, dw, db = F.conv2d_backward(as4d(delta), as4d(a), as4d(w))
    np.testing.assert_allclose(dw[0, 0], seed_filter_gradient(a, delta, M, Nk), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(dx[0, 0], seed_input_gradient(delta, w), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(db, [delta.sum()], rtol=1e-13)


@pytest.mark.parametrize("H,W,N", [(4, 4, 2), (6, 9, 3), (5, 7, 2)])
def test_max_pool_routes_the_whole_error_to_the_winning_unit(H, W, N):
    rng = np.random.default_rng(H + W + N)
    a = rng.permutation(H * W).reshape(H, W).astype(np.float64)
    ref, winner = seed_max_pool(a, N)
    y, idx = F.max_pool2d(as4d(a), N)
    np.testing.assert_array_equal(y[0, 0], ref)
    for (i, j), (h, w) in winner.items():
        assert idx[0, 0, i, j] == h * W + w
    delta = rng.standard_normal(ref.shape)
    dx = F.max_pool2d_backward(as4d(delta), idx, (1, 1, H, W), N)
    np.testing.assert_array_equal(dx[0, 0], seed_max_pool_backward(delta, winner, (H, W)))


@pytest.mark.parametrize("H,W,N", [(4, 4, 2), (6, 9, 3), (5, 7, 2)])
def test_average_pool_spreads_error_over_n_squared(H, W, N):
    rng = np.random.default_rng(H * W + N)
    a = rng.standard_normal((H, W))
    np.testing.assert_allclose(F.avg_pool2d(as4d(a), N)[0, 0], seed_avg_pool(a, N), rtol=1e-13)
    delta = rng.standard_normal((H // N, W // N))
    dx = F.avg_pool2d_backward(as4d(delta), (1, 1, H, W), N)
    np.testing.assert_allclose(dx[0, 0], seed_avg_pool_backward(delta, N, (H, W)), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("H,W,N", [(4, 4, 2), (6, 9, 3), (5, 7, 2)])
def test_l2_pool_is_the_seed_norm_and_its_derivative(H, W, N):
    rng = np.random.default_rng(H * W * N)
    a = rng.standard_normal((H, W))
    y = F.l2_pool2d(as4d(a), N)
    np.testing.assert_allclose(y[0, 0], seed_l2_pool(a, N), rtol=1e-13)
    delta = rng.standard_normal((H // N, W // N))
    dx = F.l2_pool2d_backward(as4d(delta), as4d(a), y, N)
    np.testing.assert_allclose(dx[0, 0], seed_l2_pool_backward(delta, a, N), rtol=1e-12, atol=1e-15)
