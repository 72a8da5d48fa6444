"""Launch modules: one per kernel family, each tied to one ``cuda/*.cu`` file.

Every family module defines ``FILE`` (the .cu file), ``NAME_EXPRESSIONS`` (every kernel name of
every version and dtype in that file it launches), ``VERSIONS`` (op -> available versions),
``DEFAULT_VERSIONS`` (op -> default) and launch functions taking the backend first.

This package also holds the helpers they share: 1-D grid sizing, the int32 size check and the
C type name of a dtype.
"""
from __future__ import annotations

import importlib
import math
from types import ModuleType
from typing import Dict, List, Tuple

import numpy as np

from ...geometry import INT32_MAX

# family module -> .cu file it launches from
FAMILIES: Dict[str, str] = {
    "conv": "conv2d.cu",
    "pool": "pool2d.cu",
    "elementwise": "elementwise.cu",
    "linear": "linear.cu",
    "loss": "loss.cu",
    "optim": "optim.cu",
}

# Grid-stride kernels are launched with at most this many blocks: enough to fill every SM of an
# H100/H200 many times over, and small enough that the unsigned loop counter cannot wrap.
MAX_GRID_STRIDE_BLOCKS = 65535


_modules: Dict[str, ModuleType] = {}


def family(name: str) -> ModuleType:
    """The launch module of family ``name`` (imported and checked on first use, then cached).

    Every op call goes through here, so the cached path is a single dict lookup.
    """
    mod = _modules.get(name)
    if mod is not None:
        return mod
    if name not in FAMILIES:
        raise ValueError(f"kernel family must be one of {sorted(FAMILIES)}, got {name!r}")
    mod = importlib.import_module(f".{name}", __name__)
    if getattr(mod, "FILE", None) != FAMILIES[name]:
        raise RuntimeError(f"launch module {name} declares FILE={getattr(mod, 'FILE', None)!r}, "
                           f"expected {FAMILIES[name]!r}")
    _modules[name] = mod
    return mod


def families_of_file(filename: str) -> List[ModuleType]:
    """Every launch module that launches kernels from ``filename``."""
    return [family(name) for name, f in FAMILIES.items() if f == filename]


def all_families() -> List[ModuleType]:
    """Every launch module present in this checkout (a family whose module is absent is skipped)."""
    mods = []
    for name in FAMILIES:
        try:
            mods.append(family(name))
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    return mods


def ctype(dtype) -> str:
    """C type name of a floating dtype: "float" or "double"."""
    dt = np.dtype(dtype)
    if dt == np.float32:
        return "float"
    if dt == np.float64:
        return "double"
    raise TypeError(f"kernels take float32 or float64 arrays, got dtype {dt}")


def scalar(dtype, value):
    """A NumPy scalar of the kernel parameter's type (np.float32 / np.float64)."""
    return np.dtype(dtype).type(value)


def check_elements(name: str, n: int) -> int:
    """Refuse element counts whose offsets overflow the kernels' int32 arithmetic."""
    n = int(n)
    if n > INT32_MAX:
        raise ValueError(
            f"{name} has {n} elements; kernels index with int32 offsets, so at most {INT32_MAX} "
            f"elements are supported: split the batch")
    return n


def grid_1d(n: int, block: int = 256) -> Tuple[Tuple[int, int, int], Tuple[int, int, int]]:
    """(grid, block) for a grid-stride loop over ``n`` items (at least one block)."""
    blocks = max(1, min(math.ceil(n / block), MAX_GRID_STRIDE_BLOCKS))
    return (blocks, 1, 1), (block, 1, 1)
