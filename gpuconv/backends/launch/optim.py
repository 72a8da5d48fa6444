"""Launches of ``cuda/optim.cu``: SGD, Adam and AdamW updates in place (PyTorch's rules)."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .common import check_elements, ctype, grid_1d, scalar

FILE = "optim.cu"

VERSIONS = {"sgd_step": (1,), "adam_step": (1,)}
DEFAULT_VERSIONS = {"sgd_step": 1, "adam_step": 1}
NAME_EXPRESSIONS = tuple(f"{op}_v1<{t}>" for op in ("sgd_step", "adam_step") for t in ("float", "double"))

BLOCK = 256


def _check_state(name: str, a, param) -> None:
    if a.shape != param.shape or a.dtype != param.dtype:
        raise ValueError(f"{name} must match param (shape {param.shape}, dtype {param.dtype}), "
                         f"got shape {a.shape}, dtype {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous: it is updated in place")


def sgd_step(be, param, grad, buf: Optional[object], lr: float, momentum: float, dampening: float,
             weight_decay: float, nesterov: bool, first_step: bool) -> None:
    """Update ``param`` (and ``buf`` when momentum != 0) in place."""
    _check_state("param", param, param)
    _check_state("grad", grad, param)
    if momentum != 0:
        if buf is None:
            raise ValueError("buf (the momentum buffer) is required when momentum != 0")
        _check_state("buf", buf, param)
    else:
        buf = param  # never read or written by the kernel when momentum == 0
    n = check_elements("param", param.size)
    if n == 0:
        return
    dt = param.dtype
    fn = be.function(FILE, f"sgd_step_v{be.version('sgd_step')}<{ctype(dt)}>")
    grid, block = grid_1d(n, BLOCK)
    be.launch(fn, grid, block, (param, grad, buf, np.int32(n), scalar(dt, lr), scalar(dt, momentum),
                                scalar(dt, 1.0 - dampening), scalar(dt, weight_decay),
                                np.int32(bool(nesterov)), np.int32(bool(first_step))))


def adam_step(be, param, grad, m, v, step: int, lr: float, beta1: float, beta2: float, eps: float,
              weight_decay: float, decoupled: bool = False) -> None:
    """Update ``param``, ``m`` and ``v`` in place; ``step`` counts from 1. ``decoupled``: AdamW
    (param scaled by 1 - lr * weight_decay before the update) instead of L2 weight decay."""
    if isinstance(step, bool) or int(step) != step or step < 1:
        raise ValueError(f"step must be an int >= 1, got {step!r}")
    for name, a in (("param", param), ("grad", grad), ("m", m), ("v", v)):
        _check_state(name, a, param)
    n = check_elements("param", param.size)
    if n == 0:
        return
    dt = param.dtype
    step_size = lr / (1.0 - beta1 ** int(step))
    sqrt_bc2 = math.sqrt(1.0 - beta2 ** int(step))
    fn = be.function(FILE, f"adam_step_v{be.version('adam_step')}<{ctype(dt)}>")
    grid, block = grid_1d(n, BLOCK)
    l2, param_scale = (0.0, 1.0 - lr * weight_decay) if decoupled else (weight_decay, 1.0)
    consts = (beta1, 1.0 - beta1, beta2, 1.0 - beta2, eps, l2, step_size, sqrt_bc2, param_scale)
    be.launch(fn, grid, block, (param, grad, m, v, np.int32(n)) + tuple(scalar(dt, c) for c in consts))
