"""Hyper-parameters at and past the kernels' int32 limits, and padding or dilation far larger than
the input: a ValueError naming the argument, or a result computed in memory that follows the
input, output and taps that touch data (never the padded extent), equal on numpy and the
emulator."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import peak_memory

from gpuconv import functional as F
from gpuconv import get_backend, use_backend
from gpuconv.geometry import INT32_MAX

BACKENDS = ["numpy", "emulator"]
X = np.ones((1, 1, 4, 4), np.float32)
W1 = np.ones((1, 1, 1, 1), np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call, name", [
    (lambda: F.max_pool2d(X, 2, stride=2**40), "stride"),
    (lambda: F.max_pool2d(X, 2, stride=2**31), "stride"),
    (lambda: F.max_pool2d(X, (2, 2**31)), r"kernel_size\[1\]"),
    (lambda: F.max_pool2d(X, 2, dilation=(1, 2**33)), r"dilation\[1\]"),
    (lambda: F.max_pool2d(X, 2**31 - 1, padding=2**31), "padding"),
    (lambda: F.avg_pool2d(X, 2, divisor_override=2**31), "divisor_override"),
    (lambda: F.avg_pool2d(X, 2, divisor_override=2**64), "divisor_override"),
    (lambda: F.l2_pool2d(X, 2, stride=(2**35, 1)), r"stride\[0\]"),
    (lambda: F.conv2d(X, W1, stride=2**40), "stride"),
    (lambda: F.conv2d(X, W1, padding=(0, 2**31)), r"padding\[1\]"),
    (lambda: F.conv2d(X, W1, dilation=2**31), "dilation"),
    (lambda: F.conv2d(X, W1, groups=2**31), "groups"),
    (lambda: F.max_pool2d_backward(X, X.astype(np.int32), (1, 1, 2**31, 4), 1), r"x_shape\[2\]"),
])
def test_hyper_parameters_past_int32_are_value_errors_naming_the_argument(backend, call, name):
    with use_backend(backend):
        with pytest.raises(ValueError, match=name):
            call()


def test_int32_max_itself_is_accepted_where_the_geometry_allows_it():
    with use_backend("numpy"):
        assert F.max_pool2d(X, 2, stride=INT32_MAX)[0].shape == (1, 1, 1, 1)
        assert F.avg_pool2d(X, 2, divisor_override=INT32_MAX).shape == (1, 1, 2, 2)


@pytest.mark.parametrize("call, name", [
    # Window coordinates p*stride - pad + i*dilation must fit the kernels' int32 arithmetic.
    (lambda: F.max_pool2d(X, 3, dilation=2**30, padding=2**30), "int32 coordinates"),
    # The count_include_pad divisor is a product of window extents, computed in int32.
    (lambda: F.avg_pool2d(np.ones((1, 1, 1, 1), np.float32), 2**16, stride=1, padding=2**15),
     "kernel_size"),
])
def test_pool_windows_beyond_int32_arithmetic_are_refused(call, name):
    with pytest.raises(ValueError, match=name):
        call()



def _max_backward(x, kernel_size, **kw):
    y, idx = F.max_pool2d(x, kernel_size, **kw)
    return F.max_pool2d_backward(_ramp(y.shape), idx, x.shape, kernel_size, **kw)


def _avg_backward(x, kernel_size, **kw):
    y = F.avg_pool2d(x, kernel_size, **kw)
    return F.avg_pool2d_backward(_ramp(y.shape), x.shape, kernel_size, **kw)


def _ramp(shape):
    return get_backend().asarray(np.arange(1, np.prod(shape) + 1, dtype=np.float32).reshape(shape))


ONE = np.full((1, 1, 1, 1), 3.0, np.float32)
THREE = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
# (call, description): each names padding/dilation whose padded extent would be exabytes.
HUGE_PADDING = [
    (lambda: F.max_pool2d(ONE, 2, stride=1, padding=2**29, dilation=2**30), "max, empty window"),
    (lambda: F.max_pool2d(THREE, (2, 3), stride=(1, 2**20), padding=(1, 2**20), dilation=(2, 2**20)),
     "max, dilated"),
    (lambda: _max_backward(THREE, (2, 3), stride=(1, 2**20), padding=(1, 2**20), dilation=(2, 2**20)),
     "max backward"),
    (lambda: F.avg_pool2d(ONE, (2**30, 1), stride=1, padding=(2**29, 0)), "avg"),
    (lambda: F.avg_pool2d(THREE, (2**15, 2**15), stride=2**14, padding=2**14,
                          count_include_pad=False), "avg, no pad count"),
    (lambda: _avg_backward(THREE, (2**15, 2**15), stride=2**14, padding=2**14), "avg backward"),
    (lambda: F.l2_pool2d(THREE, (2**15, 3), stride=1, padding=(2**14, 1)), "l2"),
    (lambda: F.conv2d(ONE, np.ones((1, 1, 2, 2), np.float32), padding=2**27, dilation=2**28),
     "conv, dilation"),
    (lambda: F.conv2d(THREE, np.ones((2, 1, 2, 2), np.float32), padding=2**27, stride=2**27),
     "conv, stride"),
    (lambda: F.conv2d_backward(np.ones((1, 1, 3, 3), np.float32), THREE,
                               np.ones((1, 1, 2, 2), np.float32), padding=2**27, stride=2**27),
     "conv backward, stride"),
    (lambda: F.conv2d_backward(np.ones((1, 1, 1, 1), np.float32), ONE,
                               np.ones((1, 1, 2, 2), np.float32), padding=2**27, dilation=2**28),
     "conv backward, dilation"),
]


@pytest.mark.parametrize("case", range(len(HUGE_PADDING)), ids=[d for _, d in HUGE_PADDING])
def test_huge_padding_and_dilation_cost_what_the_data_costs_and_match_the_emulator(case):
    call, _ = HUGE_PADDING[case]
    with use_backend("numpy"):
        ref, peak = peak_memory(call)
    assert peak < 1 << 20, f"numpy reference took {peak} bytes"
    with use_backend("emulator"):
        out = call()
    refs, outs = (ref, out) if isinstance(ref, tuple) else ((ref,), (out,))
    for r, o in zip(refs, outs):
        if r is None:
            continue
        np.testing.assert_allclose(np.asarray(o), r, rtol=1e-6, atol=0)
