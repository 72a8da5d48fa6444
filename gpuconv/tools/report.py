"""What the tools report beside their results: the machine's environment (and its schema), and
plain-text or markdown tables."""
from __future__ import annotations

import configparser
import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .harness import INTEGER, STRING, STRING_OR_NULL, device_attributes, record

__all__ = ["environment", "ENVIRONMENT_SCHEMA", "blas_threads", "gpuconv_commit", "installed_version",
           "format_table", "fmt"]

# The keys every environment block has: versions (null: not installed), the GPU (null: none usable;
# the other GPU keys are present only where one was found) and gpuconv's own git commit (null: not
# run from a git checkout of gpuconv, e.g. an installed wheel).
ENVIRONMENT_SCHEMA = record({"date": STRING, "gpuconv": STRING, "git_commit": STRING_OR_NULL,
                             "python": STRING, "numpy": STRING, "cupy": STRING_OR_NULL,
                             "torch": STRING_OR_NULL, "gpu": STRING_OR_NULL, "cpu": STRING,
                             "threads": INTEGER})

_DISTRIBUTIONS = {"torch": ("torch",), "cupy": ("cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x", "cupy")}


def installed_version(module: str) -> Optional[str]:
    """The version of ``module`` ("torch", "cupy", ...): the imported module's when it is imported,
    else its installed distribution's, read without importing it; None when not installed."""
    loaded = sys.modules.get(module)
    if loaded is not None and getattr(loaded, "__version__", None):
        return str(loaded.__version__)
    for dist in _DISTRIBUTIONS.get(module, (module,)):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _package_dir() -> Path:
    return Path(__file__).resolve().parents[1]


def gpuconv_commit(package_dir: Optional[Path] = None) -> Optional[str]:
    """The git commit of the gpuconv source that is running (``package_dir``: the ``gpuconv``
    package directory, default this one), or None.

    A commit is reported only when the package directory is ``gpuconv/`` at the top level of a
    git work tree whose ``setup.cfg`` names the project gpuconv: a copy installed into
    site-packages, even one inside some other git repository, reports None."""
    pkg = (_package_dir() if package_dir is None else Path(package_dir)).resolve()
    root = pkg.parent
    cfg = configparser.ConfigParser()
    try:
        cfg.read(root / "setup.cfg", encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError):
        return None
    if pkg.name != "gpuconv" or cfg.get("metadata", "name", fallback=None) != "gpuconv":
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split("\n")
    if out.returncode != 0 or len(lines) < 2 or not lines[1].strip():
        return None
    if Path(lines[0]).resolve() != root:
        return None
    return lines[1].strip()


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


def _gpu_environment() -> Dict[str, Any]:
    from ..backends import cuda_unavailable_reason
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
    """Everything a result needs to be interpreted (``ENVIRONMENT_SCHEMA``): GPU, clocks, driver,
    CUDA, library versions, CPU model, thread count, gpuconv's git commit and date. PyTorch is not
    imported for this: its CUDA and cuDNN versions are reported when a caller has imported it."""
    import numpy as np

    from .. import __version__
    n_threads, how = blas_threads()
    env: Dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "gpuconv": __version__,
        "git_commit": gpuconv_commit(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cupy": installed_version("cupy"),
        "torch": installed_version("torch"),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads if threads is not None else n_threads,
        "threads_source": how if threads is None else "set by the caller",
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        env["torch_cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
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
