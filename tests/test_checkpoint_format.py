"""A checkpoint names its format; a file of any other format (another version of gpuconv's, or
something else with the same layout) is refused before anything is loaded."""
from __future__ import annotations

import numpy as np
import pytest

from gpuconv import nn, optim
from gpuconv.nn.checkpoint import FORMAT, read_checkpoint


def _model(seed):
    return nn.Sequential(nn.Linear(3, 2, rng=seed))


def _rewrite_format(src, dst, fmt):
    """dst: the arrays of checkpoint src with the 'format' entry replaced by ``fmt``."""
    with np.load(src, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["format"] = fmt
    np.savez(dst, **arrays)
    return dst


@pytest.mark.parametrize("fmt", ["gpuconv-checkpoint/2", "gpuconv-checkpoint/1.1", "gpuconv-checkpoint/",
                                 "other-checkpoint/1", FORMAT.upper(), ""])
def test_another_format_is_refused_and_names_both(tmp_path, fmt):
    model = _model(0)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    nn.save_checkpoint(tmp_path / "ok.npz", model, opt)
    path = _rewrite_format(tmp_path / "ok.npz", tmp_path / "other.npz", np.array(fmt))
    target = _model(1)
    before = target.state_dict()
    with pytest.raises(ValueError, match="not a gpuconv checkpoint") as err:
        nn.load_checkpoint(path, target, optim.SGD(target.parameters(), lr=0.1, momentum=0.9))
    assert repr(FORMAT) in str(err.value) and repr(fmt) in str(err.value)
    assert all(np.array_equal(v, before[k]) for k, v in target.state_dict().items())
    with pytest.raises(ValueError, match="not a gpuconv checkpoint"):
        read_checkpoint(path)


def test_format_must_be_a_single_string(tmp_path):
    nn.save_checkpoint(tmp_path / "ok.npz", _model(0))
    path = _rewrite_format(tmp_path / "ok.npz", tmp_path / "list.npz", np.array([FORMAT, FORMAT]))
    with pytest.raises(ValueError, match="not a gpuconv checkpoint"):
        nn.load_checkpoint(path, _model(1))
    assert nn.load_checkpoint(tmp_path / "ok.npz", _model(1)) == {}  # the unchanged file loads
