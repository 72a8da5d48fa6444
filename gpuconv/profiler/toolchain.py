"""Where the CUDA tools are: nvcc, cuobjdump and nvdisasm, and NVRTC's library.

Each is looked up in its environment variable (``NVCC``, ``CUOBJDUMP``, ``NVDISASM``,
``GPUCONV_NVRTC``), on PATH, in ``$CUDA_HOME/bin`` / ``$CUDA_PATH/bin``, in
``/usr/local/cuda/bin``, and in the pip packages' ``nvidia/cu*/bin`` (``nvidia-cuda-nvcc``,
``nvidia-cuda-cuobjdump``, ``nvidia-cuda-nvdisasm``) and ``nvidia/cu*/lib`` (``nvidia-cuda-nvrtc``)
of this Python's site-packages (the extra ``profile`` of setup.cfg installs them).
"""

from __future__ import annotations

import glob
import os
import shutil
import site
import sysconfig
from pathlib import Path
from typing import List, Optional

__all__ = ["find_tool", "find_libnvrtc", "tool_dirs"]

_ENV = {"nvcc": "NVCC", "cuobjdump": "CUOBJDUMP", "nvdisasm": "NVDISASM"}


def _site_dirs() -> List[str]:
    dirs = [sysconfig.get_paths().get("purelib", "")]
    try:
        dirs += site.getsitepackages() + [site.getusersitepackages()]
    except AttributeError:  # some virtualenv layouts
        pass
    return [d for d in dict.fromkeys(dirs) if d and os.path.isdir(d)]


def tool_dirs() -> List[str]:
    """Directories searched after PATH, in order."""
    dirs = [os.path.join(os.environ[v], "bin") for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    dirs.append("/usr/local/cuda/bin")
    for d in _site_dirs():
        dirs += sorted(glob.glob(os.path.join(d, "nvidia", "cu*", "bin")), reverse=True)
        dirs += sorted(glob.glob(os.path.join(d, "nvidia", "cuda_*", "bin")), reverse=True)
    return dirs


def find_tool(name: str) -> Optional[str]:
    """Path of ``nvcc``, ``cuobjdump`` or ``nvdisasm``, or None."""
    if name not in _ENV:
        raise ValueError(f"name must be one of {sorted(_ENV)}, got {name!r}")
    env = os.environ.get(_ENV[name])
    if env:
        return env if Path(env).is_file() else None
    found = shutil.which(name)
    if found:
        return found
    for d in tool_dirs():
        cand = Path(d) / name
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return None


def find_libnvrtc() -> Optional[str]:
    """Path of libnvrtc (the pip package's, or a toolkit's), or None."""
    env = os.environ.get("GPUCONV_NVRTC")
    if env:
        return env if Path(env).is_file() else None
    cands: List[str] = []
    for d in _site_dirs():
        for pattern in ("nvidia/cu*/lib/libnvrtc.so*", "nvidia/cuda_nvrtc/lib/libnvrtc.so*"):
            cands += sorted(glob.glob(os.path.join(d, pattern)), reverse=True)
    for v in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(v):
            cands += sorted(glob.glob(os.path.join(os.environ[v], "lib64", "libnvrtc.so*")), reverse=True)
    cands += sorted(glob.glob("/usr/local/cuda/lib64/libnvrtc.so*"), reverse=True)
    for c in cands:
        if "builtins" not in os.path.basename(c) and "alt" not in os.path.basename(c):
            return c
    return None
