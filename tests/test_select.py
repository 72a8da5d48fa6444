"""Per-shape kernel selection (gpuconv.backends.select): the static rule, eligibility (dtype,
allow_tf32), the timed path with an injected timer on the emulator, the on-disk cache (hit, miss,
corrupt, foreign, concurrent writers), overrides, the settings, and the pick in ``gpuconv bench``."""
from __future__ import annotations

import json
import multiprocessing
import warnings

import numpy as np
import pytest
from conftest import assert_close, recording_launches

from gpuconv import backends
from gpuconv.backends import graphs, launch, select
from gpuconv.backends.executors import EmulatorExecutor
from gpuconv.backends.kernel_backend import KernelBackend
from gpuconv.backends.launch import conv
from gpuconv.backends.numpy_backend import NumpyBackend
from gpuconv.geometry import conv2d_geometry
from gpuconv.tools import bench

F32 = np.float32


def geom(C, K, groups=1, R=3, N=2, H=6):
    return conv2d_geometry((N, C, H, H), (K, C // groups, R, R), padding=1, groups=groups)


@pytest.fixture
def settings(monkeypatch):
    """Both selection settings off for the test, whatever the environment says; restored after."""
    monkeypatch.setattr(backends, "allow_tf32", False)
    monkeypatch.setattr(backends, "benchmark", False)
    return backends


# ---- eligibility and the static rule ----------------------------------------------------------------
def test_candidates_follow_dtype_and_allow_tf32():
    tiles = [(2, t) for t in conv.TILE_WIDTHS]
    assert select.candidates("conv2d_forward", F32, False) == [(1, None), *tiles, (3, None)]
    assert select.candidates("conv2d_forward", F32, True) == [(1, None), *tiles, (3, None), (4, None)]
    # float64: the float32-only TF32 version never, whatever allow_tf32 says
    assert (4, None) not in select.candidates("conv2d_forward", np.float64, True)
    assert select.candidates("conv2d_backward_bias", F32, True) == [(1, None), (2, None)]
    with pytest.raises(ValueError, match="unknown op"):
        select.candidates("conv3d", F32, False)


def test_a_version_added_to_a_launch_module_takes_part(monkeypatch):
    """Candidates come from launch.VERSIONS / PRECISION / FLOAT32_ONLY, not from a list here."""
    op = "conv2d_backward_data"
    monkeypatch.setitem(launch.VERSIONS, op, launch.VERSIONS[op] + (9,))
    monkeypatch.setitem(launch.PRECISION, (op, 9), "tf32")
    monkeypatch.setattr(launch, "FLOAT32_ONLY", launch.FLOAT32_ONLY | {(op, 9)})
    assert (9, None) in select.candidates(op, F32, True)
    assert (9, None) not in select.candidates(op, F32, False)
    assert (9, None) not in select.candidates(op, np.float64, True)


@pytest.mark.parametrize("C,K,groups,dtype,tf32,version,reason", [
    (1, 6, 1, "float32", False, 3, "rule: stem"),     # predicted: v3 faster than v2 on L1
    (3, 8, 1, "float64", False, 3, "rule: stem"),     # v3 has a double kernel
    (3, 16, 1, "float32", False, 2, "default"),       # predicted: v2 faster on C1 (K=16)
    (4, 6, 1, "float32", False, 2, "default"),        # not a stem
    (6, 6, 2, "float32", False, 3, "rule: stem"),     # 3 channels per group
    (32, 64, 1, "float32", False, 2, "default"),      # TF32 not allowed
    (32, 64, 1, "float32", True, 4, "rule: allow_tf32"),
    (32, 16, 1, "float32", True, 2, "default"),       # predicted: v4 slower with 16 columns
    (32, 64, 1, "float64", True, 2, "default"),       # no TF32 for float64
    (1, 6, 1, "float32", True, 3, "rule: stem"),
])
def test_static_rule_for_forward(C, K, groups, dtype, tf32, version, reason):
    choice = select.static_choice("conv2d_forward", geom(C, K, groups), dtype, "emulator", tf32)
    assert choice.version == version and choice.reason.startswith(reason) and choice.tile is None


def test_static_rule_for_backward():
    default = launch.default_versions("emulator")
    for op in ("conv2d_backward_data", "conv2d_backward_filter", "conv2d_backward_bias"):
        for dtype in ("float32", "float64"):
            for tf32 in (False, True):
                for K in (32, 64):
                    choice = select.static_choice(op, geom(1, K), dtype, "emulator", tf32)
                    if op == "conv2d_backward_filter" and tf32 and dtype == "float32" and K == 64:
                        # predicted faster than v3 from 64 output channels per group
                        assert (choice.version, choice.reason) == (4, "rule: allow_tf32, K>=64")
                    else:    # backward-data v4 is not predicted faster: only timing picks it
                        assert choice == select.Choice(default[op], None, "default"), (op, dtype, tf32, K)


def test_default_calls_run_the_rule_on_the_emulator(settings):
    be = KernelBackend(EmulatorExecutor())
    x, w = np.ones((2, 1, 6, 6), F32), np.ones((6, 1, 3, 3), F32)
    g = geom(1, 6)
    with recording_launches(be) as launches:
        conv.forward(be, x, w, None, g)
    assert [f.name for f, *_ in launches] == ["conv2d_forward_v3<float>"]
    assert be.chosen("conv2d_forward", g, F32).reason.startswith("rule: stem")


# ---- overrides ---------------------------------------------------------------------------------------
def test_explicit_version_and_overrides_win(settings, tmp_path):
    settings.benchmark = True
    be = KernelBackend(EmulatorExecutor())

    def never(call):
        raise AssertionError("an override must not time anything")
    be.selector = select.Selector("emulator", "Fake GPU", never, tmp_path)
    x, w = np.ones((2, 1, 6, 6), F32), np.ones((6, 1, 3, 3), F32)
    g = geom(1, 6)
    with recording_launches(be) as launches:
        conv.forward(be, x, w, None, g, version=1)
        with be.use_versions({"conv2d_forward": 2}):
            conv.forward(be, x, w, None, g)
            assert be.chosen("conv2d_forward", g, F32) == select.Choice(2, None, "override")
    assert [f.name for f, *_ in launches] == ["conv2d_forward_v1<float>", "conv2d_forward_v2<float, 16, 4>"]
    forced = {"conv2d_forward": 1}
    assert KernelBackend(EmulatorExecutor(), versions=forced).overrides() == forced


# ---- the timed path, with an injected timer ---------------------------------------------------------
class FakeTimer:
    """Runs each candidate once on the emulator, checks its result against the NumPy reference and
    returns a made-up time for the kernel it launched."""

    def __init__(self, be, times, ref, precision_of=lambda name: "fp32"):
        self.be, self.times, self.ref, self.precision_of = be, times, ref, precision_of
        self.kernels = []

    def __call__(self, call) -> float:
        with recording_launches(self.be) as launches:
            out = call()
        name = launches[0][0].name
        self.kernels.append(name)
        assert_close(out, self.ref, precision=self.precision_of(name), what=name)
        return self.times.get(name, 1e-3)


def _forward_case(C=4, K=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, C, 6, 6)).astype(F32)
    w = rng.standard_normal((K, C, 3, 3)).astype(F32)
    g = geom(C, K)
    return x, w, g, NumpyBackend().conv2d(x.astype(np.float64), w.astype(np.float64), None, g)


def _timed_backend(tmp_path, times, ref, device="Fake GPU", precision_of=lambda name: "fp32"):
    be = KernelBackend(EmulatorExecutor())
    timer = FakeTimer(be, times, ref, precision_of)
    be.selector = select.Selector("emulator", device, timer, tmp_path)
    return be, timer


def test_timing_picks_the_fastest_times_once_and_writes_the_cache(settings, tmp_path):
    settings.benchmark = True
    x, w, g, ref = _forward_case()
    be, timer = _timed_backend(tmp_path, {"conv2d_forward_v2<float, 32, 4>": 2e-6,
                                          "conv2d_forward_v3<float>": 3e-6}, ref)
    y = conv.forward(be, x, w, None, g)
    assert_close(y, ref)
    # every eligible candidate once: v1, v2 in each tile width, v3 (no TF32 v4: not allowed)
    assert sorted(timer.kernels) == sorted(["conv2d_forward_v1<float>", "conv2d_forward_v2<float, 16, 4>",
                                            "conv2d_forward_v2<float, 32, 4>",
                                            "conv2d_forward_v2<float, 64, 4>", "conv2d_forward_v3<float>"])
    choice = be.chosen("conv2d_forward", g, F32)
    assert (choice.version, choice.tile) == (2, 32)
    assert choice.reason == "timed: v2/32 2.0 µs < v3 3.0 µs"
    with recording_launches(be) as launches:      # the same shape again: the choice, no timing
        conv.forward(be, x, w, None, g)
    assert [f.name for f, *_ in launches] == ["conv2d_forward_v2<float, 32, 4>"] and len(timer.kernels) == 5
    doc = json.loads(be.selector.cache_file.read_text())
    assert doc["device"] == "Fake GPU" and doc["schema"] == select.SCHEMA
    entry = doc["choices"][select.cache_key("conv2d_forward", g, F32, False)]
    assert (entry["version"], entry["tile"]) == (2, 32) and entry["us"]["v3"] == 3.0
    assert "Fake_GPU" in be.selector.cache_file.name


@pytest.mark.parametrize("op", ["conv2d_backward_data", "conv2d_backward_filter", "conv2d_backward_bias"])
def test_every_backward_candidate_the_selector_times_is_right(settings, tmp_path, op):
    """Each (version, tile) the selector may time, TF32 included, computes the gradient: v2 in a tile
    width other than its own rule's (for backward-filter a different split of the reduction too)."""
    settings.benchmark = settings.allow_tf32 = True
    rng = np.random.default_rng(3)
    g = conv2d_geometry((2, 4, 7, 7), (8, 4, 3, 3), padding=1, stride=2)
    x, w, dy = (rng.standard_normal(s).astype(F32) for s in (g.x_shape, g.w_shape, g.y_shape))
    i = ("conv2d_backward_data", "conv2d_backward_filter", "conv2d_backward_bias").index(op)
    ref = NumpyBackend().conv2d_backward(dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64), g,
                                         i == 0, i == 1, i == 2)[i]
    be, timer = _timed_backend(tmp_path, {}, ref, precision_of=_tf32_of)
    call = {"conv2d_backward_data": lambda: conv.backward_data(be, dy, w, g),
            "conv2d_backward_filter": lambda: conv.backward_filter(be, dy, x, g),
            "conv2d_backward_bias": lambda: conv.backward_bias(be, dy, g)}[op]
    assert_close(call(), ref, precision=launch.precision(op, be.chosen(op, g, F32).version))
    # one kernel of its own per candidate: the tile widths are honoured
    assert len(set(timer.kernels)) == len(timer.kernels) == len(select.candidates(op, F32, True))


def test_cache_hit_in_a_new_process_does_not_time(settings, tmp_path):
    settings.benchmark = True
    x, w, g, ref = _forward_case()
    be, _ = _timed_backend(tmp_path, {"conv2d_forward_v1<float>": 1e-6}, ref)
    conv.forward(be, x, w, None, g)
    be2, timer2 = _timed_backend(tmp_path, {}, ref)     # a fresh selector: what a new process has
    with recording_launches(be2) as launches:
        assert_close(conv.forward(be2, x, w, None, g), ref)
    assert timer2.kernels == [] and [f.name for f, *_ in launches] == ["conv2d_forward_v1<float>"]
    assert be2.chosen("conv2d_forward", g, F32).reason.endswith("(cached)")
    # a miss: another shape is timed and added beside the first
    x3, w3, g3, ref3 = _forward_case(C=2, K=4, seed=1)
    timer2.ref = ref3
    conv.forward(be2, x3, w3, None, g3)
    assert len(timer2.kernels) == 5
    assert len(json.loads(be2.selector.cache_file.read_text())["choices"]) == 2


@pytest.mark.parametrize("content,match", [
    ("{not json", "cannot read"),
    ('{"schema": "gpuconv-select/1"}', "not a gpuconv-select/1 document"),
    ("[1, 2]", "not a gpuconv-select/1 document"),
    (None, "made for another device 'Other GPU'"),
])
def test_a_corrupt_or_foreign_cache_is_ignored_with_a_warning(settings, tmp_path, content, match):
    settings.benchmark = True
    x, w, g, ref = _forward_case()
    be, timer = _timed_backend(tmp_path, {"conv2d_forward_v3<float>": 1e-6}, ref)
    path = be.selector.cache_file
    if content is None:     # a file of another GPU, under this GPU's name (copied, or a name clash)
        other = select.Selector("emulator", "Other GPU")
        entry = {"version": 1, "tile": None, "reason": "timed: elsewhere"}
        content = json.dumps({**other._header(), "choices": {select.cache_key("conv2d_forward", g, F32,
                                                                              False): entry}})
    path.write_text(content)
    with pytest.warns(RuntimeWarning, match=match):
        y = conv.forward(be, x, w, None, g)
    assert_close(y, ref)
    assert len(timer.kernels) == 5 and be.chosen("conv2d_forward", g, F32).version == 3
    doc = json.loads(path.read_text())     # replaced by a valid file of this device
    assert doc["device"] == "Fake GPU" and len(doc["choices"]) == 1


def test_a_cached_entry_no_longer_eligible_is_timed_again(settings, tmp_path):
    """An entry naming the TF32 version (written with allow_tf32 on) under the allow_tf32-off key,
    or a version that no longer exists, is not used."""
    settings.benchmark = True
    x, w, g, ref = _forward_case()
    be, timer = _timed_backend(tmp_path, {"conv2d_forward_v3<float>": 1e-6}, ref)
    key = select.cache_key("conv2d_forward", g, F32, False)
    for bad in ({"version": 4, "tile": None, "reason": "timed"}, {"version": 7, "tile": None, "reason": "t"},
                {"version": 2, "tile": 48, "reason": "t"}, {"version": True, "tile": None, "reason": "t"}):
        be.selector = select.Selector("emulator", "Fake GPU", timer, tmp_path)
        be.selector.cache_file.write_text(json.dumps({**be.selector._header(), "choices": {key: bad}}))
        timer.kernels.clear()
        conv.forward(be, x, w, None, g)
        assert len(timer.kernels) == 5 and be.chosen("conv2d_forward", g, F32).version == 3, bad


def test_an_unwritable_cache_costs_a_warning_not_the_op(settings, tmp_path):
    settings.benchmark = True
    x, w, g, ref = _forward_case()
    blocker = tmp_path / "file"
    blocker.write_text("")
    be, _ = _timed_backend(blocker / "sub", {}, ref)
    with pytest.warns(RuntimeWarning, match="cannot write kernel choice cache"):
        assert_close(conv.forward(be, x, w, None, g), ref)


def _store_many(args):
    cache_dir, worker = args
    sel = select.Selector("emulator", "Fake GPU", lambda call: 1e-6, cache_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(8):
            sel.choose("conv2d_backward_bias", geom(1, 8 * worker + i + 1), F32, lambda v, t: None)
    return worker


def test_concurrent_writers_keep_every_choice_and_a_valid_file(settings, tmp_path):
    settings.benchmark = True
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        assert sorted(pool.map(_store_many, [(tmp_path, k) for k in range(4)])) == [0, 1, 2, 3]
    sel = select.Selector("emulator", "Fake GPU", None, tmp_path)
    doc = json.loads(sel.cache_file.read_text())
    assert len(doc["choices"]) == 32
    assert not [p for p in tmp_path.iterdir() if "gpuconv-tmp" in p.name]


# ---- allow_tf32 --------------------------------------------------------------------------------------
def _tf32_of(name):
    """The precision of the version whose kernel ``name`` launched first ("conv2d_forward_v4<float>")."""
    op, v = name.split("<")[0].rsplit("_v", 1)
    return launch.precision(op, int(v))


def test_tf32_is_never_timed_or_picked_when_not_allowed(settings, tmp_path):
    settings.benchmark = True
    x, w, g, ref = _forward_case()
    fastest = {"conv2d_forward_v4<float>": 1e-7, "conv2d_forward_v2<float, 16, 4>": 1e-6}
    be, timer = _timed_backend(tmp_path, fastest, ref, precision_of=_tf32_of)
    conv.forward(be, x, w, None, g)
    assert "conv2d_forward_v4<float>" not in timer.kernels
    assert be.chosen("conv2d_forward", g, F32).version == 2
    settings.allow_tf32 = True        # a separate choice, timed with the TF32 version in
    with recording_launches(be) as launches:
        assert_close(conv.forward(be, x, w, None, g), ref, precision="tf32")
    assert "conv2d_forward_v4<float>" in timer.kernels and launches[-1][0].name == "conv2d_forward_v4<float>"
    settings.allow_tf32 = False       # and off again: the full-precision choice
    assert be.chosen("conv2d_forward", g, F32).version == 2


def test_settings_must_be_booleans(settings):
    for name in ("allow_tf32", "benchmark"):
        with pytest.raises(TypeError, match=f"gpuconv.backends.{name} must be True or False"):
            setattr(backends, name, 1)
        assert getattr(backends, name) is False
    backends.benchmark = True      # a setting reaches the selector's module
    assert backends.settings.benchmark is True


@pytest.mark.parametrize("raw,expected", [("", False), ("0", False), ("off", False), ("1", True),
                                          ("TRUE", True), (" yes ", True)])
def test_env_flag(monkeypatch, raw, expected):
    monkeypatch.setenv("GPUCONV_ALLOW_TF32", raw)
    assert backends.env_flag("GPUCONV_ALLOW_TF32") is expected


def test_env_flag_refuses_other_values(monkeypatch):
    monkeypatch.setenv("GPUCONV_BENCHMARK", "maybe")
    with pytest.raises(ValueError, match="GPUCONV_BENCHMARK must be 1 or 0"):
        backends.env_flag("GPUCONV_BENCHMARK")


# ---- gpuconv bench shows the pick --------------------------------------------------------------------
def test_bench_shows_the_pick_and_why(settings, capsys):
    doc = bench.run_bench("small-cnn", ["conv"], "emulator", [], "default", 1, 1, ["L1"], 0, None,
                          log=lambda s: None)
    rows = {r["op"]: r for r in doc["rows"]}
    fwd = rows["conv2d_forward"]
    assert fwd["version"] == "v3" and fwd["default"] and fwd["pick"].startswith("rule: stem")
    assert rows["conv2d_backward_data"]["pick"] == "default"
    assert doc["settings"]["allow_tf32"] is False and doc["settings"]["benchmark"] is False
    table = bench.format_rows(doc)
    assert "pick" in table.splitlines()[0] and "rule: stem C<=3, K<=8" in table
    assert backends.allow_tf32 is False


def test_bench_allow_tf32_is_recorded_and_restored(settings):
    doc = bench.run_bench("small-cnn", ["conv"], "emulator", [], "default", 1, 1, ["C5"], 0, None,
                          log=lambda s: None, allow_tf32=True)
    rows = {r["op"]: r for r in doc["rows"]}
    # C5: 64 output channels, so the TF32 rule picks forward v4 and backward-filter v4, checked at
    # the TF32 tolerance; backward-data keeps its default v3
    for op in ("conv2d_forward", "conv2d_backward_filter"):
        r = rows[op]
        assert r["version"] == "v4" and r["pick"].startswith("rule: allow_tf32") and r["status"] == "ok", r
        assert r["tolerance"] == pytest.approx(1e-3)
    assert rows["conv2d_backward_data"]["version"] == f"v{conv.DEFAULT_VERSIONS['conv2d_backward_data']}"
    assert rows["conv2d_backward_data"]["tolerance"] == pytest.approx(1e-5)
    assert doc["settings"]["allow_tf32"] is True and backends.allow_tf32 is False


# ---- the GPU timer and the selector's sharing, without a GPU -----------------------------------------
def test_cupy_time_call_warms_up_then_times_between_two_events(monkeypatch):
    """With a stand-in cupy: the warm-up calls come first, then the timed ones between the two
    events' records, and the result is the events' elapsed time per timed call, in seconds."""
    import sys
    import types

    from gpuconv.backends.executors import CupyExecutor
    log = []

    class Event:
        def record(self):
            log.append("record")

        def synchronize(self):
            log.append("sync")

    cuda = types.SimpleNamespace(Event=Event, get_elapsed_time=lambda a, b: 10.0)   # ms
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(cuda=cuda, ndarray=np.ndarray))
    seconds = CupyExecutor().time_call(lambda: log.append("run"), warmup=2, repeat=4)
    assert log == ["run"] * 2 + ["record"] + ["run"] * 4 + ["record", "sync"]
    assert seconds == pytest.approx(10.0 / 1e3 / 4)


def test_backends_on_one_device_share_one_selector():
    a, b = KernelBackend(EmulatorExecutor()), KernelBackend(EmulatorExecutor(order="reverse"))
    assert a.selector is b.selector and a.selector.timer is None    # the emulator does not time


def test_train_allow_tf32_turns_the_setting_on(settings, monkeypatch):
    from gpuconv.tools import train as train_tool
    from gpuconv.tools.cli import main as cli_main
    seen = []
    monkeypatch.setattr(train_tool, "train", lambda cfg: seen.append(backends.allow_tf32))
    assert cli_main(["train", "--epochs", "1"]) == 0
    assert cli_main(["train", "--allow-tf32", "--epochs", "1"]) == 0
    assert seen == [False, True]


def test_profile_default_profiles_the_version_the_rule_picks(settings):
    from gpuconv.tools import profile
    rows = profile.profile_suite(layers=["L1", "C1"], ops=["conv2d_forward"], batch=2, sample=1,
                                 compiler="none")
    assert {(r["layer"], r["version"]) for r in rows} == {("L1", 3), ("C1", 2)}



def test_a_captured_step_is_not_timed_and_replays_the_rule(settings, tmp_path):
    """With benchmark on, capturing a step whose conv shape is not yet timed neither times nor
    launches anything extra: the warm-up and the capture take the static rule and launch the same
    kernels on the same buffers (timing there would allocate in the warm-up only), and the replay
    computes the result; the shape is timed by the next eager call."""
    settings.benchmark = True
    x, w, g, ref = _forward_case()
    be, timer = _timed_backend(tmp_path, {"conv2d_forward_v2<float, 32, 4>": 2e-6}, ref)
    xd, wd = be.asarray(x), be.asarray(w)
    captured = graphs.capture(be, lambda: conv.forward(be, xd, wd, None, g))
    captured.replay()
    assert_close(be.to_numpy(captured.outputs), ref)
    assert timer.kernels == [] and be.chosen("conv2d_forward", g, F32) is None
    conv.forward(be, xd, wd, None, g)  # eager: timed now
    assert be.chosen("conv2d_forward", g, F32).reason.startswith("timed: v2/32")


def test_backward_filter_candidates_are_timed_with_db_when_the_call_needs_it(settings, tmp_path):
    """conv.backward with dw and db: each backward-filter candidate is timed on the whole call, so
    the versions without a bias column (v1, v2) launch the bias kernel inside their timing and v3
    does not; the chosen one returns both gradients."""
    settings.benchmark = True
    rng = np.random.default_rng(5)
    g = conv2d_geometry((2, 4, 6, 6), (8, 4, 3, 3), padding=1)
    x, w, dy = (rng.standard_normal(s).astype(F32) for s in (g.x_shape, g.w_shape, g.y_shape))
    ref = NumpyBackend().conv2d_backward(dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64), g,
                                         False, True, True)
    be = KernelBackend(EmulatorExecutor())
    timed = {}

    def timer(call):
        with recording_launches(be) as launches:
            out = call()
        if isinstance(out, tuple):  # a backward-filter candidate (the bias kernel's own choice: not)
            assert_close(be.to_numpy(out[0]), ref[1])
            assert_close(be.to_numpy(out[1]), ref[2])
            names = [f.name for f, *_ in launches]
            timed[names[0]] = any(n.startswith("conv2d_backward_bias") for n in names)
        return 1e-3

    be.selector = select.Selector("emulator", "Fake GPU", timer, tmp_path)
    _, dw, db = conv.backward(be, dy, x, w, g, need_dx=False)
    assert_close(be.to_numpy(dw), ref[1])
    assert_close(be.to_numpy(db), ref[2])
    assert len(timed) == len(select.candidates("conv2d_backward_filter", F32, False, "emulator"))
    assert all(bias == (not name.startswith("conv2d_backward_filter_v3")) for name, bias in timed.items())
