"""``gpuconv bench``: CLI end to end on numpy and the emulator, JSON schema, the correctness gate,
timer behaviour, and the torch model used as the training-step baseline."""
from __future__ import annotations

import numpy as np
import pytest
from documents import check_document, load_valid

from gpuconv import tolerances
from gpuconv.tools import bench, bench_step
from gpuconv.tools.cli import main as cli_main
from gpuconv.tools.harness import CudaEventTimer, Timing, WallTimer


def load(path):
    return load_valid(path, bench.BENCH_SCHEMA)


# ---- timers -----------------------------------------------------------------------------------------
def test_wall_timer_interleaves_candidates_and_rotates_input_sets():
    calls = []
    fns = [lambda i: calls.append(("a", i)), lambda i: calls.append(("b", i))]
    timings = WallTimer().measure(fns, n_sets=2, repeat=4, warmup=1)
    assert calls[:2] == [("a", 0), ("b", 0)]                       # warm-up
    assert calls[2:] == [("a", 0), ("b", 0), ("b", 1), ("a", 1), ("a", 0), ("b", 0), ("b", 1), ("a", 1)]
    assert [len(t.times_us) for t in timings] == [4, 4]


def test_timing_statistics():
    t = Timing(times_us=[5.0, 1.0, 3.0, 2.0, 4.0], host_us=[1.0, 3.0, 2.0])
    assert t.median == 3.0 and t.host_median == 2.0
    assert t.percentile(10) == pytest.approx(1.4) and t.percentile(90) == pytest.approx(4.6)


# ---- CPU bench end to end -----------------------------------------------------------------------------
def test_bench_numpy_without_baseline_writes_valid_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    rc = cli_main(["bench", "--backend", "numpy", "--baseline", "none", "--batch", "2", "--repeat", "2",
                   "--layers", "L1,P1,P3", "--json", str(path)])
    assert rc == 0, capsys.readouterr().out
    doc = load(path)
    rows = doc["rows"]
    # numpy: forward and forward+backward per layer; P1 has max, avg, L2; P3 max only
    assert [(r["layer"], r["op"]) for r in rows] == [
        ("L1", "conv2d_forward"), ("L1", "conv2d_forward_backward"),
        ("P1", "max_pool2d_forward"), ("P1", "max_pool2d_forward_backward"),
        ("P1", "avg_pool2d_forward"), ("P1", "avg_pool2d_forward_backward"),
        ("P1", "l2_pool2d_forward"), ("P1", "l2_pool2d_forward_backward"),
        ("P3", "max_pool2d_forward"), ("P3", "max_pool2d_forward_backward")]
    assert all(r["status"] == "ok" and r["rel_err"] <= 1e-5 and r["us"] > 0 for r in rows)
    assert all(r["floor_us"] is None for r in rows)            # no GPU floors for CPU times
    l1 = rows[0]
    # 2 * N * K * C * R * S * P * Q at batch 2: 2*2*6*1*25*28*28 FLOPs, bytes (x + w + b + y) * 4
    assert l1["gflops"] * l1["us"] * 1e3 == pytest.approx(2 * 2 * 6 * 1 * 25 * 28 * 28)
    assert l1["gbs"] * l1["us"] * 1e3 == pytest.approx((2 * 784 + 150 + 6 + 2 * 6 * 784) * 4)
    env = doc["environment"]
    assert env["threads"] >= 1 and env["cpu"] and "git_commit" in env and env["date"]


def test_bench_numpy_against_torch_reports_ratios_and_summary(tmp_path, capsys):
    pytest.importorskip("torch")
    path = tmp_path / "bench.json"
    rc = cli_main(["bench", "--backend", "numpy", "--baseline", "torch", "--ops", "conv,pool", "--batch", "2",
                   "--repeat", "1", "--layers", "L2,P4", "--json", str(path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    doc = load(path)
    ours = [r for r in doc["rows"] if r["kind"] == "gpuconv"]
    theirs = {(r["layer"], r["op"]): r for r in doc["rows"] if r["kind"] == "baseline"}
    assert len(ours) == 4 and len(theirs) == 4
    for r in ours:
        t = theirs[(r["layer"], r["op"])]
        assert t["status"] == "ok" and t["rel_err"] <= 1e-5      # torch computes the same thing
        assert r["baseline_us"]["torch"] == t["us"]
        assert r["ratio"]["torch"] == pytest.approx(r["us"] / t["us"])
    target = [s for s in doc["summary"] if s["what"] == "conv2d forward_backward"]
    assert len(target) == 1 and "target_met" in target[0]
    assert target[0]["median_ratio"] == pytest.approx(
        next(r["ratio"]["torch"] for r in ours if r["op"] == "conv2d_forward_backward"))
    assert doc["environment"]["torch_threads"] == doc["environment"]["threads"]
    assert "median ratio" in out


BN_OPS = ("batch_norm_forward", "batch_norm_backward", "batch_norm_relu_forward", "batch_norm_relu_backward")


def test_bench_numpy_times_batch_norm_against_torch(tmp_path, capsys):
    """The suite's batch-norm layers: training forward and backward, plain and ReLU-fused, each
    checked against the float64 reference and timed beside PyTorch's batch_norm (+relu) and its
    autograd backward."""
    pytest.importorskip("torch")
    from gpuconv.tools import suites
    path = tmp_path / "bench.json"
    rc = cli_main(["bench", "--backend", "numpy", "--baseline", "torch", "--ops", "norm", "--batch", "2",
                   "--repeat", "1", "--layers", "B2", "--json", str(path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    doc = load(path)
    assert [(r["layer"], r["op"], r["version"]) for r in doc["rows"]] == [
        ("B2", op, v) for op in BN_OPS for v in ("default", "torch")]
    assert all(r["status"] == "ok" and r["rel_err"] <= r["tolerance"] for r in doc["rows"]), doc["rows"]
    g = suites.SUITES["small-cnn"][-1].geometry(2)
    for r in doc["rows"]:
        kind, pass_name = r["op"].rsplit("_", 1)
        cost = suites.norm_cost(g, kind, pass_name)
        assert r["gbs"] * r["us"] * 1e3 == pytest.approx(cost.bytes)
    assert {(s["what"], s["baseline"]) for s in doc["summary"]} == {
        (f"{k} {p}", "torch") for k in suites.NORM_KINDS for p in suites.NORM_PASSES}
    assert "batch_norm_relu_backward" in out


def test_bench_fused_relu_backward_checks_the_mask(monkeypatch, tmp_path, capsys):
    """A fused backward that ignores its mask source (y) fails its row; the plain rows pass."""
    from gpuconv.backends.numpy_backend import NumpyBackend
    original = NumpyBackend.batch_norm_backward

    def unmasked(self, dy, x, y, *args):   # float32 only: the float64 reference stays right
        return original(self, dy, x, None if dy.dtype == np.float32 else y, *args)

    monkeypatch.setattr(NumpyBackend, "batch_norm_backward", unmasked)
    path = tmp_path / "bench.json"
    rc = cli_main(["bench", "--backend", "numpy", "--baseline", "none", "--batch", "1", "--repeat", "1",
                   "--layers", "B2", "--ops", "norm", "--json", str(path)])
    assert rc == 1
    status = {r["op"]: r["status"] for r in load(path)["rows"]}
    assert status == {**{op: "ok" for op in BN_OPS}, "batch_norm_relu_backward": "failed"}
    capsys.readouterr()


def test_bench_emulator_runs_every_batch_norm_version(tmp_path, capsys):
    pytest.importorskip("gpuconv.backends.kernel_backend")
    from gpuconv.backends.executors import EmulatorExecutor
    from gpuconv.backends.kernel_backend import KernelBackend
    path = tmp_path / "bench.json"
    rc = cli_main(["bench", "--backend", "emulator", "--baseline", "none", "--batch", "1", "--repeat", "1",
                   "--versions", "all", "--layers", "B2", "--ops", "norm", "--json", str(path)])
    assert rc == 0, capsys.readouterr().out
    rows = load(path)["rows"]
    known = KernelBackend.known_versions()
    defaults = KernelBackend(EmulatorExecutor()).default_versions()
    for op in BN_OPS:
        kernel_op = "batch_norm_" + op.rsplit("_", 1)[1]     # the fused forms run the plain op's kernels
        mine = [r for r in rows if r["op"] == op]
        assert [r["version"] for r in mine] == [f"v{v}" for v in known[kernel_op]]
        assert [r["version"] for r in mine if r["default"]] == [f"v{defaults[kernel_op]}"]
    assert all(r["status"] == "ok" and r["rel_err"] <= r["tolerance"] for r in rows), rows


def test_bench_times_batch_norm_by_default_and_gpu_check_asks_for_it():
    from pathlib import Path

    from gpuconv.tools.cli import build_parser
    assert build_parser().parse_args(["bench"]).ops == "conv,pool,norm"
    script = (Path(__file__).parent.parent / "scripts" / "gpu_check.sh").read_text()
    bench_stage = next(line for line in script.splitlines() if line.startswith("run_stage bench "))
    assert "--ops conv,pool,norm " in bench_stage


def test_a_wrong_implementation_is_reported_not_timed_and_fails_the_run(monkeypatch, tmp_path, capsys):
    from gpuconv.backends.numpy_backend import NumpyBackend
    original = NumpyBackend.conv2d

    def wrong(self, x, w, b, g):   # float32 only: the float64 reference stays right
        y = original(self, x, w, b, g)
        if y.dtype == np.float32:
            y.flat[0] += 1.0
        return y

    monkeypatch.setattr(NumpyBackend, "conv2d", wrong)
    path = tmp_path / "bench.json"
    rc = cli_main(["bench", "--backend", "numpy", "--baseline", "none", "--batch", "1", "--repeat", "1",
                   "--layers", "L2", "--ops", "conv", "--json", str(path)])
    assert rc == 1
    assert "failed their correctness check" in capsys.readouterr().out
    rows = load(path)["rows"]
    assert {r["status"] for r in rows} == {"failed"}
    assert all(r["us"] is None and r["rel_err"] > 1e-5 for r in rows)


def test_plot_needs_matplotlib_or_writes_a_png(tmp_path):
    doc = {"rows": [{"kind": "gpuconv", "ratio": {"torch": 1.5}, "layer": "L1", "op": "conv2d_forward",
                     "version": "default"}],
           "settings": {"baselines": ["torch"], "backend": "numpy", "batch": 2},
           "environment": {"cpu": "test", "gpu": None}}
    path = tmp_path / "ratios.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="matplotlib"):
            bench.plot(doc, str(path))
    else:
        bench.plot(doc, str(path))
        assert path.read_bytes()[:4] == b"\x89PNG"


def test_adding_an_op_to_the_bench_is_one_entry(monkeypatch):
    """An entry appended to the table is checked against its float64 reference, timed, compared
    with its torch baseline and costed like every other op; nothing else has to change."""
    pytest.importorskip("torch")
    from gpuconv.tools import bench_kernels
    from gpuconv.tools.bench_ops import OPS, BenchOp
    from gpuconv.tools.suites import Cost

    def cost(g):
        n = int(np.prod(g.x_shape))
        return Cost(n, 8 * n)

    relu = BenchOp("relu_forward", "forward", "conv", ("numpy",), lambda g: {"x": g.x_shape},
                   lambda be, g, a: (be.relu(a["x"]),), cost,
                   torch=lambda T, g, t: lambda: (T.F.relu(t["x"]),))
    monkeypatch.setattr(bench_kernels, "OPS", OPS + (relu,))
    doc = bench.run_bench(backend="numpy", baselines=("torch",), ops=("conv",), layers=["L2"], batch=2,
                          repeat=1, log=lambda s: None)
    rows = [r for r in doc["rows"] if r["op"] == "relu_forward"]
    assert [(r["kind"], r["version"], r["status"]) for r in rows] == [("gpuconv", "default", "ok"),
                                                                      ("baseline", "torch", "ok")]
    assert rows[0]["rel_err"] == 0.0
    assert rows[0]["ratio"]["torch"] == pytest.approx(rows[0]["us"] / rows[1]["us"])
    assert rows[0]["gflops"] * rows[0]["us"] * 1e3 == pytest.approx(2 * 6 * 14 * 14)
    check_document(doc, bench.BENCH_SCHEMA)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="cupy-gemm"):
        bench.run_bench(backend="numpy", baselines=("cupy-gemm",))
    with pytest.raises(ValueError, match="layers"):
        bench.run_bench(backend="numpy", baselines=(), layers=["Z9"])
    with pytest.raises(ValueError, match="ops"):
        bench.run_bench(backend="numpy", baselines=(), ops=("gemm",))
    with pytest.raises(ValueError, match="batch"):
        bench.run_bench(backend="numpy", baselines=(), batch=0)


# ---- emulator -------------------------------------------------------------------------------------------
def test_bench_emulator_checks_every_version(tmp_path, capsys):
    pytest.importorskip("gpuconv.backends.kernel_backend")
    from gpuconv.backends.executors import EmulatorExecutor
    from gpuconv.backends.kernel_backend import KernelBackend
    path = tmp_path / "bench.json"
    rc = cli_main(["bench", "--backend", "emulator", "--baseline", "none", "--batch", "1", "--repeat", "1",
                   "--versions", "all", "--layers", "L2,P1", "--json", str(path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "not GPU timings" in out
    rows = load(path)["rows"]
    known = KernelBackend.known_versions()
    for op in ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_filter"):
        assert [r["version"] for r in rows if r["op"] == op] == [f"v{v}" for v in known[op]]
    for kind in ("max", "avg", "l2"):
        for p in ("forward", "backward"):
            op = f"{kind}_pool2d_{p}"
            assert [r["version"] for r in rows if r["op"] == op] == [f"v{v}" for v in known[op]]
    assert all(r["status"] == "ok" and r["rel_err"] <= r["tolerance"] for r in rows), [
        r for r in rows if r["status"] != "ok"]
    # TF32 tensor-core versions are held to the TF32 tolerance, every other version to FP32's.
    from gpuconv.backends.launch import conv
    for r in rows:
        v = r["version"]
        tf32 = v.startswith("v") and conv.PRECISION.get((r["op"], int(v[1:]))) == "tf32"
        assert r["tolerance"] == (tolerances.TF32_RTOL if tf32 else tolerances.FLOAT32_RTOL), r
    assert any(r["op"] == "conv2d_forward" and r["tolerance"] == tolerances.TF32_RTOL for r in rows)
    defaults = KernelBackend(EmulatorExecutor()).default_versions()
    assert {(r["op"], r["version"]) for r in rows if r["default"]} == {
        (op, f"v{defaults[op]}") for op in {r["op"] for r in rows}}


# ---- training steps -------------------------------------------------------------------------------------
def test_step_bench_on_numpy_runs_eager_and_torch(monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setattr(bench_step, "STEP_MODELS", {"lenet": (1, 28)})
    rows = bench_step.run_steps("numpy", ["torch"], batch=2, repeat=1, timer=WallTimer(),
                                log=lambda s: None)
    assert [(r["model"], r["variant"]) for r in rows] == [("lenet", "gpuconv eager"), ("lenet", "torch")]
    for r in rows:
        check_document(r, bench_step.STEP_SCHEMA)
    assert all(r["status"] == "ok" and r["us"] > 0 for r in rows)
    assert rows[1]["rel_err"] <= 1e-5            # the torch model computes the same first loss
    assert rows[0]["vs_torch"] == pytest.approx(rows[0]["us"] / rows[1]["us"])


@pytest.mark.gpu
def test_bench_cuda_small_run(tmp_path):
    pytest.importorskip("cupy")
    from gpuconv.backends import cuda_unavailable_reason
    if cuda_unavailable_reason():
        pytest.skip(cuda_unavailable_reason())
    doc = bench.run_bench(backend="cuda", baselines=(), batch=8, repeat=3, layers=["L1", "P1"],
                          log=lambda s: None)
    assert all(r["status"] == "ok" and r["floor_multiple"] > 1.0 for r in doc["rows"])


# ---- GPU-only control flow, exercised on the CPU with a stand-in for CuPy -----------------------------
class _FakeCupy:
    """Just enough of CuPy's API for the timers and the CUDA-graph capture: events report a fixed
    elapsed time, streams record whether they capture, a graph replays a given function."""

    def __init__(self, elapsed_ms=0.25, replay=None, capture_error=None, launch_error=None):
        import types
        fake = self
        self.calls = []
        self.replay, self.capture_error, self.launch_error = replay, capture_error, launch_error

        class Event:
            def record(self, stream=None):
                fake.calls.append("record")

            def synchronize(self):
                pass

        class Graph:
            def launch(self, stream=None):
                fake.calls.append("graph")
                if fake.launch_error:
                    raise fake.launch_error
                fake.replay()

        class Stream:
            null = None

            def __init__(self, non_blocking=False):
                self.capturing = False

            def synchronize(self):
                pass

            def __enter__(self):
                fake.calls.append("enter stream")
                return self

            def __exit__(self, *exc):
                return False

            def begin_capture(self):
                self.capturing = True

            def end_capture(self):
                self.capturing = False
                if fake.capture_error:
                    raise fake.capture_error
                return Graph()

        class Device:
            attributes = {"L2CacheSize": 50 * 2**20, "ClockRate": 1_980_000}

            def synchronize(self):
                fake.calls.append("device sync")

        class Buffer:
            def fill(self, value):
                fake.calls.append("flush")

        def raw_kernel(source, name):
            return lambda grid, block, args: fake.calls.append("spin")

        Stream.null = Stream()
        self.cuda = types.SimpleNamespace(Event=Event, Stream=Stream, Device=Device,
                                          get_elapsed_time=lambda a, b: elapsed_ms)
        self.float32 = np.float32
        self.empty = lambda n, dtype: Buffer()
        self.RawKernel = raw_kernel


def test_cuda_event_timer_flushes_spins_and_converts_to_microseconds(monkeypatch):
    import sys
    fake = _FakeCupy(elapsed_ms=0.25)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    timer = CudaEventTimer()
    assert timer.flush_bytes == 100 * 2**20 and timer.clock_khz == 1_980_000
    runs = []
    timings = timer.measure([lambda i: runs.append(i)], n_sets=3, repeat=4, warmup=1)
    assert runs == [0, 0, 1, 2, 0]                     # one warm-up, then the sets in turn
    assert timings[0].times_us == [250.0] * 4 and len(timings[0].host_us) == 4
    # every timed run: flush the L2, spin, start event, (work), end event
    assert fake.calls[:4] == ["flush", "spin", "record", "record"]
    t = timer.throughput(lambda: None, repeat=2, inner=5)
    assert t.times_us == [50.0, 50.0]                  # 0.25 ms over 5 back-to-back calls


def _emulator_graph_rows(monkeypatch):
    monkeypatch.setattr(bench_step, "STEP_MODELS", {"lenet": (1, 8)})
    rows = bench_step.run_steps("emulator", [], batch=2, repeat=1, timer=WallTimer(), log=lambda s: None)
    for r in rows:
        check_document(r, bench_step.STEP_SCHEMA)
    return {r["variant"]: r for r in rows}


def test_step_bench_replays_a_verified_graph_on_the_emulator(monkeypatch):
    """The graph row runs the library's capture (gpuconv.backends.graphs through TrainStep), the
    same code as on a GPU but for the executor: its first replay equals the eager step bit for bit
    (the emulator runs the same kernels the same way), then the replays are timed."""
    rows = _emulator_graph_rows(monkeypatch)
    assert rows["gpuconv graph"]["status"] == "ok" and rows["gpuconv graph"]["rel_err"] == 0.0
    assert rows["gpuconv graph"]["us"] > 0 and rows["gpuconv eager"]["us"] > 0


def test_graph_replay_that_differs_from_eager_is_reported(monkeypatch):
    from gpuconv.backends.executors import EmulatorGraph
    real = EmulatorGraph.launch

    def off_by_a_bit(self):
        real(self)
        first = next(op for op in self.operations if op[0] == "launch")
        first[4][0][...] += np.float32(1e-2)  # the first kernel's output: wrong from then on

    monkeypatch.setattr(EmulatorGraph, "launch", off_by_a_bit)
    row = _emulator_graph_rows(monkeypatch)["gpuconv graph"]
    assert row["status"] == "failed" and "differs from an eager step" in row["note"]
    assert row["rel_err"] > 1e-3 and row["us"] is None


def test_failed_capture_is_reported_with_its_reason(monkeypatch):
    from gpuconv.backends.executors import EmulatorExecutor

    def refuse(self):
        self.recording = None
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(EmulatorExecutor, "end_capture", refuse)
    row = _emulator_graph_rows(monkeypatch)["gpuconv graph"]
    assert row["status"] == "capture-failed" and "not permitted" in row["note"]


def test_graph_that_cannot_be_replayed_is_a_failed_row_not_an_exception(monkeypatch):
    from gpuconv.backends.executors import EmulatorGraph

    def invalid(self):
        raise RuntimeError("cudaErrorInvalidValue: invalid argument")

    monkeypatch.setattr(EmulatorGraph, "launch", invalid)
    row = _emulator_graph_rows(monkeypatch)["gpuconv graph"]
    assert row["status"] == "failed" and "invalid argument" in row["note"]


def test_cuda_capture_waits_for_the_default_stream_and_replays_on_the_current_one(monkeypatch):
    """The capture stream is non-blocking: work queued on the legacy default stream (the model's
    copies, its first step) must be finished before capture starts on it; replays go to the
    current stream, ordered with the uploads before them and the reads after."""
    import sys
    import types

    from gpuconv.backends.executors import CupyExecutor
    fake = _FakeCupy(replay=lambda: None)
    fake.cuda.get_current_stream = lambda: "current"
    launched_on = []
    monkeypatch.setitem(sys.modules, "cupy", fake)
    ex = CupyExecutor.__new__(CupyExecutor)
    ex._cupy = fake
    ex.begin_capture()
    graph = ex.end_capture()
    graph.graph = types.SimpleNamespace(launch=launched_on.append)
    graph.launch()
    assert fake.calls.index("device sync") < fake.calls.index("enter stream")
    assert launched_on == ["current"]
