"""The draws of batch augmentation shared by every backend: each image's parameters are a
counter-based hash of (seed, epoch, image index), so an image gets the same crop, flip and
cutout on every backend and in every batch it lands in. ``cuda/augment.cu`` computes the same
integers on the device.

With ``key`` the seed's key and ``mix`` the hash of ``gpuconv.counter_hash``, stream s of image i
in epoch e is::

    draw(e, i, s) = mix(mix(i ^ ekey(e)) + s * 0x9E3779B9),  ekey(e) = mix(key ^ mix(e ^ 0x85EBCA6B))

(uint32 arithmetic, e and i taken modulo 2^32), and ``below(h, n) = (h * n) >> 32`` maps a draw to
[0, n). Per image, as int32 columns of ``augment_params``:

* flip: random ``draw(e, i, 0) >> 31``; alternate ``(draw(0, i, 0) >> 31) ^ (e & 1)`` (a fixed
  random half of the images flipped in even epochs, the other half in odd ones: the
  derandomised flip of Jordan's airbench); none 0;
* crop origin (oy, ox) in the padded image: ``below(draw(e, i, 1), 2p + 1)``,
  ``below(draw(e, i, 2), 2p + 1)`` (p = crop_padding);
* cutout centre (cy, cx): ``below(draw(e, i, 3), H)``, ``below(draw(e, i, 4), W)``; the square
  covers rows cy - cutout//2 ... cy - cutout//2 + cutout - 1 (clipped to the image), and columns
  alike.
"""
from __future__ import annotations

import numpy as np

from .counter_hash import GOLDEN, mix32, seed_key, seed_words
from .geometry import AugmentSpec

__all__ = ["EPOCH_SALT", "PARAMS", "augment_params"]

EPOCH_SALT = 0x85EBCA6B
PARAMS = ("flip", "oy", "ox", "cy", "cx")  # columns of augment_params


def _below(h: np.ndarray, n: int) -> np.ndarray:
    return ((h.astype(np.uint64) * np.uint64(n)) >> np.uint64(32)).astype(np.int32)


def augment_params(seed: int, epoch: int, indices: np.ndarray, spec: AugmentSpec) -> np.ndarray:
    """int32 (N, 5): flip, oy, ox, cy, cx of each image (``indices``: the images' indices)."""
    key = seed_key(*seed_words(seed))
    idx = np.asarray(indices).astype(np.int64).astype(np.uint32)

    def draw(e: int, stream: int) -> np.ndarray:
        with np.errstate(over="ignore"):
            ekey = mix32(key ^ mix32(np.uint32(e % 2**32) ^ np.uint32(EPOCH_SALT)))
            return mix32(mix32(idx ^ ekey) + np.uint32(stream * GOLDEN % 2**32))

    out = np.zeros((idx.size, len(PARAMS)), np.int32)
    if spec.flip == "random":
        out[:, 0] = draw(epoch, 0) >> np.uint32(31)
    elif spec.flip == "alternate":
        out[:, 0] = (draw(0, 0) >> np.uint32(31)) ^ np.uint32(epoch & 1)
    span = 2 * spec.crop_padding + 1
    out[:, 1] = _below(draw(epoch, 1), span)
    out[:, 2] = _below(draw(epoch, 2), span)
    out[:, 3] = _below(draw(epoch, 3), spec.H)
    out[:, 4] = _below(draw(epoch, 4), spec.W)
    return out
