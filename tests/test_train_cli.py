"""The gpuconv command: train end to end, metrics schema, errors, info, python -m gpuconv."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from documents import load_valid

from gpuconv import nn
from gpuconv.models import build_model
from gpuconv.tools import report
from gpuconv.tools.cli import main
from gpuconv.tools.train import METRICS_SCHEMA, validate_metrics


def test_train_end_to_end_writes_valid_metrics_and_checkpoint(tmp_path, capsys):
    metrics_path, ckpt = tmp_path / "m.json", tmp_path / "model.npz"
    rc = main(["train", "--backend", "numpy", "--epochs", "2", "--batch-size", "64", "--seed", "1",
               "--json", str(metrics_path), "--save", str(ckpt)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "epoch   1/2" in out and "samples/s" in out and "test accuracy" in out
    doc = load_valid(metrics_path, METRICS_SCHEMA)
    validate_metrics(doc)
    assert set(METRICS_SCHEMA["required"]) <= set(doc)
    assert doc["backend"] == "numpy" and doc["model"] == "lenet" and doc["dataset"] == "digits"
    assert doc["epochs"] == 2 and doc["batch_size"] == 64 and len(doc["history"]) == 2
    assert doc["history"][1]["train_loss"] < doc["history"][0]["train_loss"]
    assert doc["test_accuracy"] > 0.5  # far above the 10% of chance after two epochs
    model = build_model("lenet", 1, 8, 10, seed=99)
    meta = nn.load_checkpoint(ckpt, model)
    assert meta["model"] == "lenet" and meta["metrics"]["test_accuracy"] == doc["test_accuracy"]


def test_default_training_reaches_97_percent_on_the_bundled_digits(tmp_path, capsys):
    # The headline claim: `gpuconv train` with its defaults (LeNet, Adam, cosine schedule, seed 0)
    # on the bundled digits, NumPy backend, ends at >= 97% held-out accuracy.
    metrics_path = tmp_path / "m.json"
    rc = main(["train", "--backend", "numpy", "--quiet", "--json", str(metrics_path)])
    assert rc == 0
    assert capsys.readouterr().out == ""
    doc = load_valid(metrics_path, METRICS_SCHEMA)
    validate_metrics(doc)
    assert (doc["model"], doc["optimizer"], doc["seed"], doc["dataset"]) == ("lenet", "adam", 0, "digits")
    assert doc["train_samples"] + doc["test_samples"] == 1797  # every bundled image is used once
    assert doc["test_accuracy"] >= 0.97


def _write_idx(path, n_train: int, n_test: int) -> None:
    """Two classes that differ in where the bright pixels are (learnable in a few steps), 8x8, as
    MNIST-style IDX files in ``path``."""
    rng = np.random.default_rng(0)

    def make(n):
        labels = rng.integers(0, 2, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 8, 8)).astype(np.uint8)
        images[labels == 1, :4] += 150
        images[labels == 0, 4:] += 150
        return images, labels

    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = make(n)
        for kind, arr in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
            (path / f"{prefix}-{kind}").write_bytes(header + arr.tobytes())


def test_training_loss_falls_with_sgd_on_idx_data(tmp_path, capsys):
    _write_idx(tmp_path, 96, 32)
    metrics_path = tmp_path / "m.json"
    rc = main(["train", "--backend", "numpy", "--data", str(tmp_path), "--optimizer", "sgd",
               "--lr", "0.02", "--epochs", "3", "--batch-size", "16", "--quiet", "--json", str(metrics_path)])
    assert rc == 0
    assert capsys.readouterr().out == ""
    doc = json.loads(metrics_path.read_text())
    losses = [h["train_loss"] for h in doc["history"]]
    assert losses[-1] < 0.5 * losses[0]
    assert doc["dataset"].startswith("idx:") and doc["optimizer"] == "sgd" and doc["test_accuracy"] > 0.9


@pytest.mark.parametrize("optimizer, extra", [
    ("sgd", []), ("adam", []),
    ("sgd", ["--augment", "crop=1,flip,cutout=2", "--label-smoothing", "0.1"]),
])
def test_graph_training_on_the_emulator_equals_eager_training(tmp_path, optimizer, extra, monkeypatch):
    """--graph on the emulator (captured, every replay checked, a short last batch eager between
    replays, a warm-up then cosine rate; augmentation, whose draws change per epoch and image,
    before the captured step) gives the eager run's losses and weights bit for bit (docs/graphs.md
    says why bitwise)."""
    from gpuconv.tools import train as train_module
    steps = []

    class Recorded(train_module.TrainStep):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            steps.append(self)

    monkeypatch.setattr(train_module, "TrainStep", Recorded)
    _write_idx(tmp_path, 40, 8)
    runs = {}
    for mode in ("--graph", "--eager"):
        out = tmp_path / mode[2:]
        out.mkdir()
        assert main(["train", "--backend", "emulator", mode, "--data", str(tmp_path),
                     "--optimizer", optimizer, "--epochs", "3", "--warmup-epochs", "1", "--batch-size", "16",
                     "--quiet", "--json", str(out / "m.json"), "--save", str(out / "c.npz")] + extra) == 0
        doc = json.loads((out / "m.json").read_text())
        runs[mode] = ([(h["train_loss"], h["test_loss"]) for h in doc["history"]], np.load(out / "c.npz"))
    graphed, eager_step = steps
    # 3 batches an epoch (16, 16, 8): eager, capture, eager | verified replay, replay, eager |
    # replay, replay, eager
    assert graphed.mode == "replay" and graphed.replays == 4 and eager_step.mode == "off"
    assert runs["--graph"][0] == runs["--eager"][0]
    graph, eager = runs["--graph"][1], runs["--eager"][1]
    assert graph.files == eager.files
    for k in graph.files:
        if k != "meta":
            np.testing.assert_array_equal(graph[k], eager[k], err_msg=k)


@pytest.mark.parametrize("argv, match", [
    (["train", "--backend", "numpy", "--graph"], "--graph needs the cuda or emulator backend, not numpy"),
    (["train", "--eager", "--graph"], "not allowed with argument"),
    (["train", "--epochs", "0"], "--epochs must be >= 1"),
    (["train", "--lr", "-0.1"], "--lr must be a positive number"),
    (["train", "--data", "/nonexistent/dir", "--backend", "numpy"], "does not exist"),
    (["train", "--json", "/nonexistent/dir/m.json"], "--json: directory"),
    (["train", "--model", "vgg"], "invalid choice"),
    pytest.param(["train", "--backend", "numpy", "--epochs", "1", "--optimizer", "sgd", "--lr", "1e9",
                  "--quiet"], "training diverged at epoch 1",
                 marks=[pytest.mark.filterwarnings("ignore:overflow encountered"),
                        pytest.mark.filterwarnings("ignore:invalid value encountered")]),
    (["train", "--epochs", "two"], "invalid int value"),
    (["frobnicate"], "invalid choice"),
    ([], "required"),
])
def test_user_errors_exit_2_without_traceback(argv, match, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "gpuconv: error:" in err and "Traceback" not in err
    assert match in err


def test_cuda_backend_without_gpu_is_an_error_that_says_why(capsys):
    from gpuconv.backends import cuda_unavailable_reason
    if not cuda_unavailable_reason():
        pytest.skip("a CUDA device is usable here")
    assert main(["train", "--backend", "cuda", "--epochs", "1"]) == 2
    assert "backend 'cuda' is not available" in capsys.readouterr().err


def test_plot_needs_matplotlib_or_writes_a_png(tmp_path, capsys):
    png = tmp_path / "curves.png"
    argv = ["train", "--backend", "numpy", "--epochs", "1", "--quiet", "--plot", str(png)]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert main(argv) == 2
        assert "--plot needs matplotlib" in capsys.readouterr().err
        assert not png.exists()
    else:
        assert main(argv) == 0
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_validate_metrics_rejects_bad_documents():
    good = {k: 0 for k in METRICS_SCHEMA["required"]}
    good.update(schema=METRICS_SCHEMA["$id"], environment=report.environment(), model="lenet",
                backend="numpy", dataset="digits", optimizer="adam", lr=0.1, epochs=1, test_accuracy=0.5,
                train_accuracy=0.5,
                recipe={"name": "default", "summary": "", "expected": "", "settings": {}, "overrides": []},
                history=[{"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5, "test_loss": 1.0,
                          "test_accuracy": 0.5, "seconds": 1.0, "samples_per_second": 10.0}])
    validate_metrics(good)
    for key, value, match in (("test_accuracy", 1.5, r"\$\.test_accuracy: must be <= 1"),
                              ("model", 3, r"\$\.model: expected string"),
                              ("epochs", 2, "1 history entries for 2 epochs"),
                              ("schema", "x", r"\$\.schema: must be 'gpuconv-train/1'"),
                              ("environment", {}, r"\$\.environment: missing key 'date'"),
                              ("wall_seconds", float("nan"), r"\$\.wall_seconds: expected number, got nan")):
        with pytest.raises(ValueError, match=match):
            validate_metrics(dict(good, **{key: value}))
    with pytest.raises(ValueError, match="missing key 'history'"):
        validate_metrics({k: v for k, v in good.items() if k != "history"})
    good["history"][0]["train_accuracy"] = -0.1
    with pytest.raises(ValueError, match=r"\$\.history\[0\]\.train_accuracy: must be >= 0"):
        validate_metrics(good)


def test_info_text_and_json(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "numpy" in out and "backends:" in out and "Python" in out and ("GPU" in out)
    assert main(["info", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["backends"]["numpy"]["available"] is True
    assert set(doc["backends"]) == {"numpy", "emulator", "cuda"}
    if not doc["cuda"]["available"]:
        assert doc["cuda"]["reason"]


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "gpuconv", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("gpuconv ")
    proc = subprocess.run([sys.executable, "-m", "gpuconv", "train", "--epochs", "-1"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "gpuconv: error: --epochs must be >= 1" in proc.stderr
