"""Launch modules: one per kernel family, each tied to one ``cuda/*.cu`` file.

Every family module defines ``FILE`` (the .cu file), ``NAME_EXPRESSIONS`` (every kernel name of
every version and dtype in that file it launches), ``VERSIONS`` (op -> available versions),
``DEFAULT_VERSIONS`` (op -> default) and launch functions taking the backend first; a family
whose versions compute with reduced precision also lists them in ``PRECISION``, one whose
versions call the array library instead of a kernel lists them in ``LIBRARY_VERSIONS``, and a family
whose kernels share sizes with its launch code defines them once in ``DEFINES``, which reach the
``.cu`` files as ``-D`` options (``defines()``).

This package imports every family statically and merges their tables, so version lookups,
precision and name expressions have one source each. The helpers the families share
(grid sizing, the int32 size check, dtype -> C type) are in ``common``.
"""
from __future__ import annotations

from typing import Dict, Tuple

from . import augment, batchnorm, conv, elementwise, linear, loss, optim, pool

__all__ = ["FAMILIES", "VERSIONS", "DEFAULT_VERSIONS", "PRECISION", "FLOAT32_ONLY", "TILES",
           "LIBRARY_VERSIONS", "precision", "default_versions", "defines", "name_expressions", "augment",
           "batchnorm", "conv", "elementwise", "linear", "loss", "optim", "pool"]

FAMILIES = (conv, pool, elementwise, linear, loss, optim, batchnorm, augment)

VERSIONS: Dict[str, Tuple[int, ...]] = {op: vs for mod in FAMILIES for op, vs in mod.VERSIONS.items()}
DEFAULT_VERSIONS: Dict[str, int] = {op: v for mod in FAMILIES for op, v in mod.DEFAULT_VERSIONS.items()}
# (op, version) -> "tf32" for versions that compute with TF32 operands; every other is full precision.
PRECISION: Dict[Tuple[str, int], str] = {key: p for mod in FAMILIES
                                         for key, p in getattr(mod, "PRECISION", {}).items()}
# (op, version) of versions that refuse float64.
FLOAT32_ONLY = frozenset(key for mod in FAMILIES for key in getattr(mod, "FLOAT32_ONLY", ()))
# (op, version) -> the tile widths a version can be launched with (the selector's choice).
TILES: Dict[Tuple[str, int], Tuple[int, ...]] = {key: w for mod in FAMILIES
                                                 for key, w in getattr(mod, "TILES", {}).items()}
# (op, version) of versions that call the array library (cupy.matmul: cuBLAS) instead of a kernel.
LIBRARY_VERSIONS = frozenset(key for mod in FAMILIES for key in getattr(mod, "LIBRARY_VERSIONS", ()))


def default_versions(executor: str) -> Dict[str, int]:
    """op -> default version on ``executor`` ("cuda" or "emulator").

    On a GPU these are DEFAULT_VERSIONS. On the emulator the array library is NumPy, the reference
    itself, so a library version would check NumPy against NumPy: there an op whose default is a
    library version gets its highest kernel version instead, and every op runs a kernel of cuda/.
    """
    if executor != "emulator":
        return dict(DEFAULT_VERSIONS)
    return {op: v if (op, v) not in LIBRARY_VERSIONS
            else max(k for k in VERSIONS[op] if (op, k) not in LIBRARY_VERSIONS)
            for op, v in DEFAULT_VERSIONS.items()}


def defines() -> Tuple[str, ...]:
    """``-D`` options for every size a family shares with its kernels (all families: the names are
    prefixed per file, and one option set keeps one compile-cache key per file)."""
    return tuple(f"-D{name}={value}" for mod in FAMILIES
                 for name, value in sorted(getattr(mod, "DEFINES", {}).items()))


def precision(op: str, version: int) -> str:
    """"tf32" for versions listed in a family's PRECISION table, else "fp32" (the dtype's own)."""
    return PRECISION.get((op, version), "fp32")


def name_expressions(filename: str) -> Tuple[str, ...]:
    """Every kernel name expression launched from ``filename``, over all families (no repeats)."""
    exprs: list = []
    for mod in FAMILIES:
        if mod.FILE == filename:
            exprs.extend(e for e in mod.NAME_EXPRESSIONS if e not in exprs)
    if not exprs:
        raise ValueError(f"no launch module declares kernels of {filename!r}")
    return tuple(exprs)
