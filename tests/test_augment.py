"""Batch augmentation (functional.augment): the NumPy backend against a per-image loop written from
the rule in gpuconv/augment_rng.py (np.pad for the padding), the kernels on the emulator (and,
marked ``gpu``, through CuPy) against the NumPy backend bit for bit, the statistics of the draws,
and argument checks."""
from __future__ import annotations

import numpy as np
import pytest

from gpuconv import functional as F
from gpuconv import use_backend
from gpuconv.augment_rng import augment_params
from gpuconv.geometry import augment_spec

CONFIGS = [dict(crop_padding=2, flip="random", cutout=3),
           dict(crop_padding=3, padding_mode="reflect", flip="alternate", cutout=0),
           dict(crop_padding=0, flip="none", cutout=4),
           dict(crop_padding=4, padding_mode="reflect", flip="random", cutout=5),
           dict(crop_padding=1, flip="alternate", cutout=1),
           dict()]


def loop_reference(x, seed, epoch, indices, crop_padding=0, padding_mode="zeros", flip="none", cutout=0):
    """Image by image: pad, crop at (oy, ox), flip, zero the cutout square."""
    spec = augment_spec(x.shape, crop_padding, padding_mode, flip, cutout)
    prm = augment_params(seed, epoch, indices, spec)
    N, C, H, W = x.shape
    p = crop_padding
    out = np.empty_like(x)
    for n in range(N):
        do_flip, oy, ox, cy, cx = (int(v) for v in prm[n])
        mode = "reflect" if padding_mode == "reflect" else "constant"
        padded = np.pad(x[n], ((0, 0), (p, p), (p, p)), mode=mode)
        img = padded[:, oy:oy + H, ox:ox + W].copy()
        if do_flip:
            img = img[:, :, ::-1].copy()
        top, left = cy - cutout // 2, cx - cutout // 2
        for h in range(H):
            for w in range(W):
                if top <= h < top + cutout and left <= w < left + cutout:
                    img[:, h, w] = 0
        out[n] = img
    return out


def _batch(rng, shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("config", CONFIGS)
def test_numpy_backend_follows_the_per_image_rule(config):
    rng = np.random.default_rng(1)
    x = _batch(rng, (9, 2, 7, 6), np.float64)
    indices = rng.permutation(1000)[:9]
    for epoch in (0, 1, 5):
        with use_backend("numpy"):
            got = F.augment(x, 123, epoch, indices, **config)
        np.testing.assert_array_equal(got, loop_reference(x, 123, epoch, indices, **config))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("config", CONFIGS)
def test_kernels_give_the_numpy_backends_batch_bit_for_bit(be, config, dtype):
    rng = np.random.default_rng(2)
    for shape, seed, epoch in [((5, 3, 9, 8), 7, 0), ((3, 1, 6, 11), 2**40 + 3, 1),
                               ((1, 2, 5, 5), 0, 2**33 + 1), ((16, 3, 8, 8), 99, 12)]:
        x = _batch(rng, shape, dtype)
        indices = rng.integers(0, 2**31 - 1, shape[0]).astype(np.int64)
        with use_backend("numpy"):
            want = F.augment(x, seed, epoch, indices, **config)
        with use_backend(be):
            got = be.to_numpy(F.augment(be.asarray(x), seed, epoch, be.asarray(indices), **config))
        assert got.dtype == dtype
        assert got.tobytes() == want.tobytes(), (shape, seed, epoch, config)


def test_kernels_without_indices_and_with_an_empty_batch(be):
    x = _batch(np.random.default_rng(3), (4, 2, 5, 5))
    with use_backend(be):
        got = be.to_numpy(F.augment(be.asarray(x), 1, 2, crop_padding=1, flip="random"))
        empty = F.augment(be.asarray(x[:0]), 1, 2, crop_padding=1, flip="random")
    with use_backend("numpy"):
        want = F.augment(x, 1, 2, np.arange(4), crop_padding=1, flip="random")
    np.testing.assert_array_equal(got, want)
    assert empty.shape == (0, 2, 5, 5)


def test_draws_depend_on_the_image_not_on_its_batch():
    rng = np.random.default_rng(4)
    x = _batch(rng, (6, 1, 8, 8))
    idx = np.arange(100, 106)
    perm = rng.permutation(6)
    with use_backend("numpy"):
        whole = F.augment(x, 3, 1, idx, crop_padding=2, flip="random", cutout=2)
        shuffled = F.augment(x[perm], 3, 1, idx[perm], crop_padding=2, flip="random", cutout=2)
        alone = F.augment(x[2:3], 3, 1, idx[2:3], crop_padding=2, flip="random", cutout=2)
    np.testing.assert_array_equal(shuffled, whole[perm])
    np.testing.assert_array_equal(alone, whole[2:3])


def test_draw_statistics_and_alternating_flip():
    n = 20000
    spec = augment_spec((n, 1, 10, 12), 3, "zeros", "random", 4)
    idx = np.arange(n)
    p0, p1 = augment_params(5, 0, idx, spec), augment_params(5, 1, idx, spec)
    # Random flips: about half, independently drawn in each epoch.
    for p in (p0, p1):
        assert abs(p[:, 0].mean() - 0.5) < 0.02  # 5.6 standard deviations of a binomial mean
    assert abs((p0[:, 0] == p1[:, 0]).mean() - 0.5) < 0.02
    # Crop origins uniform over [0, 2p], cutout centres over the image.
    for col, span in ((1, 7), (2, 7), (3, 10), (4, 12)):
        counts = np.bincount(p0[:, col], minlength=span)
        assert len(counts) == span and counts.min() > 0.8 * n / span and counts.max() < 1.2 * n / span
    # Alternating: each image flipped in every other epoch, half of them in each epoch.
    alt = augment_spec((n, 1, 10, 12), 3, "zeros", "alternate", 0)
    flips = np.stack([augment_params(5, e, idx, alt)[:, 0] for e in range(4)])
    assert abs(flips[0].mean() - 0.5) < 0.02
    np.testing.assert_array_equal(flips[1], 1 - flips[0])
    np.testing.assert_array_equal(flips[2], flips[0])
    np.testing.assert_array_equal(flips[3], flips[1])
    # A different seed draws other images.
    assert abs((augment_params(6, 0, idx, alt)[:, 0] == flips[0]).mean() - 0.5) < 0.02


def test_cutout_zeroes_the_square_clipped_to_the_image():
    x = np.ones((200, 1, 9, 9), np.float32)
    with use_backend("numpy"):
        y = F.augment(x, 0, 0, cutout=4)
    zeros = (y == 0).sum(axis=(1, 2, 3))
    assert zeros.max() == 16 and zeros.min() >= 4  # whole square inside, or a corner of it
    assert (zeros < 16).any()


@pytest.mark.parametrize("kwargs,exc,words", [
    (dict(x=np.zeros((2, 3, 4), np.float32)), ValueError, ["x", "rank 4"]),
    (dict(x=np.zeros((2, 1, 4, 4), np.int32)), TypeError, ["x", "int32"]),
    (dict(crop_padding=-1), ValueError, ["crop_padding"]),
    (dict(crop_padding=1.5), TypeError, ["crop_padding"]),
    (dict(padding_mode="edge"), ValueError, ["padding_mode", "'edge'"]),
    (dict(padding_mode="reflect", crop_padding=4), ValueError, ["reflect", "crop_padding < min(H, W) = 4"]),
    (dict(flip="vertical"), ValueError, ["flip", "'vertical'"]),
    (dict(cutout=9), ValueError, ["cutout", "8"]),
    (dict(seed=-1), ValueError, ["seed"]),
    (dict(seed=1.0), TypeError, ["seed"]),
    (dict(epoch=-1), ValueError, ["epoch"]),
    (dict(indices=np.arange(3)), ValueError, ["indices", "(2,)"]),
    (dict(indices=np.array([0.0, 1.0])), TypeError, ["indices", "integer"]),
    (dict(indices=np.array([0, -1])), ValueError, ["indices", "[0, 2^31)"]),
    (dict(indices=np.array([0, 2**31])), ValueError, ["indices", "[0, 2^31)"]),
    (dict(indices=[0, 1]), TypeError, ["indices"]),
])
def test_augment_rejects_bad_arguments(kwargs, exc, words):
    args = dict(x=np.zeros((2, 1, 4, 8), np.float32), seed=0, epoch=0)
    args.update(kwargs)
    with use_backend("numpy"), pytest.raises(exc) as info:
        F.augment(**args)
    for w in words:
        assert w in str(info.value), (w, str(info.value))
