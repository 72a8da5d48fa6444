"""``gpuconv bench``: time the kernels of the PERF.md suite against cuDNN, cuBLAS and PyTorch CPU.

On a GPU (``--backend cuda``) every suite entry and every kernel version is first checked against
the float64 NumPy reference on poisoned outputs (a failing version is reported, never timed), then
timed with CUDA events after warm-up: before each timed launch an L2-sized buffer is rewritten
(so the cache holds nothing useful) and a spin kernel keeps the GPU busy while the host enqueues
the work (so host-side overhead stays out of the device time, and is reported separately). Inputs
rotate between several random sets; the median, p10 and p90 of the runs are reported with
GFLOP/s, GB/s and the multiple of the physical floor (``gpuconv.suites``).

On the CPU (``--backend numpy``) the NumPy backend is timed against PyTorch CPU at the same
thread count, interleaving the two, for conv2d forward, conv2d forward+backward and pooling.
``--backend emulator`` runs the kernel path on the CPU emulator: a correctness tour, whose
timings are not GPU timings.

``--ops step`` times whole training steps (``gpuconv.bench_step``).
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import fileio, report, suites, tolerances
from .suites import ConvCase, PoolCase

__all__ = ["add_parser", "run", "run_bench", "BENCH_SCHEMA", "ROW_SCHEMA", "Timing"]

BASELINES = ("torch", "torch-tf32", "cupy-gemm")
DEFAULT_BATCH = {"cuda": suites.DEFAULT_BATCH, "numpy": 32, "emulator": 2}
DEFAULT_REPEAT = {"cuda": 30, "numpy": 5, "emulator": 1}
N_INPUT_SETS = {"cuda": 3, "numpy": 2, "emulator": 1}
CPU_TARGET_MEDIAN = 2.0
CPU_TARGET_MAX = 4.0

ROW_SCHEMA = {
    "op": str, "pass": str, "layer": str, "kind": str, "version": str, "backend": str, "batch": int,
    "status": str, "note": str, "rel_err": (float, None), "tolerance": (float, None),
    "us": (float, None), "p10_us": (float, None), "p90_us": (float, None), "host_us": (float, None),
    "gflops": (float, None), "gbs": (float, None), "floor_us": (float, None),
    "floor_multiple": (float, None), "baseline_us": dict, "ratio": dict, "default": bool,
}
BENCH_SCHEMA = {
    "schema": str, "environment": {"date": str, "cpu": str, "threads": int, "numpy": str},
    "settings": {"suite": str, "backend": str, "ops": [str], "baselines": [str], "versions": str,
                 "batch": int, "repeat": int, "timer": str},
    "rows": [ROW_SCHEMA], "steps": list, "summary": list,
}


# ----------------------------------------------------------------------------------------------
# timing
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
        attrs = report.device_attributes()
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


# ----------------------------------------------------------------------------------------------
# what is timed
@dataclass
class Candidate:
    """One implementation of one pass: a gpuconv kernel version, the NumPy backend or a baseline."""

    kind: str            # "gpuconv" or "baseline"
    version: str         # "v2", "default", "torch", "torch-tf32", "cupy-gemm"
    run: Callable[[int], Any]
    check: Callable[[], Tuple[Any, ...]]   # outputs (host arrays) on input set 0, poisoned backend
    math: str = "fp32"
    note: str = ""


@dataclass
class PassSpec:
    """One pass of one suite entry (e.g. conv2d_forward of L1)."""

    op: str              # versioned op name, or e.g. "conv2d_forward_backward" on the CPU
    pass_name: str       # forward, backward_data, backward_filter, backward, forward_backward
    case: Any
    cost: suites.Cost
    reference: Tuple[np.ndarray, ...]
    candidates: List[Candidate]
    exact: Tuple[bool, ...] = ()   # outputs compared exactly (max-pool indices)


def _rng_sets(shapes: Dict[str, Tuple[int, ...]], n_sets: int, seed: int) -> List[Dict[str, np.ndarray]]:
    """Random float32 input sets (standard normal, never zeros)."""
    rng = np.random.default_rng(seed)
    return [{k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()} for _ in range(n_sets)]


def _host(be, a) -> np.ndarray:
    return np.asarray(be.to_numpy(a))


class _Torch:
    """PyTorch baselines on one device ("cpu" or "cuda")."""

    def __init__(self, device: str, threads: Optional[int]) -> None:
        import torch
        import torch.nn.functional as F
        self.torch, self.F, self.device = torch, F, device
        if device == "cpu" and threads:
            torch.set_num_threads(threads)
        if device == "cuda":
            torch.backends.cudnn.benchmark = True

    def tensor(self, a: np.ndarray, grad: bool = False):
        t = self.torch.from_numpy(np.ascontiguousarray(a)).to(self.device)
        return t.requires_grad_(grad)

    def set_tf32(self, on: bool) -> None:
        if self.device == "cuda":
            self.torch.backends.cudnn.allow_tf32 = on
            self.torch.backends.cuda.matmul.allow_tf32 = on

    @staticmethod
    def host(t) -> np.ndarray:
        return t.detach().cpu().numpy()


def _kernel_versions(be, op: str, which: str) -> List[Optional[int]]:
    if not hasattr(be, "known_versions"):
        return [None]
    if which == "default":
        return [be.version(op)]
    return list(be.known_versions()[op])


def _with_version(be, op: Optional[str], v: Optional[int], fn: Callable[[], Any]) -> Callable[[], Any]:
    if v is None or op is None:
        return fn

    def run():
        with be.use_versions({op: v}):
            return fn()
    return run


# ---- convolution -------------------------------------------------------------------------------
def _conv_ref(g, s64: Dict[str, np.ndarray], pass_name: str) -> Tuple[np.ndarray, ...]:
    from .backends.numpy_backend import NumpyBackend
    ref = NumpyBackend()
    if pass_name == "forward":
        return (ref.conv2d(s64["x"], s64["w"], s64["b"], g),)
    dx, dw, db = ref.conv2d_backward(s64["dy"], s64["x"], s64["w"], g)
    if pass_name == "backward_data":
        return (dx,)
    if pass_name == "backward_filter":
        return (dw,)
    return (ref.conv2d(s64["x"], s64["w"], s64["b"], g), dx, dw, db)


def _conv_gpuconv_call(be, g, arrs, pass_name: str) -> Callable[[], Tuple[Any, ...]]:
    x, w, b, dy = arrs["x"], arrs["w"], arrs["b"], arrs["dy"]
    if pass_name == "forward":
        return lambda: (be.conv2d(x, w, b, g),)
    if pass_name == "backward_data":
        return lambda: (be.conv2d_backward(dy, x, w, g, True, False, False)[0],)
    if pass_name == "backward_filter":
        return lambda: (be.conv2d_backward(dy, x, w, g, False, True, False)[1],)

    def fwd_bwd():
        y = be.conv2d(x, w, b, g)
        return (y,) + tuple(be.conv2d_backward(dy, x, w, g))
    return fwd_bwd


def _conv_torch_call(T: _Torch, g, s: Dict[str, np.ndarray], pass_name: str) -> Callable[[], Tuple[Any, ...]]:
    F, torch = T.F, T.torch
    stride, padding = (g.stride_h, g.stride_w), (g.pad_h, g.pad_w)
    need = pass_name == "forward_backward"
    x, w, b, dy = T.tensor(s["x"], need), T.tensor(s["w"], need), T.tensor(s["b"], need), T.tensor(s["dy"])
    if pass_name == "forward":
        return lambda: (F.conv2d(x, w, b, stride, padding),)
    if pass_name == "backward_data":
        return lambda: (torch.nn.grad.conv2d_input(x.shape, w, dy, stride, padding),)
    if pass_name == "backward_filter":
        return lambda: (torch.nn.grad.conv2d_weight(x, w.shape, dy, stride, padding),)

    def fwd_bwd():
        y = F.conv2d(x, w, b, stride, padding)
        return (y,) + tuple(torch.autograd.grad(y, (x, w, b), dy))
    return fwd_bwd


def _cupy_gemm_forward(g, x, w, b):
    """im2col (strided slices into an (N, C·R·S, P·Q) buffer) + cupy.matmul (cuBLAS) + bias."""
    import cupy
    xp = cupy.pad(x, ((0, 0), (0, 0), (g.pad_h, g.pad_bottom), (g.pad_w, g.pad_right)))
    cols = cupy.empty((g.N, g.C, g.R, g.S, g.P, g.Q), dtype=x.dtype)
    for r in range(g.R):
        for s in range(g.S):
            h0, w0 = r * g.dil_h, s * g.dil_w
            cols[:, :, r, s] = xp[:, :, h0:h0 + g.stride_h * (g.P - 1) + 1:g.stride_h,
                                  w0:w0 + g.stride_w * (g.Q - 1) + 1:g.stride_w]
    y = cupy.matmul(w.reshape(g.K, -1), cols.reshape(g.N, g.C * g.R * g.S, g.P * g.Q))
    return (y.reshape(g.N, g.K, g.P, g.Q) + b.reshape(1, g.K, 1, 1),)


# ---- pooling -----------------------------------------------------------------------------------
def _pool_ref(kind: str, g, s64: Dict[str, np.ndarray], pass_name: str) -> Tuple[np.ndarray, ...]:
    from .backends.numpy_backend import NumpyBackend
    ref = NumpyBackend()
    x, dy = s64["x"], s64["dy"]
    if kind == "max":
        y, idx = ref.max_pool2d(x, g)
        dx = ref.max_pool2d_backward(dy, idx, g)
        return {"forward": (y, idx), "backward": (dx,), "forward_backward": (y, dx)}[pass_name]
    if kind == "avg":
        y = ref.avg_pool2d(x, g, True, None)
        dx = ref.avg_pool2d_backward(dy, g, True, None, x.dtype)
    else:
        y = ref.l2_pool2d(x, g)
        dx = ref.l2_pool2d_backward(dy, x, y, g)
    return {"forward": (y,), "backward": (dx,), "forward_backward": (y, dx)}[pass_name]


def _pool_aux(kind: str, g, s: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Inputs of a backward pass taken from the reference forward on the same float32 x."""
    from .backends.numpy_backend import NumpyBackend
    ref = NumpyBackend()
    if kind == "max":
        return {"idx": ref.max_pool2d(s["x"], g)[1]}
    if kind == "l2":
        return {"y": ref.l2_pool2d(s["x"], g)}
    return {}


def _pool_gpuconv_call(be, kind: str, g, arrs, pass_name: str) -> Callable[[], Tuple[Any, ...]]:
    x, dy = arrs["x"], arrs["dy"]
    dtype = np.float32
    if kind == "max":
        if pass_name == "forward":
            return lambda: tuple(be.max_pool2d(x, g))
        if pass_name == "backward":
            return lambda: (be.max_pool2d_backward(dy, arrs["idx"], g),)

        def max_fb():
            y, idx = be.max_pool2d(x, g)
            return (y, be.max_pool2d_backward(dy, idx, g))
        return max_fb
    if kind == "avg":
        if pass_name == "forward":
            return lambda: (be.avg_pool2d(x, g, True, None),)
        if pass_name == "backward":
            return lambda: (be.avg_pool2d_backward(dy, g, True, None, dtype),)
        return lambda: (be.avg_pool2d(x, g, True, None), be.avg_pool2d_backward(dy, g, True, None, dtype))
    if pass_name == "forward":
        return lambda: (be.l2_pool2d(x, g),)
    if pass_name == "backward":
        return lambda: (be.l2_pool2d_backward(dy, x, arrs["y"], g),)

    def l2_fb():
        y = be.l2_pool2d(x, g)
        return (y, be.l2_pool2d_backward(dy, x, y, g))
    return l2_fb


def _pool_torch_call(T: _Torch, kind: str, g, s, pass_name: str) -> Callable[[], Tuple[Any, ...]]:
    F, torch = T.F, T.torch
    k, st, p = (g.R, g.S), (g.stride_h, g.stride_w), (g.pad_h, g.pad_w)
    if kind == "max":
        def fwd(x):
            return F.max_pool2d(x, k, st, p, return_indices=pass_name == "forward")
    elif kind == "avg":
        def fwd(x):
            return F.avg_pool2d(x, k, st, p, count_include_pad=True)
    else:
        def fwd(x):
            return F.lp_pool2d(x, 2.0, k, st)
    x, dy = T.tensor(s["x"], pass_name != "forward"), T.tensor(s["dy"])
    if pass_name == "forward":
        return lambda: (fwd(x),) if kind != "max" else tuple(fwd(x))
    if pass_name == "backward":
        y = fwd(x)
        return lambda: tuple(torch.autograd.grad(y, (x,), dy, retain_graph=True))

    def fb():
        y = fwd(x)
        return (y,) + tuple(torch.autograd.grad(y, (x,), dy))
    return fb


# ----------------------------------------------------------------------------------------------
@dataclass
class BenchContext:
    be: Any                   # backend timed
    check_be: Any             # same kind, poisoned outputs
    backend: str
    batch: int
    n_sets: int
    versions: str
    baselines: Tuple[str, ...]
    torch: Optional[_Torch]
    seed: int


def _passes_for(backend: str, op_family: str) -> Tuple[str, ...]:
    if backend == "numpy":
        return ("forward", "forward_backward")
    return suites.CONV_PASSES if op_family == "conv" else suites.POOL_PASSES


def _conv_specs(ctx: BenchContext, case: ConvCase) -> List[PassSpec]:
    g = case.geometry(ctx.batch)
    shapes = {"x": g.x_shape, "w": g.w_shape, "b": (g.K,), "dy": g.y_shape}
    sets = _rng_sets(shapes, ctx.n_sets, ctx.seed)
    s64 = {k: v.astype(np.float64) for k, v in sets[0].items()}
    dev_sets = [{k: ctx.be.asarray(v) for k, v in s.items()} for s in sets]
    chk_set = {k: ctx.check_be.asarray(v) for k, v in sets[0].items()}
    specs = []
    for pass_name in _passes_for(ctx.backend, "conv"):
        if pass_name == "forward_backward":
            cost = suites.Cost(*[sum(getattr(suites.conv_cost(g, p), a) for p in suites.CONV_PASSES)
                                 for a in ("flops", "bytes")])
            op = "conv2d_forward_backward"
        else:
            cost = suites.conv_cost(g, pass_name)
            op = f"conv2d_{pass_name}"
        versioned = op if pass_name != "forward_backward" else None
        cands = _gpuconv_candidates(
            ctx, versioned, lambda be, a, p=pass_name: _conv_gpuconv_call(be, g, a, p), dev_sets, chk_set)
        cands += _conv_baselines(ctx, g, sets, pass_name)
        specs.append(PassSpec(op, pass_name, case, cost, _conv_ref(g, s64, pass_name), cands))
    return specs


def _conv_baselines(ctx: BenchContext, g, sets, pass_name: str) -> List[Candidate]:
    out = []
    for name in ctx.baselines:
        if name in ("torch", "torch-tf32"):
            calls = [_conv_torch_call(ctx.torch, g, s, pass_name) for s in sets]
            out.append(_torch_candidate(ctx.torch, name, calls))
        elif name == "cupy-gemm" and pass_name == "forward":
            out.append(_cupy_gemm_candidate(g, sets))
    return out


def _gpuconv_candidates(ctx: BenchContext, op: Optional[str], make_call, dev_sets,
                        chk_set) -> List[Candidate]:
    """One candidate per kernel version of ``op`` (or the backend's only implementation)."""
    versions = _kernel_versions(ctx.be, op, ctx.versions) if op else [None]
    return [_gpuconv_candidate(ctx, op, v, [make_call(ctx.be, a) for a in dev_sets],
                               make_call(ctx.check_be, chk_set)) for v in versions]


def _gpuconv_candidate(ctx: BenchContext, op: Optional[str], v: Optional[int], calls, chk) -> Candidate:
    def run(i: int):
        return _with_version(ctx.be, op, v, calls[i])()

    def check():
        return tuple(_host(ctx.check_be, a) for a in _with_version(ctx.check_be, op, v, chk)())
    return Candidate("gpuconv", f"v{v}" if v is not None else "default", run, check,
                     math=_version_math(op, v))


def _version_math(op: Optional[str], v: Optional[int]) -> str:
    """"tf32" for a kernel version a launch module lists in its PRECISION table, else "fp32"."""
    if op is None or v is None:
        return "fp32"
    from .backends import launch
    return launch.precision(op, v)


def _torch_candidate(T: _Torch, name: str, calls) -> Candidate:
    tf32 = name == "torch-tf32"

    def run(i: int):
        T.set_tf32(tf32)
        return calls[i]()

    def check():
        return tuple(T.host(t) for t in run(0))
    return Candidate("baseline", name, run, check, math="tf32" if tf32 else "fp32")


def _cupy_gemm_candidate(g, sets) -> Candidate:
    import cupy
    dev = [{k: cupy.asarray(v) for k, v in s.items()} for s in sets]

    def run(i: int):
        return _cupy_gemm_forward(g, dev[i]["x"], dev[i]["w"], dev[i]["b"])

    def check():
        return tuple(cupy.asnumpy(a) for a in run(0))
    return Candidate("baseline", "cupy-gemm", run, check)


def _pool_specs(ctx: BenchContext, case: PoolCase) -> List[PassSpec]:
    g = case.geometry(ctx.batch)
    specs = []
    for kind in case.kinds:
        sets = _rng_sets({"x": g.x_shape, "dy": g.y_shape}, ctx.n_sets, ctx.seed)
        for s in sets:
            s.update(_pool_aux(kind, g, s))
        s64 = {k: (v.astype(np.float64) if v.dtype.kind == "f" else v) for k, v in sets[0].items()}
        dev_sets = [{k: ctx.be.asarray(v) for k, v in s.items()} for s in sets]
        chk_set = {k: ctx.check_be.asarray(v) for k, v in sets[0].items()}
        for pass_name in _passes_for(ctx.backend, "pool"):
            if pass_name == "forward_backward":
                cost = suites.Cost(*[sum(getattr(suites.pool_cost(g, kind, p), a) for p in suites.POOL_PASSES)
                                     for a in ("flops", "bytes")])
            else:
                cost = suites.pool_cost(g, kind, pass_name)
            op = f"{kind}_pool2d_{pass_name}"
            versioned = op if pass_name != "forward_backward" else None
            cands = _gpuconv_candidates(
                ctx, versioned, lambda be, a, k=kind, p=pass_name: _pool_gpuconv_call(be, k, g, a, p),
                dev_sets, chk_set)
            torch_pool = kind != "l2" or (g.pad_h, g.pad_w) == (0, 0)   # torch's lp_pool2d has no padding
            if torch_pool and ("torch" in ctx.baselines or "torch-tf32" in ctx.baselines):
                calls = [_pool_torch_call(ctx.torch, kind, g, s, pass_name) for s in sets]
                cands.append(_torch_candidate(ctx.torch, "torch", calls))
            exact = (False, True) if (kind == "max" and pass_name == "forward") else ()
            ref = _pool_ref(kind, g, s64, pass_name)
            specs.append(PassSpec(op, pass_name, case, cost, ref, cands, exact))
    return specs


# ----------------------------------------------------------------------------------------------
def _check(spec: PassSpec, cand: Candidate) -> Tuple[str, float, str]:
    """(status, rel_err, note) of one candidate against the float64 reference."""
    tol = tolerances.TF32_RTOL if cand.math == "tf32" else tolerances.FLOAT32_RTOL
    try:
        outs = cand.check()
    except Exception as exc:  # a failing version is reported, not fatal
        return "error", math.nan, f"{type(exc).__name__}: {exc}"
    if len(outs) != len(spec.reference):
        return "failed", math.nan, f"returned {len(outs)} outputs, expected {len(spec.reference)}"
    worst, notes = 0.0, []
    for i, (out, ref) in enumerate(zip(outs, spec.reference)):
        out = np.asarray(out)
        if i < len(spec.exact) and spec.exact[i]:
            bad = int(np.count_nonzero(out.astype(np.int64) != ref.astype(np.int64)))
            if bad:
                notes.append(f"output {i}: {bad} indices differ")
            continue
        if out.shape != ref.shape:
            return "failed", math.nan, f"output {i} has shape {out.shape}, expected {ref.shape}"
        _, rel = tolerances.scaled_error(out, ref)
        if not (rel <= worst):
            worst = rel
    if notes or not tolerances.passes(worst, tol):
        notes.append(f"max rel err {worst:.3g} > tol {tol:g}" if not tolerances.passes(worst, tol) else "")
        return "failed", worst, "; ".join(n for n in notes if n)
    return "ok", worst, ""


def _row(ctx: BenchContext, spec: PassSpec, cand: Candidate, status: str, rel: float, note: str,
         timing: Optional[Timing], hw) -> Dict[str, Any]:
    us = timing.median if timing else None
    row: Dict[str, Any] = {
        "op": spec.op, "pass": spec.pass_name, "layer": spec.case.id, "kind": cand.kind,
        "version": cand.version, "backend": ctx.backend, "batch": ctx.batch, "status": status,
        "note": note or cand.note, "rel_err": None if math.isnan(rel) else float(rel),
        "tolerance": tolerances.TF32_RTOL if cand.math == "tf32" else tolerances.FLOAT32_RTOL,
        "us": us, "p10_us": timing.percentile(10) if timing else None,
        "p90_us": timing.percentile(90) if timing else None,
        "host_us": timing.host_median if timing else None,
        "gflops": spec.cost.flops / us / 1e3 if us else None,
        "gbs": spec.cost.bytes / us / 1e3 if us else None,
        "floor_us": None, "floor_multiple": None, "baseline_us": {}, "ratio": {},
    }
    if hw is not None:
        floor = suites.floor_seconds(spec.cost, hw, cand.math) * 1e6
        row["floor_us"] = floor
        row["floor_multiple"] = us / floor if us else None
    return row


def _bench_spec(ctx: BenchContext, spec: PassSpec, timer, repeat: int, hw, log) -> List[Dict[str, Any]]:
    checked = [(c, *_check(spec, c)) for c in spec.candidates]
    # a failing gpuconv version is not timed; a baseline outside the FP32 tolerance (TF32) still is
    timed = [c for c, status, _, _ in checked
             if status == "ok" or (c.kind == "baseline" and status == "failed")]
    timings: Dict[int, Timing] = {}
    if timed:
        try:
            res = timer.measure([c.run for c in timed], ctx.n_sets, repeat)
            timings = {id(c): t for c, t in zip(timed, res)}
        except Exception as exc:
            log(f"  timing {spec.op} {spec.case.id} failed: {type(exc).__name__}: {exc}")
    rows = [_row(ctx, spec, c, status, rel, note, timings.get(id(c)), hw) for c, status, rel, note in checked]
    default = "default"
    if hasattr(ctx.be, "version") and spec.pass_name != "forward_backward":
        default = f"v{ctx.be.version(spec.op)}"
    for r in rows:
        r["default"] = r["kind"] == "gpuconv" and r["version"] == default
    base = {r["version"]: r["us"] for r in rows if r["kind"] == "baseline"}
    for r in rows:
        if r["kind"] == "gpuconv":
            r["baseline_us"] = dict(base)
            r["ratio"] = {k: (r["us"] / v if (r["us"] and v) else None) for k, v in base.items()}
    return rows


def _summary(rows: List[Dict[str, Any]], backend: str) -> List[Dict[str, Any]]:
    """Per (op family + pass, baseline): median and max ratio over layers of the default versions."""
    out = []
    groups: Dict[Tuple[str, str], List[float]] = {}
    for r in rows:
        if r["kind"] != "gpuconv" or r["status"] != "ok" or not r["default"]:
            continue
        family = "conv2d" if r["op"].startswith("conv2d") else "pool2d"
        for b, ratio in r["ratio"].items():
            if ratio is not None:
                groups.setdefault((f"{family} {r['pass']}", b), []).append(ratio)
    for (what, b), ratios in sorted(groups.items()):
        item = {"what": what, "baseline": b, "layers": len(ratios), "median_ratio": float(np.median(ratios)),
                "max_ratio": float(max(ratios))}
        if backend == "numpy" and what == "conv2d forward_backward" and b == "torch":
            item["target"] = f"median <= {CPU_TARGET_MEDIAN}, max <= {CPU_TARGET_MAX}"
            item["target_met"] = bool(item["median_ratio"] <= CPU_TARGET_MEDIAN
                                      and item["max_ratio"] <= CPU_TARGET_MAX)
        out.append(item)
    return out


def _make_backends(backend: str):
    """(timed backend, poisoned backend for the checks)."""
    from .backends import resolve_backend
    if backend == "numpy":
        be = resolve_backend("numpy")
        return be, be
    resolve_backend(backend)  # raises BackendUnavailable with the reason
    from .backends.executors import CupyExecutor, EmulatorExecutor
    from .backends.kernel_backend import KernelBackend
    executor = CupyExecutor if backend == "cuda" else EmulatorExecutor
    return KernelBackend(executor(), poison=False), KernelBackend(executor(), poison=True)


def run_bench(suite: str = "small-cnn", ops: Sequence[str] = ("conv", "pool"), backend: str = "numpy",
              baselines: Sequence[str] = ("torch",), versions: str = "default", batch: Optional[int] = None,
              repeat: Optional[int] = None, layers: Optional[Sequence[str]] = None, seed: int = 0,
              threads: Optional[int] = None, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run the benchmark and return the result document (see ``BENCH_SCHEMA``)."""
    if backend not in DEFAULT_BATCH:
        raise ValueError(f"backend must be one of {', '.join(DEFAULT_BATCH)}, got {backend!r}")
    for b in baselines:
        if b not in BASELINES:
            raise ValueError(f"baseline must be one of {', '.join(BASELINES)} or none, got {b!r}")
    if backend != "cuda" and ("torch-tf32" in baselines or "cupy-gemm" in baselines):
        raise ValueError(f"baselines torch-tf32 and cupy-gemm need --backend cuda, got --backend {backend}")
    for op in ops:
        if op not in ("conv", "pool", "step"):
            raise ValueError(f"ops must be a comma list of conv, pool, step, got {op!r}")
    if versions not in ("all", "default"):
        raise ValueError(f"versions must be 'all' or 'default', got {versions!r}")
    batch = DEFAULT_BATCH[backend] if batch is None else batch
    repeat = DEFAULT_REPEAT[backend] if repeat is None else repeat
    if batch < 1 or repeat < 1:
        raise ValueError(f"batch and repeat must be >= 1, got batch={batch}, repeat={repeat}")
    cases = suites.get_suite(suite)
    if layers:
        known = {c.id for c in cases}
        bad = [x for x in layers if x not in known]
        if bad:
            raise ValueError(f"layers must be among {', '.join(sorted(known))}, got {bad}")
        cases = tuple(c for c in cases if c.id in layers)

    threads_source = "--threads"
    if threads is None and backend != "cuda":
        threads, threads_source = report.blas_threads()
    env = report.environment(threads if backend != "cuda" else None)
    if backend != "cuda":
        env["threads_source"] = threads_source
    hw = None
    if backend == "cuda":
        hw, matched = suites.hardware_for(env.get("gpu"))
        env["floor_hardware"] = hw.name + ("" if matched else " (assumed: GPU not in the table)")
    tch = None
    if baselines:
        try:
            tch = _Torch("cuda" if backend == "cuda" else "cpu", threads)
        except ImportError:
            raise ValueError("baseline torch needs PyTorch; install it or pass --baseline none") from None
        env["torch_threads"] = tch.torch.get_num_threads()
    be, check_be = _make_backends(backend)
    timer = CudaEventTimer() if backend == "cuda" else WallTimer()
    if backend == "emulator":
        log("note: emulator timings are CPU emulation times, not GPU timings")
    ctx = BenchContext(be, check_be, backend, batch, N_INPUT_SETS[backend], versions, tuple(baselines),
                       tch, seed)
    rows: List[Dict[str, Any]] = []
    for case in cases:
        kind = "conv" if isinstance(case, ConvCase) else "pool"
        if kind not in ops:
            continue
        specs = _conv_specs(ctx, case) if kind == "conv" else _pool_specs(ctx, case)
        for spec in specs:
            new = _bench_spec(ctx, spec, timer, repeat, hw, log)
            rows += new
            for r in new:
                log(_row_line(r))
    steps: List[Dict[str, Any]] = []
    if "step" in ops:
        from .bench_step import run_steps
        steps = run_steps(backend, baselines, batch, repeat, timer, log)
    summary = _summary(rows, backend)
    return {
        "schema": "gpuconv-bench/1", "environment": env,
        "settings": {"suite": suite, "backend": backend, "ops": list(ops), "baselines": list(baselines),
                     "versions": versions, "batch": batch, "repeat": repeat, "timer": timer.description,
                     "input_sets": ctx.n_sets, "seed": seed},
        "rows": rows, "steps": steps, "summary": summary,
    }


def _row_line(r: Dict[str, Any]) -> str:
    t = report.fmt(r["us"])
    extra = "  ".join(f"x{k}={report.fmt(v)}" for k, v in r["ratio"].items())
    return (f"  {r['layer']:3} {r['op']:28} {r['version']:10} {r['status']:6} err={report.fmt(r['rel_err'])} "
            f"us={t} {extra} {r['note']}").rstrip()


TABLE_HEADERS = ("layer", "op", "version", "status", "rel err", "µs", "p10", "p90", "host µs", "GFLOP/s",
                 "GB/s", "×floor")


def format_rows(doc: Dict[str, Any], markdown: bool = False) -> str:
    """The result table: one row per (op, layer, version or baseline)."""
    base_names = list(doc["settings"]["baselines"])
    headers = list(TABLE_HEADERS) + [h for b in base_names for h in (f"{b} µs", f"÷{b}")]
    rows = []
    for r in doc["rows"]:
        cells = [r["layer"], r["op"], r["version"] + ("*" if r.get("default") and r["kind"] == "gpuconv"
                                                      and r["version"] != "default" else ""),
                 r["status"], r["rel_err"], r["us"], r["p10_us"], r["p90_us"], r["host_us"], r["gflops"],
                 r["gbs"], r["floor_multiple"]]
        for b in base_names:
            cells += [r["baseline_us"].get(b), r["ratio"].get(b)]
        rows.append(cells)
    return report.format_table(headers, rows, markdown)


def format_summary(doc: Dict[str, Any]) -> str:
    lines = []
    for s in doc["summary"]:
        line = (f"{s['what']} vs {s['baseline']}: median ratio {s['median_ratio']:.2f}, "
                f"max {s['max_ratio']:.2f} over {s['layers']} layers")
        if "target" in s:
            line += f" (target {s['target']}: {'met' if s['target_met'] else 'NOT met'})"
        lines.append(line)
    return "\n".join(lines)


def plot(doc: Dict[str, Any], path: str) -> None:
    """Bar chart of gpuconv time / baseline time per row (needs matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib, which is not installed (pip install matplotlib)") from None
    rows = [r for r in doc["rows"] if r["kind"] == "gpuconv" and r["ratio"]]
    names = list(doc["settings"]["baselines"])
    if not rows or not names:
        raise ValueError("--plot needs timed rows with a baseline (--baseline torch, ...)")
    fig, ax = plt.subplots(figsize=(min(40.0, max(6.0, 0.35 * len(rows))), 4.5))
    width = 0.8 / len(names)
    xs = np.arange(len(rows))
    for j, b in enumerate(names):
        ax.bar(xs + j * width, [r["ratio"].get(b) or 0.0 for r in rows], width, label=f"÷ {b}")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(xs + 0.4 - width / 2)
    ax.set_xticklabels([f"{r['layer']} {r['op'].replace('conv2d_', '').replace('_pool2d', '')} {r['version']}"
                        for r in rows], rotation=90, fontsize=7)
    ax.set_ylabel("gpuconv time / baseline time")
    env = doc["environment"]
    ax.set_title(f"gpuconv bench on {env.get('gpu') or env.get('cpu')} ({doc['settings']['backend']}, "
                 f"batch {doc['settings']['batch']})", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fileio.save_figure(fig, path, "--plot", dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
def _csv(name: str, value: str) -> List[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ValueError(f"--{name} must be a non-empty comma list, got {value!r}")
    return items


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``gpuconv bench``."""
    p = subparsers.add_parser(
        "bench", help="time the kernels of a suite against cuDNN / cuBLAS / PyTorch CPU",
        description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", default="small-cnn", choices=sorted(suites.SUITES))
    p.add_argument("--ops", default="conv,pool", help="comma list of conv, pool, step (default conv,pool)")
    p.add_argument("--backend", default="numpy", choices=("cuda", "numpy", "emulator"))
    p.add_argument("--baseline", default=None,
                   help="comma list of torch, torch-tf32, cupy-gemm, or none (default: torch if installed)")
    p.add_argument("--versions", default="default", choices=("all", "default"),
                   help="time every kernel version or only the defaults")
    p.add_argument("--batch", type=int, default=None,
                   help="batch size (default 128 on cuda, 32 on numpy, 2 on the emulator)")
    p.add_argument("--repeat", type=int, default=None, help="timed runs per row (default 30 cuda, 5 numpy)")
    p.add_argument("--layers", default=None, help="comma list of suite ids to run (default: all)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: NumPy's BLAS thread count)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, metavar="FILE", help="write all rows and the environment")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="bar chart of ratios (matplotlib)")
    p.set_defaults(func=run)
    return p


def _default_baselines(backend: str) -> List[str]:
    try:
        import torch  # noqa: F401
    except ImportError:
        return []
    return ["torch"]


def run(args) -> int:
    """CLI entry: print the table and summary; exit 1 if any gpuconv version failed its check."""
    ops = _csv("ops", args.ops)
    if args.baseline is None:
        baselines = _default_baselines(args.backend)
    elif args.baseline.strip().lower() == "none":
        baselines = []
    else:
        baselines = _csv("baseline", args.baseline)
    layers = _csv("layers", args.layers) if args.layers else None
    from .backends import BackendUnavailable
    try:
        for flag, path in (("--json", args.json), ("--plot", args.plot)):
            if path:
                fileio.check_writable(path, flag)
        if args.plot:
            fileio.figure_format(args.plot, "--plot")
        doc = run_bench(args.suite, ops, args.backend, baselines, args.versions, args.batch, args.repeat,
                        layers, args.seed, args.threads)
    except (ValueError, BackendUnavailable) as exc:
        print(f"gpuconv bench: error: {exc}", file=sys.stderr)
        return 2
    env = doc["environment"]
    print(f"\ngpuconv bench --backend {args.backend}: {env.get('gpu') or env['cpu']}, "
          f"{env['threads']} threads, batch {doc['settings']['batch']}, {doc['settings']['repeat']} runs, "
          f"timer: {doc['settings']['timer']}")
    if args.backend == "emulator":
        print("(emulator: times are CPU emulation times, not GPU timings)")
    if doc["rows"]:
        print(format_rows(doc))
        print("* default version; rel err = max|out - ref| / max|ref| against the float64 NumPy reference; "
              "÷baseline = gpuconv time / baseline time")
    if doc["steps"]:
        from .bench_step import format_steps
        print(format_steps(doc["steps"]))
    if doc["summary"]:
        print(format_summary(doc))
    if args.json:
        report.write_json(args.json, doc)
        print(f"wrote {args.json}")
    if args.plot:
        plot(doc, args.plot)
        print(f"wrote {args.plot}")
    failed = [r for r in doc["rows"] if r["kind"] == "gpuconv" and r["status"] != "ok"]
    failed += [s for s in doc["steps"] if s.get("status") == "failed"]
    if failed:
        print(f"{len(failed)} gpuconv row(s) failed their correctness check")
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``gpuconv bench`` with ``argv`` (for ``python -m gpuconv.bench``)."""
    parser = argparse.ArgumentParser(prog="gpuconv")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["bench", *(argv if argv is not None else sys.argv[1:])])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
