"""Element-wise, dropout, dense-layer, loss and optimizer kernels against the NumPy reference, on
the CPU emulator (and, marked ``gpu``, through CuPy), every version, float32 and float64.

Outputs are NaN-poisoned; float32 results are compared with a float64 reference by
max|out - ref| / max|ref| <= 1e-5, float64 by <= 1e-12. Kernels using shared memory or warp
shuffles (the loss, the mean reduction, the tiled GEMM) are run in several thread orders.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest
from conftest import assert_close, assert_deterministic, recording_launches, sample

from gpuconv.backends.numpy_backend import NumpyBackend
from gpuconv.dropout_rng import dropout_mask
from gpuconv.emulator import check_orders

N_RANDOM = 50
DTYPES = (np.float32, np.float64)
REF = NumpyBackend()


def _sizes():
    rng = np.random.default_rng(99)
    shapes = sample([(int(n),) for n in rng.integers(1, 400, N_RANDOM)], 8)
    return shapes + [(1,), (3,), (4,), (5, 7), (2, 3, 4, 5)]


SHAPES = _sizes()


def _activation_inputs(rng):
    """(x, dy) on every shape of SHAPES, then single saturated elements: alone in their array, each
    sets the scale max|ref| itself, so tanh_backward's 1 - y^2 is tiny there (where 1 - y*y would
    cancel: the reference computes (1 - y)(1 + y))."""
    for shape in SHAPES:
        yield rng.standard_normal(shape) * 4, rng.standard_normal(shape)
    for v in (7.0, -8.0, 9.0):
        yield np.array([v]), np.ones(1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("op", ["relu", "sigmoid", "tanh"])
def test_activations_forward_and_backward_match_reference(be, op, version, dtype):
    rng = np.random.default_rng(zlib.crc32(op.encode()))
    with be.use_versions({"elementwise": version}):
        for x, dy in _activation_inputs(rng):
            shape = x.shape
            y_ref = getattr(REF, op)(x)
            y = be.to_numpy(getattr(be, op)(be.asarray(x, dtype)))
            assert_close(y, y_ref, dtype, what=f"{op} {shape}")
            # Backward from the kernel's own output, compared with the reference on the same y.
            y64 = y.astype(np.float64)
            dx = be.to_numpy(getattr(be, f"{op}_backward")(be.asarray(dy, dtype), be.asarray(y, dtype)))
            assert_close(dx, getattr(REF, f"{op}_backward")(dy, y64), dtype, what=f"{op}_backward {shape}")


@pytest.mark.parametrize("version", [1, 2])
def test_misaligned_views_fall_back_and_stay_correct(be, version):
    rng = np.random.default_rng(4)
    a = be.asarray(rng.standard_normal(103).astype(np.float32))
    b = be.asarray(rng.standard_normal(103).astype(np.float32))
    with be.use_versions({"elementwise": version}):
        for lo in range(4):
            av, bv = a[lo:lo + 97], b[3 - lo:100 - lo]
            out = be.to_numpy(be.add(av, bv))
            np.testing.assert_array_equal(out, be.to_numpy(av) + be.to_numpy(bv))
            out = be.to_numpy(be.mul(a[lo::2][:40], bv[:40]))  # non-contiguous: copied first
            np.testing.assert_array_equal(out, be.to_numpy(a[lo::2][:40]) * be.to_numpy(bv[:40]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("version", [1, 2])
def test_add_and_mul_match_reference_exactly(be, version, dtype):
    rng = np.random.default_rng(12)
    with be.use_versions({"elementwise": version}):
        for shape in SHAPES:
            a, b = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)
            np.testing.assert_array_equal(be.to_numpy(be.add(be.asarray(a), be.asarray(b))), a + b)
            np.testing.assert_array_equal(be.to_numpy(be.mul(be.asarray(a), be.asarray(b))), a * b)


def test_relu_propagates_nan_and_backward_uses_output(be):
    x = np.array([np.nan, -1.0, 0.0, -0.0, 2.0, np.inf, -np.inf], np.float32)
    y = be.to_numpy(be.relu(be.asarray(x)))
    np.testing.assert_array_equal(y, REF.relu(x))
    dy = np.arange(1, 8, dtype=np.float32)
    np.testing.assert_array_equal(be.to_numpy(be.relu_backward(be.asarray(dy), be.asarray(y))),
                                  REF.relu_backward(dy, y))


def test_sigmoid_saturates_without_overflow(be):
    x = np.array([-1e4, -100.0, -20.0, 0.0, 20.0, 100.0, 1e4], np.float32)
    y = be.to_numpy(be.sigmoid(be.asarray(x)))
    assert np.isfinite(y).all()
    assert_close(y, REF.sigmoid(x.astype(np.float64)), np.float32, what="sigmoid")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("version", [1, 2])
def test_dropout_mask_follows_the_counter_hash(be, version, dtype):
    rng = np.random.default_rng(21)
    with be.use_versions({"elementwise": version}):
        for i, shape in enumerate(SHAPES[:20]):
            p = [0.0, 0.1, 0.5, 0.9, 1.0][i % 5]
            seed = int(rng.integers(0, 2**63))
            x = rng.standard_normal(shape).astype(dtype)
            y, mask = be.dropout(be.asarray(x), p, seed)
            mask_ref = dropout_mask(shape, p, seed, dtype)
            np.testing.assert_array_equal(be.to_numpy(mask), mask_ref, err_msg=f"p={p} seed={seed}")
            np.testing.assert_array_equal(be.to_numpy(y), x * mask_ref)


def test_dropout_masks_agree_bitwise_with_the_numpy_backend(be):
    x = np.random.default_rng(3).standard_normal((4, 3, 7, 5)).astype(np.float32)
    y_ref, mask_ref = REF.dropout(x, 0.4, 1234)
    y, mask = be.dropout(be.asarray(x), 0.4, 1234)
    assert be.to_numpy(mask).tobytes() == mask_ref.tobytes()
    assert be.to_numpy(y).tobytes() == y_ref.tobytes()


def test_dropout_keeps_about_one_minus_p_and_depends_on_seed(be):
    x = be.asarray(np.ones(4000, np.float32))
    _, m1 = be.dropout(x, 0.3, 1)
    _, m1b = be.dropout(x, 0.3, 1)
    _, m2 = be.dropout(x, 0.3, 2)
    m1, m1b, m2 = (be.to_numpy(m) for m in (m1, m1b, m2))
    assert m1.tobytes() == m1b.tobytes()
    assert not np.array_equal(m1, m2)
    kept = (m1 > 0).mean()
    assert abs(kept - 0.7) < 0.05, kept  # 7 standard deviations of a binomial(4000, 0.7) mean
    np.testing.assert_array_equal(np.unique(m1), np.array([0, 1 / 0.7], np.float32))
    for name, value in (("p", 1.5), ("p", -0.1)):
        with pytest.raises(ValueError, match=name):
            be.dropout(x, value, 0)
    with pytest.raises(TypeError, match="seed"):
        be.dropout(x, 0.5, 1.5)


def test_binary_ops_refuse_mismatched_shapes(be):
    a = be.asarray(np.ones(4, np.float32))
    with pytest.raises(ValueError, match="same shape"):
        be.add(a, be.asarray(np.ones(5, np.float32)))


# ---- dense layer ----------------------------------------------------------------------------------

def _linear_cases():
    rng = np.random.default_rng(31)
    cases = sample([(int(rng.integers(1, 20)), int(rng.integers(1, 40)), int(rng.integers(1, 20)))
                    for _ in range(N_RANDOM)], 8)
    return cases + [(16, 16, 16), (17, 33, 1), (1, 1, 1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("version", [1, 2])
def test_linear_forward_and_backward_match_reference(be, version, dtype):
    rng = np.random.default_rng(32)
    with be.use_versions({"linear_gemm": version}):
        for i, (n, n_in, n_out) in enumerate(_linear_cases()):
            x, w = rng.standard_normal((n, n_in)), rng.standard_normal((n_out, n_in))
            b = rng.standard_normal(n_out) if i % 4 else None
            dy = rng.standard_normal((n, n_out))
            bb = None if b is None else be.asarray(b, dtype)
            y = be.linear(be.asarray(x, dtype), be.asarray(w, dtype), bb)
            assert_close(be.to_numpy(y), REF.linear(x, w, b), dtype, what=f"linear {(n, n_in, n_out)}")
            dx, dw, db = be.linear_backward(be.asarray(dy, dtype), be.asarray(x, dtype), be.asarray(w, dtype),
                                            need_db=bool(i % 2))
            dx_r, dw_r, db_r = REF.linear_backward(dy, x, w, need_db=True)
            assert_close(be.to_numpy(dx), dx_r, dtype, what=f"dx {(n, n_in, n_out)}")
            assert_close(be.to_numpy(dw), dw_r, dtype, what=f"dw {(n, n_in, n_out)}")
            if i % 2:
                assert_close(be.to_numpy(db), db_r, dtype, what=f"db {(n, n_in, n_out)}")
            else:
                assert db is None


def test_linear_backward_is_deterministic(be):
    rng = np.random.default_rng(33)
    dy, x, w = (be.asarray(rng.standard_normal(s).astype(np.float32)) for s in ((37, 9), (37, 21), (9, 21)))
    for v in (1, 2):
        with be.use_versions({"linear_gemm": v}):
            assert_deterministic(be, "linear_backward", dy, x, w, what=f"linear_backward v{v}")


def test_linear_v1_grid_fits_cuda_limits_for_a_large_batch(emu):
    rows = 65535 * 16 + 1  # one more 16-row tile than grid.y allows
    with emu.use_versions({"linear_gemm": 1}), recording_launches(emu, run=False) as launches:
        emu.linear(np.zeros((rows, 1), np.float32), np.zeros((3, 1), np.float32), None)
    assert [grid for _, grid, _, _, _ in launches] == [(65536, 1, 1)]


def test_gemm_kernel_is_thread_order_independent(emu):
    rng = np.random.default_rng(34)
    M, N, K = 18, 17, 20
    a, b = rng.standard_normal((M, K)).astype(np.float32), rng.standard_normal((K, N)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    c = np.full((M, N), np.nan, np.float32)
    out = check_orders(emu.function("linear.cu", "gemm_v1<float>"), (2, 2), (16, 16),
                       (a, b, bias, c) + tuple(np.int32(v) for v in (M, N, K, K, 1, N, 1, 1)))
    assert_close(out[3], a.astype(np.float64) @ b + bias, np.float32, what="gemm_v1")


# ---- loss -----------------------------------------------------------------------------------------

def _loss_cases():
    rng = np.random.default_rng(41)
    cases = sample([(int(rng.integers(1, 20)), int(rng.integers(1, 70))) for _ in range(N_RANDOM)], 8)
    return cases + [(1, 1), (3, 32), (5, 33), (2, 200)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("version", [1, 2])
def test_softmax_cross_entropy_matches_reference(be, version, dtype):
    rng = np.random.default_rng(42)
    with be.use_versions({"softmax_cross_entropy": version}):
        for i, (n, k) in enumerate(_loss_cases()):
            logits = rng.standard_normal((n, k)) * 5 + (100 if i % 7 == 0 else 0)  # large offsets: stable?
            labels = rng.integers(0, k, n).astype(np.int64 if i % 2 else np.int32)
            smoothing = (0.0, 0.1, 1.0, 0.35)[i % 4]
            loss, d = be.softmax_cross_entropy(be.asarray(logits, dtype), be.asarray(labels), smoothing)
            loss_r, d_r = REF.softmax_cross_entropy(logits, labels, smoothing)
            assert loss.shape == () and loss.dtype == dtype and be.is_array(loss)
            assert_close(be.to_numpy(loss), loss_r, dtype, what=f"loss {(n, k)}")
            assert_close(be.to_numpy(d), d_r, dtype, what=f"dlogits {(n, k)}")


def test_softmax_cross_entropy_bad_label_gives_nan_not_a_bad_read(be):
    logits = be.asarray(np.zeros((3, 4), np.float32))
    loss, d = be.softmax_cross_entropy(logits, be.asarray(np.array([0, 4, 1], np.int32)))
    assert np.isnan(be.to_numpy(loss))
    d = be.to_numpy(d)
    assert np.isnan(d[1]).all() and not np.isnan(d[[0, 2]]).any()


def test_softmax_cross_entropy_is_deterministic(be):
    rng = np.random.default_rng(43)
    logits = be.asarray(rng.standard_normal((300, 10)).astype(np.float32))
    labels = be.asarray(rng.integers(0, 10, 300).astype(np.int32))
    for v in (1, 2):
        with be.use_versions({"softmax_cross_entropy": v}):
            assert_deterministic(be, "softmax_cross_entropy", logits, labels,
                                 what=f"softmax_cross_entropy v{v}")


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("name,block,grid", [("softmax_cross_entropy_v1<float>", (128,), (5,)),
                                             ("softmax_cross_entropy_v2<float>", (32, 4), (2,)),
                                             ("softmax_cross_entropy_v2<double>", (32, 4), (2,))])
def test_loss_kernels_are_thread_order_independent(emu, name, block, grid, smoothing):
    rng = np.random.default_rng(44)
    n, k = 5, 45
    dt = np.float64 if "double" in name else np.float32
    logits = rng.standard_normal((n, k)).astype(dt)
    labels = rng.integers(0, k, n).astype(np.int32)
    d, rows = np.full((n, k), np.nan, dt), np.full(n, np.nan, dt)
    check_orders(emu.function("loss.cu", name), grid, block,
                 (logits, labels, d, rows, np.int32(n), np.int32(k), dt(smoothing)))


def test_mean_reduce_is_thread_order_independent(emu):
    v = np.random.default_rng(45).standard_normal(600).astype(np.float32)
    out = check_orders(emu.function("loss.cu", "mean_reduce_v1<float>"), (1,), (256,),
                       (v, np.full((), np.nan, np.float32), np.int32(v.size)))
    assert_close(out[1], v.astype(np.float64).mean(), np.float32, what="mean_reduce_v1")


@pytest.mark.parametrize("dtype", DTYPES)
def test_argmax_first_maximum_and_nan(be, dtype):
    x = np.array([[1, 3, 3, 0], [np.nan, 5, np.nan, 1], [2, 2, 2, 2], [-np.inf, -np.inf, 0, np.nan],
                  [1, 1 + 2**-30, 0, 1]], dtype)  # last row: a tie in float32, not in float64
    out = be.argmax(be.asarray(x))
    assert out.dtype == np.int32
    np.testing.assert_array_equal(be.to_numpy(out), np.argmax(x, axis=1))


# ---- optimizers -----------------------------------------------------------------------------------

SGD_CASES = [dict(lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False),
             dict(lr=0.05, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False),
             dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-2, nesterov=False),
             dict(lr=0.01, momentum=0.8, dampening=0.0, weight_decay=5e-3, nesterov=True),
             dict(lr=0.2, momentum=0.0, dampening=0.0, weight_decay=0.1, nesterov=False)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(SGD_CASES)))
def test_sgd_steps_match_reference(be, case, dtype):
    kw = SGD_CASES[case]
    rng = np.random.default_rng(51 + case)
    p_ref = rng.standard_normal(37)
    buf_ref = np.zeros_like(p_ref)
    p = be.asarray(p_ref.copy(), dtype)  # asarray may alias a float64 host array
    buf = be.asarray(np.zeros(37, dtype)) if kw["momentum"] else None
    for step in range(4):
        g = rng.standard_normal(37)
        REF.sgd_step(p_ref, g, buf_ref, first_step=step == 0, **kw)
        be.sgd_step(p, be.asarray(g, dtype), buf, first_step=step == 0, **kw)
        assert_close(be.to_numpy(p), p_ref, dtype, what=f"sgd {kw} step {step}")
        if buf is not None:
            assert_close(be.to_numpy(buf), buf_ref, dtype, what=f"momentum buffer step {step}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_adam_steps_match_reference(be, weight_decay, decoupled, dtype):
    rng = np.random.default_rng(61)
    p_ref, m_ref, v_ref = rng.standard_normal(53), np.zeros(53), np.zeros(53)
    p = be.asarray(p_ref.copy(), dtype)
    m, v = be.asarray(np.zeros(53, dtype)), be.asarray(np.zeros(53, dtype))
    for step in range(1, 5):
        g = rng.standard_normal(53)
        args = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=weight_decay, decoupled=decoupled)
        REF.adam_step(p_ref, g, m_ref, v_ref, step, **args)
        be.adam_step(p, be.asarray(g, dtype), m, v, step, **args)
        for out, ref, what in ((p, p_ref, "param"), (m, m_ref, "m"), (v, v_ref, "v")):
            assert_close(be.to_numpy(out), ref, dtype, what=f"adam {what} step {step}")


def test_optimizer_state_must_match_param(be):
    p = be.asarray(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="grad"):
        be.sgd_step(p, be.asarray(np.zeros(5, np.float32)), None, 0.1, 0.0, 0.0, 0.0, False, True)
    with pytest.raises(ValueError, match="buf"):
        be.sgd_step(p, p.copy(), None, 0.1, 0.9, 0.0, 0.0, False, True)
    with pytest.raises(ValueError, match="step"):
        be.adam_step(p, p.copy(), p.copy(), p.copy(), 0, 1e-3, 0.9, 0.999, 1e-8, 0.0)
