"""Where the CUDA sources live: ``GPUCONV_CUDA_DIR`` if set, else the package's own ``kernels``
directory (an installed wheel), else the checkout's top-level ``cuda/`` (an editable install)."""
from __future__ import annotations

import functools
import os
from importlib import resources
from pathlib import Path


@functools.cache
def _installed_or_checkout() -> Path:
    package = Path(str(resources.files("gpuconv")))
    for cand in (package / "kernels", package.parent / "cuda"):
        if (cand / "common.cuh").is_file():
            return cand
    raise FileNotFoundError(
        f"cannot find gpuconv's CUDA sources: neither {package / 'kernels'} (an installed package) nor "
        f"{package.parent / 'cuda'} (a checkout) holds common.cuh; reinstall gpuconv or set "
        "GPUCONV_CUDA_DIR to a directory with its .cu files")


def cuda_dir() -> Path:
    env = os.environ.get("GPUCONV_CUDA_DIR")
    if env:
        return Path(env)
    return _installed_or_checkout()


def cache_root() -> Path:
    """Where gpuconv keeps its caches (compiled emulator modules, profiler facts, kernel choices):
    ``GPUCONV_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/gpuconv``, else ``~/.cache/gpuconv``.
    Not created here."""
    env = os.environ.get("GPUCONV_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "gpuconv"
