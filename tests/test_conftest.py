"""The shared checks of tests/conftest.py can fail: assert_close, the determinism check, launch recording."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close, assert_deterministic, in_another_order, recording_launches

from gpuconv import tolerances


def test_assert_close_uses_the_documented_tolerances():
    ref = np.array([1.0, -2.0, 0.5])
    for dtype, tol in ((np.float32, tolerances.FLOAT32_RTOL), (np.float64, tolerances.FLOAT64_RTOL)):
        assert_close(ref + 0.9 * tol * 2, ref, dtype)               # scaled by max|ref| = 2
        with pytest.raises(AssertionError, match="exceeds the tolerance"):
            assert_close(ref + 1.1 * tol * 2, ref, dtype)
    assert_close(ref + 0.9e-3 * 2, ref, np.float32, precision="tf32")
    with pytest.raises(AssertionError, match="tf32"):
        assert_close(ref + 1.1e-3 * 2, ref, np.float32, precision="tf32")
    with pytest.raises(ValueError, match="precision"):
        assert_close(ref, ref, precision="fp16")


def test_assert_close_refuses_nan_shape_and_unequal_infinities_and_names_what():
    ref = np.array([1.0, -np.inf])
    assert_close(ref.copy(), ref, np.float64)                         # equal infinities agree
    for out in (np.array([1.0, np.inf]), np.array([np.nan, -np.inf]), np.array([1.0, 0.0])):
        with pytest.raises(AssertionError, match="dx of layer 3"):
            assert_close(out, ref, np.float64, what="dx of layer 3")
    with pytest.raises(AssertionError, match="shape"):
        assert_close(np.zeros(3), np.zeros(2))
    with pytest.raises(AssertionError):
        assert_close(np.array([np.nan]), np.array([np.nan]), np.float64)


def test_another_order_is_a_random_order_emulator_with_the_same_versions(emu):
    with emu.use_versions({"elementwise": 1, "max_pool2d_backward": 1}):
        other = in_another_order(emu)
    assert other is not emu and other.executor.order == "random" and other.poison == emu.poison
    assert other.version("elementwise") == 1 and other.version("max_pool2d_backward") == 1


def test_assert_deterministic_fails_when_the_second_run_differs(emu):
    calls = []

    def flaky(be, x):
        calls.append(be)
        return x + (len(calls) - 1) * 1e-3, None

    with pytest.raises(AssertionError, match="output 0 differs"):
        assert_deterministic(emu, flaky, np.ones(3), what="flaky")
    assert calls[0] is emu and calls[1].executor.order == "random"
    assert_deterministic(emu, "relu", np.arange(-3.0, 3.0), what="relu")


def test_recording_launches_restores_the_launch_and_can_skip_it(emu):
    real = emu.launch
    x = np.arange(-4.0, 4.0, dtype=np.float32)
    with recording_launches(emu, run=False) as launches:
        y = emu.relu(x)
    assert emu.launch == real and len(launches) == 1
    fn, grid, block, args, shared_mem = launches[0]
    assert args[0] is x and len(grid) == len(block) == 3 and shared_mem == 0
    assert np.isnan(y).all()                                           # not launched: still poisoned
    with recording_launches(emu) as launches:
        y = emu.relu(x)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
