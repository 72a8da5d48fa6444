"""nn.BatchNorm2d / nn.BatchNormReLU2d: PyTorch's nn.BatchNorm2d over several training steps on
every backend (outputs, gradients, running statistics, num_batches_tracked, then eval mode),
state_dict keys and values PyTorch loads, checkpoints, moves between backends and dtypes, and
argument checks."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close

from gpuconv import functional as F
from gpuconv import nn, use_backend
from gpuconv.nn.module import to_host

BACKENDS = ["numpy", "emulator"]


def _close(got, want, dtype, what):
    assert_close(to_host(got), np.asarray(want), dtype, what=what)


@pytest.mark.torch
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("momentum,affine,relu", [(0.1, True, False), (None, True, True),
                                                  (0.5, False, False)])
def test_training_steps_then_eval_match_torch(backend, momentum, affine, relu):
    torch = pytest.importorskip("torch")
    dtype = np.float64 if backend == "numpy" else np.float32
    rng = np.random.default_rng(2)
    C = 3
    layer_type = nn.BatchNormReLU2d if relu else nn.BatchNorm2d
    with use_backend(backend) as be:
        ours = layer_type(C, eps=1e-4, momentum=momentum, affine=affine, dtype=dtype)
        theirs = torch.nn.BatchNorm2d(C, eps=1e-4, momentum=momentum, affine=affine).double()
        if affine:
            w, b = rng.standard_normal(C), rng.standard_normal(C)
            ours.weight.data = be.asarray(w.astype(dtype))
            ours.bias.data = be.asarray(b.astype(dtype))
            with torch.no_grad():
                theirs.weight.copy_(torch.tensor(w))
                theirs.bias.copy_(torch.tensor(b))
        for step in range(4):
            x = rng.standard_normal((5, C, 4, 3)) * (1 + step) + step
            dy = rng.standard_normal(x.shape)
            tx = torch.tensor(x, requires_grad=True)
            ty = theirs(tx)
            if relu:
                ty = torch.relu(ty)
            ty.backward(torch.tensor(dy))
            y = ours.forward(be.asarray(x.astype(dtype)))
            dx = ours.backward(be.asarray(dy.astype(dtype)))
            what = f"step {step}"
            _close(y, ty.detach().numpy(), dtype, f"y {what}")
            _close(dx, tx.grad.numpy(), dtype, f"dx {what}")
            if affine:
                _close(ours.weight.grad, theirs.weight.grad.numpy(), dtype, f"dweight {what}")
                _close(ours.bias.grad, theirs.bias.grad.numpy(), dtype, f"dbias {what}")
                theirs.zero_grad()
            _close(ours.running_mean, theirs.running_mean.numpy(), dtype, f"running_mean {what}")
            _close(ours.running_var, theirs.running_var.numpy(), dtype, f"running_var {what}")
            assert ours.num_batches_tracked == int(theirs.num_batches_tracked) == step + 1
        ours.eval()
        theirs.eval()
        x = rng.standard_normal((2, C, 4, 3))
        tx = torch.tensor(x, requires_grad=True)
        ty = theirs(tx)
        if relu:
            ty = torch.relu(ty)
        dy = rng.standard_normal(x.shape)
        ty.backward(torch.tensor(dy))
        _close(ours.forward(be.asarray(x.astype(dtype))), ty.detach().numpy(), dtype, "eval y")
        _close(ours.backward(be.asarray(dy.astype(dtype))), tx.grad.numpy(), dtype, "eval dx")
        assert ours.num_batches_tracked == 4  # eval batches are not counted


@pytest.mark.torch
def test_state_dict_has_torch_keys_and_loads_both_ways():
    torch = pytest.importorskip("torch")
    ours = nn.Sequential(nn.Conv2d(2, 3, 3, bias=False, rng=0), nn.BatchNorm2d(3), nn.ReLU())
    theirs = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, bias=False), torch.nn.BatchNorm2d(3),
                                 torch.nn.ReLU())
    ours.forward(np.random.default_rng(0).standard_normal((4, 2, 5, 5)).astype(np.float32))
    state = ours.state_dict()
    assert list(state) == list(theirs.state_dict())
    assert state["1.num_batches_tracked"].dtype == np.int64 and state["1.num_batches_tracked"] == 1
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    assert int(theirs[1].num_batches_tracked) == 1
    np.testing.assert_array_equal(theirs[1].running_var.numpy(), state["1.running_var"])
    with torch.no_grad():
        theirs[1].running_mean.add_(1.0)
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    np.testing.assert_array_equal(to_host(ours[1].running_mean), theirs[1].running_mean.numpy())


def test_checkpoint_round_trip_keeps_running_statistics(tmp_path):
    rng = np.random.default_rng(1)
    model = nn.Sequential(nn.BatchNormReLU2d(2), nn.BatchNorm2d(2, track_running_stats=False))
    model.forward(rng.standard_normal((3, 2, 4, 4)).astype(np.float32))
    nn.save_checkpoint(tmp_path / "bn.npz", model)
    fresh = nn.Sequential(nn.BatchNormReLU2d(2), nn.BatchNorm2d(2, track_running_stats=False))
    nn.load_checkpoint(tmp_path / "bn.npz", fresh)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(fresh.state_dict()[k], v, err_msg=k)
    assert fresh[0].num_batches_tracked == 1
    assert "1.running_mean" not in fresh.state_dict()


def test_counter_loads_from_a_numpy_scalar():
    layer = nn.BatchNorm2d(3)
    layer.load_state_dict(dict(layer.state_dict(), num_batches_tracked=np.int64(7)))
    assert layer.num_batches_tracked == 7


def test_wrong_buffer_shape_or_dtype_is_named_and_leaves_the_layer_unchanged():
    layer = nn.BatchNorm2d(3)
    state = layer.state_dict()
    for key, value, words in (("running_mean", np.zeros(4, np.float32), "shape"),
                              ("num_batches_tracked", np.array(0.0), "dtype")):
        bad = dict(state, **{key: value})
        with pytest.raises(ValueError, match=f"{key}.*{words}"):
            layer.load_state_dict(bad)
    np.testing.assert_array_equal(to_host(layer.running_var), np.ones(3, np.float32))


def test_to_moves_float_buffers_and_keeps_the_counter_on_the_host():
    layer = nn.BatchNorm2d(2)
    layer.forward(np.random.default_rng(0).standard_normal((3, 2, 2, 2)).astype(np.float32))
    layer.to("emulator", np.float64)
    assert layer.running_mean.dtype == np.float64 and layer.running_var.dtype == np.float64
    assert isinstance(layer._buffers["num_batches_tracked"], np.ndarray)
    assert layer._buffers["num_batches_tracked"].dtype == np.int64 and layer.num_batches_tracked == 1


def test_eval_without_running_statistics_uses_the_batch_and_layer_grads_are_set():
    rng = np.random.default_rng(3)
    layer = nn.BatchNorm2d(2, track_running_stats=False, dtype=np.float64).eval()
    x = rng.standard_normal((4, 2, 3, 3))
    y = layer.forward(x)
    ref, mean, invstd = F.batch_norm(x, None, None, layer.weight.data, layer.bias.data, training=True)
    np.testing.assert_array_equal(y, ref)
    dy = rng.standard_normal(x.shape)
    dx = layer.backward(dy)
    rdx, rdw, rdb = F.batch_norm_backward(dy, x, layer.weight.data, mean, invstd, training=True)
    np.testing.assert_array_equal(dx, rdx)
    np.testing.assert_array_equal(layer.weight.grad, rdw)
    np.testing.assert_array_equal(layer.bias.grad, rdb)


@pytest.mark.parametrize("kwargs,exc,words", [
    (dict(num_features=0), ValueError, "num_features"),
    (dict(num_features=2, eps=0.0), ValueError, "eps"),
    (dict(num_features=2, momentum=1.5), ValueError, "momentum"),
    (dict(num_features=2, affine=1), TypeError, "affine"),
    (dict(num_features=2, track_running_stats="yes"), TypeError, "track_running_stats"),
    (dict(num_features=2, dtype=np.int32), ValueError, "dtype"),
])
def test_layer_arguments_are_checked(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        nn.BatchNorm2d(**kwargs)


def test_layer_input_checks_and_failed_forward_does_not_count():
    layer = nn.BatchNorm2d(3)
    with pytest.raises(ValueError, match="rank 4"):
        layer.forward(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="running_mean"):
        layer.forward(np.zeros((2, 4, 2, 2), np.float32))
    with pytest.raises(ValueError, match="more than one value per channel"):
        layer.forward(np.zeros((1, 3, 1, 1), np.float32))
    assert layer.num_batches_tracked == 0
    with pytest.raises(RuntimeError, match="before forward"):
        nn.BatchNorm2d(2).backward(np.zeros((2, 2, 2, 2), np.float32))
