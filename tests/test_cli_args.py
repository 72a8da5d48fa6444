"""The command line as a user meets it: ``--help`` of every command in plain words with every default
shown, argument problems refused before any work starts, and ``train --seed`` doing what its help
says."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pytest

from gpuconv import datasets
from gpuconv.tools import bench, check, cli, train

REPO = Path(__file__).resolve().parents[1]  # these tests' checkout, also when testing an installed wheel


def subparsers() -> dict:
    """Command name -> its parser."""
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


COMMANDS = sorted(subparsers())


def help_text(capsys, *argv: str) -> str:
    assert cli.main([*argv, "--help"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", [None] + COMMANDS)
def test_help_is_plain_words(command, capsys):
    text = help_text(capsys, *([command] if command else []))
    assert "usage: gpuconv" in text
    assert "`" not in text                                     # no markup
    assert "%(" not in text and "%%" not in text              # no unexpanded format
    for path in re.findall(r"[\w./-]+\.(?:py|sh|md|txt|cfg|toml)\b", text):
        assert (REPO / path).exists(), f"--help cites {path}, which the repository does not hold"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_shows_its_default(command):
    for action in subparsers()[command]._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)) or not action.option_strings:
            continue                                              # positionals have no default
        assert action.help and "default" in action.help, f"{command} {action.option_strings}: {action.help!r}"


def test_top_level_help_lists_every_command_and_says_how_errors_end(capsys):
    text = help_text(capsys)
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s+\S", text, re.M)
    assert "gpuconv: error:" in text and "status 2" in text and "GPUCONV_DEBUG=1" in text


# ---- refused before any work ----------------------------------------------------------------------
class WorkStarted(Exception):
    pass


def no_work(*args, **kwargs):
    raise WorkStarted


@pytest.fixture
def guarded(monkeypatch):
    """Every command's work fails the test: an argument problem must be found before it."""
    monkeypatch.setattr(bench, "run_bench", no_work)
    monkeypatch.setattr(check, "make_batch", no_work)
    monkeypatch.setattr(datasets, "load_dataset", no_work)
    monkeypatch.setattr(train, "resolve_backend", no_work)


REFUSED = [
    (["bench", "--baseline", "none", "--plot", "r.png"],
     "--plot draws gpuconv time / baseline time and needs a baseline"),
    (["bench", "--baseline", "torch", "--ops", "step", "--plot", "r.png"], "--ops step times none"),
    (["bench", "--backend", "numpy", "--ops", "conv,conv"], "--ops names an item twice"),
    (["bench", "--ops", "conv", "--layers", "L1,P1"], "--layers P1: not conv layers"),
    (["bench", "--layers", "L1,L1"], "--layers names a layer twice"),
    (["bench", "--versions", "all", "--backend", "numpy"], "--versions all applies to the kernel backends"),
    (["bench", "--threads", "0"], "--threads must be >= 1"),
    (["bench", "--backend", "cuda", "--threads", "2", "--baseline", "none"], "--threads sets PyTorch's CPU"),
    (["bench", "--seed", "-1"], "--seed must be >= 0"),
    (["bench", "--baseline", "cupy-gemm"], "need --backend cuda"),
    (["bench", "--repeat", "0"], "--repeat must be >= 1"),
    (["bench", "--json", "same.json", "--plot", "same.json", "--baseline", "torch"], "name the same file"),
    (["check", "--seed", "-1"], "seed must be >= 0"),
    (["check", "--image-size", "0"], "image_size must be >= 1"),
    (["check", "--batch", "0"], "batch must be >= 1"),
    (["check", "--backends", "numpy,numpy"], "two different backends"),
    (["train", "--momentum", "0.5"], "--momentum applies to --optimizer sgd only"),
    (["train", "--lr-gamma", "0.5"], "--lr-gamma applies to --schedule step only"),
    (["train", "--lr-step-epochs", "2", "--schedule", "constant"],
     "--lr-step-epochs applies to --schedule step"),
    (["train", "--epochs", "3", "--stop-after", "1"], "--stop-after ends a run early"),
    (["train", "--optimizer", "sgd", "--momentum", "1.5"], "--momentum must lie in [0, 1)"),
    (["train", "--json", "out", "--plot", "out"], "--json and --plot name the same file"),
    (["train", "--log", "/nonexistent/dir/run.log"], "--log: directory"),
    (["train", "--recipe", "resnet20-cifar", "--label-smoothing", "1"],
     "--label-smoothing must lie in [0, 1)"),
    (["train", "--augment", "crop,rotate"], "--augment: unknown item 'rotate'"),
    (["train", "--augment", "crop=0"], "--augment: crop takes a positive number of pixels"),
    (["train", "--nesterov"], "--nesterov applies to --optimizer sgd only, not adam"),
    (["train", "--optimizer", "sgd", "--momentum", "0", "--nesterov"], "--nesterov needs --momentum > 0"),
    (["train", "--model", "resnet20", "--momentum", "0"], "pass --no-nesterov for plain SGD"),
    (["train", "--schedule", "step", "--lr-milestones", "5,3"], "--lr-milestones must be increasing epochs"),
    (["train", "--lr-milestones", "5"], "--lr-milestones applies to --schedule step only, not cosine"),
    (["train", "--schedule", "step", "--lr-milestones", "5", "--lr-step-epochs", "2"],
     "--lr-milestones and --lr-step-epochs are two ways"),
    (["train", "--schedule", "onecycle", "--warmup-epochs", "1"],
     "--warmup-epochs does not apply to --schedule onecycle"),
    (["train", "--weight-decay", "-1"], "--weight-decay must be >= 0"),
]


@pytest.mark.parametrize("argv, message", REFUSED, ids=[" ".join(a) for a, _ in REFUSED])
def test_argument_problems_are_refused_before_any_work(argv, message, guarded, capsys, tmp_path,
                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpuconv: error:") and message in err, err
    assert not list(tmp_path.iterdir())                        # nothing written


def test_bench_plot_without_matplotlib_is_refused_before_measuring(guarded, monkeypatch, capsys):
    import builtins
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert cli.main(["bench", "--baseline", "torch", "--plot", "r.png"]) == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err


def test_an_unavailable_backend_is_refused_before_any_work(guarded, monkeypatch, capsys):
    from gpuconv import backends
    monkeypatch.setattr(backends, "cuda_unavailable_reason", lambda: "no GPU in this test")
    assert cli.main(["check", "--backends", "numpy,cuda"]) == 2
    assert "backend 'cuda' is not available" in capsys.readouterr().err


def test_valid_plot_requests_pass_the_checks():
    pytest.importorskip("matplotlib")
    cases = bench.check_request("small-cnn", ["conv"], "numpy", ["torch"], "default", None, None, ["L1"], 0,
                                None)
    bench.check_plot(cases, ["conv"], "numpy", ["torch"])           # accepted
    pools = bench.check_request("small-cnn", ["pool"], "cuda", ["cupy-gemm"], "default", None, None, None, 0,
                                None)
    with pytest.raises(ValueError, match="times none of the ops"):
        bench.check_plot(pools, ["pool"], "cuda", ["cupy-gemm"])     # cuBLAS has no pooling to compare


# ---- --seed ---------------------------------------------------------------------------------------
def test_seed_chooses_the_digits_split_and_seed_0_keeps_the_default():
    default = datasets.load_dataset()
    assert np.array_equal(datasets.load_dataset(seed=0).test.labels, default.test.labels)
    assert np.array_equal(datasets.load_dataset(seed=0).test.images, default.test.images)
    other = datasets.load_dataset(seed=1)
    assert (len(other.train), len(other.test)) == (len(default.train), len(default.test))
    assert not np.array_equal(other.test.images, default.test.images)


def test_train_seed_reaches_the_split(monkeypatch):
    seen = []
    real = datasets.load_dataset

    def spy(data_dir=None, seed=0, **kwargs):
        seen.append(seed)
        return real(data_dir, seed=seed, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", spy)
    cfg = train.TrainConfig(backend="numpy", epochs=1, batch_size=512, seed=3, quiet=True)
    a = train.train(cfg)
    assert seen == [3]
    b = train.train(train.TrainConfig(backend="numpy", epochs=1, batch_size=512, seed=3, quiet=True))
    assert a["test_loss"] == b["test_loss"]                   # the same seed, the same run
