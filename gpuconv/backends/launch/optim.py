"""Launches of ``cuda/optim.cu``: SGD, Adam and AdamW updates in place (PyTorch's rules).

``sgd_step``/``adam_step`` pass every constant by value; ``sgd_step_dev``/``adam_step_dev`` read
them from ``hp``, a row in device memory built by ``sgd_constants``/``adam_constants`` (the one
place the derived constants are computed), which is what a captured training step needs: a CUDA
graph replays the values its kernels were captured with (docs/graphs.md)."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .common import check_elements, ctype, grid_1d

FILE = "optim.cu"

_OPS = ("sgd_step", "adam_step", "sgd_step_dev", "adam_step_dev")
VERSIONS = {op: (1,) for op in _OPS}
DEFAULT_VERSIONS = {op: 1 for op in _OPS}
NAME_EXPRESSIONS = tuple(f"{op}_v1<{t}>" for op in _OPS for t in ("float", "double"))
SGD_CONSTANTS = 6   # lr, momentum, 1 - dampening, weight_decay, nesterov, first_step
ADAM_CONSTANTS = 9  # beta1, 1 - beta1, beta2, 1 - beta2, eps, l2, step_size, sqrt_bc2, param_scale

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
    c = sgd_constants(dt, lr, momentum, dampening, weight_decay, nesterov, first_step)
    fn = be.function(FILE, f"sgd_step_v{be.version('sgd_step')}<{ctype(dt)}>")
    grid, block = grid_1d(n, BLOCK)
    be.launch(fn, grid, block, (param, grad, buf, np.int32(n)) + tuple(c[:4])
              + (np.int32(bool(nesterov)), np.int32(bool(first_step))))


def sgd_constants(dtype, lr: float, momentum: float, dampening: float, weight_decay: float,
                  nesterov: bool, first_step: bool) -> np.ndarray:
    """The SGD kernels' constants as a host row of ``dtype`` (SGD_CONSTANTS values)."""
    return np.array([lr, momentum, 1.0 - dampening, weight_decay, float(bool(nesterov)),
                     float(bool(first_step))], dtype=np.float64).astype(dtype)


def adam_constants(dtype, step: int, lr: float, beta1: float, beta2: float, eps: float,
                   weight_decay: float, decoupled: bool = False) -> np.ndarray:
    """The Adam kernels' constants for update number ``step`` (from 1) as a host row of ``dtype``
    (ADAM_CONSTANTS values), derived in float64: 1 - float32(0.999) would be off by 1.3e-5."""
    if isinstance(step, bool) or int(step) != step or step < 1:
        raise ValueError(f"step must be an int >= 1, got {step!r}")
    step_size = lr / (1.0 - beta1 ** int(step))
    sqrt_bc2 = math.sqrt(1.0 - beta2 ** int(step))
    l2, param_scale = (0.0, 1.0 - lr * weight_decay) if decoupled else (weight_decay, 1.0)
    return np.array([beta1, 1.0 - beta1, beta2, 1.0 - beta2, eps, l2, step_size, sqrt_bc2, param_scale],
                    dtype=np.float64).astype(dtype)


def _check_hp(hp, param, count: int) -> None:
    if tuple(hp.shape) != (count,) or hp.dtype != param.dtype or not hp.flags.c_contiguous:
        raise ValueError(f"hp must be a C-contiguous ({count},) array of the param's dtype {param.dtype}, "
                         f"got shape {tuple(hp.shape)}, dtype {hp.dtype}")


def sgd_step_dev(be, param, grad, buf: Optional[object], hp) -> None:
    """``sgd_step`` with its constants read from ``hp`` (``sgd_constants``, on the device); ``buf``
    may be None only when momentum is 0 in ``hp``, which the host does not read: pass it always
    when the optimizer has momentum."""
    _check_state("param", param, param)
    _check_state("grad", grad, param)
    _check_hp(hp, param, SGD_CONSTANTS)
    if buf is None:
        buf = param  # momentum 0: never read or written by the kernel
    else:
        _check_state("buf", buf, param)
    n = check_elements("param", param.size)
    if n == 0:
        return
    fn = be.function(FILE, f"sgd_step_dev_v{be.version('sgd_step_dev')}<{ctype(param.dtype)}>")
    grid, block = grid_1d(n, BLOCK)
    be.launch(fn, grid, block, (param, grad, buf, np.int32(n), hp))


def adam_step_dev(be, param, grad, m, v, hp) -> None:
    """``adam_step`` with its constants read from ``hp`` (``adam_constants``, on the device)."""
    for name, a in (("param", param), ("grad", grad), ("m", m), ("v", v)):
        _check_state(name, a, param)
    _check_hp(hp, param, ADAM_CONSTANTS)
    n = check_elements("param", param.size)
    if n == 0:
        return
    fn = be.function(FILE, f"adam_step_dev_v{be.version('adam_step_dev')}<{ctype(param.dtype)}>")
    grid, block = grid_1d(n, BLOCK)
    be.launch(fn, grid, block, (param, grad, m, v, np.int32(n), hp))


def adam_step(be, param, grad, m, v, step: int, lr: float, beta1: float, beta2: float, eps: float,
              weight_decay: float, decoupled: bool = False) -> None:
    """Update ``param``, ``m`` and ``v`` in place; ``step`` counts from 1. ``decoupled``: AdamW
    (param scaled by 1 - lr * weight_decay before the update) instead of L2 weight decay."""
    consts = adam_constants(param.dtype, step, lr, beta1, beta2, eps, weight_decay, decoupled)
    for name, a in (("param", param), ("grad", grad), ("m", m), ("v", v)):
        _check_state(name, a, param)
    n = check_elements("param", param.size)
    if n == 0:
        return
    fn = be.function(FILE, f"adam_step_v{be.version('adam_step')}<{ctype(param.dtype)}>")
    grid, block = grid_1d(n, BLOCK)
    be.launch(fn, grid, block, (param, grad, m, v, np.int32(n)) + tuple(consts))
