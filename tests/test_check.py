"""``gpuconv check``: end to end on numpy vs emulator, JSON schema, failure detection, tolerances."""
from __future__ import annotations

import math

import numpy as np
import pytest
from documents import load_valid

from gpuconv import tolerances
from gpuconv.tools import check
from gpuconv.tools.cli import main as cli_main


def needs_emulator():
    pytest.importorskip("gpuconv.backends.kernel_backend")


# ---- tolerances and comparisons (no backend needed) ---------------------------------------------
def test_tolerances_are_the_documented_numbers():
    assert tolerances.tolerance("float32") == 1e-5
    assert tolerances.tolerance(np.float64) == 1e-12
    with pytest.raises(TypeError, match="dtype"):
        tolerances.tolerance(np.float16)


def test_scaled_error_is_relative_to_the_reference_scale():
    ref = np.array([0.0, 2.0, -4.0])
    out = np.array([0.001, 2.0, -4.002])
    abs_err, rel = tolerances.scaled_error(out, ref)
    assert abs_err == pytest.approx(0.002)
    assert rel == pytest.approx(0.002 / 4.0)


def test_nan_never_passes():
    abs_err, rel = tolerances.scaled_error(np.array([1.0, np.nan]), np.array([1.0, 2.0]))
    assert math.isnan(rel)
    assert not tolerances.passes(rel, 1.0)
    assert not tolerances.passes(math.inf, 1.0)
    assert tolerances.passes(1e-6, 1e-5) and not tolerances.passes(2e-5, 1e-5)


def _recording(scale=1.0, nan=False):
    rec = check._Recording()
    rec.order = ["0"]
    rec.types = {"0": "Conv2d"}
    rec.outputs = {"0": np.arange(6.0).reshape(2, 3) * scale}
    rec.dx = {"0": np.ones((2, 3))}
    rec.grads = {"0": {"weight": np.full((3,), 2.0), "bias": np.zeros(3)}}
    rec.loss = np.array([1.5])
    rec.dlogits = np.array([[0.25, -0.25]])
    rec.logits = np.array([[1.0, 2.0]])
    if nan:
        rec.grads["0"]["bias"] = np.array([0.0, np.nan, 0.0])
    return rec


def test_compare_recordings_lists_output_dx_each_grad_and_loss():
    entries = check.compare_recordings(_recording(), _recording(), 1e-5, end_to_end=_recording())
    assert [(e["layer"], e["tensor"]) for e in entries] == [
        ("0", "output"), ("0", "dx"), ("0", "dweight"), ("0", "dbias"), ("loss", "output"), ("loss", "dx"),
        ("network", "logits"), ("network", "loss")]
    assert all(e["passed"] and e["rel_err"] == 0.0 for e in entries)


def test_compare_recordings_fails_on_perturbation_and_on_nan():
    entries = check.compare_recordings(_recording(), _recording(scale=1 + 1e-4, nan=True), 1e-5)
    failed = {e["tensor"] for e in entries if not e["passed"]}
    assert failed == {"output", "dbias"}
    out = next(e for e in entries if e["tensor"] == "output")
    # output values 0..5 scaled by 1 + 1e-4: max abs error 5e-4, reference scale 5
    assert out["max_abs_err"] == pytest.approx(5e-4) and out["rel_err"] == pytest.approx(1e-4)
    assert next(e for e in entries if e["tensor"] == "dbias")["rel_err"] is None


def test_make_batch_scales_digits_to_the_model_input():
    x, y = check.make_batch("digits", 3, 3, 28, seed=1, dtype=np.float32)
    assert x.shape == (3, 3, 28, 28) and x.dtype == np.float32 and x.flags.c_contiguous
    assert y.shape == (3,) and y.dtype == np.int32 and set(y) <= set(range(10))
    # channels repeat the digit and 8 -> 28 upscaling makes 3x3 blocks, up to the N(0, 0.1^2) noise
    assert np.abs(x[:, 0] - x[:, 2]).max() < 1.0
    assert np.abs(x[:, :, :3, :3] - x[:, :, :1, :1]).max() < 1.0
    assert 0.05 < np.std(x[:, 0] - x[:, 2]) / np.sqrt(2) < 0.15
    assert len(np.unique(x)) == x.size               # no two pixels equal: no ties in pooling windows


def test_fill_zero_params_touches_only_all_zero_parameters():
    state = {"w": np.ones((2, 3, 1, 1), np.float32), "z": np.zeros((4, 2, 3, 3), np.float32),
             "b": np.zeros(4, np.float32)}
    out = check.fill_zero_params(state, seed=0)
    assert np.array_equal(out["w"], state["w"])
    assert np.all(out["z"] != 0) and out["z"].dtype == np.float32
    assert np.std(out["z"]) == pytest.approx(1 / math.sqrt(18), rel=0.3)
    assert np.all(out["b"] != 0)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="backends"):
        check.run_check("lenet", ["numpy", "numpy"])
    with pytest.raises(ValueError, match="model"):
        check.run_check("vgg", ["numpy", "emulator"])
    with pytest.raises(ValueError, match="dtype"):
        check.run_check("lenet", ["numpy", "emulator"], dtype="float16")


# ---- end to end on the emulator ----------------------------------------------------------------
def test_check_lenet_numpy_vs_emulator_passes_with_valid_json(tmp_path, capsys):
    needs_emulator()
    path = tmp_path / "check.json"
    rc = cli_main(["check", "--model", "lenet", "--backends", "numpy,emulator", "--batch", "2",
                   "--json", str(path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "PASS" in out and "Conv2d" in out and "MaxPool2d" in out
    doc = load_valid(path, check.CHECK_SCHEMA)
    assert doc["passed"] is True and doc["settings"]["batch"] == 2
    # 12 leaf layers (output + dx each), 5 with weight and bias, the loss (value and gradient),
    # and the whole network end to end (logits and loss)
    assert doc["settings"]["mode"] == "layer"
    assert len(doc["entries"]) == 12 * 2 + 5 * 2 + 2 + 2
    assert all(e["rel_err"] <= 1e-5 for e in doc["entries"])
    conv0 = [e["tensor"] for e in doc["entries"] if e["layer"] == "0"]
    assert conv0 == ["output", "dx", "dweight", "dbias"]
    # The emulator's Linear layers run the GEMM kernel (launch.default_versions), not NumPy's
    # matmul: their products are summed in another order than the reference's, so not all bits agree.
    linear = [e for e in doc["entries"]
              if e["type"] == "Linear" and e["tensor"] in ("output", "dx", "dweight")]
    assert len(linear) == 9 and all(e["max_abs_err"] > 0 for e in linear)


def test_check_exits_1_when_a_backend_is_wrong(monkeypatch, capsys, tmp_path):
    needs_emulator()
    from gpuconv.backends.kernel_backend import KernelBackend
    original = KernelBackend.relu

    def slightly_wrong_relu(self, x):
        y = original(self, x)
        return y * np.float32(1 + 1e-3)

    monkeypatch.setattr(KernelBackend, "relu", slightly_wrong_relu)
    path = tmp_path / "check.json"
    rc = cli_main(["check", "--model", "lenet", "--backends", "numpy,emulator", "--batch", "2",
                   "--image-size", "8", "--json", str(path)])
    out = capsys.readouterr().out
    assert rc == 1
    assert "FAIL" in out
    doc = load_valid(path, check.CHECK_SCHEMA)
    outputs = [e for e in doc["entries"] if e["tensor"] == "output"]
    first_failure = next(e for e in outputs if not e["passed"])
    # the conv before it agrees; the perturbed ReLU is the first layer whose output fails
    assert outputs[0]["layer"] == "0" and outputs[0]["passed"]
    assert (first_failure["layer"], first_failure["type"]) == ("1", "ReLU")
    assert first_failure["rel_err"] == pytest.approx(1e-3, rel=1e-2)


def test_layer_mode_isolates_the_faulty_layer_and_chain_mode_propagates(monkeypatch):
    needs_emulator()
    from gpuconv.backends.kernel_backend import KernelBackend
    original = KernelBackend.max_pool2d_backward

    def wrong_backward(self, dy, indices, g):   # gradient routed correctly, then scaled
        return original(self, dy, indices, g) * np.float32(1.01)

    monkeypatch.setattr(KernelBackend, "max_pool2d_backward", wrong_backward)
    kwargs = dict(batch=1, image_size=8, log=lambda s: None)
    layer = check.run_check("lenet", ["numpy", "emulator"], mode="layer", **kwargs)
    failed = {(e["layer"], e["tensor"]) for e in layer["entries"] if not e["passed"]}
    assert failed == {("2", "dx"), ("5", "dx")}          # the two MaxPool2d layers, nothing else
    chain = check.run_check("lenet", ["numpy", "emulator"], mode="chain", **kwargs)
    failed = {(e["layer"], e["tensor"]) for e in chain["entries"] if not e["passed"]}
    assert ("0", "dweight") in failed and ("5", "dx") in failed and ("7", "dx") not in failed


def test_check_reports_a_backend_that_cannot_run(monkeypatch, capsys):
    needs_emulator()
    from gpuconv import backends
    monkeypatch.setattr(backends, "cuda_unavailable_reason", lambda: "no GPU in this test")
    # unavailable: refused before any work, as an argument problem
    rc = cli_main(["check", "--model", "lenet", "--backends", "numpy,cuda", "--batch", "1"])
    assert rc == 2 and "no GPU in this test" in capsys.readouterr().err
    # available but failing while it runs: reported in the result, which fails
    from gpuconv.backends.kernel_backend import KernelBackend

    def broken(self, *args, **kwargs):
        raise RuntimeError("kernel launch failed in this test")

    monkeypatch.setattr(KernelBackend, "conv2d", broken)
    rc = cli_main(["check", "--model", "lenet", "--backends", "numpy,emulator", "--batch", "1",
                   "--image-size", "8"])
    out = capsys.readouterr().out
    assert rc == 1 and "backend emulator: RuntimeError: kernel launch failed in this test" in out


@pytest.mark.gpu
def test_check_cuda_against_numpy():
    pytest.importorskip("cupy")
    from gpuconv.backends import cuda_unavailable_reason
    if cuda_unavailable_reason():
        pytest.skip(cuda_unavailable_reason())
    doc = check.run_check("lenet", ["numpy", "cuda"], batch=4)
    assert doc["passed"], [e for e in doc["entries"] if not e["passed"]]


@pytest.mark.parametrize("model,size", [("resnet20", 8), ("airbench", 16)])
def test_check_passes_batch_norm_models_and_lists_running_statistics(model, size):
    needs_emulator()
    doc = check.run_check(model, ["numpy", "emulator"], batch=2, image_size=size, log=lambda s: None)
    assert doc["passed"], [e for e in doc["entries"] if not e["passed"]]
    stem_bn = [e["tensor"] for e in doc["entries"] if e["layer"] == "1"]
    assert stem_bn == ["output", "dx", "dweight", "dbias", "running_mean", "running_var"]


def test_check_fails_on_drifting_running_statistics_only(monkeypatch):
    needs_emulator()
    kwargs = dict(batch=2, image_size=8, log=lambda s: None)
    from gpuconv.backends.kernel_backend import KernelBackend
    original = KernelBackend.batch_norm

    def drifting_running_var(self, x, running_mean, running_var, *args):
        out = original(self, x, running_mean, running_var, *args)
        if running_var is not None:
            running_var *= np.float32(1.001)
        return out

    monkeypatch.setattr(KernelBackend, "batch_norm", drifting_running_var)
    doc = check.run_check("resnet20", ["numpy", "emulator"], **kwargs)
    failed = {e["tensor"] for e in doc["entries"] if not e["passed"]}
    assert failed == {"running_var"}
