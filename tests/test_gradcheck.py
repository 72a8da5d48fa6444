"""float64 finite-difference checks of every backward op on the NumPy backend.

Two checks per op: a random-direction check at moderate sizes (the directional derivative of
<f(a), dy> along a random v against <grad_a, v>), and the full Jacobian at tiny sizes (one
central difference per input element against one backward call per output element). Inputs are
a random permutation of evenly spaced values, so no two window elements tie and no value sits
on a kink (relu at 0) within the step.
"""
import numpy as np
import pytest

from gpuconv import functional as F

H_STEP = 1e-6


pytestmark = pytest.mark.usefixtures("numpy_default")


def tie_free(rng, shape, scale=1.0):
    """A random permutation of evenly spaced values in (-scale, scale), none equal to 0."""
    n = int(np.prod(shape))
    values = (np.arange(n) + 0.5) / n * 2 - 1
    return (rng.permutation(values) * scale).reshape(shape)


def directional_check(forward, backward, inputs, rng):
    """forward(**inputs) -> array; backward(dy, **inputs) -> {name: grad}."""
    out = forward(**inputs)
    dy = rng.standard_normal(out.shape)
    grads = backward(dy, **inputs)
    for name, grad in grads.items():
        v = rng.standard_normal(inputs[name].shape)
        plus = dict(inputs, **{name: inputs[name] + H_STEP * v})
        minus = dict(inputs, **{name: inputs[name] - H_STEP * v})
        numeric = (np.vdot(forward(**plus), dy) - np.vdot(forward(**minus), dy)) / (2 * H_STEP)
        analytic = np.vdot(grad, v)
        assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(analytic)), (name, numeric, analytic)


def jacobian_check(forward, backward, inputs):
    """Compare every entry of d forward / d input with backward fed unit vectors."""
    out = forward(**inputs)
    for name in backward(np.zeros(out.shape), **inputs):
        a = inputs[name]
        numeric = np.empty((out.size, a.size))
        for i in range(a.size):
            step = np.zeros(a.size)
            step[i] = H_STEP
            step = step.reshape(a.shape)
            numeric[:, i] = ((forward(**dict(inputs, **{name: a + step}))
                              - forward(**dict(inputs, **{name: a - step}))) / (2 * H_STEP)).ravel()
        analytic = np.empty_like(numeric)
        for j in range(out.size):
            dy = np.zeros(out.size)
            dy[j] = 1.0
            analytic[j] = backward(dy.reshape(out.shape), **inputs)[name].ravel()
        np.testing.assert_allclose(analytic, numeric, atol=1e-7, rtol=1e-6, err_msg=name)


# ---- convolution -----------------------------------------------------------------------------

CONV_CASES = [  # (N, C, H, W, K, R, S, stride, padding, dilation, groups)
    (2, 3, 9, 8, 4, 3, 3, 1, 1, 1, 1),
    (2, 4, 10, 9, 6, 3, 2, (2, 1), (1, 0), (1, 2), 2),
    (1, 2, 11, 11, 3, 5, 5, 2, "same", 1, 1),
    (2, 4, 8, 8, 4, 3, 3, 1, "valid", 2, 4),
    (1, 3, 7, 10, 2, 4, 3, 3, 2, 1, 1),
    (2, 3, 7, 6, 4, 4, 2, 1, "same", 1, 1),      # even kernel at stride 1: padding bottom/right only
]


def conv_fns(stride, padding, dilation, groups):
    def forward(x, weight, bias):
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    def backward(dy, x, weight, bias):
        dx, dw, db = F.conv2d_backward(dy, x, weight, stride, padding, dilation, groups)
        return {"x": dx, "weight": dw, "bias": db}
    return forward, backward


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_random_direction(case):
    N, C, H, W, K, R, S, stride, padding, dilation, groups = case
    rng = np.random.default_rng(len(str(case)))
    inputs = dict(x=tie_free(rng, (N, C, H, W)), weight=tie_free(rng, (K, C // groups, R, S)),
                  bias=tie_free(rng, (K,)))
    directional_check(*conv_fns(stride, padding, dilation, groups), inputs, rng)


@pytest.mark.parametrize("stride,padding,dilation,groups", [
    (1, 1, 1, 1), (2, "same", 1, 1), ((1, 2), (0, 1), (2, 1), 2), (1, "same", 1, 1)])
def test_conv2d_full_jacobian(stride, padding, dilation, groups):
    rng = np.random.default_rng(3)
    inputs = dict(x=tie_free(rng, (1, 2, 5, 4)), weight=tie_free(rng, (2, 2 // groups, 2, 3)),
                  bias=tie_free(rng, (2,)))
    jacobian_check(*conv_fns(stride, padding, dilation, groups), inputs)


# ---- pooling ---------------------------------------------------------------------------------

POOL_CASES = [  # (kernel_size, stride, padding, dilation, ceil_mode)
    (2, None, 0, 1, False),
    (3, 2, 1, 1, False),
    (3, 2, 1, 1, True),
    ((2, 3), (1, 2), (1, 1), 1, True),
    (2, 1, 0, 1, False),
]


def max_fns(k, s, p, d, c, x_shape):
    def forward(x):
        return F.max_pool2d(x, k, s, p, d, c)[0]

    def backward(dy, x):
        _, idx = F.max_pool2d(x, k, s, p, d, c)
        return {"x": F.max_pool2d_backward(dy, idx, x_shape, k, s, p, d, c)}
    return forward, backward


def avg_fns(k, s, p, c, cip, div, x_shape):
    def forward(x):
        return F.avg_pool2d(x, k, s, p, c, cip, div)

    def backward(dy, x):
        return {"x": F.avg_pool2d_backward(dy, x_shape, k, s, p, c, cip, div)}
    return forward, backward


def l2_fns(k, s, p, c):
    def forward(x):
        return F.l2_pool2d(x, k, s, p, c)

    def backward(dy, x):
        return {"x": F.l2_pool2d_backward(dy, x, F.l2_pool2d(x, k, s, p, c), k, s, p, c)}
    return forward, backward


@pytest.mark.parametrize("case", POOL_CASES + [((3, 2), 2, (1, 0), (2, 3), True)])
@pytest.mark.parametrize("shape", [(2, 3, 9, 11), (1, 2, 5, 4)])
def test_max_pool2d_gradient(case, shape):
    k, s, p, d, c = case
    rng = np.random.default_rng(11)
    x = tie_free(rng, shape)
    fns = max_fns(k, s, p, d, c, shape)
    if shape[2] * shape[3] * shape[1] * shape[0] > 100:
        directional_check(*fns, dict(x=x), rng)
    else:
        jacobian_check(*fns, dict(x=x))


@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("cip,div", [(True, None), (False, None), (True, 5)])
@pytest.mark.parametrize("shape", [(2, 3, 9, 11), (1, 2, 5, 4)])
def test_avg_pool2d_gradient(case, cip, div, shape):
    k, s, p, _, c = case
    rng = np.random.default_rng(12)
    x = tie_free(rng, shape)
    fns = avg_fns(k, s, p, c, cip, div, shape)
    if shape[0] > 1:
        directional_check(*fns, dict(x=x), rng)
    else:
        jacobian_check(*fns, dict(x=x))


@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("shape", [(2, 3, 9, 11), (1, 2, 5, 4)])
def test_l2_pool2d_gradient(case, shape):
    k, s, p, _, c = case
    rng = np.random.default_rng(13)
    x = tie_free(rng, shape)
    fns = l2_fns(k, s, p, c)
    if shape[0] > 1:
        directional_check(*fns, dict(x=x), rng)
    else:
        jacobian_check(*fns, dict(x=x))


# ---- element-wise, dense, loss ---------------------------------------------------------------

@pytest.mark.parametrize("fwd,bwd", [(F.relu, F.relu_backward), (F.sigmoid, F.sigmoid_backward),
                                     (F.tanh, F.tanh_backward)])
def test_activation_gradients(fwd, bwd):
    rng = np.random.default_rng(14)

    def backward(dy, x):
        return {"x": bwd(dy, fwd(x))}
    directional_check(fwd, backward, dict(x=tie_free(rng, (4, 3, 5, 5), 3.0)), rng)
    jacobian_check(fwd, backward, dict(x=tie_free(rng, (2, 5), 3.0)))


def test_dropout_is_the_mask_product_and_its_gradient():
    rng = np.random.default_rng(15)
    x = tie_free(rng, (6, 7))
    _, mask = F.dropout(x, 0.3, seed=4)

    def forward(x):
        return F.dropout(x, 0.3, seed=4)[0]

    def backward(dy, x):
        return {"x": dy * mask}
    jacobian_check(forward, backward, dict(x=x))


def linear_fns():
    def forward(x, weight, bias):
        return F.linear(x, weight, bias)

    def backward(dy, x, weight, bias):
        dx, dw, db = F.linear_backward(dy, x, weight)
        return {"x": dx, "weight": dw, "bias": db}
    return forward, backward


def test_linear_gradients():
    rng = np.random.default_rng(16)
    big = dict(x=tie_free(rng, (8, 20)), weight=tie_free(rng, (7, 20)), bias=tie_free(rng, (7,)))
    directional_check(*linear_fns(), big, rng)
    tiny = dict(x=tie_free(rng, (2, 3)), weight=tie_free(rng, (4, 3)), bias=tie_free(rng, (4,)))
    jacobian_check(*linear_fns(), tiny)


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_softmax_cross_entropy_gradient(smoothing):
    rng = np.random.default_rng(17)
    for shape in [(5, 4), (16, 10)]:
        logits = tie_free(rng, shape, 5.0)
        labels = rng.integers(0, shape[1], shape[0])
        loss, d = F.softmax_cross_entropy(logits, labels, smoothing)
        numeric = np.empty(logits.size)
        for i in range(logits.size):
            step = np.zeros(logits.size)
            step[i] = H_STEP
            step = step.reshape(shape)
            numeric[i] = (F.softmax_cross_entropy(logits + step, labels, smoothing)[0]
                          - F.softmax_cross_entropy(logits - step, labels, smoothing)[0]) / (2 * H_STEP)
        np.testing.assert_allclose(d.ravel(), numeric, atol=1e-8, rtol=1e-6)
        # the definition: -sum_k q_k log p_k, q = (1 - e) onehot + e / K, averaged over rows
        log_p = logits - logits.max(axis=1, keepdims=True)
        log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
        q = np.full(shape, smoothing / shape[1])
        q[np.arange(shape[0]), labels] += 1 - smoothing
        np.testing.assert_allclose(loss, np.mean(-(q * log_p).sum(axis=1)), rtol=1e-13)


# ---- batch normalisation ---------------------------------------------------------------------

def batch_norm_fns(training, relu, running=None):
    """y of F.batch_norm(_relu) and its gradients; in evaluation ``running`` = (mean, var)."""
    fwd = F.batch_norm_relu if relu else F.batch_norm
    rm, rv = running if running is not None else (None, None)

    def forward(x, weight, bias):
        return fwd(x, rm, rv, weight, bias, training=training, eps=1e-3)[0]

    def backward(dy, x, weight, bias):
        y, mean, invstd = fwd(x, rm, rv, weight, bias, training=training, eps=1e-3)
        if relu:
            dx, dw, db = F.batch_norm_relu_backward(dy, x, y, weight, mean, invstd, training=training)
        else:
            dx, dw, db = F.batch_norm_backward(dy, x, weight, mean, invstd, training=training)
        return {"x": dx, "weight": dw, "bias": db}
    return forward, backward


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (5, 4), (3, 2, 7)])
def test_batch_norm_random_direction(shape, training, relu):
    rng = np.random.default_rng(len(shape) + 2 * training + relu)
    C = shape[1]
    running = None if training else (tie_free(rng, (C,)), 0.5 + np.abs(tie_free(rng, (C,))))
    inputs = dict(x=tie_free(rng, shape, 3.0), weight=tie_free(rng, (C,)), bias=tie_free(rng, (C,)))
    directional_check(*batch_norm_fns(training, relu, running), inputs, rng)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_full_jacobian(training, relu):
    rng = np.random.default_rng(21 + 2 * training + relu)
    running = None if training else (tie_free(rng, (2,)), 0.5 + np.abs(tie_free(rng, (2,))))
    inputs = dict(x=tie_free(rng, (3, 2, 2, 2), 2.0), weight=tie_free(rng, (2,)), bias=tie_free(rng, (2,)))
    jacobian_check(*batch_norm_fns(training, relu, running), inputs)
