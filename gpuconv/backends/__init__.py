"""Backend registry and selection.

Backends are chosen explicitly: ``use_backend(name)`` (context manager), ``set_backend(name)``,
the ``GPUCONV_BACKEND`` environment variable, or ``--backend`` on the command line. ``"auto"``
means ``"cuda"`` when CuPy sees a usable device and ``"numpy"`` otherwise, and logs which it took.
Asking for ``"cuda"`` where there is none raises ``BackendUnavailable`` saying why.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Callable, Dict, Iterator, Union

from .base import Backend

__all__ = ["Backend", "BackendUnavailable", "BACKEND_NAMES", "get_backend", "set_backend",
           "use_backend", "resolve_backend", "cuda_unavailable_reason"]

log = logging.getLogger("gpuconv")

BACKEND_NAMES = ("numpy", "emulator", "cuda")


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


def resolve_backend(name: Union[str, Backend]) -> Backend:
    """Return the (cached) backend instance for ``name``; ``"auto"`` picks cuda or numpy."""
    if isinstance(name, Backend):
        return name
    if not isinstance(name, str):
        raise TypeError(f"backend must be a name (one of {', '.join(BACKEND_NAMES)}, auto), got {name!r}")
    key = name.strip().lower()
    if key == "auto":
        reason = cuda_unavailable_reason()
        key = "cuda" if not reason else "numpy"
        log.info("backend 'auto' chose %r%s", key, "" if not reason else f" ({reason})")
    if key not in _FACTORIES:
        raise ValueError(f"backend must be one of {', '.join(BACKEND_NAMES)} or 'auto', got {name!r}")
    with _lock:
        if key not in _instances:
            _instances[key] = _FACTORIES[key]()
        return _instances[key]


def get_backend() -> Backend:
    """The backend in force: innermost ``use_backend``, else ``set_backend``, else
    ``GPUCONV_BACKEND``, else numpy."""
    stack = getattr(_state, "stack", None)
    if stack:
        return stack[-1]
    global _default
    if _default is None:
        _default = resolve_backend(os.environ.get("GPUCONV_BACKEND", "numpy") or "numpy")
    return _default


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
    try:
        yield backend
    finally:
        stack.pop()
