"""Output-size and padding rules (gpuconv.geometry), checked against hand-computed cases and torch."""
import itertools

import numpy as np
import pytest

from gpuconv.geometry import avg_pool_divisor, conv2d_geometry, pool2d_geometry, pool_output_size


def test_conv_output_size_hand_cases():
    # 28x28, 5x5, pad 2, stride 1 -> 28x28 (LeNet conv1)
    g = conv2d_geometry((128, 1, 28, 28), (6, 1, 5, 5), padding=2)
    assert (g.P, g.Q) == (28, 28)
    # 32x32, 3x3, stride 2, pad 1 -> floor((32 + 2 - 3) / 2) + 1 = 16
    g = conv2d_geometry((1, 16, 32, 32), (32, 16, 3, 3), stride=2, padding=1)
    assert (g.P, g.Q) == (16, 16)
    # dilation 2: effective 5x5 on 9x7, no pad -> 5x3
    g = conv2d_geometry((1, 1, 9, 7), (1, 1, 3, 3), dilation=2)
    assert (g.P, g.Q) == (5, 3)
    # 'valid' is padding 0
    assert conv2d_geometry((1, 1, 9, 7), (1, 1, 3, 3), padding="valid").P == 7


@pytest.mark.parametrize("size,k,s,d", list(itertools.product([5, 6, 7, 8], [1, 2, 3, 4], [1, 2, 3], [1, 2])))
def test_same_padding_keeps_ceil_size_and_puts_extra_bottom_right(size, k, s, d):
    """TensorFlow's SAME, stated as properties: ceil(size / stride) outputs, the least total padding
    with which their windows fit, split evenly with the odd pixel at the bottom/right."""
    keff = (k - 1) * d + 1
    g = conv2d_geometry((1, 1, size, size + 1), (1, 1, k, k), stride=s, padding="same", dilation=d)
    for n, out, before, after in ((size, g.P, g.pad_h, g.pad_bottom), (size + 1, g.Q, g.pad_w, g.pad_right)):
        assert out == -(-n // s)
        total = before + after
        assert (out - 1) * s + keff <= n + total                      # the last window fits
        assert total == 0 or (out - 1) * s + keff > n + total - 1     # with one pixel less it would not
        assert after - before in (0, 1)


def test_flops_of_lenet_conv1():
    g = conv2d_geometry((128, 1, 28, 28), (6, 1, 5, 5), padding=2)
    assert g.flops == 2 * 128 * 6 * 1 * 25 * 28 * 28


@pytest.mark.parametrize("args,match", [
    (dict(x_shape=(1, 4, 8, 8), w_shape=(6, 3, 3, 3), groups=2), "weight has 3 input channels"),
    (dict(x_shape=(1, 3, 8, 8), w_shape=(6, 1, 3, 3), groups=2), "groups=2 must divide the input channels"),
    (dict(x_shape=(1, 4, 8, 8), w_shape=(5, 2, 3, 3), groups=2), "must divide the output channels"),
    (dict(x_shape=(1, 3, 8), w_shape=(6, 3, 3, 3)), "x must have rank 4"),
    (dict(x_shape=(1, 3, 2, 2), w_shape=(6, 3, 3, 3)), "larger than the padded input"),
    (dict(x_shape=(1, 3, 8, 8), w_shape=(6, 3, 3, 3), padding="full"), "padding must be"),
    (dict(x_shape=(1, 3, 8, 8), w_shape=(6, 3, 3, 3), padding=-1), "padding must be >= 0"),
    (dict(x_shape=(1, 3, 8, 8), w_shape=(6, 3, 3, 3), stride=0), "stride must be >= 1"),
    (dict(x_shape=(1, 3, 8, 8), w_shape=(6, 3, 3, 3), padding=2**28), "coordinate limit"),
    (dict(x_shape=(1, 3, 8, 8), w_shape=(6, 3, 3, 3), dilation=2**28, padding="same"), "coordinate limit"),
])
def test_conv_geometry_refuses_bad_arguments(args, match):
    x_shape, w_shape = args.pop("x_shape"), args.pop("w_shape")
    with pytest.raises(ValueError, match=match):
        conv2d_geometry(x_shape, w_shape, **args)


@pytest.mark.parametrize("bad", [1.5, True, "2", None])
def test_non_integer_hyper_parameters_are_type_errors(bad):
    with pytest.raises(TypeError, match="stride"):
        conv2d_geometry((1, 1, 8, 8), (1, 1, 3, 3), stride=bad)


def test_pool_ceil_mode_drops_window_starting_in_right_padding():
    # H=5, k=2, s=2, p=1: ceil((5+2-2)/2)+1 = 4 windows would start at 6-1=5 >= H -> dropped: 3
    assert pool_output_size(5, 2, 2, 1, 1, True) == 3
    assert pool_output_size(5, 2, 2, 0, 1, True) == 3  # last window starts at 4 < 5: kept
    assert pool_output_size(5, 2, 2, 0, 1, False) == 2


def test_pool_padding_at_most_half_window():
    with pytest.raises(ValueError, match="at most half"):
        pool2d_geometry((1, 1, 8, 8), 2, padding=2)
    pool2d_geometry((1, 1, 8, 8), 3, padding=1)


def test_pool_stride_defaults_to_window():
    g = pool2d_geometry((1, 1, 9, 9), (3, 2))
    assert (g.stride_h, g.stride_w, g.P, g.Q) == (3, 2, 3, 4)


def test_avg_pool_divisor_rules():
    g = pool2d_geometry((1, 1, 4, 4), 3, stride=2, padding=1)
    # window of output (0, 0) covers rows/cols -1..1: 9 cells including padding, 4 real ones
    assert avg_pool_divisor(g, 0, 0, True, None) == 9
    assert avg_pool_divisor(g, 0, 0, False, None) == 4
    assert avg_pool_divisor(g, 0, 0, False, 7) == 7


def test_pool_output_sizes_match_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    for _ in range(300):
        k, s, d = int(rng.integers(1, 5)), int(rng.integers(1, 4)), int(rng.integers(1, 3))
        p = int(rng.integers(0, k // 2 + 1))  # torch's own limit (ours, half the dilated window, is wider)
        h = int(rng.integers((k - 1) * d + 1, 12))
        ceil = bool(rng.integers(0, 2))
        y = torch.nn.functional.max_pool2d(torch.zeros(1, 1, h, h), k, s, p, d, ceil_mode=ceil)
        assert pool2d_geometry((1, 1, h, h), k, s, p, d, ceil).P == y.shape[2], (h, k, s, p, d, ceil)
