"""Every error path of the op API: bad input raises ValueError/TypeError naming the argument."""
import numpy as np
import pytest

from gpuconv import functional as F
from gpuconv import nn, use_backend
from gpuconv.backends.base import Backend

pytestmark = pytest.mark.usefixtures("numpy_default")


def arr(*shape, dtype=np.float32):
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


X = arr(2, 4, 8, 8)
W = arr(6, 4, 3, 3)


# ---- convolution -----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,exc,words", [
    (dict(x=arr(4, 8, 8)), ValueError, ["x", "rank 4"]),
    (dict(weight=arr(6, 4, 3)), ValueError, ["weight", "rank 4"]),
    (dict(x=X.astype(np.float16)), TypeError, ["x", "float16"]),
    (dict(x=X.astype(np.int32)), TypeError, ["x", "int32"]),
    (dict(weight=W.astype(np.float64)), TypeError, ["weight", "float64", "float32"]),
    (dict(bias=arr(6, dtype=np.float64)), TypeError, ["bias", "float64"]),
    (dict(bias=arr(5)), ValueError, ["bias", "(6,)"]),
    (dict(weight=arr(6, 3, 3, 3)), ValueError, ["weight", "channels"]),
    (dict(groups=3), ValueError, ["groups=3", "C=4"]),
    (dict(weight=arr(5, 2, 3, 3), groups=2), ValueError, ["groups=2", "K=5"]),
    (dict(groups=0), ValueError, ["groups", "0"]),
    (dict(groups=2.0), TypeError, ["groups", "float"]),
    (dict(groups=True), TypeError, ["groups", "True"]),
    (dict(stride=0), ValueError, ["stride", "0"]),
    (dict(stride=(1, 1.5)), TypeError, ["stride[1]", "1.5"]),
    (dict(stride=(1, 2, 3)), ValueError, ["stride", "pair"]),
    (dict(stride=True), TypeError, ["stride", "True"]),
    (dict(dilation=-1), ValueError, ["dilation", "-1"]),
    (dict(padding=-1), ValueError, ["padding", "-1"]),
    (dict(padding=1.5), TypeError, ["padding", "1.5"]),
    (dict(padding="full"), ValueError, ["padding", "'full'"]),
    (dict(padding=False), TypeError, ["padding", "False"]),
    (dict(weight=arr(6, 4, 9, 9)), ValueError, ["kernel", "padded input"]),
    (dict(weight=arr(6, 4, 3, 3), dilation=4), ValueError, ["kernel", "dilation"]),
])
def test_conv2d_rejects_bad_arguments(kwargs, exc, words):
    call = dict(x=X, weight=W, bias=None, stride=1, padding=0, dilation=1, groups=1)
    call.update(kwargs)
    with pytest.raises(exc) as info:
        F.conv2d(**call)
    for word in words:
        assert word in str(info.value)


def test_conv2d_backward_checks_dy():
    with pytest.raises(ValueError, match=r"dy must have shape \(2, 6, 6, 6\)"):
        F.conv2d_backward(arr(2, 6, 8, 8), X, W)
    with pytest.raises(TypeError, match="dy has dtype float64 but x has dtype float32|dy .*float64"):
        F.conv2d_backward(arr(2, 6, 6, 6, dtype=np.float64), X, W)
    with pytest.raises(TypeError, match="need_dx"):
        F.conv2d_backward(arr(2, 6, 6, 6), X, W, need_dx=1)


# ---- pooling ---------------------------------------------------------------------------------

POOLS = [
    lambda x, **k: F.max_pool2d(x, **k),
    lambda x, **k: F.avg_pool2d(x, **k),
    lambda x, **k: F.l2_pool2d(x, **k),
]


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("kwargs,exc,words", [
    (dict(x=arr(4, 8, 8)), ValueError, ["x", "rank 4"]),
    (dict(x=X.astype(np.int64)), TypeError, ["x", "int64"]),
    (dict(kernel_size=0), ValueError, ["kernel_size", "0"]),
    (dict(kernel_size=2.5), TypeError, ["kernel_size", "2.5"]),
    (dict(kernel_size=True), TypeError, ["kernel_size", "True"]),
    (dict(stride=-2), ValueError, ["stride", "-2"]),
    (dict(padding=-1), ValueError, ["padding", "-1"]),
    (dict(padding="same"), TypeError, ["padding", "'same'"]),
    (dict(padding=2), ValueError, ["padding", "at most half"]),
    (dict(kernel_size=(2, 3), padding=(1, 2)), ValueError, ["padding", "at most half"]),
    (dict(kernel_size=9), ValueError, ["kernel_size", "larger than the padded input"]),
    (dict(ceil_mode="yes"), TypeError, ["ceil_mode"]),
])
def test_pooling_rejects_bad_arguments(pool, kwargs, exc, words):
    call = dict(x=X, kernel_size=3)
    call.update(kwargs)
    x = call.pop("x")
    with pytest.raises(exc) as info:
        pool(x, **call)
    for word in words:
        assert word in str(info.value)


def test_max_pool_rejects_non_integer_dilation():
    with pytest.raises(TypeError, match="dilation"):
        F.max_pool2d(X, 2, dilation=1.0)


def test_avg_pool_options_are_checked():
    with pytest.raises(TypeError, match="count_include_pad"):
        F.avg_pool2d(X, 2, count_include_pad=1)
    with pytest.raises(ValueError, match="divisor_override"):
        F.avg_pool2d(X, 2, divisor_override=0)
    with pytest.raises(TypeError, match="divisor_override"):
        F.avg_pool2d(X, 2, divisor_override=2.0)


def test_pool_backward_checks_dy_indices_and_x_shape():
    y, idx = F.max_pool2d(X, 2)
    with pytest.raises(ValueError, match=r"dy must have shape \(2, 4, 4, 4\)"):
        F.max_pool2d_backward(arr(2, 4, 3, 4), idx, X.shape, 2)
    with pytest.raises(TypeError, match="indices must have dtype int32"):
        F.max_pool2d_backward(y, idx.astype(np.int64), X.shape, 2)
    with pytest.raises(ValueError, match="indices must have shape"):
        F.max_pool2d_backward(y, idx[:, :, :3], X.shape, 2)
    # indices outside their own window route nothing (the rule every backend applies)
    assert not F.max_pool2d_backward(y, idx + 64, X.shape, 2).any()
    with pytest.raises(ValueError, match="x_shape"):
        F.max_pool2d_backward(y, idx, (2, 4, 8), 2)
    with pytest.raises(TypeError, match=r"x_shape\[2\]"):
        F.max_pool2d_backward(y, idx, (2, 4, 8.0, 8), 2)
    with pytest.raises(ValueError, match="x_shape"):
        F.avg_pool2d_backward(y, "2,4,8,8", 2)
    with pytest.raises(TypeError, match="dy must have dtype"):
        F.avg_pool2d_backward(y.astype(np.float16), X.shape, 2)
    yl = F.l2_pool2d(X, 2)
    with pytest.raises(ValueError, match="y must have shape"):
        F.l2_pool2d_backward(yl, X, yl[:, :, :2], 2)
    with pytest.raises(TypeError, match="y has dtype float64"):
        F.l2_pool2d_backward(yl, X, yl.astype(np.float64), 2)


# ---- element-wise, dense, loss, optimizers ---------------------------------------------------

def test_elementwise_ops_check_dtype_and_shapes():
    for op in (F.relu, F.sigmoid, F.tanh):
        with pytest.raises(TypeError, match="x must have dtype"):
            op(np.arange(4))
        with pytest.raises(TypeError, match="x must be an array"):
            op([1.0, 2.0])
    for op in (F.relu_backward, F.sigmoid_backward, F.tanh_backward):
        with pytest.raises(ValueError, match="dy must have shape"):
            op(arr(3, 4), arr(4, 3))
        with pytest.raises(TypeError, match="y has dtype float64"):
            op(arr(3, 4), arr(3, 4, dtype=np.float64))


def test_dropout_checks_p_and_seed():
    with pytest.raises(ValueError, match="p must"):
        F.dropout(X, 1.5, 0)
    with pytest.raises(ValueError, match="p must"):
        F.dropout(X, float("nan"), 0)
    with pytest.raises(TypeError, match="p must"):
        F.dropout(X, True, 0)
    with pytest.raises(TypeError, match="seed must be an int"):
        F.dropout(X, 0.5, 1.0)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        F.dropout(X, 0.5, -1)


def test_linear_checks_shapes():
    with pytest.raises(ValueError, match="x must have rank 2"):
        F.linear(arr(2, 3, 4), arr(5, 4))
    with pytest.raises(ValueError, match="weight must have shape"):
        F.linear(arr(2, 4), arr(5, 3))
    with pytest.raises(ValueError, match="bias must have shape"):
        F.linear(arr(2, 4), arr(5, 4), arr(4))
    with pytest.raises(ValueError, match="dy must have shape"):
        F.linear_backward(arr(2, 4), arr(2, 4), arr(5, 4))
    with pytest.raises(TypeError, match="weight has dtype float64"):
        F.linear(arr(2, 4), arr(5, 4, dtype=np.float64))


@pytest.mark.parametrize("smoothing,exc", [(-0.1, ValueError), (1.5, ValueError), ("0.1", TypeError),
                                           (float("nan"), ValueError)])
def test_softmax_cross_entropy_checks_label_smoothing(smoothing, exc):
    with pytest.raises(exc, match="label_smoothing"):
        F.softmax_cross_entropy(arr(3, 5), np.array([0, 1, 2]), label_smoothing=smoothing)
    with pytest.raises(exc, match="label_smoothing"):
        nn.SoftmaxCrossEntropy(label_smoothing=smoothing)


def test_softmax_cross_entropy_checks_labels():
    logits = arr(3, 5)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\).*\[0, 5\]"):
        F.softmax_cross_entropy(logits, np.array([0, 5, 1]))
    with pytest.raises(ValueError, match="labels must lie in"):
        F.softmax_cross_entropy(logits, np.array([0, -1, 1]))
    with pytest.raises(TypeError, match="labels must be an integer array"):
        F.softmax_cross_entropy(logits, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="labels must have shape"):
        F.softmax_cross_entropy(logits, np.array([0, 1]))
    with pytest.raises(ValueError, match="logits must have rank 2"):
        F.softmax_cross_entropy(arr(3), np.array([0, 1, 2]))


def test_optimizer_steps_check_arguments():
    p, g = arr(3, 4), arr(3, 4)
    with pytest.raises(ValueError, match="buf"):
        F.sgd_step(p, g, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="lr must"):
        F.sgd_step(p, g, lr=-0.1)
    with pytest.raises(ValueError, match="nesterov"):
        F.sgd_step(p, g, arr(3, 4), lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)
    with pytest.raises(ValueError, match="grad must have shape"):
        F.sgd_step(p, arr(4, 3), lr=0.1)
    with pytest.raises(TypeError, match="grad has dtype float64"):
        F.adam_step(p, g.astype(np.float64), arr(3, 4), arr(3, 4), 1)
    with pytest.raises(ValueError, match="step must be >= 1"):
        F.adam_step(p, g, arr(3, 4), arr(3, 4), 0)
    with pytest.raises(ValueError, match="beta2 must"):
        F.adam_step(p, g, arr(3, 4), arr(3, 4), 1, beta2=1.0)


# ---- mixed backends --------------------------------------------------------------------------

class _OtherBackend(Backend):
    """A backend whose arrays are not NumPy arrays (stands in for cuda without a GPU)."""

    name = "cuda"

    def is_array(self, a) -> bool:
        return False


class _DeviceArray:
    """Mimics a CuPy array: shape and dtype, defined in a module named cupy."""

    __module__ = "cupy"

    def __init__(self, a):
        self.shape, self.dtype = a.shape, a.dtype


def test_numpy_array_under_another_backend_names_both_backends():
    with use_backend(_OtherBackend()):
        with pytest.raises(TypeError) as info:
            F.conv2d(X, W)
    msg = str(info.value)
    assert msg.startswith("x ") and "'numpy'" in msg and "'cuda'" in msg and "mixed backends" in msg


def test_device_array_under_numpy_names_the_argument_and_both_backends():
    for call, name in [(lambda: F.conv2d(X, _DeviceArray(W)), "weight"),
                       (lambda: F.conv2d(X, W, _DeviceArray(arr(6))), "bias"),
                       (lambda: F.max_pool2d_backward(arr(2, 4, 4, 4), _DeviceArray(np.zeros((2, 4, 4, 4),
                        np.int32)), X.shape, 2), "indices"),
                       (lambda: F.softmax_cross_entropy(arr(3, 5), _DeviceArray(np.zeros(3, np.int64))),
                        "labels")]:
        with pytest.raises(TypeError) as info:
            call()
        msg = str(info.value)
        assert msg.startswith(f"{name} ") and "'cuda'" in msg and "'numpy'" in msg


def test_add_and_mul_check_shapes_and_dtypes():
    a = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(F.add(a, a), 2 * a)
    np.testing.assert_array_equal(F.mul(a, 3 * a), 3 * a)
    with pytest.raises(ValueError, match="b"):
        F.add(a, np.ones((3, 2), np.float32))
    with pytest.raises((TypeError, ValueError), match="dtype"):
        F.mul(a, np.ones((2, 3), np.float64))


# ---- batch normalisation ---------------------------------------------------------------------

BN_X = arr(2, 3, 4, 4)


def _bn_args(**over):
    args = dict(x=BN_X, running_mean=arr(3), running_var=np.ones(3, np.float32), weight=arr(3), bias=arr(3),
                training=True, momentum=0.1, eps=1e-5)
    args.update(over)
    return args


@pytest.mark.parametrize("kwargs,exc,words", [
    (dict(x=arr(2)), ValueError, ["x", "rank 2, 3 or 4"]),
    (dict(x=arr(2, 3, 1, 1, 1)), ValueError, ["x", "rank 2, 3 or 4"]),
    (dict(x=BN_X.astype(np.int32)), TypeError, ["x", "int32"]),
    (dict(x=arr(1, 3, 1, 1)), ValueError, ["more than one value per channel"]),
    (dict(running_mean=arr(4)), ValueError, ["running_mean", "(3,)"]),
    (dict(running_var=arr(3, dtype=np.float64)), TypeError, ["running_var", "float64"]),
    (dict(weight=arr(3, 1)), ValueError, ["weight", "(3,)"]),
    (dict(bias=[0.0, 0.0, 0.0]), TypeError, ["bias", "list"]),
    (dict(running_mean=None), ValueError, ["running_mean", "running_var", "both"]),
    (dict(running_mean=None, running_var=None, training=False), ValueError, ["required", "training=False"]),
    (dict(training=1), TypeError, ["training", "bool"]),
    (dict(momentum=-0.1), ValueError, ["momentum"]),
    (dict(momentum=1.5), ValueError, ["momentum"]),
    (dict(eps=0.0), ValueError, ["eps"]),
    (dict(eps=float("nan")), ValueError, ["eps"]),
])
@pytest.mark.parametrize("fn", [F.batch_norm, F.batch_norm_relu])
def test_batch_norm_rejects_bad_arguments(fn, kwargs, exc, words):
    args = _bn_args(**kwargs)
    before = (args["running_mean"] if args["running_mean"] is not None else np.zeros(0)).copy()
    with pytest.raises(exc) as info:
        fn(**args)
    for w in words:
        assert w in str(info.value), (w, str(info.value))
    if args["running_mean"] is not None:
        np.testing.assert_array_equal(args["running_mean"], before)  # nothing updated


def test_batch_norm_backward_checks_its_arguments():
    y, mean, invstd = F.batch_norm(BN_X, None, None, training=True)
    dy = arr(*BN_X.shape)
    for kwargs, exc, word in [(dict(dy=arr(2, 3, 4)), ValueError, "dy"),
                              (dict(saved_mean=arr(4)), ValueError, "saved_mean"),
                              (dict(saved_invstd=None), ValueError, "saved_invstd"),
                              (dict(weight=arr(3, dtype=np.float64)), TypeError, "weight"),
                              (dict(training="yes"), TypeError, "training")]:
        args = dict(dy=dy, x=BN_X, weight=None, saved_mean=mean, saved_invstd=invstd, training=True)
        args.update(kwargs)
        with pytest.raises(exc, match=word):
            F.batch_norm_backward(**args)
    with pytest.raises(ValueError, match="y"):
        F.batch_norm_relu_backward(dy, BN_X, arr(2, 3, 4, 5), None, mean, invstd)
