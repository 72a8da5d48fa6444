"""The workflow after a first run: resume, eval and predict from the command line, --data
detection, --num-classes and GPUCONV_BACKEND."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from cifar_files import write_cifar10_binary
from documents import load_valid

from gpuconv import datasets, nn, use_backend
from gpuconv.models import build_model
from gpuconv.tools.cli import main
from gpuconv.tools.evaluate import EVAL_SCHEMA
from gpuconv.tools.predict import PREDICT_SCHEMA
from gpuconv.tools.train import METRICS_SCHEMA

FAST = ["--backend", "numpy", "--batch-size", "128", "--quiet"]


def _write_idx(directory, n_train=96, n_test=32, seed=0):
    """A small learnable IDX data set (two classes, bright top or bottom half) in ``directory``."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("test", n_test)):
        labels = (np.arange(n) % 2).astype(np.uint8)
        images = rng.integers(0, 60, (n, 8, 8)).astype(np.uint8)
        images[labels == 1, :4] += 150
        images[labels == 0, 4:] += 150
        for kind, arr in (("images.idx3-ubyte", images), ("labels.idx1-ubyte", labels)):
            header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
            (directory / f"{prefix}-{kind}").write_bytes(header + arr.tobytes())
    return directory


@pytest.fixture
def tiny(tmp_path):
    """Arguments for quick runs on a small IDX data set."""
    data = _write_idx(tmp_path / "idx")
    return ["--data", str(data), "--backend", "numpy", "--batch-size", "16", "--quiet"]


def _arrays(path):
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files if k != "meta"}


def _same_arrays(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


@pytest.mark.parametrize("extra", [
    ["--warmup-epochs", "1"], ["--optimizer", "sgd", "--schedule", "step"],
    # every part of a recipe must survive the resume: augmentation, label smoothing, decay groups
    ["--optimizer", "sgd", "--nesterov", "--weight-decay", "0.01", "--no-decay-bn-bias", "--label-smoothing",
     "0.1", "--augment", "crop=2,flip,cutout=3", "--schedule", "onecycle"]])
def test_resumed_run_ends_with_the_weights_of_a_straight_run_bit_for_bit(tmp_path, capsys, tiny, extra):
    straight, half = tmp_path / "straight.npz", tmp_path / "half.npz"
    assert main(["train", "--epochs", "4", "--save", str(straight), "--json", str(tmp_path / "s.json")]
                + tiny + extra) == 0
    assert main(["train", "--epochs", "4", "--stop-after", "2", "--save", str(half)] + tiny + extra) == 0
    assert nn.read_checkpoint(half)["epoch"] == 2
    assert main(["train", "--resume", str(half), "--json", str(tmp_path / "r.json"), "--quiet",
                 "--backend", "numpy"]) == 0
    _same_arrays(_arrays(straight), _arrays(half))      # model, optimizer, schedule, rng: every bit
    s, r = (load_valid(tmp_path / f, METRICS_SCHEMA) for f in ("s.json", "r.json"))
    assert s["history"][3]["test_loss"] == r["history"][3]["test_loss"] and r["epochs"] == 4
    assert [h["epoch"] for h in r["history"]] == [1, 2, 3, 4]


def test_resume_on_the_emulator_is_bit_exact_too(tmp_path, capsys):
    data = _write_idx(tmp_path / "idx", n_train=32, n_test=8)
    args = ["--data", str(data), "--backend", "emulator", "--batch-size", "16", "--quiet", "--epochs", "2"]
    straight, half = tmp_path / "straight.npz", tmp_path / "half.npz"
    assert main(["train", "--save", str(straight)] + args) == 0
    assert main(["train", "--stop-after", "1", "--save", str(half)] + args) == 0
    assert main(["train", "--resume", str(half), "--backend", "emulator", "--quiet"]) == 0
    _same_arrays(_arrays(straight), _arrays(half))


@pytest.mark.parametrize("schedule", [["--schedule", "constant"],
                                      ["--schedule", "step", "--lr-step-epochs", "3"]])
def test_a_run_without_a_fixed_length_can_be_extended_by_more_epochs(tmp_path, capsys, tiny, schedule):
    straight, short = tmp_path / "straight.npz", tmp_path / "short.npz"
    assert main(["train", "--epochs", "4", "--save", str(straight)] + schedule + tiny) == 0
    assert main(["train", "--epochs", "2", "--save", str(short)] + schedule + tiny) == 0
    assert main(["train", "--resume", str(short), "--epochs", "4", "--quiet", "--backend", "numpy"]) == 0
    _same_arrays(_arrays(straight), _arrays(short))


@pytest.mark.parametrize("argv, match", [
    (["--lr", "0.5"], "--lr cannot change on --resume: the run in .* uses 0.002, not 0.5"),
    (["--model", "resnet20"], "--model cannot change on --resume"),
    (["--epochs", "5"], "--epochs cannot change on --resume with the cosine schedule"),
    (["--stop-after", "1"], "has already done 1 of 3 epochs; nothing to resume"),
])
def test_resume_refuses_to_change_the_run(tmp_path, capsys, tiny, argv, match):
    ckpt = tmp_path / "c.npz"
    assert main(["train", "--epochs", "3", "--stop-after", "1", "--save", str(ckpt)] + tiny) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(ckpt), "--quiet"] + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpuconv: error: ") and len(err.splitlines()) == 1
    assert re.search(match, err), err


def test_resume_needs_a_training_checkpoint(tmp_path, capsys):
    model = nn.Sequential(nn.Linear(2, 2, rng=0))
    nn.save_checkpoint(tmp_path / "bare.npz", model)
    assert main(["train", "--resume", str(tmp_path / "bare.npz")]) == 2
    assert "holds no resumable training run" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "absent.npz")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_eval_prints_the_figure_train_printed(tmp_path, capsys):
    ckpt, metrics = tmp_path / "m.npz", tmp_path / "m.json"
    assert main(["train", "--epochs", "2", "--save", str(ckpt), "--json", str(metrics), "--backend", "numpy",
                 "--batch-size", "128"]) == 0
    train_last = capsys.readouterr().out.splitlines()[-1]
    assert main(["eval", str(ckpt), "--backend", "numpy", "--json", str(tmp_path / "e.json")]) == 0
    eval_line = capsys.readouterr().out
    t, e = load_valid(metrics, METRICS_SCHEMA), load_valid(tmp_path / "e.json", EVAL_SCHEMA)
    assert (e["test_accuracy"], e["test_loss"]) == (t["test_accuracy"], t["test_loss"])
    assert e["epoch"] == 2 and e["test_samples"] == t["test_samples"] and e["schema"] == "gpuconv-eval/1"
    figure = f"test accuracy {100 * t['test_accuracy']:.2f}%  test loss {t['test_loss']:.4f}"
    assert train_last.startswith(figure) and eval_line.startswith(figure)


def test_eval_uses_the_digits_split_the_run_was_seeded_with(tmp_path, capsys):
    # --seed chooses the bundled digits' test images: eval must hold out the same ones
    ckpt, metrics = tmp_path / "m.npz", tmp_path / "m.json"
    assert main(["train", "--epochs", "1", "--seed", "3", "--save", str(ckpt), "--json", str(metrics)]
                + FAST) == 0
    assert main(["eval", str(ckpt), "--backend", "numpy", "--json", str(tmp_path / "e.json")]) == 0
    t, e = load_valid(metrics, METRICS_SCHEMA), load_valid(tmp_path / "e.json", EVAL_SCHEMA)
    assert (e["test_accuracy"], e["test_loss"]) == (t["test_accuracy"], t["test_loss"])


def _digits_test_pixels():
    """The raw 0..16 pixels and labels of the bundled digits' test split, as train splits them."""
    with np.load(datasets._DIGITS_PATH, allow_pickle=False) as data:
        images, labels = data["images"], data["labels"]
    _, test = datasets.stratified_split(labels, 0.2, seed=0)
    return images[test], labels[test]


def test_predict_classes_and_probabilities(tmp_path, capsys):
    ckpt = tmp_path / "m.npz"
    metrics = tmp_path / "m.json"
    assert main(["train", "--epochs", "2", "--save", str(ckpt), "--json", str(metrics)] + FAST) == 0
    accuracy = load_valid(metrics, METRICS_SCHEMA)["test_accuracy"]
    pixels, labels = _digits_test_pixels()
    layouts = {"nhw.npy": pixels, "nchw.npy": pixels[:, None], "nhwc.npy": pixels[..., None],
               "float.npy": pixels.astype(np.float32) / 16}
    docs = {}
    for name, array in layouts.items():
        np.save(tmp_path / name, array)
        assert main(["predict", str(ckpt), str(tmp_path / name), "--backend", "numpy",
                     "--json", str(tmp_path / f"{name}.json")]) == 0
        docs[name] = load_valid(tmp_path / f"{name}.json", PREDICT_SCHEMA)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 * len(labels) and out[0].startswith("image 0: class ")
    classes = np.array([p["class"] for p in docs["nhw.npy"]["predictions"]])
    assert np.mean(classes == labels) == accuracy      # the images train held out, the figure it printed
    for doc in docs.values():
        assert [p["class"] for p in doc["predictions"]] == list(classes)
        probs = np.array([p["probabilities"] for p in doc["predictions"]])
        assert probs.shape == (len(labels), 10)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-12)
        np.testing.assert_array_equal(probs.argmax(axis=1), classes)
    np.save(tmp_path / "one.npy", pixels[0])
    assert main(["predict", str(ckpt), str(tmp_path / "one.npy"), "--backend", "numpy"]) == 0
    assert capsys.readouterr().out.startswith(f"image 0: class {classes[0]} ")


@pytest.mark.parametrize("array, match", [
    (np.zeros((2, 3, 8, 8), np.uint8), r"has shape \(2, 3, 8, 8\); the model takes images \(N, 1, 8, 8\)"),
    (np.full((2, 8, 8), 17, np.uint8), r"integer pixels must lie in \[0, 16\] .* got \[17, 17\]"),
    (np.full((2, 8, 8), np.nan, np.float32), r"float images must hold finite intensities in \[0, 1\]"),
    (np.full((2, 8, 8), 2.0, np.float32), r"float images must hold finite intensities in \[0, 1\]"),
    (np.zeros((2, 8, 8), np.complex64), "has dtype complex64"),
    (np.zeros((0, 8, 8), np.uint8), "holds no images"),
    (np.array([{"a": 1}], dtype=object), "not a readable .npy array without pickled objects"),
])
def test_predict_refuses_input_that_does_not_fit_the_model(tmp_path, capsys, array, match):
    ckpt = tmp_path / "m.npz"
    meta = {"model": "lenet", "in_channels": 1, "image_size": 8, "num_classes": 10, "mean": 0.3, "std": 0.4,
            "pixel_scale": 16.0}
    with use_backend("numpy"):
        nn.save_checkpoint(ckpt, build_model("lenet", 1, 8, 10), meta=meta)
    np.save(tmp_path / "x.npy", array, allow_pickle=True)
    assert main(["predict", str(ckpt), str(tmp_path / "x.npy"), "--backend", "numpy"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpuconv: error: INPUT") and re.search(match, err), err


def test_train_detects_cifar_and_eval_refuses_data_that_does_not_fit(tmp_path, capsys):
    ref = write_cifar10_binary(tmp_path / "cifar" / "cifar-10-batches-bin", n=8, n_test=6)
    ckpt = tmp_path / "c.npz"
    assert main(["train", "--data", str(tmp_path / "cifar"), "--epochs", "1", "--save", str(ckpt),
                 "--json", str(tmp_path / "c.json")] + FAST) == 0
    doc = load_valid(tmp_path / "c.json", METRICS_SCHEMA)
    assert doc["dataset"] == "cifar10" and doc["train_samples"] == 40 and doc["test_samples"] == 6
    assert main(["eval", str(ckpt), "--backend", "numpy"]) == 0
    # the test images as users hold them, channels first or last: the same classes
    nchw = ref["test_x"].reshape(-1, 3, 32, 32)
    classes = []
    for name, images in (("nchw.npy", nchw), ("nhwc.npy", nchw.transpose(0, 2, 3, 1))):
        np.save(tmp_path / name, images)
        assert main(["predict", str(ckpt), str(tmp_path / name), "--backend", "numpy",
                     "--json", str(tmp_path / f"{name}.json")]) == 0
        predictions = load_valid(tmp_path / f"{name}.json", PREDICT_SCHEMA)["predictions"]
        classes.append([p["class"] for p in predictions])
    assert classes[0] == classes[1]
    assert np.mean(np.array(classes[0]) == ref["test_y"]) == doc["test_accuracy"]
    capsys.readouterr()
    assert main(["eval", str(ckpt), "--backend", "numpy", "--data", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    digits_ckpt = tmp_path / "d.npz"
    assert main(["train", "--epochs", "1", "--save", str(digits_ckpt)] + FAST) == 0
    capsys.readouterr()
    assert main(["eval", str(digits_ckpt), "--backend", "numpy", "--data", str(tmp_path / "cifar")]) == 2
    assert "does not fit the model" in capsys.readouterr().err


def test_num_classes_widens_the_output_layer(tmp_path, capsys):
    assert main(["train", "--epochs", "1", "--num-classes", "12", "--json", str(tmp_path / "m.json"),
                 "--save", str(tmp_path / "m.npz")] + FAST) == 0
    assert nn.read_checkpoint(tmp_path / "m.npz")["model"]["11.bias"].shape == (12,)
    assert main(["train", "--epochs", "1", "--num-classes", "5"] + FAST) == 2
    assert "labels need 10 classes but num_classes is 5" in capsys.readouterr().err


def test_auto_backend_honours_GPUCONV_BACKEND(tmp_path, capsys, monkeypatch):
    _write_idx(tmp_path, n_train=16, n_test=8)
    monkeypatch.setenv("GPUCONV_BACKEND", "emulator")
    assert main(["train", "--data", str(tmp_path), "--epochs", "1", "--batch-size", "16",
                 "--json", str(tmp_path / "m.json")]) == 0
    assert "backend auto -> emulator (GPUCONV_BACKEND=emulator)" in capsys.readouterr().err
    assert load_valid(tmp_path / "m.json", METRICS_SCHEMA)["backend"] == "emulator"
    assert main(["info"]) == 0
    assert "auto      -> emulator (GPUCONV_BACKEND=emulator)" in capsys.readouterr().out


def test_a_run_saved_before_recipes_existed_resumes_with_the_settings_it_ran_with(tmp_path, capsys, tiny):
    # Checkpoints written before recipes hold no recipe, augmentation, label smoothing, Nesterov or
    # decay-group setting (they trained without them) and an lr_step_epochs even without a step schedule.
    straight, half, old = tmp_path / "straight.npz", tmp_path / "half.npz", tmp_path / "old.npz"
    assert main(["train", "--epochs", "3", "--save", str(straight)] + tiny) == 0
    assert main(["train", "--epochs", "3", "--stop-after", "1", "--save", str(half)] + tiny) == 0
    with np.load(half, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays["meta"]))
    for key in ("recipe", "nesterov", "decay_bn_bias", "lr_milestones", "label_smoothing", "augment"):
        del meta["settings"][key]
    meta["settings"]["lr_step_epochs"] = 1
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(old, **arrays)
    assert main(["train", "--resume", str(old), "--quiet", "--backend", "numpy"]) == 0
    _same_arrays(_arrays(straight), _arrays(old))
