"""KernelBackend plumbing: executors, compile-cache keys, launch validation, poisoning, size
refusal, kernel versions, contiguity, backend selection, and whole training steps on the
emulator against the NumPy backend."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from conftest import assert_close

import gpuconv as gc
from gpuconv import backends
from gpuconv.backends.executors import CupyExecutor, EmulatorExecutor, source_hash
from gpuconv.backends.kernel_backend import KernelBackend, compile_options
from gpuconv.backends.launch import common
from gpuconv.geometry import INT32_MAX, pool2d_geometry

# ---- executors ------------------------------------------------------------------------------------

def test_emulator_backend_identity(emu):
    assert emu.name == "emulator" and emu.xp is np
    assert "emulator" in emu.describe()
    assert emu.is_array(np.zeros(2)) and not emu.is_array([0.0])
    assert isinstance(backends.resolve_backend("emulator"), KernelBackend)


def test_source_hash_changes_when_an_included_header_changes(tmp_path):
    (tmp_path / "common.cuh").write_text("#define A 1\n")
    cu = tmp_path / "k.cu"
    cu.write_text('#include "common.cuh"\n__global__ void k() {}\n')
    h1 = source_hash(cu)
    assert source_hash(cu) == h1
    (tmp_path / "common.cuh").write_text("#define A 2\n")
    assert source_hash(cu) != h1


def test_cupy_executor_compiles_source_with_hash_option_through_nvrtc(monkeypatch):
    """With a stand-in cupy module: the executor passes code=, the standard options plus the
    source hash, the name expressions and backend='nvrtc' (CuPy's path= would expect a cubin)."""
    calls = {}

    class FakeRawModule:
        def __init__(self, **kwargs):
            calls.update(kwargs)

    fake = types.SimpleNamespace(RawModule=FakeRawModule, ndarray=np.ndarray)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    ex = CupyExecutor()
    path = gc._paths.cuda_dir() / "elementwise.cu"
    ex.load(path, compile_options(), ("relu_forward_v1<float>",))
    assert calls["code"] == path.read_text()
    assert calls["options"][:len(compile_options())] == compile_options()
    assert f"-DGPUCONV_SRC_HASH=0x{source_hash(path)}" in calls["options"]
    assert calls["name_expressions"] == ("relu_forward_v1<float>",)
    assert calls["backend"] == "nvrtc"
    assert not any("fast" in o for o in calls["options"])


def test_emulator_executor_rejects_unknown_order():
    with pytest.raises(ValueError, match="order"):
        EmulatorExecutor(order="sideways")


def test_each_file_is_compiled_once_per_backend(emu):
    fn1 = emu.function("elementwise.cu", "relu_forward_v1<float>")
    mod = emu._modules["elementwise.cu"]
    emu.function("elementwise.cu", "add_v2<double>")
    assert emu._modules["elementwise.cu"] is mod
    assert emu.function("elementwise.cu", "relu_forward_v1<float>") is fn1
    with pytest.raises(ValueError, match="no launch module"):
        emu.function("nonexistent.cu", "k")


# ---- launch validation ----------------------------------------------------------------------------

def test_launch_refuses_python_scalars_and_bad_shapes(emu):
    fn = emu.function("elementwise.cu", "relu_forward_v1<float>")
    x, y = np.ones(8, np.float32), np.empty(8, np.float32)
    with pytest.raises(TypeError, match="argument 2"):
        emu.launch(fn, (1,), (32,), (x, y, 8))
    with pytest.raises(TypeError, match="argument 2"):
        emu.launch(fn, (1,), (32,), (x, y, np.int64(8)))
    with pytest.raises(ValueError, match="block"):
        emu.launch(fn, (1,), (2048,), (x, y, np.int32(8)))
    with pytest.raises(ValueError, match="block"):
        emu.launch(fn, (1,), (32, 32, 2), (x, y, np.int32(8)))
    with pytest.raises(ValueError, match="grid"):
        emu.launch(fn, (0,), (32,), (x, y, np.int32(8)))
    with pytest.raises(ValueError, match="shared_mem"):
        emu.launch(fn, (1,), (32,), (x, y, np.int32(8)), shared_mem=64 * 1024)
    with pytest.raises(ValueError, match="C-contiguous"):
        emu.launch(fn, (1,), (32,), (np.ones(16, np.float32)[::2], y, np.int32(8)))
    emu.launch(fn, (1,), (32,), (x, y, np.int32(8)))
    np.testing.assert_array_equal(y, x)


# ---- poisoning ------------------------------------------------------------------------------------

def test_empty_is_poisoned_when_asked(monkeypatch):
    be = KernelBackend(EmulatorExecutor(), poison=True)
    assert np.isnan(be.empty((3, 2), np.float32)).all()
    assert (be.empty((4,), np.int32) == -7).all()
    monkeypatch.setenv("GPUCONV_POISON", "1")
    assert KernelBackend(EmulatorExecutor()).poison
    monkeypatch.setenv("GPUCONV_POISON", "0")
    assert not KernelBackend(EmulatorExecutor()).poison
    assert not KernelBackend(EmulatorExecutor(), poison=False).poison
    assert "poison" in be.describe()


def test_poisoned_backend_outputs_are_fully_written(emu):
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(np.float32)
    g = pool2d_geometry(x.shape, 2, 2, 1, 1, True)
    y, idx = emu.max_pool2d(x, g)
    assert not np.isnan(y).any() and (idx >= 0).all()


# ---- sizes ----------------------------------------------------------------------------------------

def test_sizes_overflowing_int32_are_refused_before_any_copy(emu):
    huge = np.broadcast_to(np.zeros(1, np.float32), (INT32_MAX + 1,))  # no memory behind it
    for call in (lambda: emu.relu(huge), lambda: emu.add(huge, huge), lambda: emu.dropout(huge, 0.5, 0),
                 lambda: emu.softmax_cross_entropy(huge.reshape(2**16, 2**15), np.zeros(2**16, np.int32))):
        with pytest.raises(ValueError, match="int32"):
            call()
    with pytest.raises(ValueError, match="int32"):
        common.check_elements("x", INT32_MAX + 1)
    assert common.check_elements("x", INT32_MAX) == INT32_MAX


def test_linear_refuses_int32_overflow_before_a_contiguous_copy(monkeypatch):
    be = KernelBackend(EmulatorExecutor())
    monkeypatch.setattr(be, "contiguous", lambda a: pytest.fail("contiguous copy before the size check"))
    huge = np.broadcast_to(np.zeros(1, np.float32), (2**16, 2**15))  # 2^31 elements, no memory
    w = np.zeros((4, 2**15), np.float32)
    with pytest.raises(ValueError, match="int32"):
        be.linear(huge, w, None)
    with pytest.raises(ValueError, match="int32"):
        be.linear_backward(np.zeros((2**16, 4), np.float32), huge, w)


def test_grid_stride_grid_is_capped():
    grid, block = common.grid_1d(INT32_MAX, 256)
    assert grid[0] == common.MAX_GRID_STRIDE_BLOCKS and grid[0] * block[0] < 2**31
    assert common.grid_1d(0)[0] == (1, 1, 1)


# ---- versions -------------------------------------------------------------------------------------

def test_versions_default_override_and_context(emu):
    defaults = KernelBackend.default_versions()
    for op in ("conv2d_forward", "max_pool2d_backward", "avg_pool2d_backward", "l2_pool2d_backward",
               "elementwise", "softmax_cross_entropy", "linear_gemm", "sgd_step", "adam_step"):
        assert op in defaults
        assert emu.version(op) == defaults[op]
    be = KernelBackend(EmulatorExecutor(), versions={"max_pool2d_backward": 1})
    assert be.version("max_pool2d_backward") == 1
    with be.use_versions({"max_pool2d_backward": 2, "elementwise": 1}):
        assert be.version("max_pool2d_backward") == 2 and be.version("elementwise") == 1
        with be.use_versions({"elementwise": 2}):
            assert be.version("elementwise") == 2
        assert be.version("elementwise") == 1
    assert be.version("max_pool2d_backward") == 1
    with pytest.raises(ValueError, match="unknown op"):
        KernelBackend(EmulatorExecutor(), versions={"max_pool": 1})
    with pytest.raises(ValueError, match="must be one of"):
        KernelBackend(EmulatorExecutor(), versions={"max_pool2d_backward": 7})
    with pytest.raises(ValueError, match="unknown op"):
        emu.version("nope")


def test_selected_version_is_the_one_launched(monkeypatch):
    be = KernelBackend(EmulatorExecutor())
    names = []
    orig = be.function
    monkeypatch.setattr(be, "function", lambda f, n: names.append(n) or orig(f, n))
    x = np.ones(8, np.float32)
    with be.use_versions({"elementwise": 1}):
        be.relu(x)
    be.relu(x)
    be.relu(np.ones(9, np.float32)[1:])  # 4-byte offset: v2 falls back to v1
    assert names == ["relu_forward_v1<float>", "relu_forward_v2<float>", "relu_forward_v1<float>"]


# ---- contiguity -----------------------------------------------------------------------------------

def test_contiguous_copies_only_when_needed(emu):
    a = np.ones((4, 4), np.float32)
    assert emu.contiguous(a) is a
    t = emu.contiguous(a.T[:, :3])
    assert t.flags.c_contiguous
    np.testing.assert_array_equal(emu.relu(a.T[::2]), np.maximum(a.T[::2], 0))


def test_asarray_and_to_numpy_round_trip(emu):
    a = emu.asarray([1, 2, 3], np.float32)
    assert a.dtype == np.float32 and emu.is_array(a)
    assert isinstance(emu.to_numpy(a), np.ndarray)


# ---- backend selection ----------------------------------------------------------------------------

def test_cuda_unavailable_is_an_error_saying_why_and_auto_falls_back(monkeypatch, caplog):
    monkeypatch.setattr(backends, "cuda_unavailable_reason", lambda: "CuPy reports 0 CUDA devices")
    monkeypatch.setattr(backends, "_instances", {})
    with pytest.raises(backends.BackendUnavailable, match="0 CUDA devices"):
        backends.resolve_backend("cuda")
    with caplog.at_level("INFO", logger="gpuconv"):
        assert backends.resolve_backend("auto").name == "numpy"
    assert "0 CUDA devices" in caplog.text


def test_cuda_reason_names_cupy_when_not_installed():
    reason = backends.cuda_unavailable_reason()
    try:
        import cupy  # noqa: F401
    except Exception:
        assert "CuPy" in reason
    else:
        pytest.skip("CuPy is installed")


# ---- training steps -------------------------------------------------------------------------------

def _small_cnn(seed: int):
    from gpuconv import nn
    rng = np.random.default_rng(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1, rng=rng), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3, padding=1, rng=rng), nn.Tanh(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(4 * 2 * 2, 10, rng=rng))


def _train(backend, optimizer: str, steps: int = 3):
    from gpuconv import nn, optim
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 1, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 10, 6)
    with gc.use_backend(backend) as be:
        model = _small_cnn(7).to(backend)
        loss_fn = nn.SoftmaxCrossEntropy()
        opt = (optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if optimizer == "sgd"
               else optim.Adam(model.parameters(), lr=1e-2))
        xb, lb = be.asarray(x), be.asarray(labels)
        losses = []
        for _ in range(steps):
            model.zero_grad()
            loss = loss_fn(model(xb), lb)
            assert be.is_array(loss) and loss.shape == ()
            model.backward(loss_fn.backward())
            opt.step()
            losses.append(float(be.to_numpy(loss)))
    return np.array(losses)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_training_steps_match_numpy(be, optimizer):
    ref = _train("numpy", optimizer)
    out = _train(be, optimizer)
    assert not np.isnan(out).any()
    assert_close(out, ref, np.float32, what=f"{optimizer} losses on {be.name}")
    assert ref[-1] < ref[0]  # the steps do train
