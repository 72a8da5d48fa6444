"""gpuconv: small CNNs on NVIDIA GPUs with hand-written CUDA kernels, checked against NumPy."""
from __future__ import annotations

from ._version import __version__
from .backends import BackendUnavailable, get_backend, set_backend, use_backend

__all__ = ["__version__", "BackendUnavailable", "get_backend", "set_backend", "use_backend",
           "functional", "nn", "optim"]


def __getattr__(name):
    # Lazy submodules keep ``import gpuconv`` cheap (no CuPy or compiler work at import).
    if name in ("functional", "nn", "optim", "models", "datasets", "emulator"):
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'gpuconv' has no attribute {name!r}")
