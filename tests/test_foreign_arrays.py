"""Other libraries' arrays (DLPack, CUDA array interface) as op and model inputs."""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv as gc
from gpuconv import functional as F
from gpuconv import nn


class _Exported:
    """An array that exports DLPack from a given device type (2: CUDA), like a GPU tensor."""

    def __init__(self, a: np.ndarray, device_type: int) -> None:
        self._a, self._device = a, device_type
        self.shape, self.dtype = a.shape, a.dtype

    def __dlpack__(self, **kwargs):
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return (self._device, 0)


class _CudaInterface:
    shape, dtype = (1, 1, 3, 3), np.dtype(np.float32)
    __cuda_array_interface__ = {"shape": (1, 1, 3, 3), "typestr": "<f4", "data": (0, False), "version": 3}


@pytest.fixture(autouse=True)
def _numpy():
    with gc.use_backend("numpy"):
        yield


def test_host_dlpack_arrays_are_taken_without_a_copy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    got = F.conv2d(_Exported(x, 1), w, stride=2, padding="same")
    np.testing.assert_array_equal(got, F.conv2d(x, w, stride=2, padding="same"))
    param = np.zeros(3, np.float32)
    F.sgd_step(_Exported(param, 1), np.ones(3, np.float32), lr=0.5)  # in place, through the view
    np.testing.assert_array_equal(param, [-0.5, -0.5, -0.5])


def test_arrays_in_device_memory_get_advice_that_can_be_followed():
    x = np.zeros((1, 1, 3, 3), np.float32)
    w = np.zeros((1, 1, 1, 1), np.float32)
    with pytest.raises(TypeError, match=r"x is a .*_Exported in cuda memory but the active backend "
                                        r"'numpy' works on cpu memory: move it to the host first"):
        F.conv2d(_Exported(x, 2), w)
    with pytest.raises(TypeError, match="weight is a .*_CudaInterface in cuda memory"):
        F.conv2d(x, _CudaInterface())


def test_an_unknown_array_type_is_not_advised_as_a_backend():
    class Strange:
        shape, dtype = (1, 1, 3, 3), np.dtype(np.float32)

    with pytest.raises(TypeError, match="x is a .*Strange, not an array of the active backend") as err:
        F.relu(Strange())
    assert "use_backend" not in str(err.value)


def test_torch_tensors_into_ops_and_models():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, rng=0), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(64, 3, rng=1))
    want = model.forward(x)
    dx_want = model.backward(np.ones_like(want))
    got = model.forward(torch.from_numpy(x))
    dx = model.backward(torch.ones(2, 3))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(dx, dx_want)
    loss, _ = F.softmax_cross_entropy(torch.from_numpy(want), torch.tensor([0, 2]))
    assert np.isfinite(loss)
    with pytest.raises(TypeError, match="x: cannot take the torch.Tensor through DLPack.*detach"):
        F.relu(torch.ones(3, requires_grad=True))
