"""The kernel part of ``gpuconv bench``: every entry of ``bench_ops.OPS`` on every suite layer
it applies to, checked against the float64 NumPy reference, then timed.

Each gpuconv kernel version and each baseline is first run once on poisoned outputs and compared
with the reference; a failing gpuconv version is reported and not timed. Then the candidates of
one pass are timed together (interleaved, rotating the input sets), and one row per candidate
records its error, its times, its throughput, its multiple of the physical floor (on a GPU) and
its ratio to each baseline.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import tolerances
from ..backends.launch import VERSIONS, precision
from . import report, suites
from .bench_ops import OPS, BenchOp, Torch, baseline_names
from .harness import (
    BOOLEAN,
    INTEGER,
    KERNEL_BACKENDS,
    NUMBER,
    NUMBER_OR_NULL,
    OBJECT,
    STRING,
    Timing,
    make_backend,
    record,
)

__all__ = ["BenchContext", "plan", "run_kernels", "summarize", "ROW_SCHEMA", "SUMMARY_SCHEMA"]

CPU_TARGET_MEDIAN = 2.0
CPU_TARGET_MAX = 4.0

_OPT = NUMBER_OR_NULL
ROW_SCHEMA = record({
    "op": STRING, "pass": STRING, "layer": STRING, "kind": STRING, "version": STRING, "backend": STRING,
    "batch": INTEGER, "status": STRING, "note": STRING, "rel_err": _OPT, "tolerance": NUMBER, "us": _OPT,
    "p10_us": _OPT, "p90_us": _OPT, "host_us": _OPT, "gflops": _OPT, "gbs": _OPT, "floor_us": _OPT,
    "floor_multiple": _OPT, "baseline_us": OBJECT, "ratio": OBJECT, "default": BOOLEAN})
SUMMARY_SCHEMA = record({"what": STRING, "baseline": STRING, "layers": INTEGER, "median_ratio": NUMBER,
                         "max_ratio": NUMBER})


@dataclass
class Candidate:
    """One implementation of one pass: a gpuconv kernel version, the NumPy backend or a baseline."""

    kind: str            # "gpuconv" or "baseline"
    version: str         # "v2", "default", "torch", "torch-tf32", "cupy-gemm"
    run: Callable[[int], Any]              # one run on input set i
    check: Callable[[], Tuple[Any, ...]]   # outputs (host arrays) on input set 0, poisoned backend
    math: str = "fp32"   # "tf32" where the operands are rounded to TF32


@dataclass
class PassSpec:
    """One pass of one suite entry (e.g. conv2d_forward of L1)."""

    op: str
    kernel_op: str      # the op whose kernel versions run (``BenchOp.kernel_op``)
    pass_name: str
    case: Any
    cost: suites.Cost
    reference: Tuple[np.ndarray, ...]
    candidates: List[Candidate]
    exact: Tuple[bool, ...] = ()   # outputs compared exactly (max-pool indices)


@dataclass
class BenchContext:
    """What the kernels are timed on, and how."""

    be: Any                   # backend timed
    check_be: Any             # same kind, poisoned outputs
    backend: str
    batch: int
    n_sets: int
    versions: str
    baselines: Tuple[str, ...]
    torch: Optional[Torch]
    seed: int


def _rng_sets(shapes: Dict[str, Tuple[int, ...]], n_sets: int, seed: int) -> List[Dict[str, np.ndarray]]:
    """Random float32 input sets (standard normal, never zeros)."""
    rng = np.random.default_rng(seed)
    return [{k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()} for _ in range(n_sets)]


def _versions(ctx: BenchContext, op: str) -> List[Optional[int]]:
    """The kernel versions of ``op`` to time; [None] where the backend has no versions of it."""
    if ctx.backend not in KERNEL_BACKENDS or op not in VERSIONS:
        return [None]
    return [ctx.be.version(op)] if ctx.versions == "default" else list(VERSIONS[op])


def _in_version(be, op: str, v: Optional[int]):
    """Version ``v`` of ``op`` on ``be`` for the enclosed code (the backend's own when None)."""
    return contextlib.nullcontext() if v is None else be.use_versions({op: v})


def _gpuconv_candidate(ctx: BenchContext, entry: BenchOp, g, v: Optional[int], dev, chk) -> Candidate:
    be, check_be, op = ctx.be, ctx.check_be, entry.kernel_op

    def run(i: int):
        with _in_version(be, op, v):
            return entry.run(be, g, dev[i])

    def check():
        with _in_version(check_be, op, v):
            return tuple(np.asarray(check_be.to_numpy(a)) for a in entry.run(check_be, g, chk))
    return Candidate("gpuconv", "default" if v is None else f"v{v}", run, check,
                     math="fp32" if v is None else precision(op, v))


def _torch_candidate(ctx: BenchContext, entry: BenchOp, name: str, g, sets) -> Optional[Candidate]:
    T, tf32 = ctx.torch, name == "torch-tf32"
    calls = [entry.torch(T, g, {k: T.tensor(a, k in entry.torch_grad) for k, a in s.items()}) for s in sets]
    if calls[0] is None:
        return None

    def run(i: int):
        T.set_tf32(tf32)
        return calls[i]()

    def check():
        return tuple(T.host(t) for t in run(0))
    return Candidate("baseline", name, run, check, math="tf32" if tf32 else "fp32")


def _cupy_candidate(ctx: BenchContext, entry: BenchOp, name: str, g, sets) -> Candidate:
    import cupy
    dev = [{k: cupy.asarray(a) for k, a in s.items()} for s in sets]

    def run(i: int):
        return entry.cupy_gemm(g, dev[i])

    def check():
        return tuple(cupy.asnumpy(a) for a in run(0))
    return Candidate("baseline", name, run, check)


_BASELINE_CANDIDATE = {"torch": _torch_candidate, "torch-tf32": _torch_candidate,
                       "cupy-gemm": _cupy_candidate}


def _spec(ctx: BenchContext, entry: BenchOp, case, sets: List[Dict[str, np.ndarray]]) -> PassSpec:
    """The reference, the gpuconv versions and the baselines of ``entry`` on one suite layer."""
    g = case.geometry(ctx.batch)
    ref = make_backend("numpy")
    host = [{**s, **entry.derived(ref, g, s)} for s in sets]
    s64 = {k: a.astype(np.float64) for k, a in sets[0].items()}
    s64.update(entry.derived(ref, g, s64))
    reference = tuple(np.asarray(a) for a in entry.run(ref, g, s64))
    dev = [{k: ctx.be.asarray(a) for k, a in s.items()} for s in host]
    chk = {k: ctx.check_be.asarray(a) for k, a in host[0].items()}
    cands = [_gpuconv_candidate(ctx, entry, g, v, dev, chk) for v in _versions(ctx, entry.kernel_op)]
    for name in baseline_names(entry, ctx.baselines):
        cand = _BASELINE_CANDIDATE[name](ctx, entry, name, g, host)
        if cand is not None:
            cands.append(cand)
    return PassSpec(entry.op, entry.kernel_op, entry.pass_name, case, entry.cost(g), reference, cands,
                    entry.exact)


# ----------------------------------------------------------------------------------------------
def _check(spec: PassSpec, cand: Candidate, tol: float) -> Tuple[str, float, str]:
    """(status, rel_err, note) of one candidate against the float64 reference."""
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


def _row(ctx: BenchContext, spec: PassSpec, cand: Candidate, tol: float, status: str, rel: float, note: str,
         timing: Optional[Timing], hw) -> Dict[str, Any]:
    us = timing.median if timing else None
    row: Dict[str, Any] = {
        "op": spec.op, "pass": spec.pass_name, "layer": spec.case.id, "kind": cand.kind,
        "version": cand.version, "backend": ctx.backend, "batch": ctx.batch, "status": status,
        "note": note, "rel_err": None if math.isnan(rel) else float(rel), "tolerance": tol,
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
    tols = {id(c): tolerances.tolerance_for(c.math, np.float32) for c in spec.candidates}
    checked = [(c, *_check(spec, c, tols[id(c)])) for c in spec.candidates]
    # a failing gpuconv version is not timed; a baseline outside its tolerance still is
    timed = [c for c, status, _, _ in checked
             if status == "ok" or (c.kind == "baseline" and status == "failed")]
    timings: Dict[int, Timing] = {}
    if timed:
        try:
            res = timer.measure([c.run for c in timed], ctx.n_sets, repeat)
            timings = {id(c): t for c, t in zip(timed, res)}
        except Exception as exc:
            log(f"  timing {spec.op} {spec.case.id} failed: {type(exc).__name__}: {exc}")
    rows = [_row(ctx, spec, c, tols[id(c)], status, rel, note, timings.get(id(c)), hw)
            for c, status, rel, note in checked]
    default = "default" if _versions(ctx, spec.kernel_op) == [None] else f"v{ctx.be.version(spec.kernel_op)}"
    for r in rows:
        r["default"] = r["kind"] == "gpuconv" and r["version"] == default
    base = {r["version"]: r["us"] for r in rows if r["kind"] == "baseline"}
    for r in rows:
        if r["kind"] == "gpuconv":
            r["baseline_us"] = dict(base)
            r["ratio"] = {k: (r["us"] / v if (r["us"] and v) else None) for k, v in base.items()}
    return rows


def _family(op: str) -> str:
    """The summary group of a row's op: conv2d, pool2d (every kind), batch_norm or batch_norm_relu."""
    for family in ("conv2d", "batch_norm_relu", "batch_norm"):
        if op.startswith(family):
            return family
    return "pool2d"


def summarize(rows: List[Dict[str, Any]], backend: str) -> List[Dict[str, Any]]:
    """Per (op family + pass, baseline): median and max ratio over layers of the default versions."""
    out = []
    groups: Dict[Tuple[str, str], List[float]] = {}
    for r in rows:
        if r["kind"] != "gpuconv" or r["status"] != "ok" or not r["default"]:
            continue
        family = _family(r["op"])
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


def _row_line(r: Dict[str, Any]) -> str:
    t = report.fmt(r["us"])
    extra = "  ".join(f"x{k}={report.fmt(v)}" for k, v in r["ratio"].items())
    return (f"  {r['layer']:3} {r['op']:28} {r['version']:10} {r['status']:6} err={report.fmt(r['rel_err'])} "
            f"us={t} {extra} {r['note']}").rstrip()


def plan(cases: Sequence[Any], families: Sequence[str], backend: str) -> List[Tuple[Any, BenchOp]]:
    """The (suite layer, OPS entry) pairs a run times, in order: the layers of ``cases`` of the op
    ``families`` asked for ("conv", "pool", "norm"), each with the entries of its kinds that ``backend``
    times."""
    return [(case, e) for case in cases if case.family in families
            for kind in case.kinds for e in OPS if e.kind == kind and backend in e.backends]


def run_kernels(ctx: BenchContext, cases: Sequence[Any], families: Sequence[str], timer, repeat: int, hw,
                log: Callable[[str], None] = print) -> List[Dict[str, Any]]:
    """One row per (layer, op and pass, kernel version or baseline) over ``plan(cases, families,
    ctx.backend)``; ``hw``: the GPU whose floors are reported (None on the CPU)."""
    rows: List[Dict[str, Any]] = []
    layer, sets = None, {}    # the random input sets of one layer, by shapes: shared between its passes
    for case, entry in plan(cases, families, ctx.backend):
        if case is not layer:
            layer, sets = case, {}
        g = case.geometry(ctx.batch)
        shapes = entry.inputs(g)
        key = tuple(shapes.items())
        if key not in sets:
            sets[key] = _rng_sets(shapes, ctx.n_sets, ctx.seed)
        new = _bench_spec(ctx, _spec(ctx, entry, case, sets[key]), timer, repeat, hw, log)
        rows += new
        for r in new:
            log(_row_line(r))
    return rows
