"""Launches of ``cuda/loss.cu``: softmax cross-entropy (loss stays a 0-d device array) and argmax."""
from __future__ import annotations

import numpy as np

from .common import check_elements, ctype, grid_1d, scalar

FILE = "loss.cu"

VERSIONS = {"softmax_cross_entropy": (1, 2)}
DEFAULT_VERSIONS = {"softmax_cross_entropy": 2}
_TYPES = ("float", "double")
NAME_EXPRESSIONS = (tuple(f"softmax_cross_entropy_v{v}<{t}>" for v in (1, 2) for t in _TYPES)
                    + tuple(f"mean_reduce_v1<{t}>" for t in _TYPES)
                    + tuple(f"argmax_rows_v1<{t}>" for t in _TYPES))

# Block sizes of the v1 loss kernel and of the batch-mean reduction (-D options to every compile).
DEFINES = {"GC_LOSS_BLOCK": 128, "GC_REDUCE_BLOCK": 256}
LOSS_BLOCK = DEFINES["GC_LOSS_BLOCK"]
REDUCE_BLOCK = DEFINES["GC_REDUCE_BLOCK"]
ROWS_PER_BLOCK = 4     # v2: warps (rows) per block, read by the kernel from blockDim.y


def _check_logits(logits) -> None:
    if logits.ndim != 2 or logits.shape[0] < 1 or logits.shape[1] < 1:
        raise ValueError(f"logits must have shape (N, K) with N, K >= 1, got {logits.shape}")
    check_elements("logits", logits.size)


def softmax_cross_entropy(be, logits, labels, label_smoothing: float = 0.0):
    """logits (N, K), labels (N,) int32/int64 -> (loss 0-d array of logits' dtype, dlogits (N, K)).

    The loss is the mean over the batch; it stays on the device (no host round trip).
    ``label_smoothing`` in [0, 1] as in PyTorch (cuda/loss.cu states the formula).
    """
    _check_logits(logits)
    N, K = logits.shape
    if labels.shape != (N,):
        raise ValueError(f"labels must have shape ({N},), got {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be int32 or int64, got {labels.dtype}")
    labels = be.contiguous(labels.astype(np.int32, copy=False))
    logits = be.contiguous(logits)
    t = ctype(logits.dtype)
    dlogits = be.empty(logits.shape, logits.dtype)
    row_loss = be.empty((N,), logits.dtype)
    v = be.version("softmax_cross_entropy")
    fn = be.function(FILE, f"softmax_cross_entropy_v{v}<{t}>")
    if v == 1:
        grid, block = (N, 1, 1), (LOSS_BLOCK, 1, 1)
    else:
        grid, block = (-(-N // ROWS_PER_BLOCK), 1, 1), (32, ROWS_PER_BLOCK, 1)
    be.launch(fn, grid, block, (logits, labels, dlogits, row_loss, np.int32(N), np.int32(K),
                                scalar(logits.dtype, label_smoothing)))
    loss = be.empty((), logits.dtype)
    be.launch(be.function(FILE, f"mean_reduce_v1<{t}>"), (1, 1, 1), (REDUCE_BLOCK, 1, 1),
              (row_loss, loss, np.int32(N)))
    return loss, dlogits


def argmax(be, logits):
    """logits (N, K) -> int32 (N,): first maximum of each row (a NaN counts as the maximum)."""
    _check_logits(logits)
    N, K = logits.shape
    logits = be.contiguous(logits)
    out = be.empty((N,), np.int32)
    grid, block = grid_1d(N, 128)
    be.launch(be.function(FILE, f"argmax_rows_v1<{ctype(logits.dtype)}>"), grid, block,
              (logits, out, np.int32(N), np.int32(K)))
    return out
