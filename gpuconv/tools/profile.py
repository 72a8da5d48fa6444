"""``gpuconv profile``: memory efficiency, bank conflicts, SASS facts and a time estimate of every
kernel the benchmark suite launches, on the CPU (docs/profiling.md).

Each suite entry's ops run on the CPU emulator in its profile mode (``gpuconv.emulator.profile``):
a sample of each launch's blocks (``--blocks``, evenly spaced, first and last included) has every
global and shared access recorded, and the counts are scaled to the whole grid. The kernels are
compiled for the chosen GPU's architecture (NVRTC with CuPy's options, else nvcc) for registers,
spills, occupancy and the SASS of the hot loop, and ``gpuconv.profiler.model`` turns it all into
a predicted time, next to the physical floor of ``gpuconv.tools.suites``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ..backends import launch, select, settings
from ..backends.executors import EmulatorExecutor
from ..backends.kernel_backend import KernelBackend
from ..backends.numpy_backend import NumpyBackend
from ..cuda_limits import check_launch
from . import harness, report, suites
from .bench_ops import BN_EPS, BN_MOMENTUM
from .bench_ops import OPS as BENCH_OPS
from .harness import INTEGER, NUMBER, NUMBER_OR_NULL, STRING, STRING_OR_NULL, document, list_of, record, value
from .suites import ConvCase, NormCase, PoolCase

__all__ = ["add_parser", "run", "profile_suite", "ROW_KEYS", "SAMPLE_BLOCKS", "PROFILE_SCHEMA"]

SAMPLE_BLOCKS = 4
BOOLEAN_OR_NULL = value("boolean", "null")
ROW_KEYS = (
    "layer",
    "op",
    "version",
    "kernel",
    "global_load_efficiency",
    "global_store_efficiency",
    "global_load_sectors_per_request",
    "shared_wavefronts_per_ideal",
    "registers",
    "spills",
    "occupancy",
    "inner_loop_fma_fraction",
    "loads_before_multiply",
    "predicted_us",
    "floor_us",
    "bound",
)
ROW_SCHEMA = record({
    "layer": STRING, "op": STRING, "version": INTEGER, "kernel": STRING, "gpu": STRING, "arch": STRING,
    **{k: NUMBER_OR_NULL for k in ROW_KEYS[4:-2]}, "loads_before_multiply": BOOLEAN_OR_NULL,
    "floor_us": NUMBER, "bound": STRING_OR_NULL})
PROFILE_SCHEMA = document("gpuconv-profile/1", {
    "environment": report.ENVIRONMENT_SCHEMA,
    "settings": record({"suite": STRING, "batch": INTEGER, "gpu": STRING, "arch": STRING, "versions": STRING,
                        "blocks_per_launch": INTEGER, "compiler": STRING, "seconds": NUMBER}),
    "rows": list_of(ROW_SCHEMA)})
CONV_OPS = ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_filter", "conv2d_backward_bias")
POOL_OPS = tuple(f"{k}_pool2d_{p}" for k in suites.POOL_KINDS for p in ("forward", "backward"))
NORM_OPS = tuple(f"{k}_{p}" for k in suites.NORM_KINDS for p in suites.NORM_PASSES)
GROUPS = {"conv": CONV_OPS, "pool": POOL_OPS, "norm": NORM_OPS}
# op -> the op whose kernel versions it runs (a fused form runs its plain op's kernels)
KERNEL_OP = {e.op: e.kernel_op for e in BENCH_OPS}


def sample_blocks(total: int, n: int) -> Optional[List[int]]:
    """``n`` linear block indices evenly spaced over ``total`` (first and last included); None: all."""
    if total <= n:
        return None
    if n == 1:
        return [0]
    return sorted({round(i * (total - 1) / (n - 1)) for i in range(n)})


class _Recorder(EmulatorExecutor):
    """The emulator executor, with every launch profiled on a sample of its blocks."""

    def __init__(self, sample: int) -> None:
        super().__init__()
        self.sample = sample
        self.launches: List[Tuple[Any, Any, int]] = []

    def load(self, path: Path, options, name_expressions):
        from .. import emulator

        return emulator.RawModule(
            path=str(path), options=tuple(options), name_expressions=tuple(name_expressions), profile=True
        )

    def launch(self, fn, grid, block, args, shared_mem=0) -> None:
        from ..emulator import profile

        grid, block, shared_mem = check_launch(grid, block, shared_mem)
        blocks = sample_blocks(grid[0] * grid[1] * grid[2], self.sample)
        self.launches.append((fn, profile(fn, grid, block, args, shared_mem, blocks=blocks), shared_mem))


# ---- what each suite entry launches ---------------------------------------------------------------


def _conv_runs(case: ConvCase, batch: int, rng) -> Dict[str, Callable]:
    g = case.geometry(batch)
    x = rng.standard_normal(g.x_shape).astype(np.float32)
    w = rng.standard_normal(g.w_shape).astype(np.float32)
    b = rng.standard_normal(g.K).astype(np.float32)
    dy = rng.standard_normal(g.y_shape).astype(np.float32)
    relu_y = np.maximum(x, 0) if case.relu_before else None  # the fused variants the model runs
    return {
        "conv2d_forward": lambda be, v: launch.conv.forward(be, x, w, b, g, version=v, relu=case.relu_after),
        "conv2d_backward_data": lambda be, v: launch.conv.backward_data(be, dy, w, g, version=v,
                                                                        relu_y=relu_y),
        "conv2d_backward_filter": lambda be, v: launch.conv.backward_filter(be, dy, x, g, version=v),
        "conv2d_backward_bias": lambda be, v: launch.conv.backward_bias(be, dy, g, version=v),
    }


def _pool_runs(case: PoolCase, batch: int, rng) -> Dict[str, Callable]:
    g = case.geometry(batch)
    x = rng.standard_normal(g.x_shape).astype(np.float32)
    dy = rng.standard_normal(g.y_shape).astype(np.float32)
    ref = NumpyBackend()
    runs: Dict[str, Callable] = {}
    for kind in case.kinds:
        fwd, bwd = f"{kind}_pool2d_forward", f"{kind}_pool2d_backward"
        if kind == "max":
            _, idx = ref.max_pool2d(x, g)
            runs[fwd] = lambda be, v: launch.pool.max_forward(be, x, g)
            runs[bwd] = lambda be, v, idx=idx: launch.pool.max_backward(be, dy, idx, g)
        elif kind == "avg":
            runs[fwd] = lambda be, v: launch.pool.avg_forward(be, x, g, True, None)
            runs[bwd] = lambda be, v: launch.pool.avg_backward(be, dy, g, True, None, np.float32)
        else:
            y = ref.l2_pool2d(x, g)
            runs[fwd] = lambda be, v: launch.pool.l2_forward(be, x, g)
            runs[bwd] = lambda be, v, y=y: launch.pool.l2_backward(be, dy, x, y, g)
    return runs


def _default_version(case, op: str, batch: int) -> int:
    """The version the cuda backend runs for ``op`` on ``case`` without timing: the selector's
    static rule for a conv op (``select.static_choice``), the default for the others."""
    if isinstance(case, ConvCase):
        return select.static_choice(op, case.geometry(batch), "float32", "cuda", settings.allow_tf32).version
    return launch.DEFAULT_VERSIONS[op]


def _norm_runs(case: NormCase, batch: int, rng) -> Dict[str, Callable]:
    """Training mode, float32, with weight, bias and running statistics; the backward's saved
    statistics and mask source from the NumPy forward."""
    g = case.geometry(batch)
    x = rng.standard_normal((g.N, g.C, g.S)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    w, b = (rng.standard_normal(g.C).astype(np.float32) for _ in range(2))
    ref = NumpyBackend()
    runs: Dict[str, Callable] = {}
    for kind in case.kinds:
        relu = kind == "batch_norm_relu"
        y, mean, invstd = ref.batch_norm(x, None, None, w, b, g, True, BN_MOMENTUM, BN_EPS, relu)

        def fwd(be, v, relu=relu):
            rm, rv = np.zeros(g.C, np.float32), np.ones(g.C, np.float32)
            return launch.batchnorm.forward(be, x, rm, rv, w, b, g, True, BN_MOMENTUM, BN_EPS, relu)

        runs[f"{kind}_forward"] = fwd
        runs[f"{kind}_backward"] = lambda be, v, y=(y if relu else None), m=mean, s=invstd: (
            launch.batchnorm.backward(be, dy, x, y, w, m, s, g, True))
    return runs


def _case_ops(case) -> Tuple[str, ...]:
    """The ops ``_runs`` gives ``case``, without building their inputs."""
    if isinstance(case, ConvCase):
        return CONV_OPS
    if isinstance(case, PoolCase):
        return tuple(f"{k}_pool2d_{p}" for k in case.kinds for p in ("forward", "backward"))
    return tuple(f"{k}_{p}" for k in case.kinds for p in suites.NORM_PASSES)


def _runs(case, batch: int, rng) -> Dict[str, Callable]:
    if isinstance(case, ConvCase):
        return _conv_runs(case, batch, rng)
    return _pool_runs(case, batch, rng) if isinstance(case, PoolCase) else _norm_runs(case, batch, rng)


def _floor(case, op: str, batch: int, hw: suites.Hardware, version: int) -> float:
    g = case.geometry(batch)
    math_mode = launch.precision(KERNEL_OP.get(op, op), version)
    if isinstance(case, NormCase):
        cost = suites.norm_cost(g, op.rsplit("_", 1)[0], op.rsplit("_", 1)[1])
    elif isinstance(case, ConvCase):
        if op == "conv2d_backward_bias":
            y = g.N * g.K * g.P * g.Q
            cost = suites.Cost(y, (y + g.K) * 4)
        else:
            cost = suites.conv_cost(g, op[len("conv2d_") :])
    else:
        cost = suites.pool_cost(g, op.split("_")[0], op.rsplit("_", 1)[1])
    return suites.floor_seconds(cost, hw, math_mode)


# ---- one row per launch -----------------------------------------------------------------------


def _ratio(a: float, b: float) -> Optional[float]:
    return round(a / b, 4) if b else None


def _row(fn, rep, shared_mem: int, hw: suites.Hardware, facts: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    from ..profiler.model import Work, instruction_estimate, predict
    from ..profiler.occupancy import occupancy

    s = rep.summary
    scale = rep.blocks_total / rep.blocks_run
    threads = rep.block[0] * rep.block[1] * rep.block[2]
    row: Dict[str, Any] = {
        "kernel": fn.name,
        "grid": list(rep.grid),
        "block": list(rep.block),
        "blocks_sampled": rep.blocks_run,
        "blocks_total": rep.blocks_total,
        "global_load_efficiency": _ratio(s["global_load_bytes_requested"], 32 * s["global_load_sectors"]),
        "global_store_efficiency": _ratio(s["global_store_bytes_requested"], 32 * s["global_store_sectors"]),
        "global_load_sectors_per_request": _ratio(s["global_load_sectors"], s["global_load_requests"]),
        "shared_wavefronts_per_ideal": _ratio(
            s["shared_load_wavefronts"] + s["shared_store_wavefronts"],
            s["shared_load_ideal_wavefronts"] + s["shared_store_ideal_wavefronts"],
        ),
        "registers": None,
        "spills": None,
        "occupancy": None,
        "inner_loop_fma_fraction": None,
        "loads_before_multiply": None,
        "predicted_us": None,
        "bound": None,
        "summary_sampled": s,
        "extrapolated": rep.extrapolated,
    }
    if facts is None:
        return row
    occ = occupancy(hw.arch, threads, facts["registers"], facts["shared"] + shared_mem)
    row.update(
        registers=facts["registers"],
        spills=facts["spill_stores"] + facts["spill_loads"],
        occupancy=round(occ.fraction, 4),
        occupancy_limiter=occ.limiter,
        inner_loop_fma_fraction=facts["loop"]["fma_fraction"] if facts["loop"] else None,
        loads_before_multiply=facts["loads_before_multiply"],
    )
    requests = scale * sum(s[f"{sp}_{k}_requests"] for sp in ("global", "shared") for k in ("load", "store"))
    est = instruction_estimate(
        requests, rep.blocks_total * math.ceil(threads / 32), facts["mix"], facts["loop"]
    )
    touched = sum(min(math.ceil(b["bytes"] / 32), b["touched_sectors"] * scale) * 32 for b in rep.buffers)
    work = Work(
        blocks=rep.blocks_total,
        threads_per_block=threads,
        dram_bytes_touched=touched,
        l2_sectors=scale * (rep.l2_load_sectors + s["global_store_sectors"]),
        shared_wavefronts=scale * (s["shared_load_wavefronts"] + s["shared_store_wavefronts"]),
        instructions=est["instructions"],
        fma_ops={k: v for k, v in est.items() if k != "instructions"},
    )
    pred = predict(work, hw, occ)
    row.update(
        predicted_us=round(pred.seconds * 1e6, 3),
        bound=pred.bound,
        terms_us={k: round(v * 1e6, 3) for k, v in pred.terms.items()},
    )
    return row


def _static(file: str, arch: str, compiler: str, cache: Dict) -> Optional[Dict[str, Dict[str, Any]]]:
    if compiler == "none":
        return None
    if (file, arch) not in cache:
        from ..profiler.static import kernel_facts

        cache[(file, arch)] = kernel_facts(file, arch, compiler)
    return cache[(file, arch)]


def profile_suite(
    suite: str = "small-cnn",
    layers: Optional[List[str]] = None,
    ops: Optional[List[str]] = None,
    versions: str = "default",
    gpu: str = "h100",
    batch: int = suites.DEFAULT_BATCH,
    sample: int = SAMPLE_BLOCKS,
    compiler: str = "auto",
    sites: int = 0,
    progress: Optional[Callable[[str], None]] = None,
) -> List[Dict[str, Any]]:
    """One row per (layer, op, version, kernel) launched by the suite's entries (see the module docstring)."""
    cases = suites.get_suite(suite)
    hw = hardware(gpu)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    if isinstance(sample, bool) or not isinstance(sample, int) or sample < 1:
        raise ValueError(f"blocks (the sample per launch) must be an int >= 1, got {sample!r}")
    if versions not in ("default", "all"):
        raise ValueError(f"versions must be 'default' or 'all', got {versions!r}")
    if compiler not in ("auto", "nvrtc", "nvcc", "none"):
        raise ValueError(f"compiler must be 'auto', 'nvrtc', 'nvcc' or 'none', got {compiler!r}")
    ids = [c.id for c in cases]
    for layer in layers or []:
        if layer not in ids:
            raise ValueError(f"layers: unknown layer {layer!r}; the suite has {', '.join(ids)}")
    wanted = expand_ops(ops)
    idle = [c.id for c in cases if layers and c.id in layers and not set(_case_ops(c)) & set(wanted)]
    if idle:  # an empty table would look like a profile
        raise ValueError(f"layers {','.join(idle)}: none of the ops {','.join(ops or [])} runs on them")
    if compiler != "none":
        from ..profiler.resources import available_compiler

        if available_compiler(compiler) is None:
            raise FileNotFoundError(
                "no CUDA compiler for the static facts: pip install nvidia-cuda-nvrtc "
                "nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm (the 'profile' extra), or "
                "pass --compiler none"
            )
    rng = np.random.default_rng(0)
    rows: List[Dict[str, Any]] = []
    static_cache: Dict = {}
    for case in cases:
        if layers and case.id not in layers:
            continue
        for op, fn in _runs(case, batch, rng).items():
            if op not in wanted:
                continue
            kop = KERNEL_OP.get(op, op)
            vs = launch.VERSIONS[kop] if versions == "all" else (_default_version(case, kop, batch),)
            for v in vs:
                if progress:
                    progress(f"{case.id} {op} v{v}")
                rec = _Recorder(sample)
                be = KernelBackend(rec)
                with be.use_versions({kop: v}):
                    fn(be, v)
                floor = _floor(case, op, batch, hw, v)
                for kfn, rep, smem in rec.launches:
                    file = Path(kfn.module.path).name
                    facts = _static(file, hw.arch, compiler, static_cache)
                    row = {
                        "layer": case.id,
                        "op": op,
                        "version": v,
                        **_row(kfn, rep, smem, hw, facts[kfn.name] if facts else None),
                        "floor_us": round(floor * 1e6, 3),
                        "gpu": hw.name,
                        "arch": hw.arch,
                    }
                    if sites:
                        row["sites"] = [dict(x, file=os.path.relpath(x["file"])) for x in rep.sites[:sites]]
                    rows.append(row)
    return rows


def hardware(gpu: str) -> suites.Hardware:
    key = str(gpu).upper().replace("-", "").replace(" ", "")
    if key not in suites.HARDWARE:
        raise ValueError(f"gpu must be one of {', '.join(k.lower() for k in suites.HARDWARE)}, got {gpu!r}")
    return suites.HARDWARE[key]


def expand_ops(ops: Optional[List[str]]) -> Tuple[str, ...]:
    """--ops: "conv", "pool", "norm" or op names -> op names."""
    every = CONV_OPS + POOL_OPS + NORM_OPS
    if not ops:
        return every
    out: List[str] = []
    for o in ops:
        group = GROUPS.get(o)
        if group is None and o not in every:
            raise ValueError(f"ops: unknown op {o!r}; expected conv, pool, norm or one of {', '.join(every)}")
        out += group or [o]
    return tuple(dict.fromkeys(out))


# ---- output -----------------------------------------------------------------------------------


def _fmt(v: Any, spec: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return format(v, spec)


def format_rows(rows: List[Dict[str, Any]]) -> str:
    head = (
        f"{'layer':<5} {'op':<22} {'v':>2} {'kernel':<38} {'ld eff':>6} {'st eff':>6} {'sec/req':>7} "
        f"{'smem/id':>7} {'regs':>4} {'spill':>5} {'occ':>5} {'fma':>5} {'ld<mul':>6} {'pred us':>8} "
        f"{'floor us':>8} {'bound':<7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['layer']:<5} {r['op']:<22} {r['version']:>2} {r['kernel']:<38} "
            f"{_fmt(r['global_load_efficiency'], '.2f'):>6} {_fmt(r['global_store_efficiency'], '.2f'):>6} "
            f"{_fmt(r['global_load_sectors_per_request'], '.1f'):>7} "
            f"{_fmt(r['shared_wavefronts_per_ideal'], '.2f'):>7} {_fmt(r['registers']):>4} "
            f"{_fmt(r['spills']):>5} {_fmt(r['occupancy'], '.2f'):>5} "
            f"{_fmt(r['inner_loop_fma_fraction'], '.2f'):>5} {_fmt(r['loads_before_multiply']):>6} "
            f"{_fmt(r['predicted_us'], '.1f'):>8} {_fmt(r['floor_us'], '.1f'):>8} {_fmt(r['bound']):<7}"
        )
        for s in r.get("sites", []):
            if s["space"] == "global":
                what = f"{s['sectors']} sectors (ideal {s['ideal_sectors']})"
            else:
                what = f"{s['wavefronts']} wavefronts (ideal {s['ideal_wavefronts']})"
            lines.append(
                f"      {s['file']}:{s['line']} {s['space']} {s['kind']}: {s['requests']} requests, {what}"
            )
    return "\n".join(lines)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``profile`` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "profile",
        help="memory, bank-conflict, SASS and time-model profile, no GPU",
        description=(
            "Profile every kernel the benchmark suite launches, without a GPU: each launch runs on the "
            "CPU emulator for a sample of its blocks, with every global and shared memory access "
            "recorded (load and store efficiency, sectors per request, bank conflicts); the kernels are "
            "compiled for the chosen GPU for registers, spills, occupancy and the instructions of the "
            "hot loop; a model turns it all into a predicted time, printed beside the physical floor."
        ),
    )
    p.add_argument("--suite", default="small-cnn", choices=sorted(suites.SUITES),
                   help="benchmark suite (default %(default)s)")
    p.add_argument("--layers", help="comma list of the suite's layer ids (default: all)")
    p.add_argument("--ops", help="comma list of conv, pool, norm or op names (default: conv,pool,norm)")
    p.add_argument("--versions", default="default", choices=("default", "all"),
                   help="'default': the version of each op that gpuconv uses; 'all': every kernel "
                        "version (default: 'default')")
    p.add_argument("--gpu", default="h100", help="h100, h200, a100 or rtx4090 (default %(default)s)")
    p.add_argument("--batch", type=int, default=suites.DEFAULT_BATCH, help="batch size (default %(default)s)")
    p.add_argument("--blocks", type=int, default=SAMPLE_BLOCKS,
                   help="blocks profiled per launch (default %(default)s)")
    p.add_argument(
        "--compiler",
        default="auto",
        choices=("auto", "nvrtc", "nvcc", "none"),
        help="compiler for registers and SASS; auto: NVRTC, else nvcc; none: skip them and the time "
             "estimate (default %(default)s)",
    )
    p.add_argument("--json", metavar="FILE",
                   help=f"write the settings, every row and the environment as JSON, schema "
                        f"{PROFILE_SCHEMA['$id']} (default: not written)")
    p.add_argument(
        "--sites", action="store_true",
        help="list the 3 most wasteful source lines of each kernel (default: off)"
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    def split(s: Optional[str]) -> Optional[List[str]]:
        return [t.strip() for t in s.split(",") if t.strip()] if s else None

    harness.check_json_path(args.json)
    t0 = time.perf_counter()
    hw = hardware(args.gpu)
    rows = profile_suite(
        args.suite,
        split(args.layers),
        split(args.ops),
        args.versions,
        args.gpu,
        args.batch,
        args.blocks,
        args.compiler,
        3 if args.sites else 0,
        progress=lambda m: print(f"  profiling {m}", file=sys.stderr, flush=True),
    )
    seconds = time.perf_counter() - t0
    print(
        f"gpuconv profile: suite {args.suite}, batch {args.batch}, float32, model of {hw.name} ({hw.arch}); "
        f"up to {args.blocks} blocks per launch profiled on the CPU emulator (evenly spaced, first and last "
        f"included), counts scaled to the grid; {seconds:.0f} s"
    )
    print(format_rows(rows))
    if args.json:
        doc = {
            "schema": PROFILE_SCHEMA["$id"],
            "environment": report.environment(),
            "settings": {
                "suite": args.suite,
                "batch": args.batch,
                "gpu": hw.name,
                "arch": hw.arch,
                "versions": args.versions,
                "blocks_per_launch": args.blocks,
                "compiler": args.compiler,
                "seconds": round(seconds, 1),
            },
            "rows": rows,
        }
        harness.write_json(args.json, doc, PROFILE_SCHEMA)
    return 0


# ---- predicted against measured (scripts/gpu_check.sh) ---------------------------------------------


def compare_with_bench(
    profile_rows: List[Dict[str, Any]], bench_rows: List[Dict[str, Any]]
) -> List[Dict[str, Any]]:
    """Per (layer, op, version) timed by ``gpuconv bench``: the predicted µs (summed over the op's
    kernels), the measured median µs and predicted / measured."""
    pred: Dict[Tuple[str, str, str], float] = {}
    for r in profile_rows:
        if r.get("predicted_us") is not None:
            key = (r["layer"], r["op"], f"v{r['version']}")
            pred[key] = pred.get(key, 0.0) + r["predicted_us"]
    out = []
    for b in bench_rows:
        key = (b.get("layer"), b.get("op"), b.get("version"))
        if b.get("kind") == "gpuconv" and b.get("us") and key in pred:
            out.append(
                {
                    "layer": key[0],
                    "op": key[1],
                    "version": key[2],
                    "predicted_us": round(pred[key], 2),
                    "measured_us": b["us"],
                    "ratio": round(pred[key] / b["us"], 3),
                }
            )
    return out


def format_comparison(rows: List[Dict[str, Any]]) -> str:
    """A markdown table of ``compare_with_bench`` rows and the median and worst error factor."""
    if not rows:
        return "(no entry was both predicted and measured)"
    lines = [
        "| layer | op | version | predicted µs | measured µs | predicted / measured |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['layer']} | {r['op']} | {r['version']} | {r['predicted_us']:.1f} | {r['measured_us']:.1f} | "
        f"{r['ratio']:.2f} |"
        for r in rows
    ]
    factors = sorted(max(r["ratio"], 1 / r["ratio"]) for r in rows)
    lines += [
        "",
        f"Error factor (max of predicted/measured and its inverse): median {factors[len(factors) // 2]:.2f}, "
        f"worst {factors[-1]:.2f} over {len(rows)} entries.",
    ]
    return "\n".join(lines)
