"""Optimizers with PyTorch's update rules, applied in place on the current backend through
``gpuconv.functional.sgd_step`` / ``adam_step``.

An optimizer holds the model's :class:`~gpuconv.nn.Parameter` records (``model.parameters()``),
so it keeps working after ``model.to(...)``: each parameter is updated on its placement (the
backend its model was moved to, unless a ``use_backend`` block encloses ``step()``; see
``gpuconv.backends``), and its state buffers follow it there and to its dtype on the next
``step()``. Parameters whose ``grad`` is None are skipped.

The learning rate ``lr`` is a plain attribute; ``gpuconv.schedules`` sets it step by step.

Parameter groups: ``params`` may instead be a list of dicts, each ``{"params": [...], name:
value, ...}`` overriding any hyper-parameter but ``lr`` for its parameters, as in PyTorch (e.g.
``weight_decay=0`` for batch-norm parameters and biases: ``decay_groups``). The learning rate is
the optimizer's ``lr``, shared by every group, which schedules drive.

``state_dict()`` is a flat mapping of names to host NumPy arrays (storable in an ``.npz`` without
pickling): ``"optimizer"`` (the class name), ``"hyper.<name>"`` (hyper-parameters),
``"state.<i>.<name>"`` (per-parameter state of the i-th parameter, e.g. ``momentum_buffer``,
``step``, ``exp_avg``, ``exp_avg_sq``) and, with parameter groups, ``"group.<g>.params"`` (the
indices of group g's parameters) and ``"group.<g>.<name>"`` (its overrides).
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np

from .backends import get_backend, running_on
from .backends.launch.optim import adam_constants, sgd_constants
from .geometry import check_real
from .nn.layers import BatchNorm2d
from .nn.module import Parameter, to_host

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "OPTIMIZER_NAMES", "decay_groups"]

OPTIMIZER_NAMES = ("sgd", "adam", "adamw")  # the optimizers `gpuconv train --optimizer` offers
_MAX_STEP = 2**63 - 1  # "step" entries are stored as int64


def _placed(p: Parameter):
    """Run on ``p``'s placement (the current backend when it has none)."""
    return contextlib.nullcontext() if p.placement is None else running_on(p.placement)


def _hyper_values(state: Mapping[str, np.ndarray], names: Tuple[str, ...]) -> Dict[str, float]:
    """The ``hyper.<name>`` entries of ``state`` as floats; ValueError naming the key unless each
    is a 0-d real number."""
    out = {}
    for h in names:
        key, value = f"hyper.{h}", np.asarray(state[f"hyper.{h}"])
        if value.shape != () or value.dtype.kind not in "biuf":
            raise ValueError(f"optimizer state {key!r} must be a 0-d real number, got shape "
                             f"{value.shape} dtype {value.dtype}")
        out[h] = float(value)
    return out


def _split_groups(params) -> Tuple[List[Parameter], List[Tuple[List[int], Dict[str, Any]]]]:
    """(flat parameter list, [(indices into it, overrides)] per group, or [] without groups)."""
    if isinstance(params, Parameter):
        raise TypeError("params must be an iterable of Parameters (e.g. model.parameters()), "
                        "got a single Parameter")
    items = list(params)
    if not items or not isinstance(items[0], dict):
        return items, []
    flat: List[Parameter] = []
    groups = []
    for g, group in enumerate(items):
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"params[{g}] must be a dict with a 'params' entry (a parameter group), "
                            f"got {type(group).__name__}")
        members = group["params"]
        members = [members] if isinstance(members, Parameter) else list(members)
        groups.append((list(range(len(flat), len(flat) + len(members))),
                       {k: v for k, v in group.items() if k != "params"}))
        flat.extend(members)
    return flat, groups


class Optimizer:
    """Base class: parameter list and groups, per-parameter state, state_dict/load_state_dict."""

    _state_keys: Tuple[str, ...] = ()
    _hyper_names: Tuple[str, ...] = ()

    def __init__(self, params: Iterable[Parameter], defaults: Mapping[str, float]) -> None:
        self.params, groups = _split_groups(params)
        if not self.params:
            raise ValueError("params is empty: the optimizer has nothing to update")
        seen = set()
        for i, p in enumerate(self.params):
            if not isinstance(p, Parameter):
                raise TypeError(f"params[{i}] must be a gpuconv.nn.Parameter, got {type(p).__name__}")
            if id(p) in seen:
                raise ValueError(f"params[{i}] appears more than once")
            seen.add(id(p))
        self.state = [dict() for _ in self.params]
        self._hp: Dict[Tuple[int, np.dtype], Tuple[Any, Any]] = {}  # (id(be), dtype) -> (be, constants)
        self._pending: List[int] = []  # parameters counted by prepare_step, updated by apply_step
        self._set_hyper(defaults)
        self._groups: List[Tuple[List[int], Dict[str, float]]] = [
            (idx, self._check_overrides(g, ov)) for g, (idx, ov) in enumerate(groups)]
        self._group_of = [None] * len(self.params)  # parameter index -> group index
        for g, (idx, _) in enumerate(self._groups):
            for i in idx:
                self._group_of[i] = g

    # ---- parameter groups ---------------------------------------------------------------
    @property
    def param_groups(self) -> List[Dict[str, Any]]:
        """One dict per group: "params" and every hyper-parameter in force for them (a copy)."""
        groups = self._groups or [(list(range(len(self.params))), {})]
        return [dict(self._hyper_for(ov), params=[self.params[i] for i in idx]) for idx, ov in groups]

    def _hyper_for(self, overrides: Mapping[str, float]) -> Dict[str, float]:
        return dict(self.hyper(), **overrides)

    def _check_overrides(self, g: int, overrides: Mapping[str, Any]) -> Dict[str, float]:
        """Validated overrides of group g: hyper-parameters other than lr, checked in context."""
        unknown = [k for k in overrides if k not in self._hyper_names or k == "lr"]
        if unknown:
            allowed = [h for h in self._hyper_names if h != "lr"]
            raise ValueError(f"parameter group {g}: unknown or per-group-forbidden options {unknown} "
                             f"(a group may set {allowed}; lr is the optimizer's, for every group)")
        merged = self._validate_hyper(self._hyper_for(overrides))
        return {k: merged[k] for k in overrides}

    # ---- hyper-parameters ---------------------------------------------------------------
    def hyper(self) -> Dict[str, float]:
        raise NotImplementedError

    def _set_hyper(self, values: Mapping[str, float]) -> None:
        raise NotImplementedError

    # ---- update -------------------------------------------------------------------------
    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        """Update every parameter that has a gradient: ``prepare_step()`` then ``apply_step()``."""
        self.prepare_step()
        self.apply_step()

    def prepare_step(self) -> None:
        """The host half of a step: move or create the state buffers, count the update, and copy
        every constant the update kernels read (rate, bias corrections, ...) into device memory,
        one copy per backend and dtype. A captured training step calls this before each replay."""
        hypers = [self._hyper_for(ov) for _, ov in self._groups] or [self.hyper()]
        staged: Dict[Tuple[int, np.dtype], Tuple[Any, np.ndarray, List[int]]] = {}
        self._pending = []
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            g = self._group_of[i]
            with _placed(p):
                backend = get_backend()
                st = self.state[i]
                for key, value in st.items():
                    if key not in ("step", "hp") and not (backend.is_array(value) and value.dtype == p.dtype):
                        st[key] = backend.asarray(np.ascontiguousarray(to_host(value), dtype=p.dtype))
                row = self._constants(backend, p, st, hypers[0 if g is None else g])
            key = (id(backend), p.dtype)
            if key not in staged:
                staged[key] = (backend, np.zeros((len(self.params), row.size), p.dtype), [])
            staged[key][1][i] = row
            staged[key][2].append(i)
            self._pending.append(i)
        for key, (backend, host, members) in staged.items():
            held = self._hp.get(key)
            if held is None or held[0] is not backend or tuple(held[1].shape) != host.shape:
                held = self._hp[key] = (backend, backend.zeros(host.shape, host.dtype))
            dev = held[1]
            backend.upload(dev, host)
            for i in members:
                self.state[i]["hp"] = dev[i]

    def apply_step(self) -> None:
        """The device half of a step: launch the update of each parameter ``prepare_step`` counted,
        with every constant read from device memory (graph-safe: it reads nothing on the host)."""
        for i in self._pending:
            p = self.params[i]
            with _placed(p):
                self._update(get_backend(), p, self.state[i])

    def _constants(self, backend, p: Parameter, st: dict, h: Mapping[str, float]) -> np.ndarray:
        """Create ``p``'s state buffers if missing, count the update, and return the host row of
        the update's constants with hyper-parameters ``h`` (its group's)."""
        raise NotImplementedError

    def _update(self, backend, p: Parameter, st: dict) -> None:
        """Update ``p`` in place, its constants in ``st["hp"]`` on the device."""
        raise NotImplementedError

    # ---- state --------------------------------------------------------------------------
    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        out: OrderedDict[str, np.ndarray] = OrderedDict()
        out["optimizer"] = np.array(type(self).__name__)
        for name, value in self.hyper().items():
            out[f"hyper.{name}"] = np.array(value, dtype=np.float64)
        for g, (idx, ov) in enumerate(self._groups):
            out[f"group.{g}.params"] = np.array(idx, dtype=np.int64)
            for name, value in ov.items():
                out[f"group.{g}.{name}"] = np.array(value, dtype=np.float64)
        for i, st in enumerate(self.state):
            for key in self._state_keys:
                if key in st:
                    value = st[key]
                    out[f"state.{i}.{key}"] = (np.array(value, dtype=np.int64) if key == "step"
                                               else np.array(to_host(value), copy=True))
        return out

    def check_entries(self, state: Mapping[str, np.ndarray]) -> None:
        """Raise ValueError unless ``state`` is for this optimizer and each entry has the shape and
        dtype ``entry_spec`` gives (reads no array values: checkpoints check this from headers)."""
        kind = state.get("optimizer")
        if kind is None or np.shape(kind) != () or str(np.asarray(kind)) != type(self).__name__:
            shown = None if kind is None or np.shape(kind) != () else str(np.asarray(kind))
            raise ValueError(f"optimizer state is for {shown!r}, expected {type(self).__name__!r}")
        for key, value in state.items():
            shape, dtype = self.entry_spec(key)
            shape_now, dtype_now = tuple(np.shape(value)), np.asarray(value).dtype
            if shape_now != shape:
                raise ValueError(f"optimizer state {key!r} has shape {shape_now}, expected {shape}")
            if dtype is not None and dtype_now != dtype:
                raise ValueError(f"optimizer state {key!r} has dtype {dtype_now}, the parameter has "
                                 f"dtype {dtype}")
            if dtype is None and key != "optimizer" and dtype_now.kind not in "biuf":
                raise ValueError(f"optimizer state {key!r} must hold numbers, got dtype {dtype_now}")

    def check_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Raise ValueError unless ``state`` is a valid state of this optimizer for its params."""
        self.check_entries(state)
        missing = [f"hyper.{h}" for h in self._hyper_names if f"hyper.{h}" not in state]
        if missing:
            raise ValueError(f"optimizer state is missing keys {missing}")
        self._validate_hyper(_hyper_values(state, self._hyper_names))
        self._check_group_state(state)
        per_param: Dict[int, set] = {}
        for key, value in state.items():
            if not key.startswith("state."):
                continue
            _, i, name = key.split(".")
            if name == "step":
                if np.asarray(value).dtype.kind not in "iu":
                    raise ValueError(f"optimizer state {key!r} must be a 0-d integer, got dtype "
                                     f"{np.asarray(value).dtype}")
                if not 1 <= int(np.asarray(value)) <= _MAX_STEP:
                    raise ValueError(f"optimizer state {key!r} counts updates and must lie in "
                                     f"[1, {_MAX_STEP}], got {int(np.asarray(value))}")
            per_param.setdefault(int(i), set()).add(name)
        for i, keys in per_param.items():
            required = self._required_keys()
            if not required <= keys:
                raise ValueError(f"optimizer state of parameter {i} is missing "
                                 f"{sorted(f'state.{i}.{k}' for k in required - keys)}")

    def _group_overrides(self, state: Mapping[str, np.ndarray]) -> List[Dict[str, float]]:
        """Group g's overrides in ``state`` (names and membership already checked)."""
        out = []
        for g in range(len(self._groups)):
            prefix = f"group.{g}."
            out.append({k[len(prefix):]: float(np.asarray(v)) for k, v in state.items()
                        if k.startswith(prefix) and k != prefix + "params"})
        return out

    def _check_group_state(self, state: Mapping[str, np.ndarray]) -> None:
        """The groups in ``state`` must be this optimizer's: the same members, the same options."""
        for key in state:
            if key.startswith("group."):
                parts = key.split(".")
                if len(parts) != 3 or not parts[1].isdigit() or int(parts[1]) >= len(self._groups):
                    raise ValueError(f"unexpected optimizer state key {key!r} (the optimizer has "
                                     f"{len(self._groups)} parameter groups)")
        for g, (idx, _) in enumerate(self._groups):
            members = state.get(f"group.{g}.params")
            if members is None or list(np.asarray(members).ravel()) != idx:
                raise ValueError(f"optimizer state group.{g}.params does not match the optimizer's "
                                 f"parameter group {g} (parameters {idx})")
        for g, ov in enumerate(self._group_overrides(state)):
            if set(ov) != set(self._groups[g][1]):
                raise ValueError(f"optimizer state of parameter group {g} sets {sorted(ov)}, the "
                                 f"optimizer's group sets {sorted(self._groups[g][1])}")
            self._check_overrides(g, ov)

    def entry_spec(self, key: str) -> Tuple[Tuple[int, ...], Optional[np.dtype]]:
        """(shape, dtype) that the state_dict entry ``key`` must have; dtype None for the name and
        the entries of numbers (hyper-parameters, step counts, groups) whose values
        ``check_state_dict`` checks. ValueError naming ``key`` when this optimizer has no such entry."""
        parts = key.split(".")
        if key == "optimizer" or (parts[0] == "hyper" and key[6:] in self._hyper_names):
            return (), None
        if parts[0] == "group":
            if len(parts) != 3 or not parts[1].isdigit() or int(parts[1]) >= len(self._groups):
                raise ValueError(f"unexpected optimizer state key {key!r} (the optimizer has "
                                 f"{len(self._groups)} parameter groups)")
            return ((len(self._groups[int(parts[1])][0]),) if parts[2] == "params" else ()), None
        if (len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit()
                or parts[2] not in self._state_keys):
            raise ValueError(f"unexpected optimizer state key {key!r}")
        i = int(parts[1])
        if i >= len(self.params):
            raise ValueError(f"optimizer state key {key!r} refers to parameter {i}, but the "
                             f"optimizer has {len(self.params)} parameters")
        if parts[2] == "step":
            return (), None
        return self.params[i].shape, self.params[i].dtype

    def _required_keys(self) -> set:
        return set(self._state_keys)

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore hyper-parameters and state (validated first; unchanged on error). Buffers stay
        on the host until the next ``step()`` moves them to the current backend."""
        self.check_state_dict(state)
        self._set_hyper(_hyper_values(state, self._hyper_names))
        self._groups = [(idx, ov) for (idx, _), ov in zip(self._groups, self._group_overrides(state))]
        self.state = [dict() for _ in self.params]
        for key, value in state.items():
            if key.startswith("state."):
                _, i, name = key.split(".")
                self.state[int(i)][name] = (int(np.asarray(value)) if name == "step"
                                            else np.array(value, copy=True))

    def _validate_hyper(self, values: Mapping[str, float]) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyper().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, dampening, Nesterov momentum and L2
    weight decay (PyTorch's rule: g += wd * p; b = g on the first step, else
    b = momentum * b + (1 - dampening) * g; g = g + momentum * b if nesterov else b; p -= lr * g)."""

    _state_keys = ("momentum_buffer",)
    _hyper_names = ("lr", "momentum", "dampening", "weight_decay", "nesterov")

    def __init__(self, params: Iterable[Parameter], lr: float, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False) -> None:
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"nesterov must be a bool, got {nesterov!r}")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=float(nesterov)))

    def _validate_hyper(self, values: Mapping[str, float]) -> Dict[str, float]:
        out = dict(lr=check_real("lr", values["lr"], 0.0),
                   momentum=check_real("momentum", values["momentum"], 0.0),
                   dampening=check_real("dampening", values["dampening"], 0.0, 1.0),
                   weight_decay=check_real("weight_decay", values["weight_decay"], 0.0),
                   nesterov=float(values["nesterov"]))
        if out["nesterov"] not in (0.0, 1.0):
            raise ValueError(f"nesterov must be a bool, got {values['nesterov']!r}")
        if out["nesterov"] and (out["momentum"] <= 0 or out["dampening"] != 0):
            raise ValueError(f"nesterov=True needs momentum > 0 and dampening == 0, got "
                             f"momentum={out['momentum']}, dampening={out['dampening']}")
        return out

    def _set_hyper(self, values: Mapping[str, float]) -> None:
        v = self._validate_hyper(values)
        self.lr, self.momentum, self.dampening = v["lr"], v["momentum"], v["dampening"]
        self.weight_decay, self.nesterov = v["weight_decay"], bool(v["nesterov"])

    def hyper(self) -> Dict[str, float]:
        return dict(lr=self.lr, momentum=self.momentum, dampening=self.dampening,
                    weight_decay=self.weight_decay, nesterov=self.nesterov)

    def _constants(self, backend, p: Parameter, st: dict, h: Mapping[str, float]) -> np.ndarray:
        first = False
        if h["momentum"] != 0 and "momentum_buffer" not in st:
            st["momentum_buffer"] = backend.zeros(p.shape, p.dtype)
            first = True
        return sgd_constants(p.dtype, h["lr"], h["momentum"], h["dampening"], h["weight_decay"],
                             bool(h["nesterov"]), first)

    def _update(self, backend, p: Parameter, st: dict) -> None:
        backend.sgd_step_dev(p.data, p.grad, st.get("momentum_buffer"), st["hp"])


class Adam(Optimizer):
    """Adam (PyTorch's rule, L2 weight decay added to the gradient, bias-corrected moments)."""

    _state_keys = ("step", "exp_avg", "exp_avg_sq")
    _hyper_names = ("lr", "beta1", "beta2", "eps", "weight_decay")
    _decoupled = False

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-3,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        super().__init__(params, dict(lr=lr, beta1=betas[0], beta2=betas[1], eps=eps,
                                      weight_decay=weight_decay))

    def _validate_hyper(self, values: Mapping[str, float]) -> Dict[str, float]:
        return dict(lr=check_real("lr", values["lr"], 0.0),
                    beta1=check_real("betas[0]", values["beta1"], 0.0, 1.0, hi_open=True),
                    beta2=check_real("betas[1]", values["beta2"], 0.0, 1.0, hi_open=True),
                    eps=check_real("eps", values["eps"], 0.0),
                    weight_decay=check_real("weight_decay", values["weight_decay"], 0.0))

    def _set_hyper(self, values: Mapping[str, float]) -> None:
        v = self._validate_hyper(values)
        self.lr, self.betas, self.eps = v["lr"], (v["beta1"], v["beta2"]), v["eps"]
        self.weight_decay = v["weight_decay"]

    def hyper(self) -> Dict[str, float]:
        return dict(lr=self.lr, beta1=self.betas[0], beta2=self.betas[1], eps=self.eps,
                    weight_decay=self.weight_decay)

    def _constants(self, backend, p: Parameter, st: dict, h: Mapping[str, float]) -> np.ndarray:
        if "step" not in st:
            st["step"] = 0
            st["exp_avg"] = backend.zeros(p.shape, p.dtype)
            st["exp_avg_sq"] = backend.zeros(p.shape, p.dtype)
        st["step"] += 1
        return adam_constants(p.dtype, st["step"], h["lr"], h["beta1"], h["beta2"], h["eps"],
                              h["weight_decay"], self._decoupled)

    def _update(self, backend, p: Parameter, st: dict) -> None:
        backend.adam_step_dev(p.data, p.grad, st["exp_avg"], st["exp_avg_sq"], st["hp"])


class AdamW(Adam):
    """AdamW (PyTorch's rule): decoupled weight decay, p *= 1 - lr * weight_decay before the Adam
    update, whose gradient carries no L2 term. Default weight_decay 1e-2, as PyTorch's."""

    _decoupled = True

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-3,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def decay_groups(model, weight_decay: float) -> List[Dict[str, Any]]:
    """Parameter groups of ``model`` for weight decay: every parameter decays by ``weight_decay``
    except biases (parameters named ``bias``) and the parameters of normalisation layers
    (``BatchNorm2d``), which get weight_decay 0 — the usual exclusions. Empty groups are left
    out. Pass the result as an optimizer's ``params``."""
    wd = check_real("weight_decay", weight_decay, 0.0)
    modules = dict(model.named_modules())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        owner, _, local = name.rpartition(".")
        (no_decay if isinstance(modules[owner], BatchNorm2d) or local == "bias" else decay).append(p)
    groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
