"""Which kernel version, and which tile width, runs each convolution shape.

For each call of an op whose launch code asks (the conv ops), the kernel backend picks a
``Choice`` -- a version of ``launch.VERSIONS[op]`` and, for a version with several tile widths
(``launch.TILES``), one of them -- in this order:

1. an explicit ``version=`` argument of the launch function;
2. an override: ``KernelBackend(versions=...)`` or ``with be.use_versions(...)`` (reason "override");
3. with ``gpuconv.backends.benchmark`` on and an executor that can time launches (the GPU), the
   fastest eligible candidate, timed once per (op, geometry, dtype, allow_tf32) on the call's own
   inputs (a few warm-up and timed launches, CUDA events) and remembered on disk (reason
   "timed: v2/32 12.1 µs < v3 15.0 µs");
4. otherwise the static rule (``static_choice``): the launch module's default, except where a shape
   rule says otherwise (reason "rule: ...", or "default").

Eligible candidates (``candidates``): every version of ``launch.VERSIONS[op]`` -- so a version
added to a launch module takes part without any change here -- except versions for float32 only
when the dtype is float64, versions of TF32 precision (``launch.PRECISION``) unless
``gpuconv.backends.allow_tf32`` is on and the dtype is float32, and, on the emulator, versions
that call the array library.

The disk cache is one JSON file per GPU name, gpuconv version and kernel-source hash (every
``.cu``/``.cuh`` plus the ``-D`` sizes), under ``cache_root()/select``; it is written atomically
(``gpuconv.fileio``) under an exclusive lock, merging with what other processes wrote meanwhile.
A file that cannot be read, is not valid JSON or was made for another GPU, gpuconv or source is
ignored with a ``RuntimeWarning`` (and replaced by the next write); an entry that names a
candidate no longer eligible is timed again.

A choice is fixed for the process once made (in memory), and across runs by the cache file.
Different choices can round differently (another summation order, TF32), so bit-for-bit
reproducibility across machines holds with ``benchmark`` off, as with cuDNN.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
import threading
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from .. import fileio
from .._paths import cache_root, cuda_dir
from .._version import __version__
from . import launch, settings

__all__ = ["Choice", "Selector", "candidates", "static_choice", "selector_for", "cache_key", "SCHEMA",
           "STEM_CHANNELS", "TF32_MIN_CHANNELS"]

SCHEMA = "gpuconv-select/1"
# Forward v3 (direct, weights in shared memory, V3_CHANNELS output channels per thread) for a stem
# of at most this many input channels and at most V3_CHANNELS output channels. Predicted (gpuconv
# profile --gpu h100 --versions all, batch 128): L1 (C=1, K=6) v3 6.3 µs < v2 7.5 µs, but C1
# (C=3, K=16) v3 12.7 µs > v2 9.2 µs: with more output channels v2's tile is no longer mostly idle.
STEM_CHANNELS = 3
# With TF32 allowed, the static rule takes an op's TF32 version from this many output channels per
# group on; an op not listed keeps its default until timed. Predicted (gpuconv profile --gpu h100
# --versions all, batch 128, layers C1-C6 of small-cnn):
#   forward v4 19.2 µs < v2 22.7 at C4 (K=32), 71.8 < 150.8 at C6 (K=64), but 35.0 > 26.9 at C2
#     (K=16): half of v4's 64-wide tile idle costs more than TF32 saves;
#   backward-filter v4 (with its split sum) against the default v3 (gpuconv profile --gpu h100
#     --versions all --ops conv2d_backward_filter, small-cnn): below it at K=64, 21.9 < 26.6 µs (C5),
#     90.9 < 163.8 (C6), above it at K<=32, 54.4 > 20.6 (C1), 54.3 > 38.2 (C2), 35.4 > 19.6 (C3),
#     29.0 > 26.3 (C4). When db is needed too, v3 computes it in its launch and v4 adds the bias
#     kernel (predicted 7.5 µs on C5, 26.9 on C6): still below v3 on C6, about even on C5;
#   backward-data v4 not: above the default v3 (stride phases) on every layer (gpuconv profile --gpu
#     h100 --versions all --ops conv2d_backward_data): 69.5 > 19.0 µs (C1), 126.9 > 11.7 (C3),
#     38.8 > 16.5 (C5), 273.3 > 110.9 (C6), so it is left to timing.
TF32_MIN_CHANNELS = {"conv2d_forward": 32, "conv2d_backward_filter": 64}

Run = Callable[[int, Optional[int]], Any]        # run(version, tile): one launch of the op
Timer = Callable[[Callable[[], Any]], float]     # seconds per call of a no-argument launch


@dataclass(frozen=True)
class Choice:
    """A version of an op, its tile width (None: the launch module's own rule) and why."""

    version: int
    tile: Optional[int] = None
    reason: str = ""

    @property
    def label(self) -> str:
        return f"v{self.version}" + (f"/{self.tile}" if self.tile is not None else "")


def candidates(op: str, dtype, allow_tf32: bool, executor: str = "cuda") -> List[Tuple[int, Optional[int]]]:
    """(version, tile) pairs of ``op`` eligible for ``dtype`` (see the module docstring)."""
    if op not in launch.VERSIONS:
        raise ValueError(f"unknown op {op!r}; known ops: {', '.join(sorted(launch.VERSIONS))}")
    f32 = np.dtype(dtype) == np.float32
    out: List[Tuple[int, Optional[int]]] = []
    for v in launch.VERSIONS[op]:
        if executor == "emulator" and (op, v) in launch.LIBRARY_VERSIONS:
            continue
        if (op, v) in launch.FLOAT32_ONLY and not f32:
            continue
        if launch.precision(op, v) == "tf32" and not (allow_tf32 and f32):
            continue
        out += [(v, t) for t in launch.TILES.get((op, v), (None,))]
    return out


@functools.lru_cache(maxsize=4096)
def static_choice(op: str, g, dtype: str, executor: str, allow_tf32: bool) -> Choice:
    """The rule used without timing: the shape rules below, else the launch module's default."""
    allowed = {v for v, _ in candidates(op, dtype, allow_tf32, executor)}
    if (op == "conv2d_forward" and 3 in allowed and g.C // g.groups <= STEM_CHANNELS
            and g.K // g.groups <= launch.conv.V3_CHANNELS):
        return Choice(3, None, f"rule: stem C<={STEM_CHANNELS}, K<={launch.conv.V3_CHANNELS}")
    tf32 = [v for v in allowed if launch.precision(op, v) == "tf32"]
    if tf32 and op in TF32_MIN_CHANNELS and g.K // g.groups >= TF32_MIN_CHANNELS[op]:
        return Choice(max(tf32), None, f"rule: allow_tf32, K>={TF32_MIN_CHANNELS[op]}")
    return Choice(launch.default_versions(executor)[op], None, "default")


def cache_key(op: str, g, dtype, allow_tf32: bool) -> str:
    """The text key of one choice in the cache file."""
    shape = ",".join(f"{f.name}={getattr(g, f.name)}" for f in fields(g))
    return f"{op}|{np.dtype(dtype).name}|tf32={int(allow_tf32)}|{shape}"


@functools.lru_cache(maxsize=1)
def _source_hash() -> str:
    """Hex digest over every kernel source and the ``-D`` sizes: a choice holds for these only."""
    h = hashlib.sha256()
    root = Path(cuda_dir())
    for p in sorted(list(root.glob("*.cu")) + list(root.glob("*.cuh"))):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    h.update(" ".join(launch.defines()).encode())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created) for the enclosed read-merge-write."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic replace alone (a lost entry is timed again)
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Selector:
    """Picks a ``Choice`` per (op, geometry, dtype) for one device.

    ``timer`` times a no-argument launch (seconds per call); without one (the emulator) only the
    static rule applies. ``cache_dir`` defaults to ``cache_root()/select``.
    """

    def __init__(self, executor: str, device: str, timer: Optional[Timer] = None,
                 cache_dir: Optional[Path] = None) -> None:
        self.executor = executor
        self.device = device
        self.timer = timer
        self._cache_dir = cache_dir
        self._chosen: Dict[Tuple[Any, ...], Choice] = {}
        self._disk: Optional[Dict[str, Any]] = None
        self._lock = threading.RLock()

    @property
    def cache_file(self) -> Path:
        d = Path(self._cache_dir) if self._cache_dir is not None else cache_root() / "select"
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.device).strip("_") or "device"
        return d / f"{slug}-gpuconv{__version__}-{_source_hash()}.json"

    def _header(self) -> Dict[str, str]:
        return {"schema": SCHEMA, "device": self.device, "gpuconv": __version__, "source": _source_hash()}

    def choose(self, op: str, g, dtype, run: Run, may_time: bool = True) -> Choice:
        """The choice for this call; ``run(version, tile)`` launches a candidate (timing only).
        Without ``may_time`` (a step being captured as a graph) a shape not yet timed gets the
        static rule and stays untimed, so the warm-up and the capture launch the same kernels."""
        allow_tf32, timing = settings.allow_tf32, settings.benchmark and self.timer is not None
        dt = np.dtype(dtype).name
        if not timing:
            return static_choice(op, g, dt, self.executor, allow_tf32)
        key = (op, g, dt, allow_tf32)
        choice = self._chosen.get(key)
        if choice is None and not may_time:
            return static_choice(op, g, dt, self.executor, allow_tf32)
        if choice is None:
            with self._lock:
                choice = self._chosen.get(key) or self._time(op, g, dt, allow_tf32, run)
                self._chosen[key] = choice
        return choice

    def chosen(self, op: str, g, dtype) -> Optional[Choice]:
        """What ``choose`` would return now without launching anything; None when it would time."""
        allow_tf32, dt = settings.allow_tf32, np.dtype(dtype).name
        if not (settings.benchmark and self.timer is not None):
            return static_choice(op, g, dt, self.executor, allow_tf32)
        return self._chosen.get((op, g, dt, allow_tf32))

    # ---- timing ---------------------------------------------------------------------------
    def _time(self, op: str, g, dtype: str, allow_tf32: bool, run: Run) -> Choice:
        cands = candidates(op, dtype, allow_tf32, self.executor)
        key = cache_key(op, g, dtype, allow_tf32)
        entry = self._load().get(key)
        if isinstance(entry, dict):
            v, t = entry.get("version"), entry.get("tile")
            if (v, t) in cands and isinstance(v, int) and not isinstance(v, bool) and isinstance(
                    entry.get("reason"), str):
                return Choice(v, t, entry["reason"] + " (cached)")
        times: Dict[Tuple[int, Optional[int]], float] = {}
        for v, t in cands:
            try:
                times[(v, t)] = float(self.timer(functools.partial(run, v, t)))
            except Exception as exc:  # a candidate that cannot run here is not picked
                warnings.warn(f"gpuconv: {op} {Choice(v, t).label} failed while timing "
                              f"({type(exc).__name__}: {exc}); not a candidate", RuntimeWarning, stacklevel=2)
        if not times:
            rule = static_choice(op, g, dtype, self.executor, allow_tf32)
            return Choice(rule.version, rule.tile, rule.reason + " (no candidate could be timed)")
        ranked = sorted(times, key=lambda c: (times[c], c[0], c[1] or 0))
        labels = [f"{Choice(*c).label} {times[c] * 1e6:.1f} µs" for c in ranked[:2]]
        choice = Choice(ranked[0][0], ranked[0][1], "timed: " + " < ".join(labels))
        self._store(key, {"version": choice.version, "tile": choice.tile, "reason": choice.reason,
                          "us": {Choice(*c).label: round(times[c] * 1e6, 3) for c in ranked}})
        return choice

    # ---- the cache file -------------------------------------------------------------------
    def _read(self, path: Path) -> Dict[str, Any]:
        """The choices of the file at ``path``: {} when missing, or ignored with a warning when it
        cannot be read or belongs to another device, gpuconv or kernel source."""
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, NotADirectoryError):
            return {}
        except (OSError, ValueError) as exc:
            warnings.warn(f"gpuconv: ignoring kernel choice cache {path}: cannot read it "
                          f"({type(exc).__name__}: {exc})", RuntimeWarning, stacklevel=4)
            return {}
        if not isinstance(doc, dict) or not isinstance(doc.get("choices"), dict):
            warnings.warn(f"gpuconv: ignoring kernel choice cache {path}: not a {SCHEMA} document",
                          RuntimeWarning, stacklevel=4)
            return {}
        header = self._header()
        foreign = [f"{k} {doc.get(k)!r} (expected {v!r})" for k, v in header.items() if doc.get(k) != v]
        if foreign:
            warnings.warn(f"gpuconv: ignoring kernel choice cache {path}: made for another "
                          + ", ".join(foreign), RuntimeWarning, stacklevel=4)
            return {}
        return doc["choices"]

    def _load(self) -> Dict[str, Any]:
        if self._disk is None:
            self._disk = self._read(self.cache_file)
        return self._disk

    def _store(self, key: str, entry: Dict[str, Any]) -> None:
        """Add one choice to the cache file (re-read under the lock, so concurrent writers' choices
        stay); a file that cannot be written costs a warning, never the op."""
        path = self.cache_file
        self._load()[key] = entry
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with _locked(path.with_name(path.name + ".lock")):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # already warned on load; the write replaces it
                    choices = self._read(path)
                choices[key] = entry
                with fileio.atomic_open(path, "w", what="kernel choice cache") as f:
                    json.dump({**self._header(), "choices": choices}, f, indent=1, sort_keys=True)
        except (OSError, ValueError) as exc:
            warnings.warn(f"gpuconv: cannot write kernel choice cache {path}: {exc}", RuntimeWarning,
                          stacklevel=3)


_selectors: Dict[Tuple[str, str], Selector] = {}
_selectors_lock = threading.Lock()


def selector_for(executor) -> Selector:
    """The selector of ``executor``'s device, shared by every backend on it (one choice per shape)."""
    device = executor.device_name()
    with _selectors_lock:
        key = (executor.name, device)
        if key not in _selectors:
            _selectors[key] = Selector(executor.name, device, getattr(executor, "time_call", None))
        return _selectors[key]
