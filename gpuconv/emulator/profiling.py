"""Memory-access profile of an emulated launch: global sectors and shared-memory wavefronts.

``profile(kernel, grid, block, args, shared_mem=0, blocks=None)`` runs a launch of an emulated
kernel (all blocks, or the listed ones) in a build of its module whose every load and store calls
the profile runtime (``cuda/emu/profile_runtime.cpp``; see ``build.build_module(profile=True)``).
The runtime keeps the accesses that fall in an array argument (global memory) or in the block's
shared memory, groups the lanes of a warp into requests (the k-th execution of an access site by
the active lanes of a warp is one request) and evaluates each request as Nsight Compute defines it:

* global: the number of distinct 32-byte sectors, each array argument's base taken as 256-byte
  aligned (as ``cudaMalloc`` returns it; host arrays are not), and the bytes the lanes asked for;
* shared: wavefronts by the 32-bank, 4-byte rule (8-byte accesses in two half-warp phases, 16-byte
  accesses in four quarter-warp phases; lanes reading the same word share it, and a phase reading
  only words of earlier phases is free), against the ideal ceil(active lanes * width / 128).

Accesses wider than 16 bytes (a 32-byte struct copy) count as 16-byte pieces, each a request, as
the GPU issues them as several 128-bit instructions. Per access site and warp of a block, the first
512 requests are evaluated in full and any beyond are counted and given the average of those
(``Report.extrapolated`` says whether that happened). ``__constant__`` and ``__device__``
variables, local variables and atomics' ordering are outside the profile (atomics count as a load
and a store).
"""
from __future__ import annotations

import ctypes
import functools
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..cuda_limits import check_launch
from . import build
from .constants import MAX_DYN_SMEM
from .errors import BY_CODE, EmulatorError, LaunchError
from .module import Dims, Kernel, RawModule, launch_lock, stop_on_sigint

__all__ = ["profile", "Report", "SUMMARY_KEYS"]

SUMMARY_KEYS = ("global_load_requests", "global_load_sectors", "global_store_requests",
                "global_store_sectors", "shared_load_requests", "shared_load_wavefronts",
                "shared_load_ideal_wavefronts", "shared_store_requests", "shared_store_wavefronts",
                "shared_store_ideal_wavefronts", "global_load_bytes_requested",
                "global_store_bytes_requested")
_SITE_FIELDS = 13
_SPACES = ("global", "shared")
_KINDS = ("load", "store")


@dataclass
class Report:
    """What ``profile`` measured.

    ``summary``: the totals (exactly ``SUMMARY_KEYS``, integers). ``sites``: one dict per source
    line, address space and kind (``file``, ``line``, ``space`` "global"/"shared", ``kind``
    "load"/"store", ``requests``, ``lanes`` (active lanes summed over requests), ``bytes_requested``,
    and ``sectors``/``ideal_sectors`` (global) or ``wavefronts``/``ideal_wavefronts`` (shared)),
    most wasteful first. ``l2_load_sectors``: the distinct global load sectors of each block, summed
    over the blocks run (the traffic past L1 if L1 kept what a block loads). ``buffers``: per
    distinct array argument region, its ``arguments`` (indices), ``bytes`` and the
    ``touched_sectors`` any request touched.
    """

    kernel: str
    grid: Tuple[int, int, int]
    block: Tuple[int, int, int]
    blocks_run: int
    blocks_total: int
    summary: Dict[str, int]
    sites: List[Dict[str, Any]]
    l2_load_sectors: int
    buffers: List[Dict[str, Any]] = field(default_factory=list)
    extrapolated: bool = False


@functools.cache
def _prt() -> ctypes.CDLL:
    lib = build.profile_runtime()
    u64p = ctypes.POINTER(ctypes.c_ulonglong)
    lib.gpuconv_prof_begin.restype = ctypes.c_int
    lib.gpuconv_prof_begin.argtypes = [u64p, ctypes.c_int, u64p, ctypes.c_ulonglong, ctypes.c_void_p,
                                       ctypes.c_void_p, ctypes.c_uint]
    lib.gpuconv_prof_end.restype = ctypes.c_int
    lib.gpuconv_prof_nsites.restype = ctypes.c_int
    lib.gpuconv_prof_site.argtypes = [ctypes.c_int, u64p, ctypes.POINTER(ctypes.c_char_p)]
    lib.gpuconv_prof_totals.argtypes = [u64p]
    lib.gpuconv_prof_region_sectors.restype = ctypes.c_ulonglong
    lib.gpuconv_prof_region_sectors.argtypes = [ctypes.c_int]
    return lib


def _profiled(kernel: Kernel) -> Kernel:
    """The same kernel in a profile-mode build of its module (built once per module)."""
    mod = kernel.module
    if mod.profile:
        return kernel
    twin = getattr(mod, "_profile_twin", None)
    if twin is None:
        twin = RawModule(code=mod.code if mod.path is None else None, path=mod.path, options=mod.options,
                         name_expressions=mod.name_expressions, profile=True)
        mod._profile_twin = twin
    return twin.get_function(kernel.name)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _block_list(blocks: Any, grid: Tuple[int, int, int]) -> List[int]:
    total = grid[0] * grid[1] * grid[2]
    if isinstance(blocks, (str, bytes)) or not hasattr(blocks, "__iter__"):
        raise TypeError(f"blocks must be None or a sequence of block indices, got {type(blocks).__name__}")
    out = set()
    for b in blocks:
        if isinstance(b, (tuple, list)):
            if len(b) != 3 or not all(_is_int(v) for v in b):
                raise TypeError(f"blocks: a block given as a tuple must be (x, y, z) ints, got {b!r}")
            x, y, z = (int(v) for v in b)
            if not (0 <= x < grid[0] and 0 <= y < grid[1] and 0 <= z < grid[2]):
                raise ValueError(f"blocks: block {b!r} is outside the grid {grid}")
            out.add(x + grid[0] * (y + grid[1] * z))
        elif _is_int(b):
            if not 0 <= int(b) < total:
                raise ValueError(f"blocks: linear block index {int(b)} is outside [0, {total})")
            out.add(int(b))
        else:
            raise TypeError(f"blocks: expected linear indices or (x, y, z) tuples, got {b!r}")
    if not out:
        raise ValueError("blocks must name at least one block (None runs them all)")
    return sorted(out)


def _regions(args: Sequence[Any]) -> List[Tuple[int, int, List[int]]]:
    """Merged [lo, hi) address ranges of the array arguments, with the argument indices in each."""
    spans = sorted((a.ctypes.data, a.ctypes.data + a.nbytes, i) for i, a in enumerate(args)
                   if isinstance(a, np.ndarray) and a.nbytes)
    out: List[Tuple[int, int, List[int]]] = []
    for lo, hi, i in spans:
        if out and lo < out[-1][1]:
            plo, phi, idx = out[-1]
            out[-1] = (plo, max(phi, hi), idx + [i])
        else:
            out.append((lo, hi, [i]))
    return out


@functools.cache
def _emu_dir() -> str:
    return str(build.emu_dir().resolve())


_line_cache: Dict[Tuple[str, int], Tuple[str, int]] = {}


def _resolve(library: str, offsets: List[int]) -> None:
    """file:line of each call offset of ``library`` into the cache, one addr2line run (the first
    inlined frame outside the emulator's own headers, so ``__ldg(p)`` is the caller's line)."""
    todo = sorted({o for o in offsets if (library, o) not in _line_cache})
    if not todo:
        return
    tool = shutil.which("addr2line")
    if tool is None:
        for o in todo:
            _line_cache[(library, o)] = ("<addr2line not found>", 0)
        return
    res = subprocess.run([tool, "-e", library, "-i", "-f", "-C", "-a"] + [hex(o) for o in todo],
                         capture_output=True, text=True)
    frames: Dict[int, List[Tuple[str, int]]] = {}
    cur: Optional[int] = None
    lines = res.stdout.splitlines()
    i = 0
    while i < len(lines):
        text = lines[i].strip()
        if text.startswith("0x"):
            cur = int(text, 16)
            frames[cur] = []
            i += 1
            continue
        if cur is not None and i + 1 < len(lines):
            loc = lines[i + 1].split(" (discriminator")[0].strip()
            path, _, num = loc.rpartition(":")
            frames[cur].append((path, int(num) if num.isdigit() else 0))
        i += 2
    emu = _emu_dir()
    for o in todo:
        chain = frames.get(o) or [("<unknown>", 0)]
        outside = [f for f in chain if f[0] and not str(Path(f[0]).resolve()).startswith(emu)]
        _line_cache[(library, o)] = (outside or chain)[0]


def profile(kernel: Kernel, grid: Dims, block: Dims, args: Sequence[Any], shared_mem: int = 0,
            blocks: Optional[Sequence[Any]] = None) -> Report:
    """Run ``kernel(grid, block, args, shared_mem)`` with every global and shared access recorded.

    ``blocks``: None (every block) or the blocks to run, as linear indices
    (x + grid_x * (y + grid_y * z)) or (x, y, z) tuples; the others are skipped. Threads run in the
    forward order. Returns a :class:`Report`; kernel errors raise as for a normal launch.
    """
    if not isinstance(kernel, Kernel):
        raise TypeError(f"kernel must be an emulated kernel (RawModule.get_function), got "
                        f"{type(kernel).__name__}")
    g, b, shared_mem = check_launch(grid, block, shared_mem, MAX_DYN_SMEM, LaunchError)
    if not isinstance(args, (tuple, list)):
        raise TypeError(f"kernel {kernel.name!r}: args must be a tuple, got {type(args).__name__}")
    if len(args) != len(kernel._params):
        raise TypeError(f"kernel {kernel.name!r} takes {len(kernel._params)} arguments, got {len(args)}")
    selected = None if blocks is None else _block_list(blocks, g)
    pk = _profiled(kernel)
    n = len(args)
    # Every slot passed as a value: the arrays stay where they are (not staged, as a normal launch
    # does), so the accesses the profile records fall in the regions computed from them.
    slots = (ctypes.c_ulonglong * max(n, 1))(*[p.slot(a)[0] for p, a in zip(pk._params, args)])
    in_place = (ctypes.c_ulonglong * max(n, 1))(), (ctypes.c_uint * max(n, 1))()
    regions = _regions(args)
    reg_c = (ctypes.c_ulonglong * max(2 * len(regions), 1))(*[v for lo, hi, _ in regions for v in (lo, hi)])
    blk_c = (ctypes.c_ulonglong * max(len(selected or ()), 1))(*(selected or ()))
    grid_c, block_c = (ctypes.c_uint * 3)(*g), (ctypes.c_uint * 3)(*b)
    rt, prt = build.runtime(), _prt()
    nthreads = b[0] * b[1] * b[2]
    entry = ctypes.cast(prt.gpuconv_prof_entry, ctypes.c_void_p).value
    with launch_lock:
        rc = prt.gpuconv_prof_begin(reg_c, len(regions), blk_c, len(selected or ()), pk._entry, pk._smem,
                                    nthreads)
        if rc:
            raise EmulatorError(f"kernel {kernel.name!r}: the profile runtime refused the launch (code {rc}: "
                                f"more than 64 array arguments, or the module's shared memory not found)")
        try:
            rc = rt.gpuconv_emu_launch(entry, slots, *in_place, n, grid_c, block_c, int(shared_mem), 0, 0,
                                       kernel.name.encode(), pk._smem, stop_on_sigint())
            msg = rt.gpuconv_emu_error_message().decode(errors="replace") if rc else ""
        finally:
            overflow = prt.gpuconv_prof_end()
        if rc:
            raise BY_CODE.get(rc, EmulatorError)(msg)
        if overflow:
            raise EmulatorError(f"kernel {kernel.name!r}: more than 4096 access sites; the profile is "
                                f"incomplete")
        raw = []
        lib_c = ctypes.c_char_p()
        out = (ctypes.c_ulonglong * _SITE_FIELDS)()
        for i in range(prt.gpuconv_prof_nsites()):
            prt.gpuconv_prof_site(i, out, ctypes.byref(lib_c))
            raw.append((lib_c.value.decode(), tuple(out)))
        tot = (ctypes.c_ulonglong * 3)()
        prt.gpuconv_prof_totals(tot)
        touched = [int(prt.gpuconv_prof_region_sectors(i)) for i in range(len(regions))]
    return _report(kernel.name, g, b, raw, tot, regions, touched, args, selected)


def _report(name: str, g, b, raw, tot, regions, touched, args, selected) -> Report:
    by_lib: Dict[str, List[int]] = {}
    for lib, v in raw:
        by_lib.setdefault(lib, []).append(v[0])
    for lib, offs in by_lib.items():
        _resolve(lib, offs)
    lines: Dict[Tuple[str, int, str, str], Dict[str, float]] = {}
    extrapolated = False
    for lib, v in raw:
        off, space, kind, _, requests, lanes, units, ideal, nbytes, x_units, x_ideal, x_bytes, analysed = v
        file, line = _line_cache[(lib, off)]
        key = (file, line, _SPACES[space], _KINDS[kind])
        acc = lines.setdefault(key, {"requests": 0, "lanes": 0, "units": 0.0, "ideal": 0.0, "bytes": 0.0})
        acc["requests"] += requests
        acc["lanes"] += lanes
        acc["units"] += units + x_units / 1000.0
        acc["ideal"] += ideal + x_ideal / 1000.0
        acc["bytes"] += nbytes + x_bytes / 1000.0
        extrapolated |= requests > analysed
    sites = []
    summary = {k: 0 for k in SUMMARY_KEYS}
    for (file, line, space, kind), acc in lines.items():
        site: Dict[str, Any] = {"file": file, "line": line, "space": space, "kind": kind,
                                "requests": int(acc["requests"]), "lanes": int(acc["lanes"]),
                                "bytes_requested": int(round(acc["bytes"]))}
        units, ideal = int(round(acc["units"])), int(round(acc["ideal"]))
        if space == "global":
            site.update(sectors=units, ideal_sectors=ideal)
            summary[f"global_{kind}_requests"] += site["requests"]
            summary[f"global_{kind}_sectors"] += units
            summary[f"global_{kind}_bytes_requested"] += site["bytes_requested"]
        else:
            site.update(wavefronts=units, ideal_wavefronts=ideal)
            summary[f"shared_{kind}_requests"] += site["requests"]
            summary[f"shared_{kind}_wavefronts"] += units
            summary[f"shared_{kind}_ideal_wavefronts"] += ideal
        sites.append(site)
    sites.sort(key=lambda s: (-(s.get("sectors", 0) - s.get("ideal_sectors", 0)
                                + s.get("wavefronts", 0) - s.get("ideal_wavefronts", 0)),
                              s["file"], s["line"], s["space"], s["kind"]))
    buffers = [{"arguments": idx, "bytes": hi - lo, "touched_sectors": t}
               for (lo, hi, idx), t in zip(regions, touched)]
    total = g[0] * g[1] * g[2]
    return Report(kernel=name, grid=g, block=b, blocks_run=int(tot[0]), blocks_total=total,
                  summary=summary, sites=sites, l2_load_sectors=int(round(tot[1] + tot[2] / 1000.0)),
                  buffers=buffers, extrapolated=extrapolated)
