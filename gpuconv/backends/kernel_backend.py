"""One implementation of every op on top of the hand-written kernels in ``cuda/*.cu``.

``KernelBackend`` allocates outputs, makes inputs contiguous, computes grid/block, packs typed
scalar arguments and launches; *how* a launch happens is the executor's business
(``CupyExecutor`` on a GPU, ``EmulatorExecutor`` on the CPU), so the grid arithmetic and argument
packing of the GPU path run in every CPU test run too.

Kernel versions: each launch module declares ``VERSIONS`` and ``DEFAULT_VERSIONS`` per op;
``KernelBackend(executor, versions={"max_pool2d_backward": 1})`` or
``with backend.use_versions({...}):`` selects others (used by tests and benchmarks).

Debug poisoning: with ``poison=True`` (or ``GPUCONV_POISON=1`` in the environment) every output
buffer is filled with NaN (integer buffers with -7) before the kernel writes it, so an element a
kernel forgets to write shows up in any comparison.
"""
from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np

from .._paths import cuda_dir
from ..geometry import ConvGeometry, PoolGeometry
from . import launch as _launch
from .base import Array, Backend

__all__ = ["KernelBackend", "compile_options"]

# CUDA launch limits (compute capability >= 7.0).
MAX_GRID = (2**31 - 1, 65535, 65535)
MAX_BLOCK = (1024, 1024, 64)
MAX_THREADS_PER_BLOCK = 1024
MAX_STATIC_SHARED = 48 * 1024  # dynamic shared memory above this needs an opt-in we never make

INT_POISON = -7
_SCALAR_TYPES = (np.int32, np.float32, np.float64)


def compile_options() -> Tuple[str, ...]:
    """Options every .cu is compiled with (NVRTC on the GPU, g++ in the emulator).

    IEEE semantics: no fast math, so NaN tests, exp/log and division behave as on the CPU.
    """
    return ("-std=c++17", f"-I{cuda_dir()}")


def _dims(name: str, value, limits) -> Tuple[int, int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value),)
    if not isinstance(value, tuple) or not 1 <= len(value) <= 3:
        raise TypeError(f"{name} must be an int or a tuple of 1-3 ints, got {value!r}")
    dims = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} entries must be ints, got {value!r}")
        dims.append(int(v))
    dims += [1] * (3 - len(dims))
    for d, lim in zip(dims, limits):
        if not 1 <= d <= lim:
            raise ValueError(f"{name}={tuple(dims)} is outside the CUDA limits 1..{limits}")
    return tuple(dims)


class KernelBackend(Backend):
    """Every op of ``Backend`` through the kernels of ``cuda/``, on the given executor."""

    def __init__(self, executor, versions: Optional[Dict[str, int]] = None,
                 poison: Optional[bool] = None) -> None:
        self.executor = executor
        self.name = executor.name
        self.xp = executor.xp
        if poison is None:
            poison = os.environ.get("GPUCONV_POISON", "0").strip() not in ("", "0")
        self.poison = bool(poison)
        self._modules: Dict[str, Any] = {}
        self._functions: Dict[Tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self._defaults = self.default_versions()  # read once: version() runs on every op call
        self._overrides = [self._check_versions(versions or {})]

    # ---- arrays -------------------------------------------------------------------------
    def is_array(self, a) -> bool:
        return isinstance(a, self.xp.ndarray)

    def asarray(self, a, dtype=None) -> Array:
        """NumPy/array-like or this backend's array -> this backend's array (copy only if needed)."""
        if self.xp is np and not isinstance(a, np.ndarray) and hasattr(a, "get"):
            a = a.get()  # a device array handed to the CPU backend
        return self.xp.asarray(a, dtype=dtype)

    def to_numpy(self, a) -> np.ndarray:
        if self.xp is np:
            return np.asarray(a)
        return self.xp.asnumpy(a)

    def synchronize(self) -> None:
        self.executor.synchronize()

    def describe(self) -> str:
        return self.executor.describe() + (" [poisoned outputs]" if self.poison else "")

    def empty(self, shape, dtype) -> Array:
        """An output buffer; NaN-filled (integers: -7) when poisoning is on."""
        a = self.xp.empty(shape, dtype=dtype)
        if self.poison:
            a.fill(np.nan if np.dtype(dtype).kind == "f" else INT_POISON)
        return a

    def contiguous(self, a) -> Array:
        """A C-contiguous version of ``a`` (the same array when it already is)."""
        return a if a.flags.c_contiguous else self.xp.ascontiguousarray(a)

    def data_ptr(self, a) -> int:
        """Address of the first element (host or device)."""
        if self.xp is np:
            return a.__array_interface__["data"][0]
        return a.data.ptr

    @staticmethod
    def ctype(dtype) -> str:
        return _launch.ctype(dtype)

    # ---- kernels ------------------------------------------------------------------------
    def function(self, filename: str, name: str):
        """Kernel ``name`` (a name expression such as "relu_forward_v2<float>") of ``filename``.

        The file is compiled once per backend with the name expressions of every launch module
        that uses it.
        """
        key = (filename, name)
        fn = self._functions.get(key)
        if fn is not None:
            return fn
        with self._lock:
            module = self._modules.get(filename)
            if module is None:
                exprs = []
                for mod in _launch.families_of_file(filename):
                    exprs.extend(e for e in mod.NAME_EXPRESSIONS if e not in exprs)
                if not exprs:
                    raise ValueError(f"no launch module declares kernels of {filename!r}")
                module = self.executor.load(Path(cuda_dir()) / filename, compile_options(), tuple(exprs))
                self._modules[filename] = module
            fn = module.get_function(name)
            self._functions[key] = fn
        return fn

    def launch(self, fn, grid, block, args, shared_mem: int = 0) -> None:
        """Validate the launch configuration and argument types, then launch ``fn``."""
        grid = _dims("grid", grid, MAX_GRID)
        block = _dims("block", block, MAX_BLOCK)
        if block[0] * block[1] * block[2] > MAX_THREADS_PER_BLOCK:
            raise ValueError(f"block={block} has more than {MAX_THREADS_PER_BLOCK} threads")
        if isinstance(shared_mem, bool) or not isinstance(shared_mem, (int, np.integer)) \
                or not 0 <= int(shared_mem) <= MAX_STATIC_SHARED:
            raise ValueError(f"shared_mem must be an int in [0, {MAX_STATIC_SHARED}], got {shared_mem!r}")
        for i, a in enumerate(args):
            if isinstance(a, self.xp.ndarray):
                if not a.flags.c_contiguous:
                    raise ValueError(f"kernel argument {i} (shape {a.shape}) is not C-contiguous")
            elif not isinstance(a, _SCALAR_TYPES):
                raise TypeError(
                    f"kernel argument {i} must be a {self.xp.__name__} array or a np.int32/np.float32/"
                    f"np.float64 scalar, got {type(a).__name__} {a!r}")
        self.executor.launch(fn, grid, block, tuple(args), shared_mem=int(shared_mem))

    # ---- versions -----------------------------------------------------------------------
    @staticmethod
    def known_versions() -> Dict[str, Tuple[int, ...]]:
        """op -> available versions, over every launch module."""
        out: Dict[str, Tuple[int, ...]] = {}
        for mod in _launch.all_families():
            out.update(mod.VERSIONS)
        return out

    @staticmethod
    def default_versions() -> Dict[str, int]:
        out: Dict[str, int] = {}
        for mod in _launch.all_families():
            out.update(mod.DEFAULT_VERSIONS)
        return out

    def _check_versions(self, versions: Dict[str, int]) -> Dict[str, int]:
        if not isinstance(versions, dict):
            raise TypeError(f"versions must be a dict op -> int, got {versions!r}")
        if not versions:
            return {}
        known = self.known_versions()
        for op, v in versions.items():
            if op not in known:
                raise ValueError(f"versions: unknown op {op!r}; known ops: {', '.join(sorted(known))}")
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) not in known[op]:
                raise ValueError(f"versions[{op!r}] must be one of {known[op]}, got {v!r}")
        return {op: int(v) for op, v in versions.items()}

    def version(self, op: str) -> int:
        """The version of ``op`` in force (innermost override, else the launch module default)."""
        for layer in reversed(self._overrides):
            if op in layer:
                return layer[op]
        if op not in self._defaults:
            raise ValueError(f"unknown op {op!r}; known ops: {', '.join(sorted(self._defaults))}")
        return self._defaults[op]

    @contextlib.contextmanager
    def use_versions(self, versions: Dict[str, int]) -> Iterator[KernelBackend]:
        """Select kernel versions for the enclosed code."""
        self._overrides.append(self._check_versions(versions))
        try:
            yield self
        finally:
            self._overrides.pop()

    # ---- convolution --------------------------------------------------------------------
    def conv2d(self, x: Array, weight: Array, bias: Optional[Array], g: ConvGeometry) -> Array:
        return _launch.family("conv").forward(self, x, weight, bias, g)

    def conv2d_backward(self, dy: Array, x: Array, weight: Array, g: ConvGeometry,
                        need_dx: bool = True, need_dw: bool = True, need_db: bool = True
                        ) -> Tuple[Optional[Array], Optional[Array], Optional[Array]]:
        return _launch.family("conv").backward(self, dy, x, weight, g, need_dx, need_dw, need_db)

    # ---- pooling ------------------------------------------------------------------------
    def max_pool2d(self, x: Array, g: PoolGeometry) -> Tuple[Array, Array]:
        return _launch.family("pool").max_forward(self, x, g)

    def max_pool2d_backward(self, dy: Array, indices: Array, g: PoolGeometry) -> Array:
        return _launch.family("pool").max_backward(self, dy, indices, g)

    def avg_pool2d(self, x: Array, g: PoolGeometry, count_include_pad: bool,
                   divisor_override: Optional[int]) -> Array:
        return _launch.family("pool").avg_forward(self, x, g, count_include_pad, divisor_override)

    def avg_pool2d_backward(self, dy: Array, g: PoolGeometry, count_include_pad: bool,
                            divisor_override: Optional[int], dtype) -> Array:
        return _launch.family("pool").avg_backward(self, dy, g, count_include_pad, divisor_override, dtype)

    def l2_pool2d(self, x: Array, g: PoolGeometry) -> Array:
        return _launch.family("pool").l2_forward(self, x, g)

    def l2_pool2d_backward(self, dy: Array, x: Array, y: Array, g: PoolGeometry) -> Array:
        return _launch.family("pool").l2_backward(self, dy, x, y, g)

    # ---- element-wise -------------------------------------------------------------------
    def relu(self, x: Array) -> Array:
        return _launch.family("elementwise").unary(self, "relu_forward", x)

    def relu_backward(self, dy: Array, y: Array) -> Array:
        return _launch.family("elementwise").binary(self, "relu_backward", dy, y)

    def sigmoid(self, x: Array) -> Array:
        return _launch.family("elementwise").unary(self, "sigmoid_forward", x)

    def sigmoid_backward(self, dy: Array, y: Array) -> Array:
        return _launch.family("elementwise").binary(self, "sigmoid_backward", dy, y)

    def tanh(self, x: Array) -> Array:
        return _launch.family("elementwise").unary(self, "tanh_forward", x)

    def tanh_backward(self, dy: Array, y: Array) -> Array:
        return _launch.family("elementwise").binary(self, "tanh_backward", dy, y)

    def dropout(self, x: Array, p: float, seed: int) -> Tuple[Array, Array]:
        return _launch.family("elementwise").dropout(self, x, p, seed)

    def mul(self, a: Array, b: Array) -> Array:
        return _launch.family("elementwise").binary(self, "mul", a, b)

    def add(self, a: Array, b: Array) -> Array:
        return _launch.family("elementwise").binary(self, "add", a, b)

    # ---- dense layers and loss ----------------------------------------------------------
    def linear(self, x: Array, weight: Array, bias: Optional[Array]) -> Array:
        return _launch.family("linear").forward(self, x, weight, bias)

    def linear_backward(self, dy: Array, x: Array, weight: Array, need_db: bool = True
                        ) -> Tuple[Array, Array, Optional[Array]]:
        return _launch.family("linear").backward(self, dy, x, weight, need_db)

    def softmax_cross_entropy(self, logits: Array, labels: Array) -> Tuple[Array, Array]:
        return _launch.family("loss").softmax_cross_entropy(self, logits, labels)

    def argmax(self, logits: Array) -> Array:
        """Row-wise argmax of (N, K) scores as int32 (N,); ties -> first, NaN wins."""
        return _launch.family("loss").argmax(self, logits)

    # ---- optimizer updates (in place) ---------------------------------------------------
    def sgd_step(self, param: Array, grad: Array, buf: Optional[Array], lr: float, momentum: float,
                 dampening: float, weight_decay: float, nesterov: bool, first_step: bool) -> None:
        _launch.family("optim").sgd_step(self, param, grad, buf, lr, momentum, dampening,
                                         weight_decay, nesterov, first_step)

    def adam_step(self, param: Array, grad: Array, m: Array, v: Array, step: int, lr: float,
                  beta1: float, beta2: float, eps: float, weight_decay: float) -> None:
        _launch.family("optim").adam_step(self, param, grad, m, v, step, lr, beta1, beta2, eps,
                                          weight_decay)
