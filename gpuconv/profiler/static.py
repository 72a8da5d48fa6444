"""Static facts of every kernel of a cuda/*.cu for one architecture, cached on disk.

``kernel_facts(filename, arch)`` compiles the file once (``resources.compile_file``: NVRTC with
CuPy's options, else nvcc), disassembles the cubin (``sass``) and returns, per name expression, a
JSON-ready dict: ``registers``, ``stack_frame``, ``spill_stores``, ``spill_loads``, ``shared``
(static bytes), ``mix`` (the whole kernel, ``sass.Mix.as_dict``), ``loop`` (the innermost hot
loop's mix, or None), ``fma_before_use`` and ``loads_before_multiply`` (``sass``).

Results are cached under ``cache_root() / "profile"`` (default ``~/.cache/gpuconv/profile``),
keyed by the .cu and every header beside it, the expressions, the architecture and the compiler
and its version.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

from .._paths import cache_root, cuda_dir
from ..backends import launch
from ..backends.executors import source_hash
from . import sass
from .resources import available_compiler, compile_file, compiler_version

__all__ = ["kernel_facts", "facts_of", "cache_dir"]

FORMAT = "2"


def cache_dir() -> Path:
    d = cache_root() / "profile"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _facts(compiled, expr: str, code: Dict[str, Any]) -> Dict[str, Any]:
    regs, stack, st, ld, shared = compiled.usage[expr]
    instrs = code.get(compiled.symbols[expr])
    if instrs is None:
        raise RuntimeError(f"{compiled.filename}: no SASS for {expr} on {compiled.arch}")
    loop = sass.hot_loop(instrs)
    placement = sass.load_placement(loop) if loop else None
    return {
        "registers": regs,
        "stack_frame": stack,
        "spill_stores": st,
        "spill_loads": ld,
        "shared": shared,
        "mix": sass.mix(instrs).as_dict(),
        "loop": sass.mix(loop).as_dict() if loop else None,
        "fma_before_use": None if placement is None else round(placement, 4),
        "loads_before_multiply": None if placement is None else placement >= 0.5,
    }


def facts_of(compiled) -> Dict[str, Dict[str, Any]]:
    """Name expression -> static facts of every kernel of a ``resources.Compiled``."""
    code = sass.parse(sass.disassemble(compiled.cubin))
    return {
        e: {"arch": compiled.arch, "compiler": compiled.compiler, **_facts(compiled, e, code)}
        for e in compiled.symbols
    }


def kernel_facts(filename: str, arch: str, compiler: str = "auto") -> Dict[str, Dict[str, Any]]:
    """Name expression -> static facts (see the module docstring) of every kernel of ``filename``."""
    which = available_compiler(compiler)
    if which is None:
        raise FileNotFoundError("neither NVRTC (pip install nvidia-cuda-nvrtc) nor nvcc was found")
    exprs = list(launch.name_expressions(filename))
    key = hashlib.sha256(
        json.dumps(
            [FORMAT, source_hash(cuda_dir() / filename), exprs, arch, which, compiler_version(which)]
        ).encode()
    ).hexdigest()[:24]
    path = cache_dir() / f"{Path(filename).stem}-{arch}-{key}.json"
    cached = _read(path)
    if cached is not None:
        return cached
    out = facts_of(compile_file(filename, exprs, arch, which))
    fd, tmp = tempfile.mkstemp(dir=cache_dir(), prefix="tmp-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(out, f)
    os.replace(tmp, path)
    return out


def _read(path: Path) -> Optional[Dict[str, Dict[str, Any]]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
