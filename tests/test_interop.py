"""gpuconv.interop: the equivalent torch module and state_dicts, checked by running both frameworks."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close

from gpuconv import interop, nn, use_backend
from gpuconv.models import build_model

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch,
              pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")]


@pytest.fixture(autouse=True)
def _numpy():
    with use_backend("numpy"):
        yield


def _every_layer(dtype=np.float64):
    """One model holding every layer type of gpuconv.nn, 'same' padding at stride 1 and 2."""
    r = np.random.default_rng(0)
    body = nn.Sequential(nn.Conv2d(4, 4, 3, padding="same", rng=r, dtype=dtype), nn.Tanh(),
                         nn.Conv2d(4, 4, 2, padding="same", rng=r, dtype=dtype))
    return nn.Sequential(
        nn.Conv2d(2, 4, 4, stride=2, padding="same", rng=r, dtype=dtype), nn.ReLU(),
        nn.Residual(body), nn.Residual(nn.Identity(), nn.Conv2d(4, 4, 1, rng=r, dtype=dtype)),
        nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True), nn.Sigmoid(),
        nn.AvgPool2d(2, stride=1, padding=1, count_include_pad=False),
        nn.L2Pool2d(2, stride=2, padding=1, ceil_mode=True),
        nn.Conv2d(4, 6, 3, padding="valid", groups=2, bias=False, rng=r, dtype=dtype),
        nn.Dropout(0.3, seed=0), nn.Flatten(), nn.Linear(6, 5, rng=r, dtype=dtype))


def _both(model, x, dy):
    """(output, input gradient, parameter gradients) of gpuconv and of to_torch(model)."""
    ours_y = model.forward(x)
    ours_dx = model.backward(dy)
    ours_g = {k: g for k, g in model.grads.items()}
    tm = interop.to_torch(model)
    tx = torch.tensor(x, requires_grad=True)
    ty = tm(tx)
    ty.backward(torch.from_numpy(dy))
    theirs_g = {k: p.grad.numpy() for k, p in tm.named_parameters()}
    return (ours_y, ours_dx, ours_g), (ty.detach().numpy(), tx.grad.numpy(), theirs_g)


def _close(a, b, what=""):
    assert_close(a, b, what=what)        # float64 models: gpuconv.tolerances' float64 bound


@pytest.mark.parametrize("name, c, size", [("lenet", 1, 8), ("lenet", 1, 28), ("cifar-small", 3, 12),
                                           ("resnet20", 3, 8), ("resnet20-fixup", 3, 8), ("airbench", 3, 16)])
def test_zoo_models_compute_the_same_in_both_frameworks(name, c, size):
    model = build_model(name, c, size, 10, seed=3, dtype=np.float64)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, c, size, size))
    (y, dx, g), (ty, tdx, tg) = _both(model, x, rng.standard_normal((2, 10)))
    _close(y, ty, "output")
    _close(dx, tdx, "input gradient")
    assert g.keys() == tg.keys()
    for k in g:
        _close(g[k], tg[k], f"gradient of {k}")


def test_every_layer_type_computes_the_same_in_both_frameworks():
    model = _every_layer().eval()                 # dropout draws differ between frameworks
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 2, 11, 9))
    y = model.forward(x)
    (y, dx, g), (ty, tdx, tg) = _both(model, x, rng.standard_normal(y.shape))
    _close(y, ty, "output")
    _close(dx, tdx, "input gradient")
    assert g.keys() == tg.keys()
    for k in g:
        _close(g[k], tg[k], f"gradient of {k}")
    assert not interop.to_torch(model).training and interop.to_torch(model.train()).training


def test_batch_norm_layers_convert_with_their_running_statistics():
    r = np.random.default_rng(4)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, bias=False, rng=r, dtype=np.float64),
                          nn.BatchNormReLU2d(4, dtype=np.float64), nn.SubsamplePad2d(4, 7, 2),
                          nn.BatchNorm2d(7, momentum=None, dtype=np.float64), nn.Flatten())
    x = r.standard_normal((3, 2, 7, 6))
    model.forward(x)                              # running statistics move away from (0, 1)
    tm = interop.to_torch(model)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(tm.state_dict()[k].numpy(), v, err_msg=k)
    x2 = r.standard_normal(x.shape)
    y, ty = model.forward(x2), tm(torch.from_numpy(x2)).detach().numpy()
    _close(y, ty, "training output")
    for k, v in model.state_dict().items():       # both updated their statistics alike
        if v.dtype.kind == "f":
            _close(v, tm.state_dict()[k].numpy(), k)
        else:
            assert int(v) == int(tm.state_dict()[k]) == 2, k
    model.eval()
    tm.eval()
    _close(model.forward(x2), tm(torch.from_numpy(x2)).detach().numpy(), "evaluation output")


def test_state_dict_to_torch_and_back():
    model = _every_layer(np.float32)
    sd = interop.torch_state_dict(model)
    tm = interop.to_torch(model)
    assert list(sd) == list(tm.state_dict()) == list(model.state_dict())
    assert all(sd[k].dtype == torch.float32 for k in sd)
    # torch trains a step; its weights come back into a fresh gpuconv model
    opt = torch.optim.SGD(tm.parameters(), lr=0.1)
    tm.eval()
    tm(torch.randn(2, 2, 11, 9)).square().sum().backward()
    opt.step()
    fresh = _every_layer(np.float32)
    interop.load_torch_state_dict(fresh, tm.state_dict())
    for k, v in fresh.state_dict().items():
        np.testing.assert_array_equal(v, tm.state_dict()[k].numpy())
    assert not np.array_equal(fresh.state_dict()["0.weight"], model.state_dict()["0.weight"])


def test_mismatches_are_named():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, rng=0), nn.Flatten())
    bn = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    with pytest.raises(ValueError, match=r"unexpected keys \['1.weight', '1.bias', '1.running_mean'"):
        interop.load_torch_state_dict(model, bn.state_dict())
    with pytest.raises(ValueError, match="0.weight.*float64.*float32"):
        wide = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3)).double()
        interop.load_torch_state_dict(model, wide.state_dict())

    class Custom(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(ValueError, match="layer Custom has no torch.nn conversion"):
        interop.to_torch(nn.Sequential(Custom()))
