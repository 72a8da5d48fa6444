"""Optimizers: PyTorch's update rules (checked against torch.optim), state, validation."""
from __future__ import annotations

import numpy as np
import pytest

from gpuconv import nn, optim


def _params(rng, shapes, dtype=np.float64):
    out = []
    for s in shapes:
        p = nn.Parameter(rng.standard_normal(s).astype(dtype))
        out.append(p)
    return out


def _run_against_torch(make_ours, make_theirs, steps=6, dtype=np.float64):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    shapes = [(3, 4), (5,), (2, 1, 3, 3)]
    ours = _params(rng, shapes, dtype)
    theirs = [torch.tensor(p.data.copy(), requires_grad=True) for p in ours]
    opt, topt = make_ours(ours), make_theirs(theirs)
    for _ in range(steps):
        for p, t in zip(ours, theirs):
            g = rng.standard_normal(p.shape).astype(dtype)
            p.grad = g
            t.grad = torch.tensor(g.copy())
        opt.step()
        topt.step()
    tol = 1e-12 if dtype == np.float64 else 2e-6
    for p, t in zip(ours, theirs):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=tol, atol=tol)


@pytest.mark.torch
@pytest.mark.parametrize("kw", [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-2),
    dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-3),
])
def test_sgd_matches_torch(kw):
    torch = pytest.importorskip("torch")
    _run_against_torch(lambda ps: optim.SGD(ps, **kw), lambda ts: torch.optim.SGD(ts, **kw))


@pytest.mark.torch
@pytest.mark.parametrize("kw", [
    dict(lr=1e-3),
    dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2),
])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_adam_matches_torch(kw, dtype):
    torch = pytest.importorskip("torch")
    _run_against_torch(lambda ps: optim.Adam(ps, **kw), lambda ts: torch.optim.Adam(ts, **kw), dtype=dtype)


def test_parameters_without_gradient_are_skipped():
    p, q = _params(np.random.default_rng(1), [(3,), (2,)])
    q0 = q.data.copy()
    p.grad = np.ones(3)
    optim.SGD([p, q], lr=0.5).step()
    np.testing.assert_array_equal(q.data, q0)


def test_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(2)
    for make in (lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
                 lambda ps: optim.Adam(ps, lr=1e-2)):
        a = _params(rng, [(4,), (2, 3)])
        b = [nn.Parameter(p.data.copy()) for p in a]
        oa, ob = make(a), make(b)
        grads = [[rng.standard_normal(p.shape) for p in a] for _ in range(4)]
        for g in grads[:2]:
            for p, gi in zip(a, g):
                p.grad = gi
            oa.step()
        ob.load_state_dict(oa.state_dict())
        for p, q in zip(a, b):
            q.data[...] = p.data
        for g in grads[2:]:
            for p, q, gi in zip(a, b, g):
                p.grad, q.grad = gi, gi.copy()
            oa.step()
            ob.step()
        for p, q in zip(a, b):
            np.testing.assert_array_equal(p.data, q.data)


def test_state_dict_validation():
    ps = _params(np.random.default_rng(3), [(4,), (2, 3)])
    opt = optim.Adam(ps)
    for p in ps:
        p.grad = np.ones(p.shape)
    opt.step()
    state = opt.state_dict()
    assert int(state["state.1.step"]) == 1 and state["state.1.exp_avg"].shape == (2, 3)
    with pytest.raises(ValueError, match="expected 'SGD'"):
        optim.SGD(ps, lr=0.1).load_state_dict(state)
    bad = dict(state)
    bad["state.1.exp_avg"] = np.zeros((3, 2))
    with pytest.raises(ValueError, match=r"state\.1\.exp_avg.*\(3, 2\).*\(2, 3\)"):
        opt.load_state_dict(bad)
    bad = dict(state)
    del bad["state.0.exp_avg_sq"]
    with pytest.raises(ValueError, match="state.0.exp_avg_sq"):
        opt.load_state_dict(bad)
    bad = dict(state)
    bad["state.7.step"] = np.array(1)
    with pytest.raises(ValueError, match="parameter 7"):
        opt.load_state_dict(bad)


@pytest.mark.parametrize("key, value, match", [
    ("state.0.step", np.array(-5), r"'state\.0\.step'.*\[1, .*got -5"),
    ("state.1.step", np.array(0), r"'state\.1\.step'.*got 0"),
    ("state.1.step", np.array(2**64 - 1, np.uint64), r"'state\.1\.step'.*got 18446744073709551615"),
    ("state.1.step", np.array([3]), r"'state\.1\.step' has shape \(1,\)"),
    ("state.0.step", np.array(1.0), r"'state\.0\.step' must be a 0-d integer"),
    ("hyper.lr", np.array([1e-3, 2e-3]), r"'hyper\.lr' must be a 0-d real number.*\(2,\)"),
    ("hyper.beta1", np.array("0.9"), r"'hyper\.beta1' must be a 0-d real number.*<U3"),
    ("hyper.eps", np.zeros((1, 1)), r"'hyper\.eps'"),
    ("optimizer", np.array(["Adam"]), r"'optimizer' has shape \(1,\)|optimizer state is for"),
])
def test_bad_state_entries_are_refused_at_load_naming_their_key(key, value, match):
    """A state that would only fail at the next step() (step <= 0) or whose entry has the wrong
    shape or type is refused by load_state_dict, naming the key; the optimizer is unchanged."""
    ps = _params(np.random.default_rng(4), [(4,), (2, 3)])
    opt = optim.Adam(ps, lr=1e-2)
    for p in ps:
        p.grad = np.ones(p.shape)
    opt.step()
    before = opt.state_dict()
    bad = dict(before, **{key: value})
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert all(np.array_equal(after[k], v) for k, v in before.items())
    opt.step()  # still usable


@pytest.mark.parametrize("make, match", [
    (lambda ps: optim.SGD(ps, lr=-1), "lr"),
    (lambda ps: optim.SGD(ps, lr=float("inf")), "lr"),
    (lambda ps: optim.Adam(ps, lr=float("nan")), "lr"),
    (lambda ps: optim.SGD(ps, lr=0.1, momentum=-0.5), "momentum"),
    (lambda ps: optim.SGD(ps, lr=0.1, dampening=2), "dampening"),
    (lambda ps: optim.SGD(ps, lr=0.1, nesterov=True), "nesterov"),
    (lambda ps: optim.Adam(ps, betas=(0.9, 1.0)), r"betas\[1\]"),
    (lambda ps: optim.Adam(ps, betas=(0.9,)), "betas"),
    (lambda ps: optim.Adam(ps, eps=-1e-8), "eps"),
    (lambda ps: optim.Adam(ps, weight_decay=-1), "weight_decay"),
    (lambda ps: optim.Adam([]), "empty"),
])
def test_bad_hyper_parameters_are_refused(make, match):
    ps = _params(np.random.default_rng(4), [(2,)])
    with pytest.raises(ValueError, match=match):
        make(ps)


def test_state_follows_the_parameters_dtype_after_model_to():
    lin = nn.Linear(3, 2, rng=0)
    opt = optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(6)
    grads = [rng.standard_normal(p.shape) for p in opt.params]
    for p, g in zip(opt.params, grads):
        p.grad = g.astype(np.float32)
    opt.step()
    lin.to(dtype=np.float64)
    for p, g in zip(opt.params, grads):
        p.grad = 2 * g
    opt.step()
    for st, g in zip(opt.state, grads):
        buf = st["momentum_buffer"]
        assert buf.dtype == np.float64
        # b1 = g (first step, float32), b2 = 0.9 * b1 + 2 g
        np.testing.assert_allclose(buf, 0.9 * g.astype(np.float32).astype(np.float64) + 2 * g, rtol=1e-12)


def test_non_parameters_are_refused():
    with pytest.raises(TypeError, match=r"params\[0\]"):
        optim.SGD([np.zeros(3)], lr=0.1)
    with pytest.raises(TypeError, match="lr"):
        optim.SGD(_params(np.random.default_rng(5), [(2,)]), lr="0.1")


def test_training_with_optimizer_lowers_loss():
    from gpuconv import datasets
    from gpuconv.models import build_model
    data = datasets.load_digits()
    model = build_model("lenet", 1, 8, 10, seed=0)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.SoftmaxCrossEntropy()
    x, y = data.train.images[:256], data.train.labels[:256]
    first = float(loss_fn(model.forward(x), y))
    for xb, yb in datasets.iterate_batches(x, y, 32, seed=0):
        loss_fn(model.forward(xb), yb)
        model.backward(loss_fn.backward())
        opt.step()
    assert float(loss_fn(model.forward(x), y)) < 0.7 * first
