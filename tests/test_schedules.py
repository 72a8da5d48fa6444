"""Learning-rate schedules: the rate of every step, the optimizer driven by them, state round trips."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from gpuconv import nn, optim, schedules


def _opt(lr=0.1):
    return optim.SGD(nn.Linear(2, 2, rng=0).parameters(), lr=lr)


def _rates(sched, n):
    """The optimizer's rate before each of n steps, as a training loop sees it."""
    out = []
    for _ in range(n):
        out.append(sched.optimizer.lr)
        sched.step()
    return out


def test_constant_and_step_decay():
    assert _rates(schedules.Constant(_opt(0.3)), 4) == [0.3] * 4
    rates = _rates(schedules.StepDecay(_opt(0.8), step_size=3, gamma=0.5), 8)
    assert rates == [0.8] * 3 + [0.4] * 3 + [0.2] * 2


def test_cosine_runs_half_a_cosine_then_holds_the_floor():
    base, total, floor = 0.2, 10, 0.02
    rates = _rates(schedules.Cosine(_opt(base), total_steps=total, min_lr=floor), 14)
    for s, lr in enumerate(rates):
        t = min(s, total) / total
        assert lr == pytest.approx(floor + (base - floor) * (1 + math.cos(math.pi * t)) / 2, rel=1e-12)
    assert rates[0] == pytest.approx(base) and rates[total // 2] == pytest.approx((base + floor) / 2)
    assert rates[total:] == [pytest.approx(floor)] * 4


def test_linear_warmup_then_another_schedule():
    opt = _opt(0.4)
    sched = schedules.LinearWarmup(opt, 4, then=schedules.StepDecay(opt, step_size=2, gamma=0.5))
    assert _rates(sched, 9) == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.4, 0.2, 0.2, 0.1])
    alone = schedules.LinearWarmup(_opt(1.0), 2)
    assert _rates(alone, 4) == [0.5, 1.0, 1.0, 1.0]
    assert sched.horizon is None
    assert schedules.LinearWarmup(opt, 3, then=schedules.Cosine(opt, total_steps=5)).horizon == 8


def test_the_optimizer_uses_the_scheduled_rate():
    opt = _opt(1.0)
    model_params = opt.params
    sched = schedules.StepDecay(opt, step_size=1, gamma=0.5)
    for expected in (1.0, 0.5, 0.25):
        before = np.array(model_params[1].data, copy=True)
        model_params[1].grad = np.ones_like(before)
        opt.step()
        np.testing.assert_array_equal(model_params[1].data, before - np.float32(expected))
        sched.step()


@pytest.mark.parametrize("make", [
    lambda o: schedules.Constant(o),
    lambda o: schedules.StepDecay(o, step_size=3, gamma=0.3),
    lambda o: schedules.Cosine(o, total_steps=7, min_lr=1e-3),
    lambda o: schedules.LinearWarmup(o, 3, then=schedules.Cosine(o, total_steps=9)),
    lambda o: schedules.MultiStepDecay(o, milestones=[2, 6], gamma=0.2),
    lambda o: schedules.OneCycle(o, total_steps=12, pct_start=0.25, anneal="linear", three_phase=True),
])
def test_state_round_trip_through_json_continues_with_the_same_rates(make):
    first = make(_opt(0.05))
    _rates(first, 5)
    state = json.loads(json.dumps(first.state_dict()))
    rebuilt = schedules.from_state_dict(_opt(0.9), state)  # base rate from the state, not the optimizer
    same = make(_opt(0.05))
    same.load_state_dict(state)
    assert rebuilt.optimizer.lr == first.optimizer.lr == same.optimizer.lr
    assert _rates(rebuilt, 8) == _rates(first, 8) == _rates(same, 8)


def test_mismatched_or_broken_state_is_a_clear_error_and_changes_nothing():
    opt = _opt(0.1)
    sched = schedules.Cosine(opt, total_steps=10)
    sched.step()
    state = schedules.Cosine(_opt(0.1), total_steps=20).state_dict()
    with pytest.raises(ValueError, match="'total_steps' is 20 in the state and 10 here"):
        sched.load_state_dict(state)
    with pytest.raises(ValueError, match="'kind' is 'constant'"):
        sched.load_state_dict(schedules.Constant(_opt(0.1)).state_dict())
    assert sched.last_step == 1 and opt.lr == sched.lr_at(1)
    with pytest.raises(ValueError, match="unknown schedule kind 'poly'"):
        schedules.from_state_dict(opt, {"kind": "poly", "step": 0})
    with pytest.raises(ValueError, match="do not fit schedule 'cosine'"):
        schedules.from_state_dict(opt, {"kind": "cosine", "base_lr": 0.1, "step": 0})
    with pytest.raises(ValueError, match="step"):
        schedules.from_state_dict(opt, {"kind": "constant", "base_lr": 0.1, "step": -1})
    deep = {"kind": "constant", "base_lr": 0.1}
    for _ in range(3000):
        deep = {"kind": "linear-warmup", "base_lr": 0.1, "warmup_steps": 1, "then": deep}
    with pytest.raises(ValueError, match="nested too deeply"):
        schedules.from_state_dict(opt, {**deep, "step": 0})
    for kind in ([], {}):  # a damaged state's kind need not be a string, nor hashable
        with pytest.raises(ValueError, match="unknown schedule kind"):
            schedules.from_state_dict(opt, {"kind": kind, "base_lr": 0.1, "step": 0})


def test_bad_arguments_name_themselves():
    opt = _opt()
    with pytest.raises(ValueError, match="total_steps"):
        schedules.Cosine(opt, total_steps=0)
    with pytest.raises(ValueError, match="min_lr"):
        schedules.Cosine(opt, total_steps=3, min_lr=1.0)
    with pytest.raises(ValueError, match="gamma"):
        schedules.StepDecay(opt, step_size=2, gamma=0.0)
    with pytest.raises(TypeError, match="step_size"):
        schedules.StepDecay(opt, step_size=2.5)
    with pytest.raises(ValueError, match="same optimizer"):
        schedules.LinearWarmup(opt, 2, then=schedules.Constant(_opt()))
    with pytest.raises(TypeError, match="optimizer"):
        schedules.Constant(object())


def test_multistep_decay_multiplies_at_each_milestone():
    rates = _rates(schedules.MultiStepDecay(_opt(1.0), milestones=[2, 5], gamma=0.5), 7)
    assert rates == [1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]
    with pytest.raises(ValueError, match="increasing"):
        schedules.MultiStepDecay(_opt(), milestones=[5, 5])
    with pytest.raises(ValueError, match="increasing"):
        schedules.MultiStepDecay(_opt(), milestones=[])
    with pytest.raises(ValueError, match=r"milestones\[1\]"):
        schedules.MultiStepDecay(_opt(), milestones=[3, 0])
    with pytest.raises(TypeError, match="milestones"):
        schedules.MultiStepDecay(_opt(), milestones=4)


def test_one_cycle_rises_then_falls_to_its_floor_and_holds():
    base, total = 0.4, 20
    sched = schedules.OneCycle(_opt(base), total_steps=total, pct_start=0.25, div_factor=10,
                               final_div_factor=100)
    rates = _rates(sched, total + 3)
    assert rates[0] == pytest.approx(base / 10, rel=1e-12)
    assert max(rates) == pytest.approx(base, rel=1e-12) and rates.index(max(rates)) == 4  # 0.25 * 20 - 1
    assert rates[total - 1] == pytest.approx(base / 1000, rel=1e-12)
    assert rates[total:] == [rates[total - 1]] * 3 and sched.horizon == total
    assert all(a < b for a, b in zip(rates[:4], rates[1:5]))
    assert all(a > b for a, b in zip(rates[4:total - 1], rates[5:total]))


def test_one_cycle_refuses_bad_arguments_by_name():
    with pytest.raises(ValueError, match="pct_start"):
        schedules.OneCycle(_opt(), total_steps=10, pct_start=1.0)
    with pytest.raises(ValueError, match="pct_start"):
        schedules.OneCycle(_opt(), total_steps=10, pct_start=0.6, three_phase=True)
    with pytest.raises(ValueError, match="pct_start \\* total_steps"):
        schedules.OneCycle(_opt(), total_steps=3, pct_start=0.3)
    with pytest.raises(ValueError, match="anneal"):
        schedules.OneCycle(_opt(), total_steps=10, anneal="cosine")
    with pytest.raises(ValueError, match="div_factor"):
        schedules.OneCycle(_opt(), total_steps=10, div_factor=0)
    with pytest.raises(TypeError, match="three_phase"):
        schedules.OneCycle(_opt(), total_steps=10, three_phase=1)
    with pytest.raises(ValueError, match="total_steps"):
        schedules.OneCycle(_opt(), total_steps=1)
    # each factor is positive, but their product underflows to 0 (or 1 / div_factor overflows)
    for div, final in ((1e-200, 1e-200), (5e-324, 1.0)):
        with pytest.raises(ValueError, match="div_factor=.* and final_div_factor=.* are too small"):
            schedules.OneCycle(_opt(), total_steps=10, div_factor=div, final_div_factor=final)


@pytest.mark.parametrize("kwargs", [
    dict(total_steps=100),
    dict(total_steps=37, pct_start=0.2, anneal="linear", div_factor=10.0, final_div_factor=50.0),
    dict(total_steps=50, pct_start=0.3, three_phase=True),
    dict(total_steps=41, pct_start=0.45, anneal="linear", three_phase=True),
])
def test_one_cycle_matches_pytorch(kwargs):
    torch = pytest.importorskip("torch")
    max_lr = 0.3
    t_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=max_lr, momentum=0.9)
    torch_kwargs = {("anneal_strategy" if k == "anneal" else k): v for k, v in kwargs.items()}
    t_sched = torch.optim.lr_scheduler.OneCycleLR(t_opt, max_lr=max_lr, cycle_momentum=False,
                                                  **torch_kwargs)
    theirs = []
    for _ in range(kwargs["total_steps"]):
        theirs.append(t_opt.param_groups[0]["lr"])
        t_opt.step()
        t_sched.step()
    ours = _rates(schedules.OneCycle(_opt(max_lr), **kwargs), kwargs["total_steps"])
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=0)


def test_multistep_decay_matches_pytorch():
    torch = pytest.importorskip("torch")
    t_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    t_sched = torch.optim.lr_scheduler.MultiStepLR(t_opt, milestones=[3, 7, 8], gamma=0.3)
    theirs = []
    for _ in range(12):
        theirs.append(t_opt.param_groups[0]["lr"])
        t_opt.step()
        t_sched.step()
    ours = _rates(schedules.MultiStepDecay(_opt(0.1), milestones=[3, 7, 8], gamma=0.3), 12)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=0)
