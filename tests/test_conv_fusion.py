"""Fused conv epilogues and the layers that use them.

Kernels (emulator; through CuPy in the ``gpu``-marked cases): every forward version with each
epilogue (bias; ReLU; bias + ReLU; bias + residual + ReLU; residual alone) against the NumPy
reference of the unfused ops (conv2d, add, relu), on the conv tests' geometries (output planes with
P*Q a multiple of 4, where forward v2 stores float4, and odd ones, where it stores scalars; a
residual view not aligned for float4), and bitwise against the unfused kernels; every
backward-data version with the ReLU mask (``relu_y``) likewise; thread orders and determinism.
Layers: models give the same bits fused and unfused on every backend, and the fused ones launch
fewer kernels per training step (the saving worked out from each architecture).
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    BACKENDS,
    assert_close,
    assert_deterministic,
    backend_params,
    make_backend,
    recording_launches,
)
from test_kernels_conv import CASES, DTYPES, FORWARD, TF32_FORWARD

import gpuconv as gc
from gpuconv import emulator, models, nn
from gpuconv import functional as F
from gpuconv.backends import launch
from gpuconv.backends.launch import conv
from gpuconv.backends.numpy_backend import NumpyBackend

# name -> (bias, residual, relu)
EPILOGUES = {
    "bias": (True, False, False),
    "relu": (False, False, True),
    "bias-relu": (True, False, True),
    "bias-residual-relu": (True, True, True),
    "residual": (False, True, False),
}
FIXED = CASES[:8]  # the hand-picked geometries of test_kernels_conv
REF = NumpyBackend()


def _dev(be, a, dtype):
    return be.asarray(np.ascontiguousarray(a, dtype=dtype))


def _residual(case) -> np.ndarray:
    return np.random.default_rng(case.g.N * 1000 + case.g.K).standard_normal(case.g.y_shape)


def _relu_y(case) -> np.ndarray:
    """A ReLU's output of x's shape: about half zeros."""
    return np.maximum(np.random.default_rng(case.g.C).standard_normal(case.g.x_shape), 0.0)


def _forward_reference(case, bias: bool, residual: bool, relu: bool) -> np.ndarray:
    """The unfused ops on the NumPy reference, float64."""
    y = REF.conv2d(case.x, case.w, case.b if bias else None, case.g)
    if residual:
        y = REF.add(y, _residual(case))
    return REF.relu(y) if relu else y


def _fused(be, case, dtype, version, bias, residual, relu, residual_array=None):
    x, w, b = (_dev(be, a, dtype) for a in (case.x, case.w, case.b))
    if residual and residual_array is None:
        residual_array = _dev(be, _residual(case), dtype)
    return conv.forward(be, x, w, b if bias else None, case.g, version, relu=relu,
                        residual=residual_array if residual else None)


def test_cases_cover_the_vector_and_the_scalar_stores():
    pq4 = [c.g.P * c.g.Q % 4 == 0 for c in CASES]
    assert any(pq4) and not all(pq4)
    assert any(c.g.P * c.g.Q % 4 == 0 for c in FIXED) and not all(c.g.P * c.g.Q % 4 == 0 for c in FIXED)


class TestForwardEpilogue:
    @pytest.mark.parametrize("epilogue", EPILOGUES)
    @pytest.mark.parametrize("version,dtype", FORWARD)
    def test_matches_the_unfused_reference(self, be, version, dtype, epilogue):
        # The default version on every geometry of the conv tests, the others on the hand-picked ones.
        cases = CASES if version == conv.DEFAULT_VERSIONS["conv2d_forward"] else FIXED
        if version in TF32_FORWARD:
            cases = cases[:2]
        precision = launch.precision("conv2d_forward", version)
        for case in cases:
            y = _fused(be, case, dtype, version, *EPILOGUES[epilogue])
            assert_close(be.to_numpy(y), _forward_reference(case, *EPILOGUES[epilogue]), dtype,
                         precision=precision, what=f"forward v{version} {epilogue} {case}")

    @pytest.mark.parametrize("version", conv.VERSIONS["conv2d_forward"])
    def test_same_bits_as_the_unfused_kernels(self, be, version):
        for case in FIXED[:2] if version in TF32_FORWARD else FIXED:
            r = _dev(be, _residual(case), np.float32)
            fused = _fused(be, case, np.float32, version, True, True, True, r)
            x, w, b = (_dev(be, a, np.float32) for a in (case.x, case.w, case.b))
            unfused = be.relu(be.add(conv.forward(be, x, w, b, case.g, version), r))
            assert fused.tobytes() == unfused.tobytes(), f"v{version} {case}"

    @pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
    def test_residual_not_vector_aligned(self, be, dtype):
        # A contiguous view one element into its buffer cannot be read as gc_vec4: v2 stores scalars.
        case = next(c for c in FIXED if c.g.P * c.g.Q % 4 == 0)
        size = int(np.prod(case.g.y_shape))
        buf = be.asarray(np.zeros(size + 1, dtype))
        r = buf[1:].reshape(case.g.y_shape)
        r[...] = be.asarray(_residual(case).astype(dtype))
        assert be.data_ptr(r) % (4 * np.dtype(dtype).itemsize) != 0
        y = _fused(be, case, dtype, 2, True, True, True, r)
        assert_close(be.to_numpy(y), _forward_reference(case, True, True, True), dtype,
                     what=f"misaligned residual {case}")

    def test_relu_propagates_nan_as_the_relu_op(self, be):
        case = FIXED[1]
        r = _residual(case)
        r.reshape(-1)[::7] = np.nan
        r.reshape(-1)[1::7] = -np.inf
        r32 = _dev(be, r, np.float32)
        fused = _fused(be, case, np.float32, 2, True, True, True, r32)
        x, w, b = (_dev(be, a, np.float32) for a in (case.x, case.w, case.b))
        unfused = be.relu(be.add(conv.forward(be, x, w, b, case.g), r32))
        assert np.isnan(be.to_numpy(fused)).any()
        assert fused.tobytes() == unfused.tobytes()

    @pytest.mark.parametrize("version", [2, 3, 4])
    def test_orders_agree(self, emu, version):
        cases = [CASES[5], next(c for c in FIXED if c.g.P * c.g.Q % 4 == 0)]
        for case in cases[:1] if version in TF32_FORWARD else cases:
            with recording_launches(emu) as launches:
                _fused(emu, case, np.float32, version, True, True, True)
            assert len(launches) == 1
            for fn, grid, block, args, shared_mem in launches:
                emulator.check_orders(fn, grid, block, args, shared_mem=shared_mem)


# (version, dtype) of every backward-data kernel: float32-only versions (TF32) skip float64.
BACKWARD_DATA = [pytest.param(v, dt, id=f"v{v}-{'f32' if dt == np.float32 else 'f64'}")
                 for v in conv.VERSIONS["conv2d_backward_data"] for dt in DTYPES
                 if dt == np.float32 or ("conv2d_backward_data", v) not in conv.FLOAT32_ONLY]


class TestBackwardDataMask:
    @pytest.mark.parametrize("version,dtype", BACKWARD_DATA)
    def test_matches_the_unfused_reference(self, be, version, dtype):
        cases = CASES if version == conv.DEFAULT_VERSIONS["conv2d_backward_data"] else FIXED
        precision = launch.precision("conv2d_backward_data", version)
        for case in cases:
            relu_y = _relu_y(case)
            dx = conv.backward_data(be, _dev(be, case.dy, dtype), _dev(be, case.w, dtype), case.g, version,
                                    relu_y=_dev(be, relu_y, dtype))
            assert_close(be.to_numpy(dx), REF.relu_backward(case.dx_ref, relu_y), dtype, precision=precision,
                         what=f"backward-data v{version} through ReLU {case}")

    @pytest.mark.parametrize("version", conv.VERSIONS["conv2d_backward_data"])
    def test_same_bits_as_the_unfused_kernels(self, be, version):
        for case in FIXED:
            dy, w, relu_y = (_dev(be, a, np.float32) for a in (case.dy, case.w, _relu_y(case)))
            fused = conv.backward_data(be, dy, w, case.g, version, relu_y=relu_y)
            unfused = be.relu_backward(conv.backward_data(be, dy, w, case.g, version), relu_y)
            assert fused.tobytes() == unfused.tobytes(), f"v{version} {case}"

    def test_orders_agree_and_deterministic(self, emu):
        for case in (CASES[0], CASES[5]):
            dy, x, w = (_dev(emu, a, np.float32) for a in (case.dy, _relu_y(case), case.w))
            with recording_launches(emu) as launches:
                conv.backward_data(emu, dy, w, case.g, relu_y=x)
            for fn, grid, block, args, shared_mem in launches:
                emulator.check_orders(fn, grid, block, args, shared_mem=shared_mem)
            assert_deterministic(emu, conv.backward, dy, x, w, case.g, True, True, True, True,
                                 what=f"backward through ReLU {case}")


# ---- the functional API ----------------------------------------------------------------------------

class TestFunctional:
    def test_conv2d_relu_is_the_composition(self, numpy_default):
        rng = np.random.default_rng(3)
        x, w, b = rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
        r = rng.standard_normal((2, 4, 3, 3))
        y = F.conv2d(x, w, b, stride=2, padding=1)
        assert np.array_equal(F.conv2d_relu(x, w, b, stride=2, padding=1), F.relu(y))
        assert np.array_equal(F.conv2d_relu(x, w, b, stride=2, padding=1, residual=r), F.relu(F.add(y, r)))
        y0 = F.conv2d(x, w, stride=2, padding=1)
        assert np.array_equal(F.conv2d_relu(x, w, stride=2, padding=1), F.relu(y0))

    def test_through_relu_is_relu_backward_of_dx(self, numpy_default):
        rng = np.random.default_rng(4)
        x = np.maximum(rng.standard_normal((2, 3, 5, 5)), 0)
        w, dy = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal((2, 4, 5, 5))
        dx, dw, db = F.conv2d_backward(dy, x, w, padding=1)
        mdx, mdw, mdb = F.conv2d_backward(dy, x, w, padding=1, through_relu=True)
        assert np.array_equal(mdx, F.relu_backward(dx, x))
        assert np.array_equal(mdw, dw) and np.array_equal(mdb, db)

    def test_bad_arguments(self, numpy_default):
        x, w = np.zeros((1, 2, 4, 4)), np.zeros((3, 2, 3, 3))
        with pytest.raises(ValueError, match="residual must have shape"):
            F.conv2d_relu(x, w, residual=np.zeros((1, 3, 4, 4)))
        with pytest.raises(TypeError, match="residual"):
            F.conv2d_relu(x, w, residual=[[0.0]])
        with pytest.raises(TypeError, match="dtype"):
            F.conv2d_relu(x, w, residual=np.zeros((1, 3, 2, 2), np.float32))
        with pytest.raises(TypeError, match="through_relu"):
            F.conv2d_backward(np.zeros((1, 3, 2, 2)), x, w, through_relu=1)


# ---- layers ----------------------------------------------------------------------------------------

def _custom_models(dtype):
    """Structures the fusion rules must get right: ReLU after ReLU, a container ending in a conv,
    a residual body ending in a ReLU (not fusable), a projection shortcut, a conv first in its
    container."""
    rng = np.random.default_rng(11)

    def c(cin, cout, **kw):
        return nn.Conv2d(cin, cout, 3, padding=1, rng=rng, dtype=dtype, **kw)

    return {
        "relu-relu": nn.Sequential(c(2, 4), nn.ReLU(), nn.ReLU(), c(4, 3), nn.ReLU(), c(3, 2)),
        "nested": nn.Sequential(nn.Sequential(c(2, 4), nn.ReLU(), c(4, 4)), nn.ReLU(),
                                nn.Sequential(c(4, 3)), nn.ReLU(), c(3, 2, bias=False)),
        "residual-body-ends-in-relu": nn.Sequential(nn.Residual(nn.Sequential(c(2, 2), nn.ReLU())), nn.ReLU(),
                                                    c(2, 2)),
        "projection": nn.Sequential(
            nn.Residual(nn.Sequential(c(2, 4, stride=2), nn.ReLU(), c(4, 4)),
                        nn.Conv2d(2, 4, 1, stride=2, rng=rng, dtype=dtype)), nn.ReLU(), c(4, 2)),
    }


def _zoo(dtype):
    return {name: models.build_model(name, 1, 8, 10, seed=5, dtype=dtype)
            for name in ("lenet", "cifar-small", "resnet20-fixup", "resnet20")}


def _randomise(model, seed: int) -> None:
    """Parameters drawn afresh (Fixup's zero-initialised convs would hide the residual branch)."""
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.data[...] = p.data.dtype.type(0.5) * rng.standard_normal(p.shape).astype(p.dtype)


def _step(be, model, x, labels):
    """Loss, input gradient and parameter gradients of one forward/backward, on the host."""
    with gc.use_backend(be):
        model.to(be)
        logits = model.forward(be.asarray(x))
        loss, dlogits = F.softmax_cross_entropy(logits, be.asarray(labels))
        dx = model.backward(dlogits)
        out = [be.to_numpy(loss), be.to_numpy(logits), be.to_numpy(dx)]
        return out + [be.to_numpy(p.grad) for p in model.parameters()]


def _fused_and_unfused(be, model):
    _randomise(model, 1)
    first = next(model.parameters())
    x = np.random.default_rng(2).standard_normal((2, first.shape[1], 8, 8)).astype(first.dtype)
    labels = np.array([1, 0])
    return _step(be, model.set_fusion(True), x, labels), _step(be, model.set_fusion(False), x, labels)


def _flat_model(model):
    """The custom models end in a conv: flatten to logits for the loss."""
    return nn.Sequential(model, nn.Flatten())


@pytest.mark.parametrize("backend", backend_params(BACKENDS))
def test_models_same_bits_fused_and_unfused(backend):
    be = make_backend(backend)
    dtype = np.float32
    zoo = _zoo(dtype)
    if backend == "emulator":
        del zoo["resnet20"]  # nothing fused (test_fusion_saves_launches); the slowest on the emulator
    cases = dict(zoo, **{k: _flat_model(m) for k, m in _custom_models(dtype).items()})
    for name, model in cases.items():
        fused, unfused = _fused_and_unfused(be, model)
        for i, (a, b) in enumerate(zip(fused, unfused)):
            assert a.tobytes() == b.tobytes(), f"{name}: output {i} differs fused and unfused"


def _launches_per_step(emu, model, x, labels):
    with gc.use_backend(emu), recording_launches(emu, run=False) as launches:  # which, not what
        logits = model.forward(emu.asarray(x))
        _, dlogits = F.softmax_cross_entropy(logits, emu.asarray(labels))
        model.backward(dlogits)
    return len(launches)


# Launches a training step saves with fusion, from each architecture: one per ReLU after a conv
# (its relu_forward), one per residual add before a ReLU (its add), one per ReLU whose only reader is
# a conv in the same container (its relu_backward).
#   lenet: conv1-ReLU, conv2-ReLU; pools between the convs: 2.
#   cifar-small: three conv-ReLU pairs; conv2 reads conv1's ReLU directly: 3 + 1.
#   resnet20-fixup: stem conv-ReLU (1); each of 9 blocks: conv1-ReLU (1), conv2 + skip + ReLU
#       (2: add and relu), conv2 reads conv1's ReLU (1): 1 + 9 * 4.
#   resnet20: every conv is followed by a batch norm, nothing to fuse: 0.
SAVED_LAUNCHES = {"lenet": 2, "cifar-small": 4, "resnet20-fixup": 37, "resnet20": 0}


def test_fusion_saves_launches(emu):
    for name, model in _zoo(np.float32).items():
        model.to(emu)
        x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
        labels = np.array([1, 2])
        unfused = _launches_per_step(emu, model.set_fusion(False), x, labels)
        fused = _launches_per_step(emu, model.set_fusion(True), x, labels)
        assert unfused - fused == SAVED_LAUNCHES[name], f"{name}: {unfused} unfused, {fused} fused"


def test_fusion_switch(monkeypatch):
    monkeypatch.setenv("GPUCONV_FUSION", "0")
    assert not any(m.fusion for _, m in models.build_model("lenet", 1, 8, 10).named_modules())
    monkeypatch.delenv("GPUCONV_FUSION")
    model = models.build_model("lenet", 1, 8, 10)
    assert all(m.fusion for _, m in model.named_modules())
    assert not any(m.fusion for _, m in model.set_fusion(False).named_modules())
    with pytest.raises(TypeError, match="enabled"):
        model.set_fusion("no")
    for value in ("false", "off", "no", "2"):  # must not leave fusion on without a word
        monkeypatch.setenv("GPUCONV_FUSION", value)
        with pytest.raises(ValueError, match=f"GPUCONV_FUSION must be 0 .* or 1 .*, got '{value}'"):
            models.build_model("lenet", 1, 8, 10)


def test_fused_pairs_of_a_container():
    conv1, relu1, conv2, relu2, pool = (nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3), nn.ReLU(),
                                        nn.MaxPool2d(2))
    seq = nn.Sequential(conv1, relu1, conv2, relu2, pool, nn.ReLU())
    assert seq._steps() == [(conv1, True), (conv2, True), (pool, False), (seq[5], False)]
    assert not seq.relu_epilogue(False)
    assert nn.Sequential(conv1, relu1, conv2).relu_epilogue(True)
    assert not nn.Residual(nn.Sequential(conv1, relu1)).relu_epilogue(False)
    assert not nn.Residual(conv2).relu_epilogue(True)  # one residual add per kernel
    with pytest.raises(ValueError, match="Sequential.forward_relu"):
        seq.forward_relu(np.zeros((1, 1, 9, 9), np.float32))
    with pytest.raises(ValueError, match="after a residual add"):
        x = np.zeros((1, 2, 5, 5), np.float32)
        nn.Residual(conv2).forward_relu(x, np.zeros((1, 2, 3, 3), np.float32))
    seq.set_fusion(False)
    assert all(not fused for _, fused in seq._steps())


def test_backward_before_forward_names_the_layer():
    with pytest.raises(RuntimeError, match="Sequential.backward called before forward"):
        nn.Sequential(nn.Conv2d(1, 1, 1)).backward(np.zeros((1, 1, 1, 1), np.float32))


def test_profile_runs_the_fused_variants_its_models_run(emu):
    from gpuconv.tools import profile, suites
    flags = conv.epilogue_flags
    for case in suites.get_suite("small-cnn"):
        if case.family != "conv":
            continue
        runs = profile._conv_runs(case, 1, np.random.default_rng(0))
        with recording_launches(emu, run=False) as launches:
            runs["conv2d_forward"](emu, 2)
            runs["conv2d_backward_data"](emu, 2)
        (_, _, _, fwd, _), (_, _, _, bwd, _) = launches
        assert fwd[5] == flags(True, False, case.relu_after), case.id
        assert bwd[4] == int(case.relu_before), case.id
    fused = {c.id for c in suites.get_suite("small-cnn") if c.family == "conv" and c.relu_after}
    assert fused == {"L1", "L2", "C6"}  # LeNet's two convs and the small CIFAR CNN's are followed by a ReLU
