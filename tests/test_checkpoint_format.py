"""A checkpoint names its format; a file of any other format (an unknown version of gpuconv's, or
something else with the same layout) is refused before anything is loaded, and an optimizer
state that fails its checks leaves the model as it was."""
from __future__ import annotations

import numpy as np
import pytest

from gpuconv import nn, optim
from gpuconv.nn.checkpoint import FORMAT, read_checkpoint, restore_checkpoint


def _model(seed):
    return nn.Sequential(nn.Linear(3, 2, rng=seed))


def _rewrite_format(src, dst, fmt):
    """dst: the arrays of checkpoint src with the 'format' entry replaced by ``fmt``."""
    with np.load(src, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["format"] = fmt
    np.savez(dst, **arrays)
    return dst


@pytest.mark.parametrize("fmt, match", [
    ("gpuconv-checkpoint/3", "cannot read"), ("gpuconv-checkpoint/0", "cannot read"),
    ("gpuconv-checkpoint/2.1", "not a gpuconv checkpoint"),
    ("gpuconv-checkpoint/", "not a gpuconv checkpoint"),
    ("other-checkpoint/2", "not a gpuconv checkpoint"), (FORMAT.upper(), "not a gpuconv checkpoint"),
    ("", "not a gpuconv checkpoint")])
def test_another_format_is_refused_and_named(tmp_path, fmt, match):
    model = _model(0)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    nn.save_checkpoint(tmp_path / "ok.npz", model, opt)
    path = _rewrite_format(tmp_path / "ok.npz", tmp_path / "other.npz", np.array(fmt))
    target = _model(1)
    before = target.state_dict()
    with pytest.raises(ValueError, match=match) as err:
        nn.load_checkpoint(path, target, optim.SGD(target.parameters(), lr=0.1, momentum=0.9))
    assert repr(fmt) in str(err.value)
    assert all(np.array_equal(v, before[k]) for k, v in target.state_dict().items())
    with pytest.raises(ValueError, match=match):
        read_checkpoint(path)


def test_format_must_be_a_single_string(tmp_path):
    nn.save_checkpoint(tmp_path / "ok.npz", _model(0))
    path = _rewrite_format(tmp_path / "ok.npz", tmp_path / "list.npz", np.array([FORMAT, FORMAT]))
    with pytest.raises(ValueError, match="not a gpuconv checkpoint"):
        nn.load_checkpoint(path, _model(1))
    assert nn.load_checkpoint(tmp_path / "ok.npz", _model(1)) == {}  # the unchanged file loads


def test_optimizer_state_failing_its_checks_leaves_the_model_unchanged(tmp_path):
    """Shapes and dtypes are checked while reading; values (a negative learning rate here) only
    when restoring, and that too must happen before the model is overwritten."""
    model = _model(0)
    nn.save_checkpoint(tmp_path / "ok.npz", model, optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    target = _model(1)
    opt = optim.SGD(target.parameters(), lr=0.1, momentum=0.9)
    ckpt = read_checkpoint(tmp_path / "ok.npz", target, opt)
    lr = [k for k in ckpt["optimizer"] if k.endswith("lr")]
    assert lr, sorted(ckpt["optimizer"])
    for key in lr:
        ckpt["optimizer"][key] = np.array(-1.0)
    before = target.state_dict()
    with pytest.raises(ValueError, match="lr"):
        restore_checkpoint(ckpt, target, opt)
    assert all(np.array_equal(v, before[k]) for k, v in target.state_dict().items())
