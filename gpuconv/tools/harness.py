"""What the command-line tools share: the backend a tool runs on, the timers, the tolerance a
result is held to, and the JSON documents the tools write (one schema language, one validator,
one writer).

Schemas are JSON Schema documents (draft 2020-12) built with ``document``, ``record``,
``list_of`` and ``value``; every document names its schema in its key "schema".
``schema_errors`` checks the keywords those use: ``type``, ``const``, ``enum``, ``minimum``,
``maximum``, ``required``, ``properties`` and ``items``; a number must be finite. The test suite
holds it to ``jsonschema``'s verdicts on the tools' schemas and checks every document the tools
write with both.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from .. import fileio
from ..backends import BACKEND_NAMES, Backend, resolve_backend

__all__ = ["KERNEL_BACKENDS", "make_backend", "add_allow_tf32", "device", "timer_for", "device_attributes",
           "Timing", "WallTimer", "CudaEventTimer", "value", "record", "document",
           "list_of", "STRING", "INTEGER", "NUMBER", "BOOLEAN", "OBJECT", "NUMBER_OR_NULL", "STRING_OR_NULL",
           "schema_errors", "validate", "check_json_path", "write_json"]

# ---- backends -----------------------------------------------------------------------------------
KERNEL_BACKENDS = ("emulator", "cuda")   # the backends that run gpuconv's CUDA kernels, in versions


def add_allow_tf32(parser) -> None:
    """``--allow-tf32``: the command sets ``gpuconv.backends.allow_tf32`` (the one definition)."""
    parser.add_argument("--allow-tf32", action="store_true",
                        help="let float32 convolutions run on TF32 tensor-core kernel versions (about 1e-3 "
                             "relative error) where the version selector picks them; like "
                             "GPUCONV_ALLOW_TF32=1 (default: off, every result in full float32)")


def make_backend(name: str, poison: bool = False) -> Backend:
    """The backend ``name`` for one tool run: the NumPy reference, or a new kernel backend whose
    outputs are NaN-filled before each kernel when ``poison`` (so that an element a kernel
    forgets to write fails every comparison). Raises BackendUnavailable saying why a backend
    cannot run here."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {', '.join(BACKEND_NAMES)}, got {name!r}")
    if name == "numpy":
        return resolve_backend("numpy")
    resolve_backend(name)  # raises BackendUnavailable with the reason when it cannot run here
    from ..backends.executors import CupyExecutor, EmulatorExecutor
    from ..backends.kernel_backend import KernelBackend
    return KernelBackend(CupyExecutor() if name == "cuda" else EmulatorExecutor(), poison=poison)


def device(backend: str) -> str:
    """Where the arrays of ``backend`` live, and so where its baselines run: "cuda" or "cpu"."""
    return "cuda" if backend == "cuda" else "cpu"


def timer_for(backend: str):
    """CUDA events for the GPU backend, the wall clock for the others."""
    return CudaEventTimer() if device(backend) == "cuda" else WallTimer()


def device_attributes() -> Dict[str, int]:
    """CUDA attributes of the current device by name (``ClockRate`` in kHz, ``L2CacheSize`` in bytes,
    ``MultiProcessorCount``, ...); empty when CuPy cannot read them. Attributes, not
    ``cudaDeviceProp``: CUDA 13 removed the clock fields from the latter."""
    try:
        import cupy
        return {str(k): int(v) for k, v in cupy.cuda.Device().attributes.items()}
    except Exception:
        return {}


# ---- timers -------------------------------------------------------------------------------------
@dataclass
class Timing:
    """Per-run times in microseconds: device (or wall) time and host-side enqueue time."""

    times_us: List[float] = field(default_factory=list)
    host_us: List[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return float(statistics.median(self.times_us))

    def percentile(self, q: float) -> float:
        return float(np.percentile(np.asarray(self.times_us), q))

    @property
    def host_median(self) -> Optional[float]:
        return float(statistics.median(self.host_us)) if self.host_us else None


class WallTimer:
    """CPU timing with ``time.perf_counter``; candidates interleaved run by run."""

    description = "wall clock (time.perf_counter), candidates interleaved"

    def measure(self, fns: Sequence[Callable[[int], Any]], n_sets: int, repeat: int,
                warmup: int = 1) -> List[Timing]:
        """Time each ``fn(i)`` (i = input set) ``repeat`` times, rotating sets and fn order."""
        for fn in fns:
            for w in range(warmup):
                fn(w % n_sets)
        out = [Timing() for _ in fns]
        for r in range(repeat):
            order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
            for k in order:
                t0 = time.perf_counter()
                fns[k](r % n_sets)
                out[k].times_us.append((time.perf_counter() - t0) * 1e6)
        return out


_SPIN_SOURCE = r"""
extern "C" __global__ void gpuconv_bench_spin(long long cycles) {
    long long t0 = clock64();
    while (clock64() - t0 < cycles) { }
}
"""


class CudaEventTimer:
    """GPU timing with CUDA events on the legacy default stream (which CuPy and PyTorch both use
    unless told otherwise, and which orders work on every blocking stream).

    Each timed run: rewrite a flush buffer of ≥ 2×L2 (at least 64 MB), launch a spin kernel long
    enough to cover the host-side enqueue time, record the start event, run, record the end event.
    """

    description = "CUDA events; L2 flushed and GPU kept busy (spin) before each run"

    def __init__(self) -> None:
        import cupy
        self.cupy = cupy
        attrs = device_attributes()
        l2 = attrs.get("L2CacheSize") or 50 * 2**20
        self.flush_bytes = max(2 * l2, 64 * 2**20)
        self.flush = cupy.empty(self.flush_bytes // 4, dtype=cupy.float32)
        self.clock_khz = attrs.get("ClockRate") or 1_980_000
        self.spin = cupy.RawKernel(_SPIN_SOURCE, "gpuconv_bench_spin")

    def _spin(self, us: float) -> None:
        self.spin((1,), (1,), (np.int64(int(us * self.clock_khz / 1000.0)),))

    def measure(self, fns: Sequence[Callable[[int], Any]], n_sets: int, repeat: int,
                warmup: int = 3) -> List[Timing]:
        cupy = self.cupy
        stream = cupy.cuda.Stream.null
        host_warm = [0.0] * len(fns)
        for k, fn in enumerate(fns):
            for w in range(warmup):
                stream.synchronize()
                t0 = time.perf_counter()
                fn(w % n_sets)
                host_warm[k] = (time.perf_counter() - t0) * 1e6
            stream.synchronize()
        spin_us = max(50.0, 3.0 * max(host_warm))
        out = [Timing() for _ in fns]
        for r in range(repeat):
            order = list(range(len(fns)))
            if r % 2:
                order.reverse()
            events = []
            for k in order:
                self.flush.fill(np.float32(r + 1))
                self._spin(spin_us)
                start, end = cupy.cuda.Event(), cupy.cuda.Event()
                start.record(stream)
                t0 = time.perf_counter()
                fns[k](r % n_sets)
                host = (time.perf_counter() - t0) * 1e6
                end.record(stream)
                events.append((k, start, end, host))
            stream.synchronize()
            for k, start, end, host in events:
                out[k].times_us.append(float(cupy.cuda.get_elapsed_time(start, end)) * 1e3)
                out[k].host_us.append(host)
        return out

    def throughput(self, fn: Callable[[], Any], repeat: int, inner: int, stream=None,
                   warmup: int = 2) -> Timing:
        """Back-to-back time per call (launch overhead included): events around ``inner`` calls,
        ``repeat`` times, on ``stream`` (default: the legacy default stream)."""
        cupy = self.cupy
        stream = cupy.cuda.Stream.null if stream is None else stream
        for _ in range(warmup):
            fn()
        stream.synchronize()
        out = Timing()
        for _ in range(repeat):
            start, end = cupy.cuda.Event(), cupy.cuda.Event()
            start.record(stream)
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            host = (time.perf_counter() - t0) * 1e6 / inner
            end.record(stream)
            end.synchronize()
            out.times_us.append(float(cupy.cuda.get_elapsed_time(start, end)) * 1e3 / inner)
            out.host_us.append(host)
        return out


# ---- tolerances ---------------------------------------------------------------------------------
# ---- JSON documents -----------------------------------------------------------------------------
Schema = Dict[str, Any]
_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list,
          "object": dict, "null": type(None)}


def value(*types: str, **keywords: Any) -> Schema:
    """A value of one of the JSON ``types`` ("string", "integer", "number", "boolean", "array",
    "object", "null"), with further keywords such as ``const``, ``minimum`` or ``maximum``."""
    bad = [t for t in types if t not in _TYPES]
    if not types or bad:
        raise ValueError(f"types must be among {', '.join(_TYPES)}, got {list(types)}")
    return {"type": types[0] if len(types) == 1 else list(types), **keywords}


def record(properties: Dict[str, Schema], **keywords: Any) -> Schema:
    """An object holding every key of ``properties`` (and possibly others)."""
    return {"type": "object", "required": list(properties), "properties": properties, **keywords}


def document(schema_id: str, properties: Dict[str, Schema], **keywords: Any) -> Schema:
    """The schema of a whole document: a record whose key "schema" holds ``schema_id``, the
    schema's own ``$id``."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": schema_id, **keywords,
            **record({"schema": value("string", const=schema_id), **properties})}


def list_of(items: Schema) -> Schema:
    """An array whose every item follows ``items``."""
    return {"type": "array", "items": items}


STRING, INTEGER, NUMBER, BOOLEAN, OBJECT = (value(t) for t in ("string", "integer", "number", "boolean",
                                                                "object"))
NUMBER_OR_NULL, STRING_OR_NULL = value("number", "null"), value("string", "null")


def _is(obj: Any, kind: str) -> bool:
    if isinstance(obj, bool):
        return kind == "boolean"
    if kind == "number" and isinstance(obj, float):
        return math.isfinite(obj)
    return isinstance(obj, _TYPES[kind])


def _name(obj: Any) -> str:
    """The JSON type of ``obj``, as in an error message."""
    for kind in ("boolean", "integer", "string", "array", "object", "null"):
        if _is(obj, kind):
            return kind
    return f"{obj!r}" if isinstance(obj, float) else type(obj).__name__


def schema_errors(obj: Any, schema: Schema, path: str = "$") -> List[str]:
    """Every way ``obj`` departs from ``schema`` (empty when it follows it), each as
    ``"<path>: <problem>"`` with paths like ``$.rows[3].us``."""
    if "type" in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is(obj, k) for k in kinds):
            return [f"{path}: expected {' or '.join(kinds)}, got {_name(obj)}"]
    errors = []
    if "const" in schema and obj != schema["const"]:
        errors.append(f"{path}: must be {schema['const']!r}, got {obj!r}")
    if "enum" in schema and obj not in schema["enum"]:
        errors.append(f"{path}: must be one of {schema['enum']}, got {obj!r}")
    if "minimum" in schema and _is(obj, "number") and obj < schema["minimum"]:
        errors.append(f"{path}: must be >= {schema['minimum']}, got {obj!r}")
    if "maximum" in schema and _is(obj, "number") and obj > schema["maximum"]:
        errors.append(f"{path}: must be <= {schema['maximum']}, got {obj!r}")
    if isinstance(obj, dict):
        errors += [f"{path}: missing key {key!r}" for key in schema.get("required", ()) if key not in obj]
        for key, sub in schema.get("properties", {}).items():
            if key in obj:
                errors += schema_errors(obj[key], sub, f"{path}.{key}")
    if isinstance(obj, list) and "items" in schema:
        for i, item in enumerate(obj):
            errors += schema_errors(item, schema["items"], f"{path}[{i}]")
    return errors


def validate(obj: Any, schema: Schema, what: str = "document") -> None:
    """Raise ValueError listing every departure of ``obj`` from ``schema``."""
    errors = schema_errors(obj, schema)
    if errors:
        shown = "; ".join(errors[:10]) + (f"; and {len(errors) - 10} more" if len(errors) > 10 else "")
        raise ValueError(f"{what} does not follow its schema: {shown}")


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


def check_json_path(path: Optional[str]) -> None:
    """Refuse, before any work, a ``--json`` path that ``write_json`` could not write
    (``gpuconv.fileio``'s rule; a missing directory is fine, ``write_json`` creates it)."""
    if path is not None:
        fileio.check_writable(path, "--json", make_parents=True)


def write_json(path: str, doc: Dict[str, Any], schema: Schema) -> None:
    """Write ``doc`` to ``path`` as JSON after checking it against ``schema`` (NaN becomes null,
    NumPy scalars become numbers). Atomic, by ``gpuconv.fileio``'s rule for every file gpuconv
    writes (temporary file in the same directory, synced, renamed over ``path``; links followed,
    devices and directories refused). A missing parent directory is created."""
    doc = _json_safe(doc)
    validate(doc, schema, f"the document for {path}")
    fileio.write_text(path, json.dumps(doc, indent=1, allow_nan=False) + "\n", "--json", make_parents=True)
