"""Learning-rate schedules: objects that set an optimizer's ``lr`` from the number of steps taken.

A schedule is built on an optimizer and takes its base learning rate from ``optimizer.lr`` (or
``base_lr=``). It sets ``optimizer.lr`` to the rate of step 0 at once; call ``step()`` after each
``optimizer.step()`` and the next update uses the rate of the next step (PyTorch's order)::

    opt = optim.Adam(model.parameters(), lr=2e-3)
    sched = schedules.LinearWarmup(opt, 100, then=schedules.Cosine(opt, total_steps=900))
    for xb, yb in batches:
        ...; opt.step(); sched.step()

The rate of step ``s`` (0-based) is ``base_lr * factor(s)``:

=======================================  =========================================================
``Constant(opt)``                        1
``StepDecay(opt, step_size, gamma)``     ``gamma ** (s // step_size)``
``Cosine(opt, total_steps, min_lr)``     from 1 down to ``min_lr / base_lr`` along half a cosine over
                                         ``total_steps``, then held there
``MultiStepDecay(opt, milestones, g)``   ``g ** k``, k the number of milestones ``<= s``
``LinearWarmup(opt, warmup, then)``      ``(s + 1) / warmup`` for ``s < warmup`` (reaching 1 on its
                                         last step), then ``then``'s factor of ``s - warmup``
                                         (``then=None``: constant)
``OneCycle(opt, total_steps, ...)``      PyTorch's ``OneCycleLR`` with ``max_lr = base_lr``: from
                                         ``1 / div_factor`` up to 1 over the first ``pct_start`` of
                                         the steps, then down to ``1 / (div_factor *
                                         final_div_factor)`` (see the class)
=======================================  =========================================================

The rate is a function of the step alone, so a run resumed from ``state_dict()`` continues with
the very same rates. ``state_dict()`` is a JSON-serialisable dict (the kind, base rate, parameters
and the step); ``load_state_dict`` restores the step after checking the rest matches, and
``from_state_dict(optimizer, state)`` rebuilds a schedule from one (what a checkpoint holds).
"""
from __future__ import annotations

import bisect
import math
import sys
from typing import Any, Dict, List, Optional, Sequence, Type

from .geometry import check_int, check_real

__all__ = ["Schedule", "Constant", "StepDecay", "MultiStepDecay", "Cosine", "LinearWarmup", "OneCycle",
           "from_state_dict", "SCHEDULE_KINDS"]


class Schedule:
    """Base class: ``factor(step)`` times ``base_lr`` is the learning rate of ``step``."""

    kind = "abstract"

    def __init__(self, optimizer, base_lr: Optional[float] = None) -> None:
        if not hasattr(optimizer, "lr"):
            raise TypeError(f"optimizer must be a gpuconv optimizer (with an lr), got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = check_real("base_lr", optimizer.lr if base_lr is None else base_lr, 0.0)
        self.last_step = 0  # optimizer steps taken so far; the next update uses lr_at(last_step)

    # ---- the rule -----------------------------------------------------------------------
    def factor(self, step: int) -> float:
        raise NotImplementedError

    def params(self) -> Dict[str, Any]:
        """The schedule's own parameters (JSON-serialisable), as passed to the constructor."""
        return {}

    @property
    def horizon(self) -> Optional[int]:
        """Steps after which the rate stops changing by design (None: it has no end)."""
        return None

    def lr_at(self, step: int) -> float:
        return self.base_lr * self.factor(check_int("step", step, 0, maximum=None))

    @property
    def lr(self) -> float:
        """The rate of the next optimizer step."""
        return self.lr_at(self.last_step)

    def _apply(self) -> None:
        self.optimizer.lr = self.lr

    def step(self) -> float:
        """Count one optimizer step and set the optimizer's rate for the next; returns it."""
        self.last_step += 1
        self._apply()
        return self.optimizer.lr

    # ---- state --------------------------------------------------------------------------
    def config(self) -> Dict[str, Any]:
        return {"kind": self.kind, "base_lr": self.base_lr, **self.params()}

    def state_dict(self) -> Dict[str, Any]:
        """``config()`` plus ``"step"``: everything needed to continue (JSON-serialisable)."""
        return {**self.config(), "step": self.last_step}

    def check_state_dict(self, state: Dict[str, Any]) -> int:
        """Raise ValueError (naming the first difference) unless ``state`` is a state of this
        schedule: same kind, base rate and parameters. Returns its step."""
        step = _check_state(state)
        mine = self.config()
        theirs = {k: v for k, v in state.items() if k != "step"}
        if theirs != mine:
            diff = next((k for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)), None)
            raise ValueError(f"schedule state does not match this schedule: {diff!r} is "
                             f"{theirs.get(diff)!r} in the state and {mine.get(diff)!r} here "
                             f"(state {_describe(theirs)}, schedule {_describe(mine)})")
        return step

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue from ``state`` (checked by ``check_state_dict``, nothing changes on error):
        sets the step and the optimizer's rate."""
        self.last_step = self.check_state_dict(state)
        self._apply()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({_describe(self.config())}, step={self.last_step})"


def _describe(config: Dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in config.items())


def _check_state(state) -> int:
    if not isinstance(state, dict):
        raise TypeError(f"schedule state must be a dict, got {type(state).__name__}")
    if "kind" not in state or "step" not in state:
        raise ValueError(f"schedule state needs 'kind' and 'step', got keys {sorted(state)}")
    return check_int("schedule state 'step'", state["step"], 0, maximum=None)


class Constant(Schedule):
    """The base rate at every step."""

    kind = "constant"

    def __init__(self, optimizer, base_lr: Optional[float] = None) -> None:
        super().__init__(optimizer, base_lr)
        self._apply()

    def factor(self, step: int) -> float:
        return 1.0


class StepDecay(Schedule):
    """The rate times ``gamma`` every ``step_size`` steps."""

    kind = "step"

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1,
                 base_lr: Optional[float] = None) -> None:
        super().__init__(optimizer, base_lr)
        self.step_size = check_int("step_size", step_size, 1)
        self.gamma = check_real("gamma", gamma, 0.0, 1.0, lo_open=True)
        self._apply()

    def factor(self, step: int) -> float:
        return self.gamma ** (step // self.step_size)

    def params(self) -> Dict[str, Any]:
        return {"step_size": self.step_size, "gamma": self.gamma}


class MultiStepDecay(Schedule):
    """The rate times ``gamma`` at each of the steps ``milestones`` (increasing), as PyTorch's
    ``MultiStepLR``: the update of step s uses ``gamma ** (number of milestones <= s)``."""

    kind = "multistep"

    def __init__(self, optimizer, milestones: Sequence[int], gamma: float = 0.1,
                 base_lr: Optional[float] = None) -> None:
        super().__init__(optimizer, base_lr)
        if isinstance(milestones, (str, bytes)) or not hasattr(milestones, "__iter__"):
            raise TypeError(f"milestones must be a sequence of ints, got {milestones!r}")
        self.milestones: List[int] = [check_int(f"milestones[{i}]", m, 1) for i, m in enumerate(milestones)]
        if not self.milestones or any(b <= a for a, b in zip(self.milestones, self.milestones[1:])):
            raise ValueError(f"milestones must be a non-empty increasing sequence, got {self.milestones}")
        self.gamma = check_real("gamma", gamma, 0.0, 1.0, lo_open=True)
        self._apply()

    def factor(self, step: int) -> float:
        return self.gamma ** bisect.bisect_right(self.milestones, step)

    def params(self) -> Dict[str, Any]:
        return {"milestones": list(self.milestones), "gamma": self.gamma}


class Cosine(Schedule):
    """Half a cosine from the base rate down to ``min_lr`` over ``total_steps``, then ``min_lr``."""

    kind = "cosine"

    def __init__(self, optimizer, total_steps: int, min_lr: float = 0.0,
                 base_lr: Optional[float] = None) -> None:
        super().__init__(optimizer, base_lr)
        self.total_steps = check_int("total_steps", total_steps, 1)
        self.min_lr = check_real("min_lr", min_lr, 0.0, self.base_lr)
        self._apply()

    def factor(self, step: int) -> float:
        lo = self.min_lr / self.base_lr if self.base_lr else 0.0
        t = min(step, self.total_steps) / self.total_steps
        return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * t))

    def params(self) -> Dict[str, Any]:
        return {"total_steps": self.total_steps, "min_lr": self.min_lr}

    @property
    def horizon(self) -> Optional[int]:
        return self.total_steps


class LinearWarmup(Schedule):
    """``(s + 1) / warmup_steps`` of the base rate for the first ``warmup_steps`` steps, then the
    schedule ``then`` (started at its step 0; None: the base rate). ``then`` must be built on the
    same optimizer and supplies the base rate; step this schedule only."""

    kind = "linear-warmup"

    def __init__(self, optimizer, warmup_steps: int, then: Optional[Schedule] = None,
                 base_lr: Optional[float] = None) -> None:
        if then is not None:
            if not isinstance(then, Schedule):
                raise TypeError(f"then must be a Schedule or None, got {type(then).__name__}")
            if then.optimizer is not optimizer:
                raise ValueError("then must be a schedule of the same optimizer")
            if base_lr is None:
                base_lr = then.base_lr
            elif check_real("base_lr", base_lr, 0.0) != then.base_lr:
                raise ValueError(f"base_lr={base_lr} differs from then's base rate {then.base_lr}")
        super().__init__(optimizer, base_lr)
        self.warmup_steps = check_int("warmup_steps", warmup_steps, 1)
        self.then = then
        self._apply()

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        return 1.0 if self.then is None else self.then.factor(step - self.warmup_steps)

    def params(self) -> Dict[str, Any]:
        return {"warmup_steps": self.warmup_steps,
                "then": None if self.then is None else self.then.config()}

    @property
    def horizon(self) -> Optional[int]:
        inner = None if self.then is None else self.then.horizon
        return None if inner is None else self.warmup_steps + inner


class OneCycle(Schedule):
    """The one-cycle policy (Smith & Topin 2019) as PyTorch's ``OneCycleLR`` defines it, with
    ``max_lr`` the base rate: the rate starts at ``max_lr / div_factor``, rises to ``max_lr`` at
    step ``pct_start * total_steps - 1`` and falls to ``max_lr / (div_factor * final_div_factor)``
    at step ``total_steps - 1`` (then holds there), each phase along half a cosine (``anneal
    "cos"``) or a line (``"linear"``). ``three_phase``: up, back down to the starting rate by step
    ``2 * pct_start * total_steps - 2``, then down to the floor. Momentum is not cycled (PyTorch's
    ``cycle_momentum=False``)."""

    kind = "onecycle"

    def __init__(self, optimizer, total_steps: int, pct_start: float = 0.3, anneal: str = "cos",
                 div_factor: float = 25.0, final_div_factor: float = 1e4, three_phase: bool = False,
                 base_lr: Optional[float] = None) -> None:
        super().__init__(optimizer, base_lr)
        self.total_steps = check_int("total_steps", total_steps, 2)
        self.pct_start = check_real("pct_start", pct_start, 0.0, 0.5 if three_phase else 1.0,
                                    lo_open=True, hi_open=not three_phase)
        if anneal not in ("cos", "linear"):
            raise ValueError(f"anneal must be 'cos' or 'linear', got {anneal!r}")
        if not isinstance(three_phase, bool):
            raise TypeError(f"three_phase must be a bool, got {three_phase!r}")
        self.anneal, self.three_phase = anneal, three_phase
        self.div_factor = check_real("div_factor", div_factor, 0.0, lo_open=True)
        self.final_div_factor = check_real("final_div_factor", final_div_factor, 0.0, lo_open=True)
        up = float(self.pct_start * self.total_steps) - 1  # PyTorch's phase ends, in its arithmetic
        if up <= 0:
            raise ValueError(f"pct_start * total_steps must exceed 1 (the rising phase needs a step), got "
                             f"{self.pct_start} * {self.total_steps}")
        scale = self.div_factor * self.final_div_factor  # underflows to 0 for 1e-200 and 1e-200
        if scale == 0.0 or self.div_factor < 1.0 / sys.float_info.max:
            raise ValueError(f"div_factor={self.div_factor} and final_div_factor={self.final_div_factor} are "
                             f"too small: max_lr / div_factor and max_lr / (div_factor * final_div_factor) "
                             f"must be finite")
        start, floor = 1.0 / self.div_factor, 1.0 / scale
        if three_phase:
            self._phases = [(up, start, 1.0), (float(2 * self.pct_start * self.total_steps) - 2, 1.0, start),
                            (self.total_steps - 1, start, floor)]
        else:
            self._phases = [(up, start, 1.0), (self.total_steps - 1, 1.0, floor)]
        self._apply()

    def factor(self, step: int) -> float:
        step = min(step, self.total_steps - 1)
        begin = 0.0
        for i, (end, first, last) in enumerate(self._phases):
            if step <= end or i == len(self._phases) - 1:
                pct = (step - begin) / (end - begin)
                if self.anneal == "cos":
                    return last + (first - last) / 2.0 * (math.cos(math.pi * pct) + 1)
                return (last - first) * pct + first
            begin = end
        raise AssertionError("unreachable")

    def params(self) -> Dict[str, Any]:
        return {"total_steps": self.total_steps, "pct_start": self.pct_start, "anneal": self.anneal,
                "div_factor": self.div_factor, "final_div_factor": self.final_div_factor,
                "three_phase": self.three_phase}

    @property
    def horizon(self) -> Optional[int]:
        return self.total_steps


_KINDS: Dict[str, Type[Schedule]] = {c.kind: c for c in (Constant, StepDecay, MultiStepDecay, Cosine,
                                                         LinearWarmup, OneCycle)}
SCHEDULE_KINDS = tuple(_KINDS)


def _build(optimizer, config: Dict[str, Any], where: str) -> Schedule:
    if not isinstance(config, dict):
        raise TypeError(f"{where} must be a dict, got {type(config).__name__}")
    kind = config.get("kind")
    if not isinstance(kind, str) or kind not in _KINDS:
        raise ValueError(f"{where}: unknown schedule kind {kind!r} (known: {', '.join(SCHEDULE_KINDS)})")
    kwargs = {k: v for k, v in config.items() if k not in ("kind", "step")}
    if kind == "linear-warmup" and kwargs.get("then") is not None:
        kwargs["then"] = _build(optimizer, kwargs["then"], f"{where}['then']")
    try:
        return _KINDS[kind](optimizer, **kwargs)
    except TypeError as exc:
        raise ValueError(f"{where}: parameters {sorted(kwargs)} do not fit schedule {kind!r} "
                         f"({exc})") from None


def from_state_dict(optimizer, state: Dict[str, Any]) -> Schedule:
    """The schedule that ``state`` (a ``state_dict()``) describes, on ``optimizer``, at its step."""
    _check_state(state)
    try:
        schedule = _build(optimizer, state, "schedule state")
    except RecursionError:  # a damaged state: warm-ups nested a thousand deep
        raise ValueError("schedule state: its 'then' schedules are nested too deeply") from None
    schedule.load_state_dict(state)
    return schedule
