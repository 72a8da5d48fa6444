"""Compiling kernel sources for the CPU emulator, with a content-keyed build cache.

A module is built as: ``g++ -E`` (lint, kernel discovery) -> one C++ translation unit that
includes the .cu and a generated wrapper per kernel -> object -> a tiny generated C file that
aliases every ``extern __shared__`` TLS symbol to one 227 KiB buffer -> shared library. The
runtime (cuda/emu/runtime.cpp) is built once into its own cached library.

Cache (``cache.py``): one verified entry per build, keyed by the source, every project file it
includes, the emulator header and runtime, the flags, the name expressions and the compiler
version. ``GPUCONV_EMU_ASAN=1`` builds with AddressSanitizer (needs libasan preloaded).

Kernel modules are compiled with line tables (``-g1``), so that a fault is reported at its source
line (``source_line``), and with ``-fsanitize=bounds``, whose out-of-bounds hook the runtime
provides: an index past a fixed-size array (``__shared__`` or local) is reported, not followed.
Calls of ``exit``/``abort``/``__assert_fail`` in kernel code are linked to the runtime's versions
(``--wrap``), which end the launch with an error instead of the process. ``-gdwarf-4`` because
binutils 2.40's addr2line names the wrong file from GCC 12's DWARF 5 line tables.

Profile mode (``build_module(..., profile=True)``, used by ``gpuconv.emulator.profile``): the
kernel code is compiled with GCC's thread-sanitizer instrumentation, whose per-access hooks are
served by cuda/emu/profile_runtime.cpp (loaded before the module) instead of libtsan, with debug
line information and without the optimisations that would split or merge accesses (scalar
replacement of aggregates, vectorisation, store merging), so each load and store of the source is
one instrumented access of its own width. ``-fno-gnu-unique`` keeps the static ``__shared__``
arrays of template kernels in the module's own TLS block (as STB_GNU_UNIQUE symbols they would
bind to the normal build's copy when both are loaded).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .._paths import cuda_dir
from . import cache, source
from .constants import SMEM_ALIGN, defines
from .errors import CompileError, LintError
from .settings import asan_enabled, compiler

BUILD_VERSION = "3"
# -g1: line tables only (no effect on the code); DWARF 4, whose file table binutils' addr2line 2.40 reads
# right for an included .cu (it names the wrapper for DWARF 5).
_KERNEL_FLAGS = ["-O2", "-fPIC", "-U_FORTIFY_SOURCE", "-fstack-clash-protection", "-fno-strict-aliasing",
                 "-fno-plt", "-w", "-g1", "-gdwarf-4", "-fsanitize=bounds", "-fno-sanitize-recover=bounds"]
_RUNTIME_FLAGS = ["-O2", "-fPIC", "-shared", "-std=c++17", "-U_FORTIFY_SOURCE", "-Wall"]
_ASAN_FLAGS = ["-fsanitize=address", "-fno-omit-frame-pointer", "-g", "-DGPUCONV_EMU_ASAN=1"]
# Process-ending calls in kernel code, redirected to the runtime's __wrap_<name>.
_WRAPPED = ("exit", "_exit", "_Exit", "quick_exit", "abort", "pthread_exit", "__assert_fail")
_PROFILE_FLAGS = ["-g", "-fsanitize=thread", "--param", "tsan-instrument-func-entry-exit=0",
                  "--param", "tsan-distinguish-volatile=0", "-fno-tree-sra", "-fno-tree-vectorize",
                  "-fno-tree-slp-vectorize", "-fno-store-merging", "-fno-gnu-unique",
                  "-DGPUCONV_EMU_PROFILE=1"]

# Counters of compiler runs in this process (tests use them to prove cache hits).
stats: Dict[str, int] = {"kernel_compiles": 0, "runtime_compiles": 0, "profile_runtime_compiles": 0}
_lock = threading.Lock()


def emu_dir() -> Path:
    return cuda_dir() / "emu"


def cache_dir() -> Path:
    return cache.root()


@functools.cache
def compiler_version(cxx: str) -> str:
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise CompileError(f"the CPU emulator needs a C++ compiler ({cxx!r}, set GPUCONV_EMU_CXX): "
                           f"{e}") from e
    return out.strip()


def _hash(parts: Sequence[bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()[:32]


def _run(cmd: List[str], what: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CompileError(f"{what} failed ({' '.join(cmd)}):\n{proc.stderr.strip()}")
    return proc


# ---- runtime ------------------------------------------------------------------------------------

_runtime: Optional[ctypes.CDLL] = None


def _runtime_sources() -> List[Path]:
    d = emu_dir()
    return [d / "runtime.cpp", d / "emu_runtime.h"]


def runtime() -> ctypes.CDLL:
    """The runtime library, built on first use and loaded RTLD_GLOBAL (kernel modules link to it)."""
    global _runtime
    with _lock:
        if _runtime is not None:
            return _runtime
        cxx = compiler()
        flags = _RUNTIME_FLAGS + defines() + (_ASAN_FLAGS if asan_enabled() else [])
        name = "runtime-" + _hash([BUILD_VERSION.encode(), compiler_version(cxx).encode(),
                                   " ".join(flags).encode()] + [p.read_bytes() for p in _runtime_sources()])
        entry = cache.lookup(name)
        if entry is None:
            with cache.building(name) as tmp:
                _run([cxx, *flags, str(emu_dir() / "runtime.cpp"), "-o", str(tmp / "runtime.so"), "-ldl",
                      "-lrt"], "building the emulator runtime")
                stats["runtime_compiles"] += 1
            entry = cache_dir() / name
        lib = ctypes.CDLL(str(entry / "runtime.so"), mode=ctypes.RTLD_GLOBAL)
        lib.gpuconv_emu_launch.restype = ctypes.c_int
        lib.gpuconv_emu_launch.argtypes = [
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_ulonglong, ctypes.c_char_p,
            ctypes.c_void_p, ctypes.c_int]
        lib.gpuconv_emu_error_message.restype = ctypes.c_char_p
        lib.gpuconv_emu_error_pc.restype = ctypes.c_ulonglong
        lib.gpuconv_emu_symbol_size.restype = ctypes.c_size_t
        lib.gpuconv_emu_symbol_size.argtypes = [ctypes.c_void_p]
        _runtime = lib
        return lib


_profile_runtime: Optional[ctypes.CDLL] = None


def profile_runtime() -> ctypes.CDLL:
    """The memory-access hooks of profile-mode modules (cuda/emu/profile_runtime.cpp), built on
    first use and loaded RTLD_GLOBAL after the runtime, before any profile-mode module."""
    global _profile_runtime
    rt = runtime()
    with _lock:
        if _profile_runtime is not None:
            return _profile_runtime
        cxx = compiler()
        src = emu_dir() / "profile_runtime.cpp"
        flags = _RUNTIME_FLAGS + defines()
        name = "profile-runtime-" + _hash([BUILD_VERSION.encode(), compiler_version(cxx).encode(),
                                           " ".join(flags).encode(), src.read_bytes(),
                                           (emu_dir() / "emu_runtime.h").read_bytes()])
        if cache.lookup(name) is None:
            with cache.building(name) as tmp:
                _run([cxx, *flags, str(src), "-o", str(tmp / "profile_runtime.so"), "-ldl"],
                     "building the emulator's profile runtime")
                stats["profile_runtime_compiles"] += 1
        del rt
        _profile_runtime = ctypes.CDLL(str(cache_dir() / name / "profile_runtime.so"),
                                       mode=ctypes.RTLD_GLOBAL)
        return _profile_runtime


# ---- precompiled emulator header --------------------------------------------------------------

def _header_for(kflags: List[str], std: str) -> Path:
    """The force-included header: a cached copy with a precompiled .gch beside it (or the original)."""
    cxx = compiler()
    d = emu_dir()
    headers = [d / "cuda_emu.h", d / "emu_runtime.h"]
    name = "pch-" + _hash([BUILD_VERSION.encode(), compiler_version(cxx).encode(), " ".join(kflags).encode(),
                           std.encode()] + [h.read_bytes() for h in headers])
    if cache.lookup(name) is None:
        try:
            with cache.building(name) as t:
                for h in headers:
                    shutil.copy(h, t / h.name)
                _run([cxx, *kflags, f"-std={std}", "-x", "c++-header", str(t / "cuda_emu.h"), "-o",
                      str(t / "cuda_emu.h.gch")], "precompiling the emulator header")
        except (CompileError, OSError):
            pass
        if cache.lookup(name) is None:
            return d / "cuda_emu.h"  # compiled from the text instead
    return cache_dir() / name / "cuda_emu.h"


# ---- kernel modules -----------------------------------------------------------------------------

@dataclass
class Built:
    """A loaded kernel library and what it contains."""

    path: Path
    lib: ctypes.CDLL
    kernels: List[str]        # extern "C" kernels found in the source
    entities: Dict[str, int]  # name or name expression -> index in the describe table
    compiled: bool            # True when this call ran the compiler


_loaded: Dict[Path, ctypes.CDLL] = {}


def _c_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _wrapper_source(src: Path, names: List[str], manifest: dict) -> str:
    """The .cu, then a table of describe functions, one per name, and the manifest. The table
    and the manifest are the only names this adds at global scope (user names never clash)."""
    entries = "".join(f"    &gpuconv_emu::describe< &{name} >,\n" for name in names)
    return (f"#include {_c_string(str(src))}\n\n"
            f'extern "C" void (*const gpuconv_emu_describe_table[])(void**, const char**, void**) = {{\n'
            f"{entries}    nullptr}};\n"
            f'extern "C" const char* const gpuconv_emu_manifest = {_c_string(json.dumps(manifest))};\n')


_TLS_UND = re.compile(r"^\s*\d+:\s+[0-9a-f]+\s+\d+\s+TLS\s+\w+\s+\w+\s+UND\s+(\S+)\s*$", re.M)
_TLS_INIT_UND = re.compile(r"^\s*\d+:\s+[0-9a-f]+\s+\d+\s+\w+\s+\w+\s+\w+\s+UND\s+(_ZTH\S+)\s*$", re.M)


def _alias_source(symbols: List[str], tls_inits: List[str]) -> str:
    """C source aliasing every extern __shared__ symbol to one page-aligned buffer (no-op C++ TLS
    init functions)."""
    from .constants import DYN_SMEM_TOTAL
    out = [f"__thread __attribute__((aligned({SMEM_ALIGN}))) unsigned char "
           f"gpuconv_emu_dyn_smem[{DYN_SMEM_TOTAL}];"]
    for i, s in enumerate(symbols):
        out.append(f'extern __thread unsigned char gpuconv_emu_alias_{i}[{DYN_SMEM_TOTAL}] __asm__("{s}") '
                   f'__attribute__((alias("gpuconv_emu_dyn_smem")));')
    for i, s in enumerate(tls_inits):
        out.append(f'void gpuconv_emu_tls_init_{i}(void) __asm__("{s}");')
        out.append(f"void gpuconv_emu_tls_init_{i}(void) {{}}")
    out.append("void* gpuconv_emu_smem(void) { return gpuconv_emu_dyn_smem; }")
    return "\n".join(out) + "\n"


def _kernel_flags() -> List[str]:
    flags = _KERNEL_FLAGS + defines()
    if asan_enabled():
        flags = [f for f in flags if f != "-O2"] + _ASAN_FLAGS + ["-O1"]
    return flags


def build_module(text: str, path: Optional[Path], options: Sequence[str],
                 name_expressions: Sequence[str], profile: bool = False) -> Built:
    """Build (or fetch from the cache) and load the library for one kernel source
    (``profile``: the profile mode described in the module docstring)."""
    opts = source.parse_options(options)
    if profile and asan_enabled():
        raise CompileError("the profile mode cannot be combined with GPUCONV_EMU_ASAN=1 (GCC's thread "
                           "and address sanitizers exclude each other): unset it to profile")
    runtime()
    cxx = compiler()
    includes = source.included_files(path, text, opts.include_dirs)
    kflags = _kernel_flags()
    if profile:
        profile_runtime()
        kflags = kflags + _PROFILE_FLAGS
    header = emu_dir() / "cuda_emu.h"
    parts = [BUILD_VERSION.encode(), compiler_version(cxx).encode(), text.encode(),
             str(path).encode(), " ".join(kflags + opts.gxx_flags()).encode(),
             json.dumps(list(name_expressions)).encode(), header.read_bytes()]
    parts += [p.read_bytes() for p in _runtime_sources()]
    for inc in includes:
        parts += [str(inc).encode(), inc.read_bytes()]
    key = _hash(parts)
    so_path = cache_dir() / key / "module.so"
    compiled = False
    with _lock:
        lib = _loaded.get(so_path)
    if lib is None:
        if cache.lookup(key) is None:
            _compile(text, path, opts, name_expressions, kflags, key)
            compiled = True
        with _lock:
            lib = _loaded.get(so_path)
            if lib is None:
                lib = ctypes.CDLL(str(so_path))
                _loaded[so_path] = lib
    manifest = json.loads(ctypes.c_char_p.in_dll(lib, "gpuconv_emu_manifest").value.decode())
    return Built(so_path, lib, manifest["kernels"], manifest["entities"], compiled)


def _source_file(text: str, key: str) -> Path:
    """A file holding ``text`` (a code= module) to compile, and for messages to name."""
    src = cache_dir() / f"src-{key}.cu"
    try:
        if src.read_text() == text:
            return src
    except (OSError, UnicodeDecodeError):
        pass
    fd, tmp = tempfile.mkstemp(dir=cache_dir(), prefix="tmp-src-", suffix=".cu")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, src)
    return src


def _compile(text: str, path: Optional[Path], opts: source.Options, name_expressions: Sequence[str],
             kflags: List[str], key: str) -> None:
    cxx = compiler()
    src = _source_file(text, key) if path is None else path
    user = opts.gxx_flags()
    pre = subprocess.run([cxx, "-E", "-x", "c++", *user, "-DGPUCONV_EMU=1", str(src)],
                         capture_output=True, text=True)
    if pre.returncode != 0:
        msg = source.lint_preprocessor_error(pre.stderr)
        if msg:
            raise LintError("the CPU emulator refuses this source:\n" + msg)
        raise CompileError(f"preprocessing {src} failed:\n{pre.stderr.strip()}")
    lines = source.split_preprocessed(pre.stdout)
    source.raise_lint(source.lint(lines))
    found = source.discover(lines)
    names = list(dict.fromkeys(found.extern_c_kernels + list(name_expressions) + found.globals))
    manifest = {"kernels": found.extern_c_kernels, "entities": {n: i for i, n in enumerate(names)}}
    header = _header_for(kflags, opts.std)
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix="tmp-build-") as tmpd, \
            cache.building(key) as entry:
        tmp = Path(tmpd)
        (tmp / "module.cpp").write_text(_wrapper_source(src, names, manifest))
        obj = tmp / "module.o"
        _run([cxx, *kflags, *user, "-include", str(header), "-c", str(tmp / "module.cpp"),
              "-o", str(obj)], f"compiling {src} for the CPU emulator")
        stats["kernel_compiles"] += 1
        table = _run(["readelf", "-sW", str(obj)], "reading the kernel object").stdout
        (tmp / "smem.c").write_text(_alias_source(sorted(set(_TLS_UND.findall(table))),
                                                  sorted(set(_TLS_INIT_UND.findall(table)))))
        asan = ["-fsanitize=address"] if asan_enabled() else []
        wrap = "-Wl," + ",".join(f"--wrap={w}" for w in _WRAPPED)
        _run([cxx, "-shared", "-fPIC", *asan, "-Wl,-Bsymbolic", wrap, "-x", "c", str(tmp / "smem.c"),
              "-x", "none", str(obj), "-o", str(entry / "module.so")], f"linking {src} for the CPU emulator")


_lines: Dict[Tuple[Path, int], Optional[str]] = {}


def source_line(library: Path, address: int) -> Optional[str]:
    """``file:line`` of the code at ``address`` (relative to the library's load address) in a
    kernel library, from its line tables: the innermost location outside the emulator's header
    (so a fault inside an emulated intrinsic names the kernel line that called it). None when
    unknown (no addr2line, or no line information)."""
    key = (library, address)
    if key not in _lines:
        try:
            out = subprocess.run(["addr2line", "-i", "-e", str(library), hex(address)], capture_output=True,
                                 text=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        locs = [ln.split(" (discriminator")[0].strip() for ln in out.splitlines()]
        locs = [loc for loc in locs if loc and not loc.startswith("??") and not loc.endswith(":0")]
        own = [loc for loc in locs if Path(loc.rsplit(":", 1)[0]).name not in ("cuda_emu.h", "emu_runtime.h")]
        _lines[key] = (own or locs or [None])[0]
    return _lines[key]


def clear_cache() -> None:
    """Remove every cached emulator build (libraries already loaded stay usable)."""
    cache.clear()
