"""Layers: forward/backward against gpuconv.functional, finite differences, state, modes, init."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close

from gpuconv import functional as F
from gpuconv import nn, optim
from gpuconv.models import MODEL_NAMES, build_model


def _rand(rng, *shape):
    return rng.standard_normal(shape)


def _directional_check(model: nn.Module, x: np.ndarray, rng, eps: float = 1e-6, tol: float = 1e-6) -> None:
    """Compare backward() with central differences of L = sum(model(x) * r) along random
    directions, for the input and for every parameter at once (float64)."""
    y = model.forward(x)
    r = rng.standard_normal(y.shape)
    dx = model.backward(r)
    grads = {k: g.copy() for k, g in model.grads.items()}
    assert all(g is not None for g in grads.values())

    def loss() -> float:
        return float(np.sum(model.forward(x) * r))

    # input direction
    d = rng.standard_normal(x.shape)
    x0 = x.copy()
    x[...] = x0 + eps * d
    lp = loss()
    x[...] = x0 - eps * d
    lm = loss()
    x[...] = x0
    fd, an = (lp - lm) / (2 * eps), float(np.sum(dx * d))
    assert abs(fd - an) <= tol * max(1.0, abs(an)), ("input", fd, an)
    # each parameter separately
    for (name, p) in model.named_parameters():
        d = rng.standard_normal(p.shape)
        w0 = p.data.copy()
        p.data[...] = w0 + eps * d
        lp = loss()
        p.data[...] = w0 - eps * d
        lm = loss()
        p.data[...] = w0
        fd, an = (lp - lm) / (2 * eps), float(np.sum(grads[name] * d))
        assert abs(fd - an) <= tol * max(1.0, abs(an)), (name, fd, an)


def test_conv2d_layer_matches_functional():
    rng = np.random.default_rng(0)
    layer = nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2, rng=1, dtype=np.float64)
    x = _rand(rng, 2, 4, 7, 9)
    y = layer.forward(x)
    ref = F.conv2d(x, layer.weight.data, layer.bias.data, stride=2, padding=1, groups=2)
    np.testing.assert_array_equal(y, ref)
    dy = _rand(rng, *y.shape)
    dx = layer.backward(dy)
    rdx, rdw, rdb = F.conv2d_backward(dy, x, layer.weight.data, stride=2, padding=1, groups=2)
    np.testing.assert_array_equal(dx, rdx)
    np.testing.assert_array_equal(layer.weight.grad, rdw)
    np.testing.assert_array_equal(layer.bias.grad, rdb)


def test_linear_and_pool_layers_match_functional():
    rng = np.random.default_rng(1)
    x = _rand(rng, 3, 2, 6, 6)
    mp = nn.MaxPool2d(3, stride=2, padding=1)
    y, idx = F.max_pool2d(x, 3, stride=2, padding=1)
    np.testing.assert_array_equal(mp.forward(x), y)
    dy = _rand(rng, *y.shape)
    np.testing.assert_array_equal(mp.backward(dy),
                                  F.max_pool2d_backward(dy, idx, x.shape, 3, stride=2, padding=1))
    ap = nn.AvgPool2d(2, count_include_pad=False)
    np.testing.assert_array_equal(ap.forward(x), F.avg_pool2d(x, 2, count_include_pad=False))
    lin = nn.Linear(5, 4, rng=0, dtype=np.float64)
    xl = _rand(rng, 3, 5)
    np.testing.assert_array_equal(lin.forward(xl), F.linear(xl, lin.weight.data, lin.bias.data))


def test_sequential_gradients_match_finite_differences_float64():
    rng = np.random.default_rng(2)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, rng=3, dtype=np.float64), nn.Tanh(),
        nn.MaxPool2d(2), nn.Conv2d(3, 4, 3, padding="same", rng=4, dtype=np.float64), nn.Sigmoid(),
        nn.L2Pool2d(2), nn.Flatten(), nn.Linear(4 * 2 * 2, 5, init="glorot", rng=5, dtype=np.float64))
    x = rng.permutation(np.linspace(-2, 2, 2 * 2 * 8 * 8)).reshape(2, 2, 8, 8)
    _directional_check(model, x, rng)


def test_relu_avgpool_globalpool_gradients_match_finite_differences():
    rng = np.random.default_rng(3)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2, padding=1, rng=6, dtype=np.float64), nn.ReLU(),
        nn.AvgPool2d(2, stride=1), nn.GlobalAvgPool2d(), nn.Linear(4, 3, rng=7, dtype=np.float64))
    x = rng.permutation(np.linspace(-1, 1, 2 * 9 * 9)).reshape(2, 1, 9, 9)
    _directional_check(model, x, rng, eps=1e-7)


def test_residual_gradients_with_and_without_projection_shortcut():
    rng = np.random.default_rng(4)
    body = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1, rng=8, dtype=np.float64), nn.Tanh(),
                         nn.Conv2d(4, 4, 3, padding=1, rng=9, dtype=np.float64))
    proj = nn.Residual(body, nn.Conv2d(3, 4, 1, stride=2, rng=10, dtype=np.float64))
    identity = nn.Residual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, rng=11, dtype=np.float64), nn.Tanh()))
    model = nn.Sequential(proj, nn.Tanh(), identity)
    x = _rand(rng, 2, 3, 6, 6)
    _directional_check(model, x, rng)
    # the identity shortcut passes dy straight through: d(identity)/dx = I + d(body)/dx
    y = identity.forward(model[0].forward(x))
    dy = _rand(rng, *y.shape)
    np.testing.assert_allclose(identity.backward(dy), identity.body.backward(dy) + dy, rtol=1e-12)


def test_residual_sum_is_body_plus_shortcut():
    rng = np.random.default_rng(5)
    body, short = nn.Conv2d(2, 2, 3, padding=1, rng=1), nn.Conv2d(2, 2, 1, rng=2)
    x = _rand(rng, 1, 2, 5, 5).astype(np.float32)
    np.testing.assert_allclose(nn.Residual(body, short).forward(x), body.forward(x) + short.forward(x))


def test_dropout_is_identity_in_eval_and_masks_in_train():
    x = np.ones((200, 50), np.float32)
    d = nn.Dropout(0.3, seed=0)
    y = d.forward(x)
    kept = y != 0
    assert 0.25 < 1 - kept.mean() < 0.35
    np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)
    dy = np.full_like(x, 2.0)
    np.testing.assert_allclose(d.backward(dy), np.where(kept, 2 / 0.7, 0), rtol=1e-6)
    assert not np.array_equal(d.forward(x) != 0, kept), "each forward draws a new mask"
    seq = nn.Sequential(nn.Dropout(0.5, seed=1))
    seq.eval()
    assert not seq[0].training
    assert seq.forward(x) is x and seq.backward(dy) is dy
    seq.train()
    assert seq[0].training and (seq.forward(x) == 0).any()
    with pytest.raises(ValueError, match="p must be in"):
        nn.Dropout(1.0)


def test_backward_sets_gradients_and_zero_grad_clears_them():
    rng = np.random.default_rng(6)
    lin = nn.Linear(3, 2, rng=0, dtype=np.float64)
    x = _rand(rng, 4, 3)
    lin.forward(x)
    lin.backward(np.ones((4, 2)))
    first = lin.weight.grad.copy()
    lin.forward(x)
    lin.backward(np.ones((4, 2)))
    np.testing.assert_array_equal(lin.weight.grad, first)  # set, not accumulated
    lin.zero_grad()
    assert all(g is None for g in lin.grads.values())


def test_params_names_state_dict_round_trip_and_validation():
    model = build_model("lenet", 1, 8, 10, seed=0)
    names = list(model.params)
    assert names[:2] == ["0.weight", "0.bias"] and names == list(model.state_dict())
    state = model.state_dict()
    other = build_model("lenet", 1, 8, 10, seed=1)
    assert not np.array_equal(other.state_dict()["0.weight"], state["0.weight"])
    other.load_state_dict(state)
    for k, v in other.state_dict().items():
        np.testing.assert_array_equal(v, state[k])
    before = other.state_dict()
    bad = dict(state)
    bad["3.weight"] = np.zeros((1, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"3\.weight.*\(1, 2, 3, 3\).*\(64, 32, 3, 3\)"):
        other.load_state_dict(bad)
    bad = dict(state)
    bad["0.bias"] = state["0.bias"].astype(np.float64)
    with pytest.raises(ValueError, match="0.bias.*float64.*float32"):
        other.load_state_dict(bad)
    bad = dict(state)
    del bad["7.bias"]
    with pytest.raises(ValueError, match="missing keys.*7.bias"):
        other.load_state_dict(bad)
    for k, v in other.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_to_moves_and_casts_parameters():
    model = build_model("cifar-small", 1, 8, 10, seed=0)
    state = model.state_dict()
    model.to("numpy", dtype=np.float64)
    assert all(p.dtype == np.float64 for p in model.parameters())
    np.testing.assert_allclose(model.state_dict()["0.weight"], state["0.weight"])
    model.to("numpy", dtype=np.float32)
    np.testing.assert_array_equal(model.state_dict()["0.weight"], state["0.weight"])


def test_same_seed_gives_same_weights_and_models_run():
    x = np.random.default_rng(7).standard_normal((2, 1, 8, 8)).astype(np.float32)
    for name in MODEL_NAMES:
        a, b = build_model(name, 1, 8, 10, seed=3), build_model(name, 1, 8, 10, seed=3)
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb
            np.testing.assert_array_equal(va, vb)
        y = a.forward(x)
        assert y.shape == (2, 10) and y.dtype == np.float32
        assert a.backward(np.ones_like(y)).shape == x.shape


def test_resnet20_is_he_et_als_cifar_network():
    model = build_model("resnet20", 3, 32, 10, seed=0)
    convs = [m for _, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [m for _, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert len(convs) + len(linears) == 20 and all(c.bias is None for c in convs)
    assert [c.out_channels for c in convs] == [16] * 7 + [32] * 6 + [64] * 6
    assert [c.stride for c in convs if c.stride != (1, 1)] == [(2, 2)] * 2
    norms = [m for _, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 19 and sum(isinstance(m, nn.BatchNormReLU2d) for m in norms) == 10
    residuals = [m for _, m in model.named_modules() if isinstance(m, nn.Residual)]
    assert [type(r.shortcut).__name__ for r in residuals] == ["NoneType"] * 3 + (
        ["SubsamplePad2d"] + ["NoneType"] * 2) * 2
    assert model.num_parameters() == 269722  # He et al.'s table 6: 0.27 M
    y = model.forward(np.zeros((2, 3, 32, 32), np.float32))
    assert y.shape == (2, 10)


def test_subsample_pad_matches_its_definition_and_gradient():
    rng = np.random.default_rng(5)
    layer = nn.SubsamplePad2d(3, 8, 2)
    x = rng.standard_normal((2, 3, 5, 4))
    y = layer.forward(x)
    want = np.zeros((2, 8, 3, 2))
    want[:, 2:5] = x[:, :, ::2, ::2]
    np.testing.assert_array_equal(y, want)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    assert np.vdot(dx, x) == pytest.approx(np.vdot(dy, y))  # a linear map and its adjoint
    with pytest.raises(ValueError, match="out_channels"):
        nn.SubsamplePad2d(4, 2)


def test_resnet20_fixup_topology_and_zero_initialised_branches():
    model = build_model("resnet20-fixup", 3, 32, 10, seed=0)
    convs = [m for _, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 9 * 2 + 2  # stem, 9 blocks x 2 convs, 2 projection shortcuts
    linears = [m for _, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert len(convs) - 2 + len(linears) == 20
    residuals = [m for _, m in model.named_modules() if isinstance(m, nn.Residual)]
    assert len(residuals) == 9
    for r in residuals:
        assert not np.any(r.body[2].weight.data)
    shortcuts = [r.shortcut for r in residuals if r.shortcut is not None]
    assert [(s.kernel_size, s.stride) for s in shortcuts] == [((1, 1), (2, 2))] * 2
    y = model.forward(np.zeros((1, 3, 32, 32), np.float32))
    assert y.shape == (1, 10)


def test_he_and_glorot_statistics():
    w = nn.init.he_normal((256, 64, 3, 3), np.random.default_rng(0))
    fan_in = 64 * 9
    assert abs(w.std() / np.sqrt(2 / fan_in) - 1) < 0.01 and abs(w.mean()) < 0.002
    assert w.dtype == np.float32
    g = nn.init.glorot_uniform((300, 400), np.random.default_rng(1), dtype=np.float64)
    bound = np.sqrt(6 / 700)
    assert g.max() <= bound and g.min() >= -bound
    assert abs(g.std() / (bound / np.sqrt(3)) - 1) < 0.01
    conv = nn.Conv2d(64, 256, 3, rng=0)
    np.testing.assert_array_equal(conv.weight.data, w)
    assert not np.any(conv.bias.data)


def test_layer_argument_errors():
    with pytest.raises(ValueError, match="groups=3"):
        nn.Conv2d(4, 6, 3, groups=3)
    with pytest.raises(ValueError, match="padding"):
        nn.Conv2d(1, 1, 3, padding="full")
    with pytest.raises(ValueError, match="init"):
        nn.Linear(2, 2, init="orthogonal")
    with pytest.raises(ValueError, match="dtype"):
        nn.Linear(2, 2, dtype=np.float16)
    with pytest.raises(RuntimeError, match="before forward"):
        nn.Linear(2, 2).backward(np.zeros((1, 2), np.float32))


def test_repr_looks_like_pytorch():
    text = repr(nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.Flatten()))
    assert text.splitlines()[0] == "Sequential("
    assert "(0): Conv2d(1, 6, kernel_size=(5, 5), stride=(1, 1), padding=(2, 2))" in text
    assert "(1): ReLU()" in text and text.endswith(")")


@pytest.mark.parametrize("make_opt", [lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
                                      lambda ps: optim.Adam(ps, lr=1e-2)])
def test_training_step_on_kernels_matches_numpy(be, make_opt):
    from gpuconv import use_backend
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
    labels = np.array([1, 5, 9], np.int32)
    results = {}
    for name, backend in (("numpy", "numpy"), ("kernels", be)):
        with use_backend(backend) as b:
            model = build_model("lenet", 1, 8, 10, seed=0)
            opt = make_opt(model.parameters())
            loss = nn.SoftmaxCrossEntropy()
            for _ in range(2):
                loss(model.forward(b.asarray(x)), b.asarray(labels))
                model.backward(loss.backward())
                opt.step()
            results[name] = (model.state_dict(), {k: nn.to_host(g) for k, g in model.grads.items()})
    for part in (0, 1):
        for k, ref in results["numpy"][part].items():
            assert_close(results["kernels"][part][k], ref, np.float32, what=f"{k} on {be.name}")
