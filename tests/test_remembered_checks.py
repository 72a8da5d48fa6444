"""The functional API remembers the outcome of its argument checks per call signature (the
hot path of a training step); a remembered outcome must never let through a call that the full
check refuses."""
from __future__ import annotations

import numpy as np
import pytest

from gpuconv import functional as F
from gpuconv.backends import use_backend

X = np.zeros((2, 4, 8, 8), np.float32)
W = np.zeros((6, 4, 3, 3), np.float32)
DY = np.zeros((2, 6, 8, 8), np.float32)


@pytest.mark.parametrize("bad", [
    {"stride": True}, {"stride": 1.0}, {"stride": (1, True)}, {"stride": np.float32(1)},
    {"padding": True}, {"padding": 1.0}, {"padding": (1, 1.0)}, {"dilation": True},
    {"groups": True}, {"groups": 1.0},
])
def test_a_value_equal_to_a_good_one_is_still_refused(bad):
    good = {"stride": 1, "padding": 1, "dilation": 1, "groups": 1}
    with use_backend("numpy"):
        F.conv2d(X, W, None, **good)  # remembered
        F.conv2d_backward(DY, X, W, **good)
        with pytest.raises(TypeError):
            F.conv2d(X, W, None, **{**good, **bad})
        with pytest.raises(TypeError):
            F.conv2d_backward(DY, X, W, **{**good, **bad})


def test_arrays_of_another_dtype_or_shape_are_checked_afresh():
    with use_backend("numpy"):
        F.conv2d(X, W, np.zeros(6, np.float32), padding=1)
        with pytest.raises(TypeError, match="dtype"):
            F.conv2d(X, W, np.zeros(6, np.float64), padding=1)
        with pytest.raises(ValueError, match="bias"):
            F.conv2d(X, W, np.zeros(5, np.float32), padding=1)
        with pytest.raises(TypeError, match="dtype"):
            F.conv2d(X.astype(np.int32), W, None, padding=1)
        F.conv2d_backward(DY, X, W, padding=1)
        with pytest.raises(ValueError, match="dy"):
            F.conv2d_backward(DY[:, :, :7], X, W, padding=1)


def test_each_signature_gets_its_own_geometry():
    with use_backend("numpy"):
        for padding, hw in ((1, (8, 8)), (0, (6, 6)), ("same", (8, 8)), ((0, 1), (6, 8)), (1, (8, 8))):
            assert F.conv2d(X, W, None, padding=padding).shape == (2, 6) + hw
