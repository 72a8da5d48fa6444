"""``gpuconv bench``: time the kernels of a suite against cuDNN, cuBLAS and PyTorch CPU.

On a GPU (``--backend cuda``) every suite entry and every kernel version is first checked against
the float64 NumPy reference on poisoned outputs (a failing version is reported, never timed), then
timed with CUDA events after warm-up: before each timed launch an L2-sized buffer is rewritten
(so the cache holds nothing useful) and a spin kernel keeps the GPU busy while the host enqueues
the work (so host-side overhead stays out of the device time, and is reported separately). Inputs
rotate between several random sets; the median, p10 and p90 of the runs are reported with
GFLOP/s, GB/s and the multiple of the physical floor (``gpuconv.tools.suites``).

On the CPU (``--backend numpy``) the NumPy backend is timed against PyTorch CPU at the same
thread count, interleaving the two, for conv2d forward, conv2d forward+backward and pooling.
``--backend emulator`` runs the kernel path on the CPU emulator: a correctness tour, whose
timings are not GPU timings.

What is timed for each op and pass is one entry of ``gpuconv.tools.bench_ops.OPS``, measured by
``gpuconv.tools.bench_kernels``; ``--ops step`` times whole training steps
(``gpuconv.tools.bench_step``).
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from ..backends import BackendUnavailable
from . import report, suites
from .bench_kernels import ROW_SCHEMA, SUMMARY_SCHEMA, BenchContext, run_kernels, summarize
from .bench_ops import Torch
from .bench_step import STEP_SCHEMA, format_steps, run_steps
from .harness import INTEGER, STRING, device, document, list_of, make_backend, record, timer_for, write_json
from .report import ENVIRONMENT_SCHEMA

__all__ = ["add_parser", "run", "run_bench", "format_rows", "format_summary", "plot", "BENCH_SCHEMA"]

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
    if device(backend) != "cuda" and ("torch-tf32" in baselines or "cupy-gemm" in baselines):
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

    on_gpu = device(backend) == "cuda"
    threads_source = "--threads"
    if threads is None and not on_gpu:
        threads, threads_source = report.blas_threads()
    env = report.environment(None if on_gpu else threads)
    if not on_gpu:
        env["threads_source"] = threads_source
    hw = None
    if on_gpu:
        hw, matched = suites.hardware_for(env.get("gpu"))
        env["floor_hardware"] = hw.name + ("" if matched else " (assumed: GPU not in the table)")
    tch = None
    if baselines:
        try:
            tch = Torch(device(backend), threads)
        except ImportError:
            raise ValueError("baseline torch needs PyTorch; install it or pass --baseline none") from None
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
    fig.savefig(path, dpi=120)
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
    try:
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
