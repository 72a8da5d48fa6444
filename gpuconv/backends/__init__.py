"""Backend registry and selection.

The backend an op runs on is, in this order of precedence:

1. the innermost ``use_backend(name)`` block around the call (thread-local, nestable);
2. the backend a model was moved to with ``model.to(name)``, while that model's ``forward`` or
   ``backward`` runs (and an optimizer's update of that model's parameters; see
   ``gpuconv.nn.Module.to``) -- ``running_on`` is the mechanism;
3. ``set_backend(name)``, the process-wide default;
4. the ``GPUCONV_BACKEND`` environment variable;
5. ``numpy``.

``"auto"`` (``--backend auto`` on the command line) means ``GPUCONV_BACKEND`` when that is set,
else ``"cuda"`` when CuPy sees a usable device and ``"numpy"`` otherwise; it logs which it took
(``auto_choice`` says which and why). Asking for ``"cuda"`` where there is none raises
``BackendUnavailable`` saying why.

Two process-wide settings steer which kernel version the cuda and emulator backends run for each
convolution shape (``gpuconv.backends.select``; docs/kernels.md, "Choosing a version"), read
at every call as ``torch.backends.cudnn.benchmark`` and ``torch.backends.cuda.matmul.allow_tf32``
are:

* ``allow_tf32`` (default False; ``GPUCONV_ALLOW_TF32=1`` at import): float32 convolutions may run on TF32
  tensor-core versions (operands rounded to a 10-bit mantissa, about 1e-3 relative error).
* ``benchmark`` (default False; ``GPUCONV_BENCHMARK=1`` at import): on a GPU, the first call of each
  (op, shape, dtype) times every eligible version and keeps the fastest, remembered on disk per
  GPU; off, a fixed rule picks.

Both are True or False (anything else is a TypeError when set); the environment variables accept
1/0, true/false, yes/no, on/off (anything else is a ValueError naming the variable).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import types
from typing import Callable, Dict, Iterator, Tuple, Union

from . import settings
from .base import Backend
from .settings import env_flag

__all__ = ["Backend", "BackendUnavailable", "BACKEND_NAMES", "allow_tf32", "benchmark", "env_flag",
           "get_backend", "set_backend", "use_backend", "running_on", "resolve_backend", "auto_choice",
           "cuda_unavailable_reason", "ENV_VAR"]

log = logging.getLogger("gpuconv")

BACKEND_NAMES = ("numpy", "emulator", "cuda")
ENV_VAR = "GPUCONV_BACKEND"


def _setting(name: str) -> property:
    def get(module) -> bool:
        return getattr(settings, name)

    def put(module, value) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"gpuconv.backends.{name} must be True or False, got {value!r}")
        setattr(settings, name, value)
    return property(get, put, doc=f"gpuconv.backends.settings.{name}, checked when set")


class _BackendsModule(types.ModuleType):
    """This package as a module whose ``allow_tf32`` and ``benchmark`` are properties over
    ``gpuconv.backends.settings`` (read there by the selector), as torch.backends.cudnn does."""

    allow_tf32 = _setting("allow_tf32")
    benchmark = _setting("benchmark")


sys.modules[__name__].__class__ = _BackendsModule


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here; the message says why."""


def _make_numpy() -> Backend:
    from .numpy_backend import NumpyBackend
    return NumpyBackend()


def _make_emulator() -> Backend:
    from .executors import EmulatorExecutor
    from .kernel_backend import KernelBackend
    return KernelBackend(EmulatorExecutor())


def _make_cuda() -> Backend:
    reason = cuda_unavailable_reason()
    if reason:
        raise BackendUnavailable(f"backend 'cuda' is not available: {reason}")
    from .executors import CupyExecutor
    from .kernel_backend import KernelBackend
    return KernelBackend(CupyExecutor())


_FACTORIES: Dict[str, Callable[[], Backend]] = {
    "numpy": _make_numpy, "emulator": _make_emulator, "cuda": _make_cuda}
_instances: Dict[str, Backend] = {}
_lock = threading.Lock()
_state = threading.local()
_default: Union[Backend, None] = None


def cuda_unavailable_reason() -> str:
    """Empty string when CuPy is importable and sees a usable device, else the reason."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install raising at import
        return (f"CuPy is not importable ({type(exc).__name__}: {exc}); "
                "install gpuconv[cuda13] or gpuconv[cuda12]")
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"CuPy found no usable CUDA driver/device ({type(exc).__name__}: {exc})"
    if n < 1:
        return "CuPy reports 0 CUDA devices"
    return ""


def auto_choice() -> Tuple[str, str]:
    """(backend name, why) for ``"auto"``: ``GPUCONV_BACKEND`` when set (and not itself "auto"),
    else cuda when CuPy sees a usable device, else numpy."""
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if env and env != "auto":
        if env not in _FACTORIES:
            raise ValueError(f"{ENV_VAR} must be one of {', '.join(BACKEND_NAMES)} or 'auto', "
                             f"got {os.environ[ENV_VAR]!r}")
        return env, f"{ENV_VAR}={env}"
    reason = cuda_unavailable_reason()
    return ("numpy", reason) if reason else ("cuda", "CuPy sees a CUDA device")


def resolve_backend(name: Union[str, Backend]) -> Backend:
    """Return the (cached) backend instance for ``name``; ``"auto"`` as ``auto_choice`` says."""
    if isinstance(name, Backend):
        return name
    if not isinstance(name, str):
        raise TypeError(f"backend must be a name (one of {', '.join(BACKEND_NAMES)}, auto), got {name!r}")
    key = name.strip().lower()
    if key == "auto":
        key, why = auto_choice()
        log.info("backend 'auto' chose %r (%s)", key, why)
    if key not in _FACTORIES:
        raise ValueError(f"backend must be one of {', '.join(BACKEND_NAMES)} or 'auto', got {name!r}")
    with _lock:
        if key not in _instances:
            _instances[key] = _FACTORIES[key]()
        return _instances[key]


def get_backend() -> Backend:
    """The backend in force (see the module docstring for the order of precedence)."""
    current = getattr(_state, "current", None)
    if current is not None:
        return current
    global _default
    if _default is None:
        _default = resolve_backend(os.environ.get(ENV_VAR, "numpy") or "numpy")
    return _default


def _update_current() -> None:
    """Cache the innermost explicit backend, else the innermost placement, for get_backend."""
    explicit, placed = getattr(_state, "stack", None), getattr(_state, "placed", None)
    _state.current = explicit[-1] if explicit else (placed[-1] if placed else None)


def set_backend(name: Union[str, Backend]) -> Backend:
    """Set the process-wide default backend and return it."""
    global _default
    _default = resolve_backend(name)
    return _default


@contextlib.contextmanager
def use_backend(name: Union[str, Backend]) -> Iterator[Backend]:
    """Run the enclosed code on backend ``name`` (thread-local, nestable)."""
    backend = resolve_backend(name)
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(backend)
    _update_current()
    try:
        yield backend
    finally:
        stack.pop()
        _update_current()


class running_on:
    """``with running_on(backend):`` runs the block on ``backend`` (a Backend instance, or None
    for no change) unless a ``use_backend`` block encloses it: the precedence of a model's
    placement (``Module.to``). Cheaper than ``use_backend``: layers enter it on every call."""

    __slots__ = ("backend",)

    def __init__(self, backend: Union[Backend, None]) -> None:
        self.backend = backend

    def __enter__(self) -> None:
        if self.backend is not None:
            placed = getattr(_state, "placed", None)
            if placed is None:
                placed = _state.placed = []
            placed.append(self.backend)
            _update_current()

    def __exit__(self, *exc) -> None:
        if self.backend is not None:
            _state.placed.pop()
            _update_current()
