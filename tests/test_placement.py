"""A model runs where it was moved: placement by Module.to, its precedence, GPUCONV_BACKEND."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close

import gpuconv as gc
from gpuconv import backends, nn, optim


@pytest.fixture
def emulator_launches(monkeypatch):
    """The emulator backend, with every kernel launch it makes counted."""
    emu = backends.resolve_backend("emulator")
    count = []
    real = emu.launch

    def counted(*args, **kwargs):
        count.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(emu, "launch", counted)
    return count


def _model(seed=0):
    with gc.use_backend("numpy"):
        return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, rng=seed), nn.ReLU(), nn.Flatten(),
                             nn.Linear(2 * 5 * 5, 3, rng=seed + 1))


def _batch():
    rng = np.random.default_rng(0)
    return rng.standard_normal((2, 1, 5, 5)).astype(np.float32), np.array([0, 2])


def _step(model, opt):
    x, y = _batch()
    loss_fn = nn.SoftmaxCrossEntropy()
    logits = model.forward(x)
    with gc.use_backend(model.placement or gc.get_backend()):
        loss = loss_fn.forward(logits, y)
    model.backward(loss_fn.backward())
    opt.step()
    return logits, loss


def test_moved_model_runs_forward_backward_and_updates_on_its_backend(emulator_launches):
    reference = _model()
    ref_opt = optim.Adam(reference.parameters(), lr=0.01)
    ref_logits, _ = _step(reference, ref_opt)
    assert emulator_launches == []                     # never moved: the default, numpy

    model = _model().to("emulator")
    assert model.placement.name == "emulator" and model[3].placement.name == "emulator"
    opt = optim.Adam(model.parameters(), lr=0.01)
    x, _ = _batch()
    model.forward(x)
    forward_launches = len(emulator_launches)
    assert forward_launches >= 2                       # conv with its ReLU fused, linear bias: emulator
    model.backward(np.ones((2, 3), np.float32))
    backward_launches = len(emulator_launches) - forward_launches
    assert backward_launches >= 3                      # conv, relu, linear gradients
    opt.step()                                         # Adam of 4 parameters on the emulator
    assert len(emulator_launches) - forward_launches - backward_launches == 4
    model.zero_grad()

    again = _model().to("emulator")
    logits, _ = _step(again, optim.Adam(again.parameters(), lr=0.01))
    assert_close(logits, ref_logits, what="logits, emulator against numpy")
    for (name, a), b in zip(again.named_parameters(), reference.parameters()):
        assert_close(a.data, b.data, what=f"{name} after one Adam step")


def test_an_explicit_use_backend_around_the_call_wins(emulator_launches):
    model = _model().to("emulator")
    x, _ = _batch()
    with gc.use_backend("numpy"):
        model.forward(x)
        model.backward(np.ones((2, 3), np.float32))
    assert emulator_launches == []
    model.forward(x)
    assert emulator_launches


def test_to_without_a_backend_keeps_the_placement_and_casts(emulator_launches):
    model = _model().to("emulator").to(dtype=np.float64)
    assert model.placement.name == "emulator" and model[0].weight.dtype == np.float64
    model.forward(_batch()[0].astype(np.float64))
    assert emulator_launches
    emulator_launches.clear()
    model.to("numpy")
    model.forward(_batch()[0].astype(np.float64))
    assert emulator_launches == [] and model.placement.name == "numpy"


def test_unmoved_model_follows_the_backend_in_force(emulator_launches):
    model = _model()
    assert model.placement is None
    with gc.use_backend("emulator"):
        model.forward(_batch()[0])
    assert emulator_launches


def test_load_state_dict_keeps_parameters_on_the_placement():
    model = _model().to("emulator")
    with gc.use_backend("numpy"):
        model.load_state_dict(_model(5).state_dict())
    assert all(p.placement is model.placement for p in model.parameters())


def test_auto_honours_GPUCONV_BACKEND(monkeypatch):
    monkeypatch.setenv("GPUCONV_BACKEND", "emulator")
    assert backends.auto_choice() == ("emulator", "GPUCONV_BACKEND=emulator")
    assert backends.resolve_backend("auto").name == "emulator"
    monkeypatch.setenv("GPUCONV_BACKEND", "auto")
    assert backends.auto_choice()[0] in ("cuda", "numpy")
    monkeypatch.setenv("GPUCONV_BACKEND", "tpu")
    with pytest.raises(ValueError, match="GPUCONV_BACKEND must be one of numpy, emulator, cuda"):
        backends.resolve_backend("auto")
    monkeypatch.delenv("GPUCONV_BACKEND")
    assert backends.auto_choice()[0] in ("cuda", "numpy")
