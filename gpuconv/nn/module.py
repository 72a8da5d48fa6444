"""The layer base class.

Every layer has explicit ``forward(x)`` and ``backward(dy)`` methods. ``forward`` caches what the
backward pass needs; ``backward`` returns the gradient with respect to the layer's input and
**sets** (overwrites, never accumulates) ``param.grad`` of each of its parameters to the gradient
of the current batch. One forward and one backward therefore make a complete, self-contained
gradient; ``zero_grad()`` drops the gradients (sets them to None), and optimizers skip parameters
whose gradient is None.

Parameters are :class:`Parameter` records (``data`` and ``grad`` arrays of the current backend);
their names are dotted paths such as ``"0.weight"`` or ``"3.body.0.bias"``, stable for a given
architecture, and used by ``state_dict``/``load_state_dict`` and checkpoints.

Buffers are state that is not trained (batch norm's running statistics): floating buffers live
where the module's parameters live and follow ``to()``; integer buffers (counters such as
``num_batches_tracked``) stay NumPy arrays on the host. ``state_dict`` holds both, in PyTorch's
order: each module's parameters, then its buffers, then its children.

Placement: ``model.to(name)`` moves the parameters to backend ``name`` and pins the model there:
its ``forward`` and ``backward`` (and those of every descendant, bound on the instances by ``to``)
then run on that backend, as do optimizer updates of its parameters, unless an explicit
``use_backend`` block encloses the call (the order of precedence is in ``gpuconv.backends``). A
model never moved follows the backend in force, at no cost per call.

Fusion: a container runs a layer and the ReLU after it as one kernel where the layer can apply
the ReLU in its epilogue (``relu_epilogue``/``forward_relu``: a convolution, or a residual block
whose body ends in one), and a convolution whose input is a ReLU's output returns the gradient at
that ReLU's input (see ``nn.Sequential``). The values are those of the unfused layers. It is on
unless the environment sets ``GPUCONV_FUSION=0`` when the module is built; ``set_fusion(False)``
turns it off for a model (the unfused path, kept as the reference).
"""
from __future__ import annotations

import functools
import os
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

import numpy as np

from ..backends import BACKEND_NAMES, Backend, BackendUnavailable, get_backend, resolve_backend, running_on

__all__ = ["Parameter", "Module", "to_host", "fusion_default"]


def fusion_default() -> bool:
    """Whether new modules fuse (see the module docstring): not when GPUCONV_FUSION is "0";
    ValueError for a value other than "0" or "1" (a "false" must not leave fusion on)."""
    value = os.environ.get("GPUCONV_FUSION", "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"GPUCONV_FUSION must be 0 (unfused) or 1 (fused), got {value!r}")
    return value != "0"


def to_host(a) -> np.ndarray:
    """Any backend's array -> NumPy array on the host (no copy for NumPy arrays)."""
    if isinstance(a, np.ndarray):
        return a
    if isinstance(a, np.generic):  # a NumPy scalar, e.g. a counter of a state dict
        return np.asarray(a)
    current = get_backend()
    if current.is_array(a):
        return np.asarray(current.to_numpy(a))
    for name in BACKEND_NAMES:
        try:
            backend = resolve_backend(name)
        except BackendUnavailable:
            continue
        if backend.is_array(a):
            return np.asarray(backend.to_numpy(a))
    raise TypeError(f"cannot move an object of type {type(a).__name__} to the host: "
                    f"it is not an array of any available backend")


def _place_buffer(backend, host: np.ndarray):
    """A buffer's home: floating arrays on ``backend`` (contiguous), others on the host."""
    if host.dtype.kind == "f":
        return backend.asarray(np.ascontiguousarray(host))
    return host


def _slot_value(module: Module, local: str, is_param: bool):
    return module._parameters[local].data if is_param else module._buffers[local]


class Parameter:
    """A trainable array and its gradient (None until a backward pass sets it); ``placement`` is
    the backend its module was moved to (None: follows the backend in force).

    ``register_grad_hook(fn)`` calls ``fn(param)`` each time a new gradient is assigned (not when
    it is set to None): a layer's backward assigns its parameters' gradients as soon as they are
    computed, so a hook learns that this gradient is final while the backward pass goes on through
    the layers before it (``gpuconv.distributed.DataParallel`` starts its all-reduce there).
    """

    __slots__ = ("data", "_grad", "_grad_hooks", "placement")

    def __init__(self, data, placement: Optional[Backend] = None) -> None:
        self.data = data
        self._grad = None
        self._grad_hooks: Tuple[Callable[[Parameter], None], ...] = ()
        self.placement = placement

    @property
    def grad(self):
        return self._grad

    @grad.setter
    def grad(self, value) -> None:
        self._grad = value
        if value is not None:
            for hook in self._grad_hooks:
                hook(self)

    def register_grad_hook(self, hook: Callable[[Parameter], None]) -> Callable[[], None]:
        """Call ``hook(self)`` after each assignment of a gradient; returns a function that removes it."""
        if not callable(hook):
            raise TypeError(f"hook must be callable, got {type(hook).__name__}")
        self._grad_hooks += (hook,)

        def remove() -> None:
            hooks = list(self._grad_hooks)
            for i, h in enumerate(hooks):
                if h is hook:
                    del hooks[i]
                    self._grad_hooks = tuple(hooks)
                    return
        return remove

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype})"


def _runs_on(backend: Backend, method):
    """``method`` (a bound forward or backward) run on ``backend`` (see the module docstring)."""
    @functools.wraps(method)
    def run(*args, **kwargs):
        with running_on(backend):
            return method(*args, **kwargs)
    return run


class Module:
    """Base class of layers and containers (see the module docstring for the gradient rule and
    placement)."""

    _placement: Optional[Backend] = None
    generator: Optional[np.random.Generator] = None  # set by layers that draw random numbers

    def __init__(self) -> None:
        self._parameters: OrderedDict[str, Parameter] = OrderedDict()
        self._buffers: OrderedDict[str, object] = OrderedDict()
        self._modules: OrderedDict[str, Module] = OrderedDict()
        self.training = True
        self.fusion = fusion_default()

    # ---- structure ----------------------------------------------------------------------
    def register_parameter(self, name: str, host_array: np.ndarray) -> Parameter:
        """Add a parameter from a host array; it is placed on the current backend."""
        if "." in name or not name:
            raise ValueError(f"parameter name must be non-empty without '.', got {name!r}")
        p = Parameter(self._home().asarray(np.ascontiguousarray(host_array)), self._placement)
        self._parameters[name] = p
        return p

    def register_buffer(self, name: str, host_array: np.ndarray) -> None:
        """Add a buffer from a host array: floating arrays are placed where the parameters are
        (the module's placement, else the current backend), integer arrays stay on the host."""
        if "." in name or not name:
            raise ValueError(f"buffer name must be non-empty without '.', got {name!r}")
        self._buffers[name] = _place_buffer(self._home(), np.array(host_array, copy=True))

    def add_module(self, name: str, module: Module) -> Module:
        if not isinstance(module, Module):
            raise TypeError(f"module {name!r} must be a gpuconv.nn.Module, got {type(module).__name__}")
        if "." in name or not name:
            raise ValueError(f"module name must be non-empty without '.', got {name!r}")
        self._modules[name] = module
        return module

    def children(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def named_modules(self, prefix: str = "") -> Iterator[Tuple[str, Module]]:
        """(dotted name, module) for this module ("" for itself) and every descendant."""
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix: str = "") -> Iterator[Tuple[str, Parameter]]:
        """(dotted name, Parameter): own parameters first, then each child's, in order."""
        for name, p in self._parameters.items():
            yield (f"{prefix}.{name}" if prefix else name), p
        for name, child in self._modules.items():
            yield from child.named_parameters(f"{prefix}.{name}" if prefix else name)

    def named_buffers(self, prefix: str = "") -> Iterator[Tuple[str, object]]:
        """(dotted name, array): own buffers first, then each child's, in order."""
        for name, b in self._buffers.items():
            yield (f"{prefix}.{name}" if prefix else name), b
        for name, child in self._modules.items():
            yield from child.named_buffers(f"{prefix}.{name}" if prefix else name)

    def _state_slots(self, prefix: str = "") -> Iterator[Tuple[str, Module, str, bool]]:
        """(dotted name, owning module, local name, is a parameter) of every parameter and buffer,
        in PyTorch's state_dict order: own parameters, own buffers, then each child's."""
        for name in self._parameters:
            yield (f"{prefix}.{name}" if prefix else name), self, name, True
        for name in self._buffers:
            yield (f"{prefix}.{name}" if prefix else name), self, name, False
        for name, child in self._modules.items():
            yield from child._state_slots(f"{prefix}.{name}" if prefix else name)

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    @property
    def params(self) -> OrderedDict[str, object]:
        """Ordered name -> parameter array (current backend)."""
        return OrderedDict((n, p.data) for n, p in self.named_parameters())

    @property
    def grads(self) -> OrderedDict[str, object]:
        """Ordered name -> gradient array of the last backward pass (None before one)."""
        return OrderedDict((n, p.grad) for n, p in self.named_parameters())

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    # ---- modes --------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        if mode not in (True, False):
            raise TypeError(f"mode must be a bool, got {mode!r}")
        for _, m in self.named_modules():
            m.training = bool(mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def set_fusion(self, enabled: bool) -> Module:
        """Turn fused layer pairs (see the module docstring) on or off in this module and every
        descendant. Returns self."""
        if enabled not in (True, False):
            raise TypeError(f"enabled must be a bool, got {enabled!r}")
        for _, m in self.named_modules():
            m.fusion = bool(enabled)
        return self

    # ---- computation --------------------------------------------------------------------
    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def relu_epilogue(self, residual: bool) -> bool:
        """Whether ``forward_relu`` can apply a following ReLU (after adding a residual, with
        ``residual``) in this module's last kernel."""
        return False

    def forward_relu(self, x, residual=None):
        """relu(forward(x) + residual) (residual None: no add), where ``relu_epilogue`` allows it;
        ``backward`` then takes the gradient at the ReLU's input (the residual's gradient too)."""
        raise NotImplementedError(f"{type(self).__name__} has no ReLU epilogue")

    def __call__(self, x):
        return self.forward(x)

    # ---- state --------------------------------------------------------------------------
    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """Ordered name -> host (NumPy) copy of each parameter and buffer."""
        return OrderedDict((name, np.array(to_host(_slot_value(m, local, is_param)), copy=True))
                           for name, m, local, is_param in self._state_slots())

    def check_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Raise ValueError unless ``state`` has exactly this module's keys, shapes and dtypes."""
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping of name -> array, got {type(state).__name__}")
        own = {name: (m, local, is_param) for name, m, local, is_param in self._state_slots()}
        missing = [k for k in own if k not in state]
        extra = [k for k in state if k not in own]
        if missing or extra:
            raise ValueError(f"state_dict does not match the model: missing keys {missing}, "
                             f"unexpected keys {extra}")
        for name, (m, local, is_param) in own.items():
            current = _slot_value(m, local, is_param)
            what = "parameter" if is_param else "buffer"
            value = state[name]
            shape = tuple(np.shape(value))
            dtype = np.dtype(getattr(value, "dtype", np.asarray(value).dtype))
            if shape != tuple(current.shape):
                raise ValueError(f"state_dict[{name!r}] has shape {shape}, the model's {what} "
                                 f"has shape {tuple(current.shape)}")
            if dtype != np.dtype(current.dtype):
                raise ValueError(f"state_dict[{name!r}] has dtype {dtype}, the model's {what} "
                                 f"has dtype {np.dtype(current.dtype)}")

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Copy host arrays into the parameters and buffers (strict: keys, shapes and dtypes must
        match).

        Everything is validated first, so on error the module is left unchanged.
        """
        self.check_state_dict(state)
        for name, m, local, is_param in self._state_slots():
            host = np.array(to_host(state[name]), copy=True)
            if is_param:
                p = m._parameters[local]
                p.data = (p.placement or get_backend()).asarray(host)
                p.grad = None
            else:
                m._buffers[local] = _place_buffer(m._home(), host)

    @property
    def placement(self) -> Optional[Backend]:
        """The backend ``to(name)`` pinned this module to, or None (follows the backend in force)."""
        return self._placement

    def _home(self) -> Backend:
        return self._placement or get_backend()

    def to(self, backend: Optional[str] = None, dtype=None) -> Module:
        """Move this module and its descendants to ``backend`` (a name or Backend) and pin them
        there: their forward and backward, and optimizer updates of their parameters, then run on
        it unless an explicit ``use_backend`` block encloses the call. ``backend=None`` keeps the
        module where it is (its placement, else the backend in force) and only casts. ``dtype``
        casts the parameters and floating buffers to float32 or float64. Gradients and forward
        caches are dropped. Returns self."""
        placement = self._placement if backend is None else resolve_backend(backend)
        target = placement or get_backend()
        cast = None if dtype is None else np.dtype(dtype)
        if cast is not None and cast not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {cast}")
        for _, p in self.named_parameters():
            host = to_host(p.data)
            if cast is not None:
                host = host.astype(cast)
            p.data = target.asarray(np.ascontiguousarray(host))
            p.grad = None
            p.placement = placement
        for _, m in self.named_modules():
            for name, b in m._buffers.items():
                host = to_host(b)
                if cast is not None and host.dtype.kind == "f":
                    host = host.astype(cast)
                m._buffers[name] = _place_buffer(target, host)
            m._placement = placement
            m._drop_cache()
            for name in ("forward", "backward"):
                m.__dict__.pop(name, None)
                if placement is not None:
                    setattr(m, name, _runs_on(placement, getattr(m, name)))
        return self

    def _drop_cache(self) -> None:
        """Forget forward-pass caches (called when parameters move)."""

    # ---- random generators --------------------------------------------------------------
    def _generators(self) -> Dict[str, np.random.Generator]:
        return {name: m.generator for name, m in self.named_modules() if m.generator is not None}

    def rng_state(self) -> Dict[str, Dict[str, Any]]:
        """Dotted module name -> bit-generator state (a JSON-serialisable dict) of every layer that
        draws random numbers (``Dropout``); restoring it repeats the same draws."""
        return {name: g.bit_generator.state for name, g in self._generators().items()}

    def check_rng_state(self, state: Mapping[str, Any]) -> None:
        """Raise ValueError unless ``state`` holds a valid state for exactly this module's generators."""
        own = self._generators()
        if not isinstance(state, Mapping) or set(state) != set(own):
            got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"random-generator state is for layers {got}, the model's layers with "
                             f"generators are {sorted(own)}")
        for name, g in own.items():
            trial = type(g.bit_generator)()
            try:
                trial.state = state[name]
            except (TypeError, ValueError, KeyError) as exc:
                raise ValueError(f"random-generator state of layer {name!r} does not fit its "
                                 f"{type(g.bit_generator).__name__} generator: {exc}") from None

    def load_rng_state(self, state: Mapping[str, Any]) -> None:
        """Set every generator to its state in ``state`` (checked first; unchanged on error)."""
        self.check_rng_state(state)
        for name, g in self._generators().items():
            g.bit_generator.state = state[name]

    # ---- printing -----------------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not self._modules:
            return head + ")"
        lines = [head]
        for name, child in self._modules.items():
            child_repr = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child_repr}")
        return "\n".join(lines) + "\n)"
