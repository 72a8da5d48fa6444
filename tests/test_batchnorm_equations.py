"""The equations of docs/batchnorm.md as literal loops over one channel's values, against the NumPy
backend (first link of the chain of trust for batch normalisation).

Each function below transcribes the numbered equations it names, word for word, with scalar
loops; the NumPy backend, fed the same numbers as (N, 1, H, W) tensors, must reproduce them.
"""
import math

import numpy as np
import pytest

from gpuconv import functional as F
from gpuconv import use_backend


@pytest.fixture(autouse=True)
def _numpy_backend():
    with use_backend("numpy"):
        yield


def eq_forward_training(x, gamma, beta, eps):
    """(1) mu = (1/m) sum x_i; (2) var = (1/m) sum (x_i - mu)^2; (3) r = 1/sqrt(var + eps);
    (4) xhat_i = (x_i - mu) r; (5) y_i = gamma xhat_i + beta."""
    m = len(x)
    mu = 0.0
    for i in range(m):
        mu += x[i]
    mu /= m
    var = 0.0
    for i in range(m):
        var += (x[i] - mu) ** 2
    var /= m
    r = 1.0 / math.sqrt(var + eps)
    y = [gamma * ((x[i] - mu) * r) + beta for i in range(m)]
    return y, mu, var, r


def eq_running(mu_run, var_run, mu, var, m, alpha):
    """(6) mu_run <- (1 - alpha) mu_run + alpha mu;
    (7) var_run <- (1 - alpha) var_run + alpha var m/(m - 1)."""
    return (1 - alpha) * mu_run + alpha * mu, (1 - alpha) * var_run + alpha * var * m / (m - 1)


def eq_forward_eval(x, gamma, beta, eps, mu_run, var_run):
    """(8) mu = mu_run, r = 1/sqrt(var_run + eps), then (4) and (5)."""
    r = 1.0 / math.sqrt(var_run + eps)
    return [gamma * ((xi - mu_run) * r) + beta for xi in x], mu_run, r


def eq_dxhat_dx(x, mu, r):
    """(11) d xhat_j / d x_i = r (delta_ij - 1/m - xhat_j xhat_i / m)."""
    m = len(x)
    xhat = [(xi - mu) * r for xi in x]
    J = [[0.0] * m for _ in range(m)]
    for j in range(m):
        for i in range(m):
            J[j][i] = r * ((1.0 if i == j else 0.0) - 1.0 / m - xhat[j] * xhat[i] / m)
    return J


def eq_backward_training(g, x, gamma, mu, r):
    """(9) dbeta = sum g_i; (10) dgamma = sum g_i xhat_i;
    (12) dx_i = gamma r (g_i - dbeta/m - xhat_i dgamma/m)."""
    m = len(x)
    xhat = [(xi - mu) * r for xi in x]
    dbeta = 0.0
    dgamma = 0.0
    for i in range(m):
        dbeta += g[i]
        dgamma += g[i] * xhat[i]
    dx = [gamma * r * (g[i] - dbeta / m - xhat[i] * dgamma / m) for i in range(m)]
    return dx, dgamma, dbeta


def eq_backward_eval(g, x, gamma, mu, r):
    """(13) dx_i = gamma r g_i; (9), (10) as in training."""
    xhat = [(xi - mu) * r for xi in x]
    return ([gamma * r * gi for gi in g], sum(gi * xh for gi, xh in zip(g, xhat)), sum(g))


def eq_relu_mask(g, z):
    """(14) g_i <- g_i [z_i > 0]."""
    return [gi if zi > 0 else 0.0 for gi, zi in zip(g, z)]


def eq_welford(values):
    """(15) n_k = k, mu_k = mu_{k-1} + (x_k - mu_{k-1})/k, M2_k = M2_{k-1} + (x_k - mu_{k-1})(x_k - mu_k)."""
    n, mu, m2 = 0, 0.0, 0.0
    for v in values:
        n += 1
        prev = mu
        mu = prev + (v - prev) / n
        m2 = m2 + (v - prev) * (v - mu)
    return n, mu, m2


def eq_chan(a, b):
    """(16) n = n_a + n_b, delta = mu_b - mu_a, mu = mu_a + delta n_b/n,
    M2 = M2_a + M2_b + delta^2 n_a n_b/n."""
    (na, mua, m2a), (nb, mub, m2b) = a, b
    n = na + nb
    delta = mub - mua
    return n, mua + delta * nb / n, m2a + m2b + delta ** 2 * na * nb / n


SHAPES = [(2, 1, 3, 2), (3, 1, 1, 1), (1, 1, 2, 3), (4, 1, 2, 2)]


def _case(shape, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape) * 2 + 0.5, float(rng.standard_normal()), float(rng.standard_normal())


@pytest.mark.parametrize("shape", SHAPES)
def test_training_forward_and_running_statistics(shape):
    x, gamma, beta = _case(shape, 1)
    rm, rv = np.array([0.3]), np.array([1.7])
    y, mean, invstd = F.batch_norm(x, rm, rv, np.array([gamma]), np.array([beta]), training=True,
                                   momentum=0.2, eps=1e-3)
    ey, emu, evar, er = eq_forward_training(list(x.ravel()), gamma, beta, 1e-3)
    np.testing.assert_allclose(y.ravel(), ey, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose([mean[0], invstd[0]], [emu, er], rtol=1e-12)
    np.testing.assert_allclose([rm[0], rv[0]], eq_running(0.3, 1.7, emu, evar, x.size, 0.2), rtol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_evaluation_forward(shape):
    x, gamma, beta = _case(shape, 2)
    y, mean, invstd = F.batch_norm(x, np.array([0.3]), np.array([1.7]), np.array([gamma]), np.array([beta]),
                                   training=False, eps=1e-3)
    ey, emu, er = eq_forward_eval(list(x.ravel()), gamma, beta, 1e-3, 0.3, 1.7)
    np.testing.assert_allclose(y.ravel(), ey, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose([mean[0], invstd[0]], [emu, er], rtol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_training_backward_is_the_chain_rule_through_the_statistics(shape):
    x, gamma, beta = _case(shape, 3)
    g = list(np.random.default_rng(4).standard_normal(x.size))
    _, mu, _, r = eq_forward_training(list(x.ravel()), gamma, beta, 1e-3)
    # (12) equals the chain rule sum_j gamma g_j d xhat_j / d x_i of (11) ...
    J = eq_dxhat_dx(list(x.ravel()), mu, r)
    chain = [sum(gamma * g[j] * J[j][i] for j in range(x.size)) for i in range(x.size)]
    edx, edgamma, edbeta = eq_backward_training(g, list(x.ravel()), gamma, mu, r)
    np.testing.assert_allclose(edx, chain, rtol=1e-10, atol=1e-12)
    # ... and the NumPy backend computes (9), (10), (12).
    _, mean, invstd = F.batch_norm(x, None, None, np.array([gamma]), np.array([beta]), training=True,
                                   eps=1e-3)
    dx, dw, db = F.batch_norm_backward(np.array(g).reshape(shape), x, np.array([gamma]), mean, invstd)
    np.testing.assert_allclose(dx.ravel(), edx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose([dw[0], db[0]], [edgamma, edbeta], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_evaluation_backward_and_relu_mask(shape):
    x, gamma, beta = _case(shape, 5)
    g = list(np.random.default_rng(6).standard_normal(x.size))
    w, b = np.array([gamma]), np.array([beta])
    rm, rv = np.array([0.3]), np.array([1.7])
    z, mean, invstd = F.batch_norm_relu(x, rm, rv, w, b, training=False, eps=1e-3)
    ey, emu, er = eq_forward_eval(list(x.ravel()), gamma, beta, 1e-3, 0.3, 1.7)
    np.testing.assert_allclose(z.ravel(), [max(v, 0.0) for v in ey], rtol=1e-12, atol=1e-12)
    masked = eq_relu_mask(g, list(z.ravel()))
    edx, edgamma, edbeta = eq_backward_eval(masked, list(x.ravel()), gamma, emu, er)
    dx, dw, db = F.batch_norm_relu_backward(np.array(g).reshape(shape), x, z, w, mean, invstd, training=False)
    np.testing.assert_allclose(dx.ravel(), edx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose([dw[0], db[0]], [edgamma, edbeta], rtol=1e-12, atol=1e-12)


def test_welford_and_chan_give_the_two_pass_moments():
    rng = np.random.default_rng(7)
    values = list(1e3 + 0.1 * rng.standard_normal(37))
    _, mu, var, _ = eq_forward_training(values, 1.0, 0.0, 0.0)
    n, wmu, wm2 = eq_welford(values)
    assert n == 37 and wmu == pytest.approx(mu, rel=1e-15) and wm2 / n == pytest.approx(var, rel=1e-9)
    merged = eq_chan(eq_welford(values[:10]), eq_chan(eq_welford(values[10:11]), eq_welford(values[11:])))
    assert merged[0] == 37 and merged[1] == pytest.approx(mu, rel=1e-15)
    assert merged[2] / 37 == pytest.approx(var, rel=1e-9)
