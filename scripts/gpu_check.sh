#!/usr/bin/env bash
# Cross-check and benchmark gpuconv on a GPU machine (no network needed).
#
#   scripts/gpu_check.sh [OUTDIR]
#
# Expects CuPy, PyTorch, NumPy and pytest to be installed for $PYTHON (default python3). Installs
# gpuconv without dependencies (editable; falls back to PYTHONPATH), then runs, each stage under
# its own time limit (a stage that runs out is reported as TIMEOUT and the script goes on):
#   info     nvidia-smi and `gpuconv info`
#   pytest   pytest -m gpu
#   check    gpuconv check, cuda vs numpy, every model in float32 and lenet in float64
#   bench    gpuconv bench conv+pool+norm on cuda, every kernel version, baselines torch, torch-tf32, cupy-gemm
#   step     gpuconv bench --ops step (eager, CUDA graph through gpuconv.train_step, torch FP32/TF32)
#   nccl     scripts/nccl_check.py: gpuconv.distributed's NCCL communicator, one rank, against host values
# and, on the CPU in the background meanwhile, gpuconv profile (the time model's predictions, put
# beside the measured times in the summary; docs/profiling.md),
# and writes at most 8 files into OUTDIR (default benchmarks/results/<gpu>-<date>):
#   log.txt info.txt pytest.txt check.json bench.json step.json summary.md [bench.png]
# The summary is printed last. Exit status: 0 when every stage passed, 1 otherwise.
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"

# Stage limits in seconds: with the 5 s grace of each `timeout --kill-after`, about 9 minutes in
# all; upper bounds chosen for an H100, not measured stage times (not yet run on a GPU).
T_INSTALL=40 T_INFO=25 T_PYTEST=100 T_CHECK=75 T_BENCH=150 T_STEP=50 T_NCCL=30

GPU_NAME="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1 | tr -c 'A-Za-z0-9._\n-' '-' | sed 's/-*$//')"
OUT="${1:-benchmarks/results/${GPU_NAME:-no-gpu}-$(date -u +%Y%m%d-%H%M)}"
mkdir -p "$OUT" || exit 1
LOG="$OUT/log.txt"
: > "$LOG"
STATUS=()      # "stage|status|seconds"
FAILED=0

say() { echo "$*" | tee -a "$LOG"; }

# run_stage NAME LIMIT OUTFILE CMD...: run CMD under `timeout`, output to OUTFILE and log.txt
run_stage() {
    local name="$1" limit="$2" outfile="$3"; shift 3
    local t0 rc status
    t0=$(date +%s)
    say ""
    say "=== $name (limit ${limit}s): $*"
    timeout --kill-after=5 "$limit" "$@" >> "$outfile" 2>&1
    rc=$?
    if [ "$outfile" != "$LOG" ]; then cat "$outfile" >> "$LOG"; fi
    case $rc in
        0) status="ok" ;;
        124|137) status="TIMEOUT"; FAILED=1 ;;
        *) status="FAILED (exit $rc)"; FAILED=1 ;;
    esac
    STATUS+=("$name|$status|$(( $(date +%s) - t0 ))")
    say "=== $name: $status after $(( $(date +%s) - t0 ))s"
}

# -- install ---------------------------------------------------------------------------------------
if timeout "$T_INSTALL" "$PY" -m pip install -q --no-deps --no-build-isolation -e . >> "$LOG" 2>&1 \
        && "$PY" -c "import gpuconv" >> "$LOG" 2>&1; then
    STATUS+=("install|ok (pip -e, no deps)|-")
else
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    STATUS+=("install|pip failed: using PYTHONPATH=$ROOT|-")
fi
say "python: $("$PY" -c 'import sys; print(sys.version.split()[0], sys.executable)')"

GC=("$PY" -c 'import sys; from gpuconv.tools.cli import main; sys.exit(main(sys.argv[1:]))')

# One JSON document per run, merged by the summary step; they live in a temporary directory so that
# OUTDIR keeps to its 8 files.
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# -- profile (CPU only, in the background while the GPU stages run) ------------------------------------
case "$GPU_NAME" in
    *H200*) PROFILE_GPU=h200 ;; *A100*) PROFILE_GPU=a100 ;; *4090*) PROFILE_GPU=rtx4090 ;; *) PROFILE_GPU=h100 ;;
esac
timeout --kill-after=5 400 "${GC[@]}" profile --suite small-cnn --gpu "$PROFILE_GPU" --json "$TMP/profile.json" \
    > "$TMP/profile.txt" 2>&1 &
PROFILE_PID=$!

# -- info --------------------------------------------------------------------------------------------
INFO="$OUT/info.txt"
: > "$INFO"
run_stage info "$T_INFO" "$INFO" bash -c \
    'nvidia-smi; echo; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit --format=csv; echo; "$@" info' \
    _ "${GC[@]}"

# -- pytest -m gpu -----------------------------------------------------------------------------------
PYT="$OUT/pytest.txt"
: > "$PYT"
run_stage pytest "$T_PYTEST" "$PYT" "$PY" -m pytest -m gpu -q -p no:cacheprovider

# -- check ------------------------------------------------------------------------------------------
check_all() {
    local rc=0
    for model in lenet cifar-small resnet20; do
        "$PY" -m gpuconv check --model "$model" --backends numpy,cuda --dtype float32 \
            --json "$TMP/check-$model-float32.json" || rc=1
    done
    "$PY" -m gpuconv check --model lenet --backends numpy,cuda --dtype float64 \
        --json "$TMP/check-lenet-float64.json" || rc=1
    return $rc
}
export -f check_all
export PY TMP
run_stage check "$T_CHECK" "$LOG" bash -c check_all

# -- bench ------------------------------------------------------------------------------------------
# The chart needs matplotlib, which a GPU machine may lack: without it the stage would be refused
# before measuring anything, so the chart is asked for only where matplotlib imports.
PLOT=()
if "$PY" -c "import matplotlib" >/dev/null 2>&1; then
    PLOT=(--plot "$OUT/bench.png")
else
    say "matplotlib is not installed: no bench.png"
fi
run_stage bench "$T_BENCH" "$LOG" "$PY" -m gpuconv bench --suite small-cnn --ops conv,pool,norm --backend cuda \
    --versions all --baseline torch,torch-tf32,cupy-gemm --json "$OUT/bench.json" ${PLOT[@]+"${PLOT[@]}"}
run_stage step "$T_STEP" "$LOG" "$PY" -m gpuconv bench --ops step --backend cuda \
    --baseline torch,torch-tf32 --repeat 20 --json "$OUT/step.json"

# -- nccl -------------------------------------------------------------------------------------------
run_stage nccl "$T_NCCL" "$LOG" "$PY" scripts/nccl_check.py

# -- summary -----------------------------------------------------------------------------------------
# The model's predictions are informational: a failed profile (no NVRTC/cuobjdump/nvdisasm here, say)
# is reported in the stage table without failing the check.
if wait "$PROFILE_PID"; then STATUS+=("profile (CPU, background)|ok|-"); else
    STATUS+=("profile (CPU, background)|FAILED, not counted (see log.txt)|-"); fi
cat "$TMP/profile.txt" >> "$LOG"
printf '%s\n' "${STATUS[@]}" > "$TMP/status.txt"
"$PY" - "$OUT" "$TMP" >> "$LOG" 2>&1 <<'EOF'
import glob, json, os, sys
from gpuconv.tools import bench, check, report
from gpuconv.tools.bench_step import format_steps
from gpuconv.tools.harness import write_json

out, tmp = sys.argv[1], sys.argv[2]
checks = []
for path in sorted(glob.glob(os.path.join(tmp, "check-*.json"))):
    with open(path) as f:
        checks.append(json.load(f))
if checks:
    write_json(os.path.join(out, "check.json"), {"schema": "gpuconv-check-set/1", "runs": checks},
               check.CHECK_SET_SCHEMA)
lines = ["# gpuconv GPU check", ""]
env = None
for name in ("bench.json", "step.json"):
    p = os.path.join(out, name)
    if os.path.exists(p):
        with open(p) as f:
            env = json.load(f)["environment"]
        break
if env is None and checks:
    env = checks[0]["environment"]
if env:
    keys = ("gpu", "sm_count", "sm_clock_max_mhz", "sm_clock_now_mhz", "driver_version", "cuda_driver",
            "cuda_runtime", "cupy", "torch", "cudnn", "numpy", "cpu", "threads", "git_commit", "date",
            "floor_hardware")
    lines += [f"- {k}: {env.get(k)}" for k in keys if k in env] + [""]
lines += ["## Stages", "", "| stage | status | seconds |", "|---|---|---|"]
with open(os.path.join(tmp, "status.txt")) as f:
    lines += ["| " + " | ".join(s.split("|", 2)) + " |" for s in f.read().splitlines() if s]
lines += ["", "## gpuconv check (cuda vs numpy)", "",
          "| model | dtype | batch | comparisons | failed | worst rel err | tolerance | error |",
          "|---|---|---|---|---|---|---|---|"]
for c in checks:
    s = c["settings"]
    rels = [e["rel_err"] for e in c["entries"] if e["rel_err"] is not None]
    tol = c["entries"][0]["tolerance"] if c["entries"] else None
    lines.append(f"| {s['model']} | {s['dtype']} | {s['batch']} | {len(c['entries'])} | {c['failures']} | "
                 f"{report.fmt(max(rels) if rels else None)} | {report.fmt(tol)} | {c['error'] or ''} |")
for name, title in (("bench.json", "Kernels (µs: median of CUDA-event runs; ×floor: multiple of the physical floor)"),
                    ("step.json", "Training steps")):
    p = os.path.join(out, name)
    if not os.path.exists(p):
        lines += ["", f"## {title}", "", f"({name} missing: see the stage table)"]
        continue
    with open(p) as f:
        doc = json.load(f)
    lines += ["", f"## {title}", ""]
    if doc["rows"]:
        lines += [bench.format_rows(doc, markdown=True), ""]
        lines += ["- " + s for s in bench.format_summary(doc).splitlines()]
    if doc["steps"]:
        lines += [format_steps(doc["steps"], markdown=True)]
prof = os.path.join(tmp, "profile.json")
lines += ["", "## Time model: predicted (gpuconv profile) against measured (bench)", ""]
if os.path.exists(prof) and os.path.exists(os.path.join(out, "bench.json")):
    from gpuconv.tools.profile import compare_with_bench, format_comparison
    with open(prof) as f, open(os.path.join(out, "bench.json")) as g:
        lines += [format_comparison(compare_with_bench(json.load(f)["rows"], json.load(g)["rows"]))]
else:
    lines += ["(profile.json or bench.json missing: see the stage table)"]
with open(os.path.join(out, "summary.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
EOF
[ -s "$OUT/summary.md" ] || { say "summary could not be written (see log.txt)"; FAILED=1; }

echo
cat "$OUT/summary.md" 2>/dev/null
echo
echo "files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
if [ "$FAILED" -ne 0 ]; then
    echo "gpu_check: some stage FAILED or timed out (see the stage table above and $LOG)"
    exit 1
fi
echo "gpu_check: all stages passed"
