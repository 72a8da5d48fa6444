"""Launches of ``cuda/augment.cu``: the per-image draws, then the crop / flip / cutout gather."""
from __future__ import annotations

import numpy as np

from ...counter_hash import seed_words
from ...geometry import FLIP_MODES, AugmentSpec
from .common import check_elements, ctype, grid_1d

FILE = "augment.cu"

VERSIONS = {"augment": (1,)}
DEFAULT_VERSIONS = {"augment": 1}
NAME_EXPRESSIONS = ("augment_params_v1",) + tuple(f"augment_apply_v1<{t}>" for t in ("float", "double"))

BLOCK = 256


def _as_int32(u: int) -> np.int32:
    return np.array(u, dtype=np.uint32).view(np.int32)[()]


def augment(be, x, indices, seed: int, epoch: int, spec: AugmentSpec):
    """x (N, C, H, W), indices int32 (N,) -> augmented y of x's shape and dtype."""
    check_elements("x", x.size)
    v = be.version("augment")
    y = be.empty(x.shape, x.dtype)
    if spec.N == 0:
        return y
    x, indices = be.contiguous(x), be.contiguous(indices)
    params = be.empty((spec.N, 5), np.int32)
    lo, hi = seed_words(seed)
    grid, block = grid_1d(spec.N, BLOCK)
    be.launch(be.function(FILE, f"augment_params_v{v}"), grid, block,
              (indices, params, np.int32(spec.N), np.int32(spec.H), np.int32(spec.W), _as_int32(lo),
               _as_int32(hi), _as_int32(epoch % 2**32), np.int32(spec.crop_padding),
               np.int32(FLIP_MODES.index(spec.flip))))
    if x.size:
        grid, block = grid_1d(x.size, BLOCK)
        be.launch(be.function(FILE, f"augment_apply_v{v}<{ctype(x.dtype)}>"), grid, block,
                  (x, params, y, np.int32(spec.N), np.int32(spec.C), np.int32(spec.H), np.int32(spec.W),
                   np.int32(spec.crop_padding), np.int32(spec.padding_mode == "reflect"),
                   np.int32(spec.cutout)))
    return y
