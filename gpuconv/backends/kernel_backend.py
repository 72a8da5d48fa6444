"""One implementation of every op on top of the hand-written kernels in ``cuda/*.cu``.

``KernelBackend`` binds each op of ``Backend`` straight to its launch function in
``gpuconv.backends.launch`` (``conv2d`` *is* ``launch.conv.forward``), so a call goes
``functional`` -> launch module -> executor. A launch function allocates outputs, makes inputs
contiguous, computes grid/block, packs typed scalar arguments and calls ``be.launch``, which is
the executor's own ``launch``; *how* a launch happens is the executor's business
(``CupyExecutor`` on a GPU, ``EmulatorExecutor`` on the CPU), so the grid arithmetic and argument
packing of the GPU path run in every CPU test run too. Both executors check the launch
configuration against ``gpuconv.cuda_limits``.

Kernel versions: each launch module declares ``VERSIONS`` and ``DEFAULT_VERSIONS`` per op; the
defaults in force depend on the executor (``launch.default_versions``: on the emulator no op
defaults to a version that calls the array library);
``KernelBackend(executor, versions={"max_pool2d_backward": 1})`` or
``with backend.use_versions({...}):`` selects others (used by tests and benchmarks).

Captured steps (``gpuconv.backends.graphs``): while a capture is under way ``graph_arena`` is
set, and the array methods below enforce the capture rules (buffers from the arena; no host reads,
uploads or synchronisation), on both executors.

Debug poisoning: with ``poison=True`` (or ``GPUCONV_POISON=1`` in the environment) every output
buffer is filled with NaN (integer buffers with -7) before the kernel writes it, so an element a
kernel forgets to write shows up in any comparison.
"""
from __future__ import annotations

import contextlib
import os
import threading
from functools import partialmethod
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np

from .._paths import cuda_dir
from . import graphs, launch
from .base import Array, Backend

__all__ = ["KernelBackend", "compile_options"]

INT_POISON = -7


def compile_options() -> Tuple[str, ...]:
    """Options every .cu is compiled with (NVRTC on the GPU, g++ in the emulator).

    IEEE semantics: no fast math, so NaN tests, exp/log and division behave as on the CPU. The
    ``-D`` options carry the sizes the launch modules share with the kernels (``DEFINES``).
    """
    return ("-std=c++17", f"-I{cuda_dir()}") + launch.defines()


class KernelBackend(Backend):
    """Every op of ``Backend`` through the kernels of ``cuda/``, on the given executor."""

    def __init__(self, executor, versions: Optional[Dict[str, int]] = None,
                 poison: Optional[bool] = None) -> None:
        self.executor = executor
        self.name = executor.name
        self.xp = executor.xp
        self.launch = executor.launch  # launch(fn, grid, block, args, shared_mem=0)
        if poison is None:
            poison = os.environ.get("GPUCONV_POISON", "0").strip() not in ("", "0")
        self.poison = bool(poison)
        self._modules: Dict[str, Any] = {}
        self._functions: Dict[Tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self._overrides = [self._check_versions(versions or {})]
        self._active = self._merged()  # op -> version in force, read on every op call
        self.graph_arena = None  # graphs.Arena while a step is warmed up, captured or traced

    # ---- arrays -------------------------------------------------------------------------
    def is_array(self, a) -> bool:
        return isinstance(a, self.xp.ndarray)

    def asarray(self, a, dtype=None) -> Array:
        """NumPy/array-like or this backend's array -> this backend's array (copy only if needed)."""
        if self.xp is np and not isinstance(a, np.ndarray) and hasattr(a, "get"):
            a = a.get()  # a device array handed to the CPU backend
        arena = self.graph_arena
        if arena is not None and arena.phase != graphs.WARMUP and not (
                isinstance(a, self.xp.ndarray) and (dtype is None or a.dtype == np.dtype(dtype))):
            raise graphs.refuse(arena.phase, f"asarray of a {type(a).__name__}"
                                + ("" if dtype is None else f" as {np.dtype(dtype)}"),
                                "a host-to-device copy or a conversion would bake a host address or "
                                "make a buffer the graph does not own; upload into a buffer made "
                                "before capture (Backend.upload) instead")
        return self.xp.asarray(a, dtype=dtype)

    def upload(self, dst, host) -> None:
        """Copy host values into the existing device array ``dst`` (refused during capture)."""
        if self.graph_arena is not None and self.graph_arena.phase != graphs.WARMUP:
            raise graphs.refuse(self.graph_arena.phase, "a host-to-device copy (upload)",
                                "refresh a captured step's inputs before each replay, outside it")
        host = np.asarray(host)
        if host.shape != tuple(dst.shape):
            raise ValueError(f"upload: host values of shape {host.shape} do not fit the array of shape "
                             f"{tuple(dst.shape)}")
        host = np.ascontiguousarray(host, dtype=dst.dtype)
        if self.xp is np:
            dst[...] = host
        else:
            dst.set(host)

    def to_numpy(self, a) -> np.ndarray:
        self._no_host_sync("a device-to-host copy (to_numpy)")
        if self.xp is np:
            return np.asarray(a)
        return self.xp.asnumpy(a)

    def synchronize(self) -> None:
        self._no_host_sync("a synchronisation")
        self.executor.synchronize()

    def _no_host_sync(self, what: str) -> None:
        arena = self.graph_arena
        if arena is not None and arena.phase != graphs.WARMUP:
            raise graphs.refuse(arena.phase, what,
                                "nothing runs during capture (a GPU refuses it: cudaErrorStreamCapture"
                                "Unsupported); keep the value on the device and read it after replay")

    def describe(self) -> str:
        return self.executor.describe() + (" [poisoned outputs]" if self.poison else "")

    def empty(self, shape, dtype) -> Array:
        """An output buffer (the capture arena's while a step is captured); NaN-filled (integers:
        -7) when poisoning is on."""
        arena = self.graph_arena
        a = self.xp.empty(shape, dtype=dtype) if arena is None else arena.allocate(self.xp, shape, dtype)
        if self.poison:
            self.executor.fill(a, np.nan if np.dtype(dtype).kind == "f" else INT_POISON)
        return a

    def zeros(self, shape, dtype) -> Array:
        a = self.empty(shape, dtype)
        self.executor.fill(a, 0)
        return a

    def copy(self, dst, src) -> None:
        """``dst[...] = src`` on the device, through the executor (captured like a launch)."""
        self.executor.copy(dst, src)

    def contiguous(self, a) -> Array:
        """A C-contiguous version of ``a`` (the same array when it already is)."""
        if a.flags.c_contiguous:
            return a
        out = self.empty(a.shape, a.dtype)
        self.executor.copy(out, a)
        return out

    def data_ptr(self, a) -> int:
        """Address of the first element (host or device)."""
        if self.xp is np:
            return a.__array_interface__["data"][0]
        return a.data.ptr

    # ---- kernels ------------------------------------------------------------------------
    def function(self, filename: str, name: str):
        """Kernel ``name`` (a name expression such as "relu_forward_v2<float>") of ``filename``.

        The file is compiled once per backend with the name expressions of every launch module
        that uses it.
        """
        fn = self._functions.get((filename, name))
        if fn is not None:
            return fn
        with self._lock:
            module = self._modules.get(filename)
            if module is None:
                module = self.executor.load(Path(cuda_dir()) / filename, compile_options(),
                                            launch.name_expressions(filename))
                self._modules[filename] = module
            fn = module.get_function(name)
            self._functions[(filename, name)] = fn
        return fn

    # ---- versions -----------------------------------------------------------------------
    @staticmethod
    def known_versions() -> Dict[str, Tuple[int, ...]]:
        """op -> available versions, over every launch module."""
        return dict(launch.VERSIONS)

    def default_versions(self) -> Dict[str, int]:
        """op -> default version on this backend's executor, over every launch module."""
        return launch.default_versions(self.executor.name)

    @staticmethod
    def _check_versions(versions: Dict[str, int]) -> Dict[str, int]:
        if not isinstance(versions, dict):
            raise TypeError(f"versions must be a dict op -> int, got {versions!r}")
        known = launch.VERSIONS
        for op, v in versions.items():
            if op not in known:
                raise ValueError(f"versions: unknown op {op!r}; known ops: {', '.join(sorted(known))}")
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) not in known[op]:
                raise ValueError(f"versions[{op!r}] must be one of {known[op]}, got {v!r}")
        return {op: int(v) for op, v in versions.items()}

    def _merged(self) -> Dict[str, int]:
        active = self.default_versions()
        for layer in self._overrides:
            active.update(layer)
        return active

    def version(self, op: str) -> int:
        """The version of ``op`` in force (innermost override, else the launch module default)."""
        try:
            return self._active[op]
        except KeyError:
            raise ValueError(f"unknown op {op!r}; known ops: {', '.join(sorted(self._active))}") from None

    @contextlib.contextmanager
    def use_versions(self, versions: Dict[str, int]) -> Iterator[KernelBackend]:
        """Select kernel versions for the enclosed code."""
        self._overrides.append(self._check_versions(versions))
        self._active = self._merged()
        try:
            yield self
        finally:
            self._overrides.pop()
            self._active = self._merged()

    # ---- ops: each is its launch function, bound as a method ----------------------------
    conv2d = launch.conv.forward
    conv2d_relu = launch.conv.forward_relu
    conv2d_backward = launch.conv.backward

    max_pool2d = launch.pool.max_forward
    max_pool2d_backward = launch.pool.max_backward
    avg_pool2d = launch.pool.avg_forward
    avg_pool2d_backward = launch.pool.avg_backward
    l2_pool2d = launch.pool.l2_forward
    l2_pool2d_backward = launch.pool.l2_backward

    relu = partialmethod(launch.elementwise.unary, "relu_forward")
    relu_backward = partialmethod(launch.elementwise.binary, "relu_backward")
    sigmoid = partialmethod(launch.elementwise.unary, "sigmoid_forward")
    sigmoid_backward = partialmethod(launch.elementwise.binary, "sigmoid_backward")
    tanh = partialmethod(launch.elementwise.unary, "tanh_forward")
    tanh_backward = partialmethod(launch.elementwise.binary, "tanh_backward")
    dropout = launch.elementwise.dropout
    mul = partialmethod(launch.elementwise.binary, "mul")
    add = partialmethod(launch.elementwise.binary, "add")

    linear = launch.linear.forward
    linear_backward = launch.linear.backward
    softmax_cross_entropy = launch.loss.softmax_cross_entropy
    argmax = launch.loss.argmax  # row-wise argmax of (N, K) scores as int32 (N,); ties -> first, NaN wins

    batch_norm = launch.batchnorm.forward
    batch_norm_backward = launch.batchnorm.backward

    augment = launch.augment.augment

    sgd_step = launch.optim.sgd_step
    adam_step = launch.optim.adam_step
    sgd_step_dev = launch.optim.sgd_step_dev
    adam_step_dev = launch.optim.adam_step_dev
