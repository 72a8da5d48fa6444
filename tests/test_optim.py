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


@pytest.mark.torch
@pytest.mark.parametrize("kw", [dict(lr=1e-3), dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_adamw_matches_torch(kw, dtype):
    torch = pytest.importorskip("torch")
    _run_against_torch(lambda ps: optim.AdamW(ps, **kw), lambda ts: torch.optim.AdamW(ts, **kw), dtype=dtype)


def _groups(ps, specs):
    return [dict(spec, params=[ps[i] for i in idx]) for idx, spec in specs]


GROUPS = [([0, 2], dict(weight_decay=0.1)), ([1], dict(weight_decay=0.0, momentum=0.5))]


@pytest.mark.torch
@pytest.mark.parametrize("make,make_torch,specs", [
    (lambda g: optim.SGD(g, lr=0.1, momentum=0.9, weight_decay=1e-2),
     lambda g, torch: torch.optim.SGD(g, lr=0.1, momentum=0.9, weight_decay=1e-2), GROUPS),
    (lambda g: optim.AdamW(g, lr=1e-2), lambda g, torch: torch.optim.AdamW(g, lr=1e-2),
     [([0, 2], dict(weight_decay=0.3)), ([1], dict(weight_decay=0.0, eps=1e-3))]),
    (lambda g: optim.Adam(g, lr=1e-2, weight_decay=0.1),
     lambda g, torch: torch.optim.Adam(g, lr=1e-2, weight_decay=0.1),
     [([1, 0], dict()), ([2], dict(weight_decay=0.0))]),
])
def test_parameter_groups_match_torch(make, make_torch, specs):
    torch = pytest.importorskip("torch")
    _run_against_torch(lambda ps: make(_groups(ps, specs)),
                       lambda ts: make_torch(_groups(ts, specs), torch))


def test_lr_is_shared_by_every_group_and_param_groups_show_the_options():
    ps = _params(np.random.default_rng(7), [(2,), (3,)])
    opt = optim.SGD([{"params": [ps[0]], "weight_decay": 0.5}, {"params": [ps[1]]}], lr=0.1)
    opt.lr = 0.25  # what a schedule does
    groups = opt.param_groups
    assert [g["lr"] for g in groups] == [0.25, 0.25]
    assert [g["weight_decay"] for g in groups] == [0.5, 0.0]
    assert groups[0]["params"] == [ps[0]] and groups[1]["params"] == [ps[1]]
    before = [p.data.copy() for p in ps]
    for p in ps:
        p.grad = np.ones(p.shape)
    opt.step()
    np.testing.assert_allclose(ps[0].data, before[0] - 0.25 * (1 + 0.5 * before[0]), rtol=1e-15)
    np.testing.assert_allclose(ps[1].data, before[1] - 0.25, rtol=1e-15)


@pytest.mark.parametrize("groups,exc,match", [
    (lambda ps: [{"params": ps, "lr": 0.1}], ValueError, "lr is the optimizer's"),
    (lambda ps: [{"params": ps, "weight_dacay": 0.1}], ValueError, "weight_dacay"),
    (lambda ps: [{"params": ps, "weight_decay": -1.0}], ValueError, "weight_decay"),
    (lambda ps: [{"params": ps, "nesterov": 1.0}], ValueError, "nesterov"),
    (lambda ps: [{"params": ps}, ps[0]], TypeError, r"params\[1\].*parameter group"),
    (lambda ps: [{"weight_decay": 0.0}], TypeError, "'params'"),
    (lambda ps: [{"params": [ps[0]]}, {"params": [ps[0]]}], ValueError, "more than once"),
])
def test_bad_parameter_groups_are_refused(groups, exc, match):
    ps = _params(np.random.default_rng(8), [(2,), (3,)])
    with pytest.raises(exc, match=match):
        optim.SGD(groups(ps), lr=0.1)


def test_group_state_round_trips_and_must_match():
    rng = np.random.default_rng(9)
    ps = _params(rng, [(2,), (3,), (4,)])
    make = lambda wd: optim.AdamW([{"params": ps[:2], "weight_decay": wd}, {"params": ps[2:]}])  # noqa: E731
    opt = make(0.2)
    for p in ps:
        p.grad = rng.standard_normal(p.shape)
    opt.step()
    state = opt.state_dict()
    np.testing.assert_array_equal(state["group.0.params"], [0, 1])
    assert float(state["group.0.weight_decay"]) == 0.2 and "group.1.weight_decay" not in state
    other = make(0.7)
    other.load_state_dict(state)
    assert other.param_groups[0]["weight_decay"] == 0.2
    with pytest.raises(ValueError, match="group.0.params"):
        optim.AdamW([{"params": ps[:1], "weight_decay": 0.2}, {"params": ps[1:]}]).load_state_dict(state)
    with pytest.raises(ValueError, match="parameter groups"):
        optim.AdamW(ps).load_state_dict(state)
    bad = dict(state, **{"group.0.weight_decay": np.array(-1.0)})
    with pytest.raises(ValueError, match="weight_decay"):
        other.load_state_dict(bad)
    assert other.param_groups[0]["weight_decay"] == 0.2  # unchanged after the failed load


def test_decay_groups_leave_out_biases_and_batch_norm():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, rng=0), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4, 2, bias=False, rng=0))
    groups = optim.decay_groups(model, 5e-4)
    conv, bn, lin = model[0], model[1], model[4]
    assert groups[0]["weight_decay"] == 5e-4 and groups[1]["weight_decay"] == 0.0
    assert groups[0]["params"] == [conv.weight, lin.weight]
    assert groups[1]["params"] == [conv.bias, bn.weight, bn.bias]
    opt = optim.SGD(groups, lr=0.1, momentum=0.9)
    assert len(opt.params) == 5
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 0.0]
    with pytest.raises(ValueError, match="weight_decay"):
        optim.decay_groups(model, -1)


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
    ("hyper.lr", np.array([1e-3, 2e-3]), r"'hyper\.lr'.*\(2,\)"),
    ("hyper.beta1", np.array("0.9"), r"'hyper\.beta1'.*<U3"),
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
