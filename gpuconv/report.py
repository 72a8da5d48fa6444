"""Shared reporting for ``gpuconv check`` and ``gpuconv bench``: the machine's environment,
plain-text tables, atomic JSON output and a small schema checker for that JSON."""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from . import fileio

__all__ = ["environment", "blas_threads", "format_table", "write_json", "schema_errors", "fmt"]


def _git_commit() -> Optional[str]:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_threads() -> tuple:
    """(thread count, how it was found): NumPy's BLAS pool via threadpoolctl, else os.cpu_count()."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return os.cpu_count() or 1, "os.cpu_count (threadpoolctl not installed)"
    blas = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    if blas:
        return int(blas[0]["num_threads"]), f"threadpoolctl ({blas[0].get('internal_api', 'blas')})"
    return os.cpu_count() or 1, "os.cpu_count (threadpoolctl found no BLAS pool)"


def device_attributes() -> Dict[str, int]:
    """CUDA attributes of the current device by name (``ClockRate`` in kHz, ``L2CacheSize`` in bytes,
    ``MultiProcessorCount``, ...); empty when CuPy cannot read them. Attributes, not
    ``cudaDeviceProp``: CUDA 13 removed the clock fields from the latter."""
    try:
        import cupy
        return {str(k): int(v) for k, v in cupy.cuda.Device().attributes.items()}
    except Exception:
        return {}


def _gpu_environment() -> Dict[str, Any]:
    from .backends import cuda_unavailable_reason
    reason = cuda_unavailable_reason()
    if reason:
        return {"gpu": None, "gpu_unavailable": reason}
    import cupy
    rt = cupy.cuda.runtime
    dev = cupy.cuda.Device()
    props = rt.getDeviceProperties(dev.id)
    attrs = device_attributes()
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    env: Dict[str, Any] = {
        "gpu": name,
        "sm_count": attrs.get("MultiProcessorCount") or int(props["multiProcessorCount"]),
        "compute_capability": f"{props['major']}.{props['minor']}",
        "sm_clock_max_mhz": (attrs.get("ClockRate") or 0) // 1000 or None,
        "memory_clock_max_mhz": (attrs.get("MemoryClockRate") or 0) // 1000 or None,
        "l2_bytes": attrs.get("L2CacheSize") or None,
        "memory_bytes": int(props.get("totalGlobalMem", 0)) or None,
        "cuda_driver": rt.driverGetVersion(),
        "cuda_runtime": rt.runtimeGetVersion(),
        "cupy": cupy.__version__,
    }
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.sm,clocks.mem,clocks.max.sm",
                            "--format=csv,noheader,nounits", f"--id={dev.id}"],
                           capture_output=True, text=True, timeout=20)
        if q.returncode == 0 and q.stdout.strip():
            drv, sm, mem, sm_max = [s.strip() for s in q.stdout.strip().splitlines()[0].split(",")]
            env.update(driver_version=drv, sm_clock_now_mhz=sm, memory_clock_now_mhz=mem,
                       sm_clock_max_smi_mhz=sm_max)
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    return env


def environment(threads: Optional[int] = None) -> Dict[str, Any]:
    """Everything a result needs to be interpreted: GPU, clocks, driver, CUDA, library versions,
    CPU model, thread count, git commit and date."""
    import numpy as np

    from . import __version__
    n_threads, how = blas_threads()
    env: Dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "gpuconv": __version__,
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads if threads is not None else n_threads,
        "threads_source": how if threads is None else "set by the caller",
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        import torch
        env["torch"] = torch.__version__
        env["torch_cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except ImportError:
        env["torch"] = None
    env.update(_gpu_environment())
    return env


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: None as '-', floats with ``digits`` significant digits."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value == 0:
            return "0"
        if abs(value) >= 10 ** digits or abs(value) < 10 ** -(digits + 1):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}"
    return str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], markdown: bool = False) -> str:
    """Aligned plain-text (or markdown) table of ``rows`` under ``headers``."""
    cells: List[List[str]] = [[str(h) for h in headers]] + [[fmt(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if markdown:
        lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |",
                 "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells[1:]]
        return "\n".join(lines)
    lines = ["  ".join(c.ljust(w) for c, w in zip(cells[0], widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells[1:]]
    return "\n".join(lines)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        return _json_safe(obj.item())
    return obj


def write_json(path: str, obj: Dict[str, Any]) -> None:
    """Write ``obj`` as JSON atomically (``gpuconv.fileio``; NaN becomes null, NumPy scalars
    become numbers)."""
    fileio.write_text(path, json.dumps(_json_safe(obj), indent=1, allow_nan=False) + "\n", "--json")


def schema_errors(obj: Any, schema: Any, path: str = "$") -> List[str]:
    """Check ``obj`` against a minimal schema; returns the list of problems (empty when valid).

    A schema is a type or tuple of types (``None`` stands for null), a dict of required keys to
    schemas, or a one-element list ``[item_schema]`` for a list whose items all match.
    """
    if isinstance(schema, dict):
        if not isinstance(obj, dict):
            return [f"{path}: expected an object, got {type(obj).__name__}"]
        errors: List[str] = []
        for key, sub in schema.items():
            if key not in obj:
                errors.append(f"{path}: missing key {key!r}")
            else:
                errors.extend(schema_errors(obj[key], sub, f"{path}.{key}"))
        return errors
    if isinstance(schema, list):
        if not isinstance(obj, list):
            return [f"{path}: expected a list, got {type(obj).__name__}"]
        errors = []
        for i, item in enumerate(obj):
            errors.extend(schema_errors(item, schema[0], f"{path}[{i}]"))
        return errors
    types = schema if isinstance(schema, tuple) else (schema,)
    types = tuple(type(None) if t is None else t for t in types)
    if isinstance(obj, bool) and bool not in types:
        return [f"{path}: expected {'/'.join(t.__name__ for t in types)}, got bool"]
    if float in types and isinstance(obj, int) and not isinstance(obj, bool):
        return []
    if not isinstance(obj, types):
        return [f"{path}: expected {'/'.join(t.__name__ for t in types)}, got {type(obj).__name__}"]
    return []
