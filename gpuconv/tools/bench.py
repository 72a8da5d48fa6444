"""``gpuconv bench``: time the kernels of a suite against cuDNN, cuBLAS and PyTorch CPU.

On a GPU (``--backend cuda``) every suite entry and every kernel version is first checked against
the float64 NumPy reference on poisoned outputs (a failing version is reported, never timed), then
timed with CUDA events after warm-up: before each timed launch an L2-sized buffer is rewritten
(so the cache holds nothing useful) and a spin kernel keeps the GPU busy while the host enqueues
the work (so host-side overhead stays out of the device time, and is reported separately). Inputs
rotate between several random sets; the median, p10 and p90 of the runs are reported with
GFLOP/s, GB/s and the multiple of the physical floor (``gpuconv.tools.suites``).

On the CPU (``--backend numpy``) the NumPy backend is timed against PyTorch CPU at the same
thread count, interleaving the two, for conv2d forward, conv2d forward+backward, pooling and batch
normalisation.
``--backend emulator`` runs the kernel path on the CPU emulator: a correctness tour, whose
timings are not GPU timings.

What is timed for each op and pass is one entry of ``gpuconv.tools.bench_ops.OPS``, measured by
``gpuconv.tools.bench_kernels``; ``--ops step`` times whole training steps
(``gpuconv.tools.bench_step``).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .. import fileio
from . import plots, report, suites
from .bench_kernels import ROW_SCHEMA, SUMMARY_SCHEMA, BenchContext, plan, run_kernels, summarize
from .bench_ops import Torch, baseline_names
from .bench_step import STEP_SCHEMA, format_steps, run_steps
from .harness import (
    INTEGER,
    KERNEL_BACKENDS,
    STRING,
    check_json_path,
    device,
    document,
    list_of,
    make_backend,
    record,
    timer_for,
    write_json,
)
from .report import ENVIRONMENT_SCHEMA

__all__ = ["add_parser", "run", "run_bench", "check_request", "check_plot", "format_rows", "format_summary",
           "plot", "BENCH_SCHEMA", "OPS_CHOICES"]

OPS_CHOICES = ("conv", "pool", "norm", "step")

BASELINES = ("torch", "torch-tf32", "cupy-gemm")
DEFAULT_BATCH = {"cuda": suites.DEFAULT_BATCH, "numpy": 32, "emulator": 2}
DEFAULT_REPEAT = {"cuda": 30, "numpy": 5, "emulator": 1}
N_INPUT_SETS = {"cuda": 3, "numpy": 2, "emulator": 1}

BENCH_SCHEMA = document("gpuconv-bench/1", {
    "environment": ENVIRONMENT_SCHEMA,
    "settings": record({"suite": STRING, "backend": STRING, "ops": list_of(STRING),
                        "baselines": list_of(STRING), "versions": STRING, "batch": INTEGER, "repeat": INTEGER,
                        "timer": STRING, "input_sets": INTEGER, "seed": INTEGER}),
    "rows": list_of(ROW_SCHEMA), "steps": list_of(STEP_SCHEMA), "summary": list_of(SUMMARY_SCHEMA)})


def check_request(suite: str, ops: Sequence[str], backend: str, baselines: Sequence[str], versions: str,
                  batch: Optional[int], repeat: Optional[int], layers: Optional[Sequence[str]], seed: int,
                  threads: Optional[int]) -> Tuple[Any, ...]:
    """Refuse, with a ValueError naming the option, a request that cannot run or means nothing;
    return the suite layers it runs on. Nothing is measured or loaded here."""
    if backend not in DEFAULT_BATCH:
        raise ValueError(f"--backend must be one of {', '.join(DEFAULT_BATCH)}, got {backend!r}")
    for name, items, allowed in (("--ops", ops, OPS_CHOICES), ("--baseline", baselines, BASELINES)):
        for item in items:
            if item not in allowed:
                raise ValueError(f"{name} must be a comma list of {', '.join(allowed)}, got {item!r}")
        if len(set(items)) != len(items):
            raise ValueError(f"{name} names an item twice: {','.join(items)}")
    if not ops:
        raise ValueError("--ops must name at least one of " + ", ".join(OPS_CHOICES))
    if device(backend) != "cuda" and ("torch-tf32" in baselines or "cupy-gemm" in baselines):
        raise ValueError(f"--baseline torch-tf32 and cupy-gemm need --backend cuda, got --backend {backend}")
    if versions not in ("all", "default"):
        raise ValueError(f"--versions must be 'all' or 'default', got {versions!r}")
    if versions == "all" and backend not in KERNEL_BACKENDS:
        raise ValueError(f"--versions all applies to the kernel backends ({', '.join(KERNEL_BACKENDS)}); "
                         f"--backend {backend} has one version of each op")
    for name, n in (("--batch", batch), ("--repeat", repeat), ("--threads", threads)):
        if n is not None and n < 1:
            raise ValueError(f"{name} must be >= 1, got {n}")
    if threads is not None and device(backend) == "cuda":
        raise ValueError("--threads sets PyTorch's CPU threads, and --backend cuda runs on the GPU")
    if seed < 0:
        raise ValueError(f"--seed must be >= 0, got {seed}")
    cases = suites.get_suite(suite)
    if layers:
        known = {c.id for c in cases}
        bad = [x for x in layers if x not in known]
        if bad:
            raise ValueError(f"--layers must be among {', '.join(sorted(known))}, got {bad}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"--layers names a layer twice: {','.join(layers)}")
        cases = tuple(c for c in cases if c.id in layers)
        idle = [c.id for c in cases if c.family not in ops]
        if idle:
            raise ValueError(f"--layers {','.join(idle)}: not {' or '.join(o for o in ops if o != 'step')} "
                             f"layers, so --ops {','.join(ops)} times nothing on them")
    return cases


def check_plot(cases: Sequence[Any], ops: Sequence[str], backend: str, baselines: Sequence[str]) -> None:
    """Refuse --plot, before any measurement, when matplotlib is missing or no row of the run can
    have a ratio to draw (no baseline, no conv or pool op, or no baseline of the ops asked for)."""
    plots.require_matplotlib()
    if not baselines:
        usable = [b for b in BASELINES if b == "torch" or device(backend) == "cuda"]
        raise ValueError(f"--plot draws gpuconv time / baseline time and needs a baseline: pass "
                         f"--baseline {' or '.join(usable)} (with PyTorch installed), or drop --plot")
    timed = plan(cases, ops, backend)
    if not timed:
        raise ValueError("--plot draws the conv, pool and norm rows, and --ops "
                         f"{','.join(ops)} times none: add conv, pool or norm to --ops, or drop --plot")
    if not any(baseline_names(entry, baselines) for _, entry in timed):
        raise ValueError(f"--plot: --baseline {','.join(baselines)} times none of the ops asked for "
                         f"(--ops {','.join(ops)}), so there is no ratio to draw")


def run_bench(suite: str = "small-cnn", ops: Sequence[str] = ("conv", "pool", "norm"), backend: str = "numpy",
              baselines: Sequence[str] = ("torch",), versions: str = "default", batch: Optional[int] = None,
              repeat: Optional[int] = None, layers: Optional[Sequence[str]] = None, seed: int = 0,
              threads: Optional[int] = None, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run the benchmark and return the result document (see ``BENCH_SCHEMA``)."""
    cases = check_request(suite, ops, backend, baselines, versions, batch, repeat, layers, seed, threads)
    batch = DEFAULT_BATCH[backend] if batch is None else batch
    repeat = DEFAULT_REPEAT[backend] if repeat is None else repeat
    on_gpu = device(backend) == "cuda"
    threads_source = "--threads"
    if threads is None and not on_gpu:
        threads, threads_source = report.blas_threads()
    tch = None
    if baselines:
        try:
            tch = Torch(device(backend), threads)
        except ImportError:
            raise ValueError("--baseline torch needs PyTorch; install it or pass --baseline none") from None
    env = report.environment(None if on_gpu else threads)    # after torch's import: its CUDA, cuDNN
    if not on_gpu:
        env["threads_source"] = threads_source
    hw = None
    if on_gpu:
        hw, matched = suites.hardware_for(env.get("gpu"))
        env["floor_hardware"] = hw.name + ("" if matched else " (assumed: GPU not in the table)")
    if tch is not None:
        env["torch_threads"] = tch.torch.get_num_threads()
    ctx = BenchContext(make_backend(backend), make_backend(backend, poison=True), backend, batch,
                       N_INPUT_SETS[backend], versions, tuple(baselines), tch, seed)
    timer = timer_for(backend)
    if backend == "emulator":
        log("note: emulator timings are CPU emulation times, not GPU timings")
    rows = run_kernels(ctx, cases, ops, timer, repeat, hw, log)
    steps = run_steps(backend, baselines, batch, repeat, timer, log) if "step" in ops else []
    summary = summarize(rows, backend)
    return {
        "schema": BENCH_SCHEMA["$id"], "environment": env,
        "settings": {"suite": suite, "backend": backend, "ops": list(ops), "baselines": list(baselines),
                     "versions": versions, "batch": batch, "repeat": repeat, "timer": timer.description,
                     "input_sets": ctx.n_sets, "seed": seed},
        "rows": rows, "steps": steps, "summary": summary,
    }


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
    """Bar chart of gpuconv time / baseline time per row (``plots.bench_ratios``; needs matplotlib)."""
    plots.bench_ratios(doc, path)


# ----------------------------------------------------------------------------------------------
def _csv(name: str, value: str) -> List[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ValueError(f"--{name} must be a non-empty comma list, got {value!r}")
    return items


DESCRIPTION = (
    "Time gpuconv's kernels on the layers of a benchmark suite against baselines: cuDNN (through "
    "PyTorch) and cuBLAS (through CuPy) on a GPU, PyTorch on the CPU. Every result is first checked "
    "against a float64 NumPy reference; a kernel version that fails is reported, not timed, and makes "
    "the exit status 1. On the emulator the times are CPU emulation times, not GPU timings.")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``gpuconv bench``."""
    p = subparsers.add_parser(
        "bench", help="time the kernels of a suite against cuDNN / cuBLAS / PyTorch CPU",
        description=DESCRIPTION)
    ids = ", ".join(c.id for c in suites.get_suite("small-cnn"))
    p.add_argument("--suite", default="small-cnn", choices=sorted(suites.SUITES),
                   help="the layers to time (default %(default)s)")
    p.add_argument("--ops", default="conv,pool,norm",
                   help="comma list of conv (convolution layers), pool (pooling layers), norm (batch "
                        "normalisation, training mode, plain and with a fused ReLU), step (whole "
                        "training steps of small models) (default %(default)s)")
    p.add_argument("--backend", default="numpy", choices=("cuda", "numpy", "emulator"),
                   help="cuda: the kernels on the GPU; numpy: the NumPy backend; emulator: the kernels "
                        "on the CPU emulator (default %(default)s)")
    p.add_argument("--baseline", default=None,
                   help="comma list of torch, torch-tf32 and cupy-gemm (these two with --backend cuda "
                        "only), or none (default: torch when PyTorch is installed, else none)")
    p.add_argument("--versions", default="default", choices=("all", "default"),
                   help="'default': the version of each op that gpuconv uses; 'all': every kernel "
                        "version, on the emulator and cuda backends (default: 'default')")
    p.add_argument("--batch", type=int, default=None,
                   help=f"batch size (default {DEFAULT_BATCH['cuda']} on cuda, {DEFAULT_BATCH['numpy']} on "
                        f"numpy, {DEFAULT_BATCH['emulator']} on the emulator)")
    p.add_argument("--repeat", type=int, default=None,
                   help=f"timed runs per row (default {DEFAULT_REPEAT['cuda']} on cuda, "
                        f"{DEFAULT_REPEAT['numpy']} on numpy, {DEFAULT_REPEAT['emulator']} on the emulator)")
    p.add_argument("--layers", default=None,
                   help=f"comma list of the suite's layer ids to time, among {ids} (default: all)")
    p.add_argument("--threads", type=int, default=None,
                   help="PyTorch's CPU threads, on the numpy and emulator backends (default: NumPy's "
                        "BLAS thread count)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default %(default)s)")
    p.add_argument("--json", default=None, metavar="FILE",
                   help=f"write every row, the settings and the environment as JSON, schema "
                        f"{BENCH_SCHEMA['$id']} (default: not written)")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="draw gpuconv time / baseline time of every row to this image; needs "
                        "matplotlib and a baseline (default: not drawn)")
    p.set_defaults(func=run)
    return p


def _default_baselines() -> List[str]:
    """torch when PyTorch is installed (found, not imported), else none."""
    return ["torch"] if importlib.util.find_spec("torch") is not None else []


def run(args) -> int:
    """CLI entry: print the table and summary; exit 1 if any gpuconv version failed its check.
    Every argument is checked (``check_request``, ``check_plot``) before anything is measured."""
    ops = _csv("ops", args.ops)
    if args.baseline is None:
        baselines = _default_baselines()
    elif args.baseline.strip().lower() == "none":
        baselines = []
    else:
        baselines = _csv("baseline", args.baseline)
    layers = _csv("layers", args.layers) if args.layers else None
    cases = check_request(args.suite, ops, args.backend, baselines, args.versions, args.batch, args.repeat,
                          layers, args.seed, args.threads)
    if args.plot:
        check_plot(cases, ops, args.backend, baselines)
        if args.json and os.path.abspath(args.json) == os.path.abspath(args.plot):
            raise ValueError(f"--json and --plot name the same file {args.json!r}")
        fileio.check_writable(args.plot, "--plot")
        fileio.figure_format(args.plot, "--plot")
    check_json_path(args.json)
    doc = run_bench(args.suite, ops, args.backend, baselines, args.versions, args.batch, args.repeat,
                    layers, args.seed, args.threads)
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
        print(format_steps(doc["steps"]))
    if doc["summary"]:
        print(format_summary(doc))
    if args.json:
        write_json(args.json, doc, BENCH_SCHEMA)
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
