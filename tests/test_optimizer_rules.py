"""Optimizer update rules worked out by hand, on every backend, and the independence of saved and
loaded optimizer state — without PyTorch (test_optim.py adds the comparison with torch.optim).

The rules are PyTorch's (torch.optim.SGD / Adam documentation):
    SGD   g = grad + wd * p;  b = g on the first step, else b = momentum * b + (1 - dampening) * g;
          g = g + momentum * b if nesterov else b;  p -= lr * g
    Adam  g = grad + wd * p;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
          p -= lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps)
Each example below is two steps on a one-element parameter starting at 1 with gradients 1, then 2,
and its expected values are that arithmetic done by hand.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from gpuconv import nn, optim, use_backend

DTYPES = [np.float64, np.float32]
TOL = {np.float64: 1e-14, np.float32: 1e-6}


def _two_steps(backend, make, dtype):
    """Run two steps (gradients 1, then 2) on p = [1]; return p after each step."""
    with use_backend(backend) as be:
        p = nn.Parameter(be.asarray(np.ones(1, dtype)))
        opt = make([p])
        seen = []
        for g in (1.0, 2.0):
            p.grad = be.asarray(np.full(1, g, dtype))
            opt.step()
            seen.append(float(be.to_numpy(p.data)[0]))
        return seen


# (optimizer, p after step 1, p after step 2), the arithmetic written out.
SGD_CASES = {
    # b1 = 1 (no dampening on the first step); b2 = 0.9 * 1 + (1 - 0.5) * 2 = 1.9
    "momentum-dampening": (dict(lr=0.1, momentum=0.9, dampening=0.5), 1 - 0.1 * 1, 0.9 - 0.1 * 1.9),
    # g1 = 1 + 0.1 * 1 = 1.1, b1 = 1.1, p1 = 0.89; g2 = 2 + 0.1 * 0.89 = 2.089,
    # b2 = 0.9 * 1.1 + 0.5 * 2.089 = 2.0345, p2 = 0.89 - 0.20345
    "weight-decay": (dict(lr=0.1, momentum=0.9, dampening=0.5, weight_decay=0.1), 0.89, 0.89 - 0.20345),
    # b1 = 1, d1 = 1 + 0.9 * 1 = 1.9, p1 = 0.81; b2 = 0.9 + 2 = 2.9, d2 = 2 + 0.9 * 2.9 = 4.61
    "nesterov": (dict(lr=0.1, momentum=0.9, nesterov=True), 0.81, 0.81 - 0.461),
    # plain SGD: p1 = 1 - 0.5, p2 = 0.5 - 0.5 * 2
    "plain": (dict(lr=0.5), 0.5, -0.5),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("case", sorted(SGD_CASES))
def test_sgd_two_steps_by_hand(any_backend, case, dtype):
    kw, p1, p2 = SGD_CASES[case]
    got = _two_steps(any_backend, lambda ps: optim.SGD(ps, **kw), dtype)
    np.testing.assert_allclose(got, [p1, p2], rtol=TOL[dtype], err_msg=f"SGD {kw}")


# betas (0.5, 0.75), eps 0, lr 0.1. Step 1 (g = 1): m = 0.5, v = 0.25, m_hat = 0.5 / 0.5 = 1,
# v_hat = 0.25 / 0.25 = 1, p1 = 1 - 0.1 * 1 / 1 = 0.9. Step 2 (g = 2): m = 0.25 + 1 = 1.25,
# v = 0.1875 + 1 = 1.1875, m_hat = 1.25 / 0.75, v_hat = 1.1875 / 0.4375, p2 = 0.9 - 0.1 m_hat / sqrt(v_hat).
ADAM_P2 = 0.9 - 0.1 * (1.25 / 0.75) / math.sqrt(1.1875 / 0.4375)
# With weight_decay 0.5: g1 = 1.5, m = 0.75, v = 0.5625, m_hat = 1.5, v_hat = 2.25, p1 = 1 - 0.1;
# g2 = 2 + 0.45 = 2.45, m = 0.375 + 1.225 = 1.6, v = 0.421875 + 0.25 * 2.45^2 = 1.9225.
ADAM_WD_P2 = 0.9 - 0.1 * (1.6 / 0.75) / math.sqrt(1.92250 / 0.4375)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("wd, p2", [(0.0, ADAM_P2), (0.5, ADAM_WD_P2)])
def test_adam_two_steps_by_hand(any_backend, wd, p2, dtype):
    got = _two_steps(any_backend, lambda ps: optim.Adam(ps, lr=0.1, betas=(0.5, 0.75), eps=0.0,
                                                         weight_decay=wd), dtype)
    np.testing.assert_allclose(got, [0.9, p2], rtol=TOL[dtype], err_msg=f"Adam weight_decay={wd}")


# ---- state_dict / load_state_dict ---------------------------------------------------------------------

MAKERS = {"sgd": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
          "adam": lambda ps: optim.Adam(ps, lr=0.1)}


def _stepped(backend, make, steps=1, seed=0):
    rng = np.random.default_rng(seed)
    params = [nn.Parameter(backend.asarray(rng.standard_normal(s))) for s in ((3,), (2, 2))]
    opt = make(params)
    for _ in range(steps):
        for p in params:
            p.grad = backend.asarray(rng.standard_normal(p.shape))
        opt.step()
    return opt, params


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_state_dict_is_a_snapshot(any_backend, kind):
    """A state dict taken now keeps its values through later steps (it holds copies)."""
    with use_backend(any_backend):
        opt, params = _stepped(any_backend, MAKERS[kind])
        state = opt.state_dict()
        before = {k: np.array(v, copy=True) for k, v in state.items()}
        for p in params:
            p.grad = any_backend.asarray(np.ones(p.shape))
        opt.step()
    for key, value in state.items():
        np.testing.assert_array_equal(value, before[key], err_msg=f"{kind}: {key} changed after a step")
    assert any(not np.array_equal(opt.state_dict()[k], before[k]) for k in state if k.startswith("state."))


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_load_state_dict_takes_copies(any_backend, kind):
    """Two optimizers loaded from one dict (written here, not by state_dict()) do not share buffers,
    and stepping them leaves the dict as it was."""
    with use_backend(any_backend):
        template, _ = _stepped(any_backend, MAKERS[kind])
        keys = template.state_dict()
        state = {k: (np.full(np.shape(v), 0.25) if k.startswith("state.") and not k.endswith("step")
                     else np.array(v, copy=True)) for k, v in keys.items()}
        given = {k: np.array(v, copy=True) for k, v in state.items()}
        a, pa = _stepped(any_backend, MAKERS[kind], steps=0, seed=1)
        b, pb = _stepped(any_backend, MAKERS[kind], steps=0, seed=1)
        a.load_state_dict(state)
        b.load_state_dict(state)
        for p in pa:
            p.grad = any_backend.asarray(np.full(p.shape, 3.0))
        a.step()
        for key, value in state.items():
            np.testing.assert_array_equal(value, given[key], err_msg=f"{kind}: {key} of the dict changed")
        b_state = b.state_dict()
        for key in state:
            np.testing.assert_array_equal(b_state[key], given[key],
                                          err_msg=f"{kind}: {key} of the second optimizer changed")
