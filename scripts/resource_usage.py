"""Registers, spills, stack frame and shared memory of every kernel, from nvcc --resource-usage.

nvcc compiles templates only when they are instantiated, so for each cuda/*.cu a small file is
generated that includes it and takes the address of every name expression its launch modules
declare. Run:

    python scripts/resource_usage.py [--arch sm_90] [--arch sm_80]

prints one table per architecture; "default" marks kernels a default version uses. Exit status 1
when a default-version kernel spills or has a stack frame. No GPU is needed.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from gpuconv._paths import cuda_dir
from gpuconv.backends import launch
from gpuconv.backends.kernel_backend import compile_options

_VERSIONED = re.compile(r"^(?P<base>\w+?)_v(?P<v>\d+)(?:<|$)")


@dataclass
class KernelUsage:
    file: str
    name: str          # the name expression, e.g. "relu_forward_v2<float>"
    default: bool
    registers: int
    stack_frame: int
    spill_stores: int
    spill_loads: int
    shared: int        # static shared memory, bytes


def find_nvcc() -> Optional[str]:
    for cand in (os.environ.get("NVCC"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and Path(cand).is_file():
            return cand
    return None


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
    return (f'#include "{filename}"\n'
            f"const void* gpuconv_instantiations[] = {{\n{refs}\n}};\n")


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
            out[(arch, current)] = (int(m.group(1)), stack, stores, loads,
                                    int(smem.group(1)) if smem else 0)
            current = None
    return out


def _compile_file(nvcc: str, tmp: str, filename: str, exprs: List[str], archs: Tuple[str, ...]) -> str:
    src = Path(tmp) / f"inst_{Path(filename).stem}.cu"
    src.write_text(instantiation_source(filename, exprs))
    opts = [o for o in compile_options() if not o.startswith("-I")]
    gencode = [f"-gencode=arch=compute_{a[3:]},code={a}" for a in archs]
    cmd = [nvcc, *opts, *gencode, "--resource-usage", f"-I{cuda_dir()}", str(src),
           "--fatbin", "-o", str(Path(tmp) / (src.stem + ".fatbin"))]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"nvcc failed on {filename} for {archs}:\n{res.stdout}\n{res.stderr}")
    return res.stdout + res.stderr


def resource_usage(archs: Tuple[str, ...] = ("sm_90", "sm_80"), nvcc: Optional[str] = None
                   ) -> Dict[str, List[KernelUsage]]:
    """Compile every cuda/*.cu for ``archs`` (one nvcc run per file, files in parallel).

    Returns arch -> one row per kernel name expression.
    """
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise FileNotFoundError("nvcc not found (set NVCC or put it on PATH)")
    files = [(f, e) for f, e in sorted(expressions_by_file().items()) if (cuda_dir() / f).is_file()]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        texts = list(pool.map(lambda fe: _compile_file(nvcc, tmp, fe[0], fe[1], tuple(archs)), files))
    rows: Dict[str, List[KernelUsage]] = {a: [] for a in archs}
    for (filename, exprs), text in zip(files, texts):
        usage = parse_resource_usage(text)
        names = _demangle(sorted({m for _, m in usage}))
        by_expr = {(a, _normalise(names[m])): u for (a, m), u in usage.items()}
        for arch in archs:
            for e in exprs:
                key = (arch, e.replace(" ", ""))
                if key not in by_expr:
                    raise RuntimeError(f"{filename}: no resource usage reported for {e} on {arch}")
                rows[arch].append(KernelUsage(filename, e, is_default(e), *by_expr[key]))
    return rows


def format_table(arch: str, rows: List[KernelUsage]) -> str:
    head = f"{'file':<16} {'kernel':<44} {'default':>7} {'regs':>5} {'stack':>6} {'spill st':>9} " \
           f"{'spill ld':>9} {'smem':>6}"
    lines = [f"nvcc --resource-usage, {arch}", head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.file:<16} {r.name:<44} {'yes' if r.default else '':>7} {r.registers:>5} "
                     f"{r.stack_frame:>6} {r.spill_stores:>9} {r.spill_loads:>9} {r.shared:>6}")
    return "\n".join(lines)


def offenders(rows: List[KernelUsage]) -> List[KernelUsage]:
    """Default-version kernels with a stack frame or spills."""
    return [r for r in rows if r.default and (r.stack_frame or r.spill_stores or r.spill_loads)]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", help="sm_90 and sm_80 by default")
    args = parser.parse_args(argv)
    bad = []
    for arch, rows in resource_usage(tuple(args.arch or ("sm_90", "sm_80"))).items():
        print(format_table(arch, rows))
        print()
        bad += [(arch, r) for r in offenders(rows)]
    for arch, r in bad:
        print(f"FAIL {arch}: default kernel {r.name} ({r.file}) has stack frame {r.stack_frame}, "
              f"spills {r.spill_stores}/{r.spill_loads}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
