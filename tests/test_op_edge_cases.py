"""Edge cases of the ops on the NumPy backend: ties, NaN, -inf with padding, ceil_mode windows,
1x1 outputs, non-contiguous and non-square inputs, both float dtypes, L2 pooling at zero."""
import numpy as np
import pytest
from conftest import assert_close

from gpuconv import functional as F

DTYPES = [np.float32, np.float64]


pytestmark = pytest.mark.usefixtures("numpy_default")


def loop_max_pool(x, k, s, p, d, P, Q):
    """Literal max pooling over one plane: the first max in raster order, the first NaN wins,
    padding is skipped, an empty window gives (-inf, -1)."""
    H, W = x.shape
    y, idx = np.full((P, Q), -np.inf), np.full((P, Q), -1, dtype=np.int64)
    for oh in range(P):
        for ow in range(Q):
            for i in range(k[0]):
                for j in range(k[1]):
                    h, w = oh * s[0] - p[0] + i * d[0], ow * s[1] - p[1] + j * d[1]
                    if not (0 <= h < H and 0 <= w < W):
                        continue
                    v = x[h, w]
                    if np.isnan(y[oh, ow]):
                        continue
                    if idx[oh, ow] < 0 or v > y[oh, ow] or np.isnan(v):
                        y[oh, ow], idx[oh, ow] = v, h * W + w
    return y, idx


@pytest.mark.parametrize("dtype", DTYPES)
def test_ties_pick_the_first_maximum_in_raster_order(dtype):
    x = np.zeros((1, 1, 4, 4), dtype=dtype)
    x[0, 0, 1, 1] = x[0, 0, 0, 3] = x[0, 0, 1, 2] = 5  # ties inside overlapping windows
    y, idx = F.max_pool2d(x, 3, stride=1, padding=1)
    ry, ridx = loop_max_pool(x[0, 0], (3, 3), (1, 1), (1, 1), (1, 1), 4, 4)
    np.testing.assert_array_equal(y[0, 0], ry)
    np.testing.assert_array_equal(idx[0, 0], ridx)
    # window of output (0, 2) covers rows -1..1, cols 1..3; in raster order (0, 3) is its first 5
    assert idx[0, 0, 0, 2] == 0 * 4 + 3


def test_ties_first_in_raster_order_explicit():
    x = np.zeros((1, 1, 2, 3))
    x[0, 0, 0, 2] = x[0, 0, 1, 0] = 1.0
    _, idx = F.max_pool2d(x, (2, 3))
    assert idx[0, 0, 0, 0] == 2  # (0, 2) precedes (1, 0) in raster order


def test_all_equal_window_picks_the_first_element():
    x = np.full((2, 3, 4, 6), 7.0, dtype=np.float32)
    y, idx = F.max_pool2d(x, 2)
    assert (y == 7).all()
    expected = (np.arange(2)[:, None] * 2 * 6 + np.arange(3)[None, :] * 2)
    np.testing.assert_array_equal(idx[1, 2], expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_propagates_and_the_first_nan_wins(dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 2, 7, 7)).astype(dtype)
    x[0, 0, 2, 3] = x[0, 0, 3, 2] = np.nan
    x[1, 1, 0, 0] = np.nan
    y, idx = F.max_pool2d(x, 3, stride=2, padding=1)
    for n in range(2):
        for c in range(2):
            ry, ridx = loop_max_pool(x[n, c].astype(np.float64), (3, 3), (2, 2), (1, 1), (1, 1), 4, 4)
            np.testing.assert_array_equal(np.isnan(y[n, c]), np.isnan(ry))
            np.testing.assert_array_equal(y[n, c][~np.isnan(ry)], ry[~np.isnan(ry)].astype(dtype))
            np.testing.assert_array_equal(idx[n, c], ridx)
    assert idx[0, 0, 1, 1] == 2 * 7 + 3  # window rows 1..3, cols 1..3: (2,3) before (3,2)
    y2, idx2 = F.max_pool2d(x, 3, stride=2, padding=1)
    np.testing.assert_array_equal(idx, idx2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_padding_never_wins_on_all_negative_input(dtype):
    x = -1.0 - np.random.default_rng(2).random((1, 2, 5, 6)).astype(dtype)
    y, idx = F.max_pool2d(x, 3, stride=2, padding=1)
    assert (y < 0).all() and (idx >= 0).all()
    for c in range(2):
        ry, ridx = loop_max_pool(x[0, c], (3, 3), (2, 2), (1, 1), (1, 1), 3, 3)
        np.testing.assert_array_equal(y[0, c], ry.astype(dtype))
        np.testing.assert_array_equal(idx[0, c], ridx)


def test_minus_infinity_input_beats_padding():
    x = np.full((1, 1, 3, 3), -np.inf)
    y, idx = F.max_pool2d(x, 3, stride=1, padding=1)
    assert (y == -np.inf).all()
    ry, ridx = loop_max_pool(x[0, 0], (3, 3), (1, 1), (1, 1), (1, 1), 3, 3)
    np.testing.assert_array_equal(idx[0, 0], ridx)
    assert (idx >= 0).all()


def test_window_without_input_element_gives_minus_inf_and_index_minus_one():
    # H = 2, window rows oh - 2 + {0, 3}: output row 1 looks at rows -1 and 2, neither exists.
    x = np.array([[[[2.0, 3.0], [5.0, 1.0]]]])
    y, idx = F.max_pool2d(x, (2, 1), stride=1, padding=(2, 0), dilation=(3, 1))
    ry, ridx = loop_max_pool(x[0, 0], (2, 1), (1, 1), (2, 0), (3, 1), y.shape[2], y.shape[3])
    np.testing.assert_array_equal(y[0, 0], ry)
    np.testing.assert_array_equal(idx[0, 0], ridx)
    assert (idx == -1).any() and (y[idx == -1] == -np.inf).all()
    dx = F.max_pool2d_backward(np.ones_like(y), idx, x.shape, (2, 1), 1, (2, 0), (3, 1))
    np.testing.assert_array_equal(dx, [[[[1.0, 1.0], [1.0, 1.0]]]])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H,W,k,s,p", [(5, 5, 2, 2, 0), (6, 7, 3, 2, 1), (7, 4, 2, 3, 1), (5, 8, 3, 3, 0)])
def test_ceil_mode_windows(dtype, H, W, k, s, p):
    rng = np.random.default_rng(H * W)
    x = rng.permutation(2 * H * W).reshape(2, 1, H, W).astype(dtype) - H * W
    y, idx = F.max_pool2d(x, k, s, p, ceil_mode=True)
    ry, ridx = loop_max_pool(x[1, 0], (k, k), (s, s), (p, p), (1, 1), y.shape[2], y.shape[3])
    np.testing.assert_array_equal(y[1, 0], ry.astype(dtype))
    np.testing.assert_array_equal(idx[1, 0], ridx)
    a = F.avg_pool2d(x, k, s, p, ceil_mode=True, count_include_pad=False)
    assert a.shape == y.shape and np.isfinite(a).all()
    dx = F.max_pool2d_backward(np.ones_like(y), idx, x.shape, k, s, p, ceil_mode=True)
    assert dx.sum() == y.size


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_by_one_outputs(dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4, 5)).astype(dtype)
    y, idx = F.max_pool2d(x, (4, 5))
    assert y.shape == (2, 3, 1, 1)
    np.testing.assert_array_equal(y[..., 0, 0], x.max(axis=(2, 3)))
    np.testing.assert_array_equal(idx[..., 0, 0], x.reshape(2, 3, -1).argmax(-1))
    a = F.avg_pool2d(x, (4, 5))
    x64 = x.astype(np.float64)
    assert_close(a[..., 0, 0], x64.mean(axis=(2, 3)), dtype, what="global average pooling")
    w = rng.standard_normal((6, 3, 4, 5)).astype(dtype)
    z = F.conv2d(x, w)
    assert z.shape == (2, 6, 1, 1)
    assert_close(z[..., 0, 0], x64.reshape(2, -1) @ w.astype(np.float64).reshape(6, -1).T, dtype,
                 what="conv2d with a 1x1 output")


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_and_non_square_inputs_match_contiguous_ones(dtype):
    rng = np.random.default_rng(4)
    big = rng.standard_normal((3, 8, 11, 18)).astype(dtype)
    x = big[::2, 1::2, :, ::2]  # (2, 4, 11, 9), non-contiguous
    xc = np.ascontiguousarray(x)
    assert not x.flags.c_contiguous
    w = np.asfortranarray(rng.standard_normal((6, 2, 3, 2)).astype(dtype))
    b = rng.standard_normal(12).astype(dtype)[::2]
    y = F.conv2d(x, w, b, stride=(2, 1), padding=(1, 0), groups=2)
    np.testing.assert_array_equal(y, F.conv2d(xc, np.ascontiguousarray(w), b.copy(), (2, 1), (1, 0), 1, 2))
    dy = rng.standard_normal(y.shape[::-1]).astype(dtype).T  # non-contiguous dy
    got = F.conv2d_backward(dy, x, w, (2, 1), (1, 0), 1, 2)
    want = F.conv2d_backward(np.ascontiguousarray(dy), xc, np.ascontiguousarray(w), (2, 1), (1, 0), 1, 2)
    for a, b_ in zip(got, want):
        np.testing.assert_array_equal(a, b_)
    for op in (lambda t: F.max_pool2d(t, (3, 2), (2, 1), 1), lambda t: F.avg_pool2d(t, (3, 2), 2, 1),
               lambda t: F.l2_pool2d(t, (2, 3), 2)):
        for a, b_ in zip(np.atleast_1d(op(x)), np.atleast_1d(op(xc))):
            np.testing.assert_array_equal(a, b_)


@pytest.mark.parametrize("dtype", DTYPES)
def test_outputs_keep_the_input_dtype(dtype):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 2, 6, 6)).astype(dtype)
    w = rng.standard_normal((3, 2, 3, 3)).astype(dtype)
    y = F.conv2d(x, w, padding="same")
    assert y.dtype == dtype and all(g.dtype == dtype for g in F.conv2d_backward(y, x, w, padding="same"))
    for out in (F.max_pool2d(x, 2)[0], F.avg_pool2d(x, 2), F.l2_pool2d(x, 2), F.relu(x), F.sigmoid(x),
                F.tanh(x), F.dropout(x, 0.5, 1)[0]):
        assert out.dtype == dtype
    assert F.max_pool2d(x, 2)[1].dtype == np.int32
    dy = rng.standard_normal((2, 2, 3, 3)).astype(dtype)
    assert F.avg_pool2d_backward(dy, x.shape, 2).dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_l2_pool_gradient_is_zero_where_the_norm_is_zero(dtype):
    x = np.zeros((1, 2, 4, 4), dtype=dtype)
    x[0, 0, 0, 0] = 3.0
    y = F.l2_pool2d(x, 2)
    dy = np.ones_like(y)
    with np.errstate(all="raise"):
        dx = F.l2_pool2d_backward(dy, x, y, 2)
    assert np.isfinite(dx).all()
    assert dx[0, 0, 0, 0] == 1.0 and (dx[0, 1] == 0).all()
    assert (dx.ravel()[1:] == 0).all()


def test_pool_backward_accumulates_overlapping_windows():
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 1.0  # the centre wins all four overlapping 2x2 windows
    y, idx = F.max_pool2d(x, 2, stride=1)
    assert (idx == 4).all()
    dx = F.max_pool2d_backward(np.full_like(y, 0.5), idx, x.shape, 2, 1)
    assert dx[0, 0, 1, 1] == 2.0 and dx.sum() == 2.0
    da = F.avg_pool2d_backward(np.ones((1, 1, 2, 2)), x.shape, 2, 1)
    np.testing.assert_allclose(da[0, 0], [[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]])


def test_backward_is_deterministic():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 3, 9, 9)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((4, 5, 5, 5)).astype(np.float32)
    first = F.conv2d_backward(dy, x, w, stride=2, padding=1)
    for a, b in zip(first, F.conv2d_backward(dy, x, w, stride=2, padding=1)):
        assert a.tobytes() == b.tobytes()


def test_same_padding_at_stride_two_puts_the_extra_pixel_bottom_right():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 1, 6, 6))
    w = rng.standard_normal((1, 1, 3, 3))
    y = F.conv2d(x, w, stride=2, padding="same")
    assert y.shape == (1, 1, 3, 3)
    xp = np.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1)))  # total padding 1: all of it bottom/right
    np.testing.assert_allclose(y, F.conv2d(xp, w, stride=2), rtol=1e-14)


def test_dropout_mask_is_reproducible_and_scaled():
    x = np.ones((50, 40), dtype=np.float32)
    y, mask = F.dropout(x, 0.25, seed=11)
    y2, mask2 = F.dropout(x, 0.25, seed=11)
    np.testing.assert_array_equal(mask, mask2)
    assert set(np.unique(mask)) <= {np.float32(0), np.float32(1 / 0.75)}
    assert 0.15 < (mask == 0).mean() < 0.35
    np.testing.assert_array_equal(y, x * mask)
    assert (F.dropout(x, 0.0, 1)[1] == 1).all() and (F.dropout(x, 1.0, 1)[0] == 0).all()


def test_sigmoid_does_not_overflow():
    x = np.array([-1000.0, -30.0, 0.0, 30.0, 1000.0], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = F.sigmoid(x)
    np.testing.assert_allclose(y, [0.0, 1 / (1 + np.exp(30.0)), 0.5, 1 / (1 + np.exp(-30.0)), 1.0], rtol=1e-6)


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]])
    loss, d = F.softmax_cross_entropy(logits, np.array([0, 2]))
    np.testing.assert_allclose(loss, (0.0 + np.log(3)) / 2, rtol=1e-14)
    assert loss.shape == () and np.isfinite(d).all()
    np.testing.assert_allclose(d.sum(axis=1), 0, atol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
def test_global_max_pool_follows_the_same_tie_and_nan_rules(dtype):
    x = np.zeros((1, 3, 3, 4), dtype=dtype)
    x[0, 0, 1, 2] = x[0, 0, 2, 0] = 4  # tie: (1, 2) first in raster order
    x[0, 1, 2, 1] = x[0, 1, 1, 3] = np.nan  # first NaN: (1, 3)
    x[0, 2] = -np.inf
    y, idx = F.max_pool2d(x, (3, 4))
    for c in range(3):
        ry, ridx = loop_max_pool(x[0, c].astype(np.float64), (3, 4), (3, 4), (0, 0), (1, 1), 1, 1)
        np.testing.assert_array_equal(idx[0, c], ridx)
        np.testing.assert_array_equal(y[0, c], ry.astype(dtype))
    assert list(idx[0, :, 0, 0]) == [6, 7, 0]
