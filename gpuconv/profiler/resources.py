"""Compile the kernels of a cuda/*.cu for real architectures: cubins, ptxas resource usage.

Every kernel name expression its launch modules declare is compiled, so templates are
instantiated as at run time. Two compilers give the same facts:

* NVRTC (``nvidia-cuda-nvrtc``), with the options CuPy compiles with on the GPU (the backend's
  ``compile_options()`` plus ``-ftz=true``): the SASS that would run;
* nvcc, on a generated file that includes the .cu and takes the address of every expression.

``ptxas -v`` reports registers, stack frame, spill stores and loads and static shared memory per
kernel; ``resource_usage`` tabulates them (``scripts/resource_usage.py`` prints the table).
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .._paths import cuda_dir
from ..backends import launch
from ..backends.kernel_backend import compile_options
from .toolchain import find_libnvrtc, find_tool

__all__ = [
    "KernelUsage",
    "Compiled",
    "find_nvcc",
    "expressions_by_file",
    "is_default",
    "instantiation_source",
    "parse_resource_usage",
    "compile_file",
    "resource_usage",
    "format_table",
    "offenders",
    "available_compiler",
]

_VERSIONED = re.compile(r"^(?P<base>\w+?)_v(?P<v>\d+)(?:<|$)")


@dataclass
class KernelUsage:
    file: str
    name: str  # the name expression, e.g. "relu_forward_v2<float>"
    default: bool
    registers: int
    stack_frame: int
    spill_stores: int
    spill_loads: int
    shared: int  # static shared memory, bytes


def find_nvcc() -> Optional[str]:
    return find_tool("nvcc")


def expressions_by_file() -> Dict[str, List[str]]:
    """.cu file -> every name expression its launch modules declare."""
    out: Dict[str, List[str]] = {}
    for mod in launch.FAMILIES:
        exprs = out.setdefault(mod.FILE, [])
        exprs.extend(e for e in mod.NAME_EXPRESSIONS if e not in exprs)
    return out


def is_default(expr: str) -> bool:
    """Whether a default version of some op launches kernel ``expr``.

    ``<op>_v<k>`` kernels are default when DEFAULT_VERSIONS[op] == k, where op is the kernel's base
    name or, for kernels a module groups under one op, its ``KERNEL_OPS[base]``. Unversioned
    helper kernels with a single version are always used, hence default.
    """
    m = _VERSIONED.match(expr)
    if not m:
        return True
    base, v = m.group("base"), int(m.group("v"))
    for mod in launch.FAMILIES:
        if not any(e == expr for e in mod.NAME_EXPRESSIONS):
            continue
        op = getattr(mod, "KERNEL_OPS", {}).get(base, base)
        if op in mod.DEFAULT_VERSIONS:
            return mod.DEFAULT_VERSIONS[op] == v
        return True
    return True


def instantiation_source(filename: str, exprs: List[str]) -> str:
    """A .cu that includes ``filename`` and instantiates every kernel in ``exprs``."""
    refs = "\n".join(f"    (const void*)&{e}," for e in exprs)
    return f'#include "{filename}"\nconst void* gpuconv_instantiations[] = {{\n{refs}\n}};\n'


def _demangle(names: List[str]) -> Dict[str, str]:
    tool = shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    res = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, check=True)
    return dict(zip(names, res.stdout.splitlines()))


def _normalise(sig: str) -> str:
    """'void relu_forward_v2<float>(const float*, ...)' -> 'relu_forward_v2<float>'."""
    sig = sig.strip()
    if sig.startswith("void "):
        sig = sig[5:]
    depth = 0
    for i, ch in enumerate(sig):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            return sig[:i].replace(" ", "")
    return sig.replace(" ", "")


def parse_resource_usage(text: str) -> Dict[Tuple[str, str], Tuple[int, int, int, int, int]]:
    """(arch, mangled kernel) -> (registers, stack frame, spill stores, spill loads, shared bytes)."""
    out: Dict[Tuple[str, str], Tuple[int, int, int, int, int]] = {}
    arch = current = None
    stack = stores = loads = 0
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\S+)' for '(sm_\d+\w*)'", line)
        if m:
            arch = m.group(2)
            continue
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            current = m.group(1)
            stack = stores = loads = 0
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and current:
            stack, stores, loads = (int(g) for g in m.groups())
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m and current and arch:
            smem = re.search(r"(\d+) bytes smem", line)
            out[(arch, current)] = (int(m.group(1)), stack, stores, loads, int(smem.group(1)) if smem else 0)
            current = None
    return out


# ---- compiling ------------------------------------------------------------------------------------


@dataclass
class Compiled:
    """One .cu compiled for one architecture: the cubin, ptxas's report and expression -> symbol."""

    filename: str
    arch: str
    cubin: bytes
    usage: Dict[str, Tuple[int, int, int, int, int]]  # expression -> parse_resource_usage's tuple
    symbols: Dict[str, str]  # expression -> mangled name
    compiler: str


@dataclass
class NvrtcResult:
    """One NVRTC compile: whether it succeeded, its log, expression -> lowered (mangled) name, and
    the binary (a cubin for a real architecture such as sm_90, PTX for a virtual one)."""

    ok: bool
    log: str
    lowered: Dict[str, str]
    binary: bytes


class Nvrtc:
    """The few libnvrtc entry points gpuconv needs, through ctypes (no GPU, no CuPy)."""

    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path)
        self.lib = lib
        p = ctypes.c_void_p
        size = ctypes.POINTER(ctypes.c_size_t)
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        lib.nvrtcCreateProgram.argtypes = [ctypes.POINTER(p), ctypes.c_char_p, ctypes.c_char_p,
                                           ctypes.c_int, p, p]
        lib.nvrtcAddNameExpression.argtypes = [p, ctypes.c_char_p]
        lib.nvrtcCompileProgram.argtypes = [p, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
        lib.nvrtcGetProgramLogSize.argtypes = [p, size]
        lib.nvrtcGetProgramLog.argtypes = [p, ctypes.c_char_p]
        lib.nvrtcGetLoweredName.argtypes = [p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p)]
        lib.nvrtcGetCUBINSize.argtypes = [p, size]
        lib.nvrtcGetCUBIN.argtypes = [p, ctypes.c_char_p]
        lib.nvrtcGetPTXSize.argtypes = [p, size]
        lib.nvrtcGetPTX.argtypes = [p, ctypes.c_char_p]
        lib.nvrtcDestroyProgram.argtypes = [ctypes.POINTER(p)]
        lib.nvrtcVersion.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)]

    def version(self) -> str:
        a, b = ctypes.c_int(), ctypes.c_int()
        self.lib.nvrtcVersion(ctypes.byref(a), ctypes.byref(b))
        return f"nvrtc {a.value}.{b.value}"

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"{what}: {self.lib.nvrtcGetErrorString(status).decode()}")

    def _blob(self, prog, get_size, get) -> bytes:
        n = ctypes.c_size_t()
        self._check(get_size(prog, ctypes.byref(n)), get_size.__name__)
        buf = ctypes.create_string_buffer(n.value)
        self._check(get(prog, buf), get.__name__)
        return buf.raw

    def compile(self, source: str, name: str, options: Sequence[str], exprs: Sequence[str]) -> NvrtcResult:
        """Compile ``source`` with ``options``; a failed compile is a result with ``ok`` False."""
        prog = ctypes.c_void_p()
        self._check(self.lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0,
                                                None, None), "nvrtcCreateProgram")
        try:
            for e in exprs:
                self._check(self.lib.nvrtcAddNameExpression(prog, e.encode()), f"nvrtcAddNameExpression({e})")
            opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
            status = self.lib.nvrtcCompileProgram(prog, len(options), opts)
            log = self._blob(prog, self.lib.nvrtcGetProgramLogSize, self.lib.nvrtcGetProgramLog)
            log = log.rstrip(b"\0").decode(errors="replace")
            if status != 0:
                return NvrtcResult(False, log, {}, b"")
            lowered = {}
            for e in exprs:
                out = ctypes.c_char_p()
                self._check(self.lib.nvrtcGetLoweredName(prog, e.encode(), ctypes.byref(out)),
                            f"nvrtcGetLoweredName({e})")
                lowered[e] = out.value.decode()
            real = any(re.search(r"(?:-arch=|--gpu-architecture=)sm_", o) for o in options)
            binary = (self._blob(prog, self.lib.nvrtcGetCUBINSize, self.lib.nvrtcGetCUBIN) if real
                      else self._blob(prog, self.lib.nvrtcGetPTXSize, self.lib.nvrtcGetPTX))
            return NvrtcResult(True, log, lowered, binary)
        finally:
            self.lib.nvrtcDestroyProgram(ctypes.byref(prog))


@functools.cache
def nvrtc() -> Optional[Nvrtc]:
    """The NVRTC binding, or None where libnvrtc is not found."""
    path = find_libnvrtc()
    return Nvrtc(path) if path else None


def available_compiler(compiler: str = "auto") -> Optional[str]:
    """ "nvrtc" or "nvcc" (``auto``: NVRTC, the compiler CuPy uses, else nvcc), or None when absent."""
    if compiler not in ("auto", "nvrtc", "nvcc"):
        raise ValueError(f"compiler must be 'auto', 'nvrtc' or 'nvcc', got {compiler!r}")
    if compiler in ("auto", "nvrtc") and nvrtc() is not None:
        return "nvrtc"
    if compiler in ("auto", "nvcc") and find_nvcc() is not None:
        return "nvcc"
    return None


def compiler_version(compiler: str) -> str:
    if compiler == "nvrtc":
        nv = nvrtc()
        return nv.version() if nv else "none"
    nvcc = find_nvcc()
    return (
        subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip() if nvcc else "none"
    )


def _usage_by_expression(log: str, arch: str, symbols: Dict[str, str]) -> Dict[str, Tuple[int, ...]]:
    usage = parse_resource_usage(log)
    out = {}
    for e, sym in symbols.items():
        if (arch, sym) not in usage:
            raise RuntimeError(f"no resource usage reported for {e} ({sym}) on {arch}")
        out[e] = usage[(arch, sym)]
    return out


def compile_file(
    filename: str, exprs: List[str], arch: str, compiler: str = "auto", directory: Optional[Path] = None
) -> Compiled:
    """Compile ``filename`` of ``directory`` (default cuda/) with every expression in ``exprs``
    for ``arch`` (e.g. "sm_90"), with the backend's compile options."""
    which = available_compiler(compiler)
    if which is None:
        raise FileNotFoundError("neither NVRTC (pip install nvidia-cuda-nvrtc) nor nvcc was found")
    directory = Path(directory) if directory is not None else cuda_dir()
    path = directory / filename
    if which == "nvrtc":
        opts = list(compile_options()) + [
            f"-I{directory}",
            "-ftz=true",
            f"--gpu-architecture={arch}",
            "-Xptxas=-v",
        ]
        res = nvrtc().compile(path.read_text(), filename, opts, list(exprs))
        if not res.ok:
            raise RuntimeError(f"NVRTC failed on {filename}:\n{res.log}")
        return Compiled(filename, arch, res.binary, _usage_by_expression(res.log, arch, res.lowered),
                        res.lowered, which)
    nvcc = find_nvcc()
    opts = [o for o in compile_options() if not o.startswith("-I")]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"inst_{Path(filename).stem}.cu"
        src.write_text(instantiation_source(filename, list(exprs)))
        out = Path(tmp) / "k.cubin"
        res = subprocess.run(
            [
                nvcc,
                *opts,
                f"-arch={arch}",
                "-cubin",
                "--resource-usage",
                f"-I{directory}",
                f"-I{cuda_dir()}",
                str(src),
                "-o",
                str(out),
            ],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            raise RuntimeError(f"nvcc failed on {filename} for {arch}:\n{res.stdout}\n{res.stderr}")
        cubin = out.read_bytes()
    log = res.stdout + res.stderr
    mangled = sorted({m for _, m in parse_resource_usage(log)})
    by_norm = {_normalise(d): m for m, d in _demangle(mangled).items()}
    symbols = {}
    for e in exprs:
        if e.replace(" ", "") not in by_norm:
            raise RuntimeError(f"{filename}: no resource usage reported for {e} on {arch}")
        symbols[e] = by_norm[e.replace(" ", "")]
    return Compiled(filename, arch, cubin, _usage_by_expression(log, arch, symbols), symbols, which)


def resource_usage(
    archs: Tuple[str, ...] = ("sm_90", "sm_80"), nvcc: Optional[str] = None, compiler: str = "nvcc"
) -> Dict[str, List[KernelUsage]]:
    """Compile every cuda/*.cu for ``archs`` (files and architectures in parallel).

    Returns arch -> one row per kernel name expression. ``nvcc`` overrides the nvcc found.
    """
    if nvcc is not None:
        os.environ["NVCC"] = nvcc
    if available_compiler(compiler) is None:
        raise FileNotFoundError(f"{compiler} not found (set NVCC, or install nvidia-cuda-nvrtc)")
    files = [(f, e) for f, e in sorted(expressions_by_file().items()) if (cuda_dir() / f).is_file()]
    jobs = [(f, e, a) for f, e in files for a in archs]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        done = list(pool.map(lambda j: compile_file(j[0], j[1], j[2], compiler), jobs))
    rows: Dict[str, List[KernelUsage]] = {a: [] for a in archs}
    for (filename, exprs, arch), c in zip(jobs, done):
        for e in exprs:
            rows[arch].append(KernelUsage(filename, e, is_default(e), *c.usage[e]))
    return rows


def format_table(arch: str, rows: List[KernelUsage]) -> str:
    head = (
        f"{'file':<16} {'kernel':<44} {'default':>7} {'regs':>5} {'stack':>6} {'spill st':>9} "
        f"{'spill ld':>9} {'smem':>6}"
    )
    lines = [f"ptxas resource usage, {arch}", head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.file:<16} {r.name:<44} {'yes' if r.default else '':>7} {r.registers:>5} "
            f"{r.stack_frame:>6} {r.spill_stores:>9} {r.spill_loads:>9} {r.shared:>6}"
        )
    return "\n".join(lines)


def offenders(rows: List[KernelUsage]) -> List[KernelUsage]:
    """Default-version kernels with a stack frame or spills."""
    return [r for r in rows if r.default and (r.stack_frame or r.spill_stores or r.spill_loads)]
