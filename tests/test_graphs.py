"""Captured training steps on the emulator (gpuconv.backends.graphs, gpuconv.train_step): replays
give the eager steps' numbers bit for bit, and graph-unsafe steps are refused.

Bitwise, not within a tolerance: a replay launches the very kernels of the eager step, with the
same configurations and arguments, on the same buffers' contents, and the emulator runs a kernel
the same way every time (one thread order; no kernel of cuda/ uses atomics). Only the Python
between the launches is skipped, so any difference is a bug in what was captured."""
import numpy as np
import pytest
from conftest import make_backend

from gpuconv import nn, optim, schedules
from gpuconv.backends import graphs, use_backend
from gpuconv.backends.launch.optim import adam_constants, sgd_constants
from gpuconv.models import build_model
from gpuconv.train_step import TrainStep

STEPS = 5
BATCH = 8


def _bn_model(rng):
    """Batch norm (plain and fused with ReLU) and ResNet-20's zero-padding shortcut, whose zero
    fills and strided copies a replay must repeat."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, rng=rng), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 6, 3, stride=2, padding=1, rng=rng), nn.BatchNormReLU2d(6),
                         nn.SubsamplePad2d(6, 10, stride=2), nn.GlobalAvgPool2d(), nn.Linear(10, 10, rng=rng))


def _model(name):
    if name == "lenet":
        return build_model("lenet", 1, 8, 10, seed=0)
    return _bn_model(np.random.default_rng(0))


def _optimizer(kind, model):
    if kind == "sgd":
        return optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    return optim.Adam(model.parameters(), lr=2e-3)


def _batches(n=STEPS, batch=BATCH, last=None):
    rng = np.random.default_rng(1)
    sizes = [batch] * n + ([last] if last else [])
    return [(rng.standard_normal((b, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, b)) for b in sizes]


def _train(be, model_name, opt_kind, graph, batches, **kw):
    """Losses per step and the final model and optimizer state, with a warm-up then a cosine
    schedule, so the rate changes at every step."""
    with use_backend(be):
        model = _model(model_name)
        opt = _optimizer(opt_kind, model)
        sched = schedules.LinearWarmup(opt, 2, then=schedules.Cosine(opt, total_steps=len(batches)))
        step = TrainStep(model, opt, be, graph=graph, **kw)
        losses = []
        for xb, yb in batches:
            loss, _ = step(xb, yb)
            losses.append(float(be.to_numpy(loss)))
            sched.step()
        return losses, model.state_dict(), opt.state_dict(), step


@pytest.mark.parametrize("model_name", ["lenet", "bn"])
@pytest.mark.parametrize("opt_kind", ["sgd", "adam"])
def test_replayed_steps_equal_eager_steps_bitwise(model_name, opt_kind):
    be = make_backend("emulator")
    batches = _batches(last=3)  # the short last batch of an epoch runs eagerly between replays
    eager = _train(be, model_name, opt_kind, False, batches)
    graphed = _train(be, model_name, opt_kind, True, batches, check=True, strict=True)
    assert graphed[3].mode == "replay" and graphed[3].replays == STEPS - 2  # eager, capture, replays
    assert graphed[0] == eager[0]
    for key in ("model", "optimizer"):
        a, b = (graphed[1], eager[1]) if key == "model" else (graphed[2], eager[2])
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{key} {k}")


def test_replay_after_eager_steps_and_schedule_change_in_between():
    """A graph replays whatever the buffers hold: an eager step between replays (another batch
    size) and a rate change are both seen by the next replay. The batch of another size comes
    right after the first step: the capture waits for a batch of the first one's size."""
    be = make_backend("emulator")
    batches = _batches(n=1, last=5) + _batches(n=4)
    eager = _train(be, "bn", "adam", False, batches)
    graphed = _train(be, "bn", "adam", True, batches, check=True, strict=True)
    assert graphed[0] == eager[0] and graphed[3].replays == 3


# ---- planted graph-unsafe steps ---------------------------------------------------------------

class _Step:
    """A LeNet step on fixed buffers, with one graph-unsafe habit planted by ``plant``."""

    def __init__(self, be, plant=None):
        self.be, self.plant, self.calls = be, plant, 0
        with use_backend(be):
            self.model = build_model("lenet", 1, 8, 10, seed=0)
        xb, yb = _batches(n=1)[0]
        self.x, self.y = be.asarray(xb), be.asarray(yb.astype(np.int32))
        self.loss_fn = nn.SoftmaxCrossEntropy()
        self.lr = be.zeros((6,), np.float32)
        be.upload(self.lr, sgd_constants(np.float32, 0.1, 0.0, 0.0, 0.0, False, False))

    def __call__(self):
        be = self.be
        self.calls += 1
        with use_backend(be):
            loss = self.loss_fn.forward(self.model.forward(self.x), self.y, self.plant != "label check")
            dlogits = self.loss_fn.backward()
            if self.plant == "host math":  # array arithmetic, not a kernel: on the emulator it runs
                dlogits = dlogits * np.float32(1)  # at capture only, and a replay reuses its result
            self.model.backward(dlogits)
            if self.plant == "host read":
                float(be.to_numpy(loss))
            if self.plant == "sync":
                be.synchronize()
            if self.plant == "upload":
                be.upload(self.lr, sgd_constants(np.float32, 0.1 / self.calls, 0.0, 0.0, 0.0, False, False))
            if self.plant == "host list":
                be.asarray([0.1], np.float32)
            if self.plant == "allocation" and self.calls > 1:
                be.empty((4,), np.float32)  # a scratch buffer made only from the second call on
            if self.plant == "shape":
                be.empty((self.calls,), np.float32)
            for p in self.model.parameters():
                if self.plant == "host scalar":  # the rate by value, changing per step
                    be.sgd_step(p.data, p.grad, None, 0.1 / self.calls, 0.0, 0.0, 0.0, False, False)
                else:
                    be.sgd_step_dev(p.data, p.grad, None, self.lr)
            if self.plant == "new input":
                self.x = be.asarray(self.x.copy())  # rebinding instead of uploading into the buffer
        return loss


def test_clean_step_captures_checks_and_replays():
    be = make_backend("emulator")
    step = _Step(be)
    captured = graphs.capture(be, step)
    for _ in range(2):
        captured.check(step)
        captured.replay()
    assert step.calls == 4  # warm-up, capture, two traces: replays ran no Python


@pytest.mark.parametrize("plant, match", [
    ("host read", r"device-to-host copy \(to_numpy\) inside a captured step \(capture\)"),
    ("sync", r"synchronisation inside a captured step"),
    ("upload", r"host-to-device copy \(upload\) inside a captured step"),
    ("host list", r"asarray of a list as float32 inside a captured step"),
    ("label check", r"device-to-host copy \(to_numpy\) inside a captured step"),
    ("allocation", r"allocation #\d+ \(\(4,\), float32\) during capture: the warm-up step made only"),
    ("shape", r"asks for \(\(2,\), float32\) but the warm-up step's #\d+ was \(\(1,\), float32\)"),
])
def test_capture_refuses_graph_unsafe_steps(plant, match):
    be = make_backend("emulator")
    with pytest.raises(graphs.GraphCaptureError, match=match):
        graphs.capture(be, _Step(be, plant))
    assert be.graph_arena is None and be.executor.recording is None  # usable again
    graphs.capture(be, _Step(be)).replay()


@pytest.mark.parametrize("plant, match", [
    ("host scalar", r"operation #\d+ \(kernel sgd_step_v1<float>\) argument 4: captured as "
                    r"np.float32\(0.05\).*now passes np.float32\(0.0333"),
    ("host math", r"kernel gemm_v1<float>\) argument 0: captured as buffer 0x[0-9a-f]+ \(8, 10\)"),
    ("new input", r"argument 0: captured as buffer 0x[0-9a-f]+ \(8, 1, 8, 8\) float32, the step now passes "
                  r"buffer 0x"),
])
def test_check_finds_what_a_replay_would_get_wrong(plant, match):
    be = make_backend("emulator")
    step = _Step(be, plant)
    captured = graphs.capture(be, step)  # nothing refused at capture: the values are legal, just stale
    with pytest.raises(graphs.GraphReplayError, match=match):
        captured.check(step)


class _ByValueAdam(optim.Adam):
    """Adam passing the step count and rate by value: what a graph would freeze."""

    def _update(self, backend, p, st):
        backend.adam_step(p.data, p.grad, st["exp_avg"], st["exp_avg_sq"], st["step"], self.lr, 0.9, 0.999,
                          1e-8, 0.0)


def test_train_step_with_per_step_host_scalars(capsys):
    """strict + check (the emulator's --graph): the first replay's trace raises. Lenient, unchecked
    (a GPU's default): the first replay differs from the eager step, which is kept, with a warning,
    and training goes on eagerly with the eager run's numbers."""
    be = make_backend("emulator")
    batches = _batches()
    with use_backend(be):
        model = build_model("lenet", 1, 8, 10, seed=0)
        step = TrainStep(model, _ByValueAdam(model.parameters()), be, graph=True, check=True, strict=True)
        step(*batches[0])
        step(*batches[1])
        with pytest.raises(graphs.GraphReplayError, match=r"kernel adam_step_v1<float>\) argument 11"):
            step(*batches[2])
    warnings = []
    lenient = _train_planted(be, batches, warnings.append)
    eager = _train_planted(be, batches, None)
    assert warnings and "first graph replay differs from an eager step" in warnings[0]
    assert lenient == eager


def _train_planted(be, batches, warn):
    with use_backend(be):
        model = build_model("lenet", 1, 8, 10, seed=0)
        step = TrainStep(model, _ByValueAdam(model.parameters()), be, graph=warn is not None, warn=warn)
        losses = [float(be.to_numpy(step(xb, yb)[0])) for xb, yb in batches]
        assert step.mode == "off" or warn is None
        return losses, [p.data.tobytes() for p in model.parameters()]


def test_graph_needs_a_capturing_backend_and_a_counter_free_batch_norm():
    with use_backend("numpy"):
        model = build_model("lenet", 1, 8, 10, seed=0)
        opt = optim.SGD(model.parameters(), lr=0.1)
        with pytest.raises(ValueError, match="backend numpy cannot capture graphs"):
            TrainStep(model, opt, make_backend("numpy"), graph=True, strict=True)
    be = make_backend("emulator")
    with use_backend(be):
        model = nn.Sequential(nn.Conv2d(1, 2, 3, rng=np.random.default_rng(0)),
                              nn.BatchNorm2d(2, momentum=None))
        notes = []
        step = TrainStep(model, optim.SGD(model.parameters(), lr=0.1), be, graph=True, warn=notes.append)
        assert not step.graphed and "momentum=None" in notes[0]


# ---- the update kernels that read their constants from device memory ---------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_device_constant_updates_equal_by_value_updates(emu, dtype):
    rng = np.random.default_rng(2)
    p0, g, m0, v0 = (rng.standard_normal(300).astype(dtype) for _ in range(4))
    v0 = np.abs(v0)
    sgd = dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=1e-2, nesterov=False, first_step=False)
    ref = [a.copy() for a in (p0, m0)]
    emu.sgd_step(ref[0], g, ref[1], *sgd.values())
    out = [a.copy() for a in (p0, m0)]
    emu.sgd_step_dev(out[0], g, out[1], sgd_constants(dtype, *sgd.values()))
    for a, b in zip(out, ref):
        np.testing.assert_array_equal(a, b)
    for decoupled in (False, True):
        ref = [a.copy() for a in (p0, m0, v0)]
        emu.adam_step(*ref[:1], g, *ref[1:], 7, 1e-2, 0.8, 0.99, 1e-6, 0.05, decoupled)
        out = [a.copy() for a in (p0, m0, v0)]
        emu.adam_step_dev(out[0], g, out[1], out[2],
                          adam_constants(dtype, 7, 1e-2, 0.8, 0.99, 1e-6, 0.05, decoupled))
        for a, b in zip(out, ref):
            np.testing.assert_array_equal(a, b)


def test_device_constants_are_checked(emu):
    p = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match=r"hp must be a C-contiguous \(6,\) array of the param's dtype "
                                         r"float32"):
        emu.sgd_step_dev(p, p.copy(), None, np.zeros(6, np.float64))
    with pytest.raises(ValueError, match=r"hp must be a C-contiguous \(9,\)"):
        emu.adam_step_dev(p, p.copy(), p.copy(), p.copy(), np.zeros(6, np.float32))
    with pytest.raises(ValueError, match="step must be an int >= 1"):
        adam_constants(np.float32, 0, 1e-3, 0.9, 0.999, 1e-8, 0.0)


def test_replay_repeats_fills_and_copies(emu):
    """A buffer zeroed and then updated in place in the step must be zeroed again at each replay
    (one the step then accumulates into would otherwise carry the previous replay's values)."""
    g = emu.asarray(np.arange(4, dtype=np.float32))
    hp = emu.zeros((6,), np.float32)
    emu.upload(hp, sgd_constants(np.float32, 0.5, 0.0, 0.0, 0.0, False, False))

    def step():
        acc = emu.zeros((4,), np.float32)
        emu.sgd_step_dev(acc, g, None, hp)       # acc = 0 - 0.5 * g
        twice = emu.empty((2, 4), np.float32)
        emu.copy(twice[0], acc)
        emu.copy(twice[1], acc)
        return twice

    captured = graphs.capture(emu, step)
    for _ in range(2):
        captured.replay()
        expected = np.tile(-0.5 * np.arange(4, dtype=np.float32), (2, 1))
        np.testing.assert_array_equal(captured.outputs, expected)


@pytest.mark.parametrize("x_dtype, labels, error, match", [
    (np.float64, [1, 2], TypeError, "x has dtype float64 but the captured step takes float32"),
    (np.int32, [1, 2], TypeError, "x has dtype int32"),
    (np.float32, [1], ValueError, r"labels must have shape \(2,\) \(one class index per image\), got \(1,\)"),
    (np.float32, [[1], [2]], ValueError, r"labels must have shape \(2,\)"),
    (np.float32, [1.5, 2.0], TypeError, "labels must be an integer array"),
    (np.float32, ["a", "b"], TypeError, "labels must be an integer array"),
])
def test_a_replayed_step_refuses_what_the_eager_step_refuses(x_dtype, labels, error, match):
    # the captured buffers' copies would cast x, truncate labels and broadcast one label to the
    # batch: each must be refused before anything runs, as the eager step's ops refuse them
    be = make_backend("emulator")
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    with use_backend(be):
        model = build_model("lenet", 1, 8, 10, seed=0)
        step = TrainStep(model, optim.SGD(model.parameters(), lr=0.1), be, graph=True, strict=True)
        for _ in range(3):  # eager, capture, verified replay
            step(x, np.array([1, 2]))
        assert step.mode == "replay"
        before = [p.data.copy() for p in model.parameters()]
        with pytest.raises(error, match=match):
            xb = x.astype(x_dtype)
            step(xb.tolist() if x_dtype is np.float64 else xb, labels)  # a host list too
        assert all(np.array_equal(p.data, b) for p, b in zip(model.parameters(), before))


def test_an_eager_step_refuses_float_and_wrapping_labels():
    # cast to int32 before the loss saw them, 1.5 trained as class 1 and 2**32 + 1 as class 1
    with use_backend("numpy"):
        model = build_model("lenet", 1, 8, 10, seed=0)
        step = TrainStep(model, optim.SGD(model.parameters(), lr=0.1), make_backend("numpy"))
        x = np.zeros((2, 1, 8, 8), np.float32)
        with pytest.raises(TypeError, match="labels must be an integer array"):
            step(x, [1.5, 2.0])
        with pytest.raises(ValueError, match="labels must lie in"):
            step(x, np.array([1, 2**32 + 1], np.int64))


def test_capture_misuse_is_refused_by_both_executors():
    # the CuPy executor's checks come before any CUDA call, so they run without a GPU
    from gpuconv.backends.executors import CupyExecutor, EmulatorExecutor
    cuda = CupyExecutor.__new__(CupyExecutor)
    for ex in (EmulatorExecutor(), cuda):
        with pytest.raises(RuntimeError, match="end_capture without begin_capture"):
            ex.end_capture()
    emu = EmulatorExecutor()
    emu.begin_capture()
    cuda._capture_stream = object()  # a capture under way
    for ex in (emu, cuda):
        with pytest.raises(RuntimeError, match="a capture is already under way"):
            ex.begin_capture()


def test_a_capture_that_cannot_start_leaves_eager_steps_with_the_eager_numbers(monkeypatch):
    from gpuconv.backends.executors import EmulatorExecutor

    def no_pool(self):
        raise RuntimeError("no memory pool")

    be = make_backend("emulator")
    batches = _batches(n=3)
    eager = _train(be, "lenet", "sgd", False, batches)
    monkeypatch.setattr(EmulatorExecutor, "capture_pool", no_pool)
    notes = []
    graphed = _train(be, "lenet", "sgd", True, batches, warn=notes.append)
    assert graphed[3].mode == "off" and "capture failed: RuntimeError: no memory pool" in notes[0]
    assert graphed[0] == eager[0]


def test_replayed_steps_check_host_labels_before_upload():
    """The captured loss does not read its labels on the device (a host read a GPU capture
    refuses): TrainStep checks host labels when it uploads them instead."""
    be = make_backend("emulator")
    batches = _batches(n=3)
    with use_backend(be):
        model = build_model("lenet", 1, 8, 10, seed=0)
        step = TrainStep(model, optim.SGD(model.parameters(), lr=0.1), be, graph=True, strict=True)
        for xb, yb in batches:
            step(xb, yb)
        xb, yb = batches[0]
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\) for logits with 10 classes, "
                                             r"got values in \[\d+, 10\]"):
            step(xb, np.where(yb == yb[0], 10, yb))
