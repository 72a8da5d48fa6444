"""``gpuconv info``: which backends can run here, the GPU, CUDA versions and library versions."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
from typing import Any, Dict, List, Optional

__all__ = ["collect_info", "format_info", "add_parser", "run"]


def _version(module: str) -> Optional[str]:
    try:
        return str(importlib.import_module(module).__version__)
    except Exception:
        return None


def _compiler() -> Dict[str, Any]:
    path = shutil.which("g++")
    if path is None:
        return {"available": False, "reason": "g++ not found on PATH (the emulator compiles kernels with it)"}
    try:
        first = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10
                               ).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        first = "version unknown"
    return {"available": True, "detail": f"{first} at {path}"}


def _cuda() -> Dict[str, Any]:
    from ..backends import cuda_unavailable_reason
    reason = cuda_unavailable_reason()
    info: Dict[str, Any] = {"available": not reason, "reason": reason, "gpus": []}
    if reason:
        return info
    import cupy
    rt = cupy.cuda.runtime
    for v, key in ((rt.runtimeGetVersion, "runtime_version"), (rt.driverGetVersion, "driver_version")):
        try:
            n = v()
            info[key] = f"{n // 1000}.{(n % 1000) // 10}"
        except Exception as exc:
            info[key] = f"unknown ({exc})"
    for i in range(rt.getDeviceCount()):
        props = rt.getDeviceProperties(i)
        name = props["name"]
        info["gpus"].append({
            "index": i, "name": name.decode() if isinstance(name, bytes) else str(name),
            "compute_capability": f"{props['major']}.{props['minor']}",
            "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
            "multiprocessors": props["multiProcessorCount"]})
    return info


def collect_info() -> Dict[str, Any]:
    """Everything ``gpuconv info`` reports, as a JSON-serialisable dict."""
    from .. import __version__
    torch_version = _version("torch")
    torch_cuda = None
    if torch_version is not None:
        import torch
        torch_cuda = torch.version.cuda if torch.cuda.is_available() else None
    from ..distributed import distributed_info
    gxx, cuda = _compiler(), _cuda()
    from ..backends import ENV_VAR, auto_choice
    try:
        chosen, why = auto_choice()
    except ValueError as exc:
        chosen, why = None, str(exc)
    return {
        "gpuconv": __version__,
        "python": f"{platform.python_version()} ({platform.python_implementation()}) on "
                  f"{platform.system()}-{platform.machine()}",
        "versions": {"numpy": _version("numpy"), "cupy": _version("cupy"), "torch": torch_version,
                     "torch_cuda": torch_cuda},
        "backends": {
            "numpy": {"available": True, "detail": "CPU reference (always available)"},
            "emulator": gxx,
            "cuda": {"available": cuda["available"], "reason": cuda["reason"]}},
        "cuda": cuda,
        "auto": {"backend": chosen, "why": why, ENV_VAR: os.environ.get(ENV_VAR)},
        "distributed": distributed_info(),
    }


def format_info(info: Dict[str, Any]) -> str:
    lines: List[str] = [f"gpuconv {info['gpuconv']}", f"Python  {info['python']}"]
    v = info["versions"]
    lines.append(f"numpy   {v['numpy']}")
    lines.append(f"cupy    {v['cupy'] or 'not installed'}")
    torch_line = v["torch"] or "not installed"
    if v["torch"]:
        torch_line += f" (CUDA {v['torch_cuda']})" if v["torch_cuda"] else " (CPU only)"
    lines.append(f"torch   {torch_line}")
    lines.append("backends:")
    for name, b in info["backends"].items():
        status = "available" if b["available"] else "unavailable"
        detail = b.get("detail") if b["available"] else b.get("reason")
        lines.append(f"  {name:9s} {status}" + (f": {detail}" if detail else ""))
    auto = info["auto"]
    lines.append(f"  {'auto':9s} -> {auto['backend'] or 'error'} ({auto['why']})")
    cuda = info["cuda"]
    if cuda["available"]:
        lines.append(f"CUDA runtime {cuda['runtime_version']}, driver {cuda['driver_version']}")
        for g in cuda["gpus"]:
            lines.append(f"GPU {g['index']}: {g['name']}, compute capability {g['compute_capability']}, "
                         f"{g['memory_gib']} GiB, {g['multiprocessors']} SMs")
    else:
        lines.append(f"GPU: none usable ({cuda['reason']})")
    d = info["distributed"]
    lines.append("data-parallel (gpuconv.distributed): numpy, emulator -> mpi; cuda -> nccl over mpi")
    lines.append(f"  mpi4py  {d['mpi4py'] or 'not installed (pip install gpuconv[mpi])'}")
    lines.append(f"  nccl    {d['nccl'] or 'not available (comes with CuPy)'}")
    if d["launcher"] is None:
        lines.append("  not started by an MPI launcher: one process")
    elif "ranks" in d:
        lines.append(f"  rank {d['rank']} of {d['ranks']}: {d['mpi_library']}")
    else:
        lines.append(f"  started by an MPI launcher ({d['launcher']}) but mpi4py is not installed")
    return "\n".join(lines)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``info`` on an argparse subparsers object."""
    p = subparsers.add_parser("info", help="backends, GPU, CUDA and library versions",
                              description="Report which backends can run here, the GPU and CUDA "
                                          "versions, and the versions of Python and libraries.")
    p.add_argument("--json", action="store_true",
                   help="print the report as JSON instead of text (default: text)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    info = collect_info()
    sys.stdout.write((json.dumps(info, indent=2) if args.json else format_info(info)) + "\n")
    return 0
