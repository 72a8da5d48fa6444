"""Layers: convolution, pooling, activations, dense, dropout, batch normalisation and containers.

Every layer computes through ``gpuconv.functional`` (plus reshapes and strided slices, which every
backend's array type provides; the residual sum and the dropout mask go through
``functional.add``/``mul``), so one model runs unchanged on the numpy, emulator and cuda backends.
Gradient rule (see ``module.py``): ``backward(dy)`` returns the input gradient and *sets* each
parameter's ``grad``.

Default initialisation: weights He-normal (fan_in, ReLU gain; ``init="glorot"`` for
Xavier-uniform, ``init="zeros"`` for zeros), biases zero. Weights are drawn on the host from
``rng`` (a ``numpy.random.Generator`` or an int seed; None draws unseeded values).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import List, Optional, Tuple, Union

import numpy as np

from .. import functional as F
from ..backends import get_backend
from ..geometry import check_int, check_real, pair
from . import init as initializers
from .module import Module

__all__ = ["Conv2d", "MaxPool2d", "AvgPool2d", "L2Pool2d", "GlobalAvgPool2d", "ReLU", "Sigmoid",
           "Tanh", "Flatten", "Linear", "Dropout", "Sequential", "Residual", "Identity", "BatchNorm2d",
           "BatchNormReLU2d", "SubsamplePad2d"]

IntPair = Union[int, Tuple[int, int]]
_INITS = ("he", "glorot", "zeros")


def _check_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _init_weight(shape, init: str, rng, dtype) -> np.ndarray:
    if init == "he":
        return initializers.he_normal(shape, initializers.as_generator(rng), dtype)
    if init == "glorot":
        return initializers.glorot_uniform(shape, initializers.as_generator(rng), dtype)
    if init == "zeros":
        return initializers.zeros(shape, dtype)
    raise ValueError(f"init must be one of {', '.join(_INITS)}, got {init!r}")


def _positive_int(name: str, value) -> int:
    return check_int(name, value, 1)


def _need_forward(layer: Module, cache) -> None:
    if cache is None:
        raise RuntimeError(f"{type(layer).__name__}.backward called before forward")


def _need_epilogue(layer: Module, residual) -> None:
    if not layer.relu_epilogue(residual is not None):
        raise ValueError(f"{type(layer).__name__}.forward_relu: this {type(layer).__name__} cannot apply a "
                         f"ReLU{' after a residual add' if residual is not None else ''} in its last "
                         f"kernel (see relu_epilogue)")


class Conv2d(Module):
    """2-D convolution (cross-correlation). x (N, in_ch, H, W) -> y (N, out_ch, P, Q).

    weight (out_ch, in_ch/groups, kh, kw), bias (out_ch,). ``padding`` is an int, a pair,
    ``'valid'`` or ``'same'`` (see ``gpuconv.geometry.conv2d_geometry``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair, stride: IntPair = 1,
                 padding: Union[IntPair, str] = 0, dilation: IntPair = 1, groups: int = 1,
                 bias: bool = True, *, init: str = "he", rng=None, dtype=np.float32) -> None:
        super().__init__()
        self.in_channels = _positive_int("in_channels", in_channels)
        self.out_channels = _positive_int("out_channels", out_channels)
        self.groups = _positive_int("groups", groups)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        self.kernel_size = pair("kernel_size", kernel_size, 1)
        self.stride = pair("stride", stride, 1)
        self.dilation = pair("dilation", dilation, 1)
        if isinstance(padding, str):
            if padding not in ("valid", "same"):
                raise ValueError(f"padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
            self.padding = padding
        else:
            self.padding = pair("padding", padding, 0)
        dt = _check_dtype(dtype)
        shape = (self.out_channels, self.in_channels // self.groups) + self.kernel_size
        self.weight = self.register_parameter("weight", _init_weight(shape, init, rng, dt))
        self.bias = self.register_parameter("bias", np.zeros(self.out_channels, dt)) if bias else None
        self._x = None

    def _drop_cache(self) -> None:
        self._x = None

    def forward(self, x):
        self._x = x
        return F.conv2d(x, self.weight.data, None if self.bias is None else self.bias.data,
                        stride=self.stride, padding=self.padding, dilation=self.dilation,
                        groups=self.groups)

    def relu_epilogue(self, residual: bool) -> bool:
        return True

    def forward_relu(self, x, residual=None):
        self._x = x
        return F.conv2d_relu(x, self.weight.data, None if self.bias is None else self.bias.data,
                             stride=self.stride, padding=self.padding, dilation=self.dilation,
                             groups=self.groups, residual=residual)

    def backward(self, dy, *, through_relu: bool = False):
        """The input gradient; ``through_relu``: x is a ReLU's output, return the gradient at
        that ReLU's input (``F.conv2d_backward``'s ``through_relu``)."""
        _need_forward(self, self._x)
        dx, dw, db = F.conv2d_backward(dy, self._x, self.weight.data, stride=self.stride,
                                       padding=self.padding, dilation=self.dilation,
                                       groups=self.groups, need_db=self.bias is not None,
                                       through_relu=through_relu)
        self.weight.grad = dw
        if self.bias is not None:
            self.bias.grad = db
        return dx

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding!r}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


class _Pool(Module):
    def __init__(self, kernel_size: IntPair, stride: Optional[IntPair], padding: IntPair,
                 ceil_mode: bool) -> None:
        super().__init__()
        self.kernel_size = pair("kernel_size", kernel_size, 1)
        self.stride = self.kernel_size if stride is None else pair("stride", stride, 1)
        self.padding = pair("padding", padding, 0)
        if ceil_mode not in (True, False):
            raise TypeError(f"ceil_mode must be a bool, got {ceil_mode!r}")
        self.ceil_mode = bool(ceil_mode)
        self._cache = None

    def _drop_cache(self) -> None:
        self._cache = None

    def _geometry_kwargs(self) -> dict:
        return dict(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                    ceil_mode=self.ceil_mode)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
                + (", ceil_mode=True" if self.ceil_mode else ""))


class MaxPool2d(_Pool):
    """Max pooling (N, C, H, W) -> (N, C, P, Q); remembers the winning input of each window."""

    def __init__(self, kernel_size: IntPair, stride: Optional[IntPair] = None, padding: IntPair = 0,
                 dilation: IntPair = 1, ceil_mode: bool = False) -> None:
        super().__init__(kernel_size, stride, padding, ceil_mode)
        self.dilation = pair("dilation", dilation, 1)

    def _geometry_kwargs(self) -> dict:
        return dict(super()._geometry_kwargs(), dilation=self.dilation)

    def forward(self, x):
        y, indices = F.max_pool2d(x, **self._geometry_kwargs())
        self._cache = (tuple(x.shape), indices)
        return y

    def backward(self, dy):
        _need_forward(self, self._cache)
        x_shape, indices = self._cache
        return F.max_pool2d_backward(dy, indices, x_shape, **self._geometry_kwargs())

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + (f", dilation={self.dilation}" if self.dilation != (1, 1) else "")


class AvgPool2d(_Pool):
    """Average pooling (N, C, H, W) -> (N, C, P, Q), PyTorch's divisor rule."""

    def __init__(self, kernel_size: IntPair, stride: Optional[IntPair] = None, padding: IntPair = 0,
                 ceil_mode: bool = False, count_include_pad: bool = True,
                 divisor_override: Optional[int] = None) -> None:
        super().__init__(kernel_size, stride, padding, ceil_mode)
        if count_include_pad not in (True, False):
            raise TypeError(f"count_include_pad must be a bool, got {count_include_pad!r}")
        self.count_include_pad = bool(count_include_pad)
        self.divisor_override = divisor_override

    def _geometry_kwargs(self) -> dict:
        return dict(super()._geometry_kwargs(), count_include_pad=self.count_include_pad,
                    divisor_override=self.divisor_override)

    def forward(self, x):
        y = F.avg_pool2d(x, **self._geometry_kwargs())
        self._cache = (tuple(x.shape), x.dtype)
        return y

    def backward(self, dy):
        _need_forward(self, self._cache)
        x_shape, _ = self._cache
        return F.avg_pool2d_backward(dy, x_shape, **self._geometry_kwargs())


class L2Pool2d(_Pool):
    """L2-norm pooling y = sqrt(sum x^2) over each window (N, C, H, W) -> (N, C, P, Q)."""

    def __init__(self, kernel_size: IntPair, stride: Optional[IntPair] = None, padding: IntPair = 0,
                 ceil_mode: bool = False) -> None:
        super().__init__(kernel_size, stride, padding, ceil_mode)

    def forward(self, x):
        y = F.l2_pool2d(x, **self._geometry_kwargs())
        self._cache = (x, y)
        return y

    def backward(self, dy):
        _need_forward(self, self._cache)
        x, y = self._cache
        return F.l2_pool2d_backward(dy, x, y, **self._geometry_kwargs())


class GlobalAvgPool2d(Module):
    """Mean over the spatial dimensions: (N, C, H, W) -> (N, C)."""

    def __init__(self) -> None:
        super().__init__()
        self._shape = None

    def _drop_cache(self) -> None:
        self._shape = None

    def forward(self, x):
        N, C, H, W = x.shape
        self._shape = (N, C, H, W)
        return F.avg_pool2d(x, kernel_size=(H, W)).reshape(N, C)

    def backward(self, dy):
        _need_forward(self, self._shape)
        N, C, H, W = self._shape
        return F.avg_pool2d_backward(dy.reshape(N, C, 1, 1), self._shape, kernel_size=(H, W))


class _Activation(Module):
    _forward = None
    _backward = None

    def __init__(self) -> None:
        super().__init__()
        self._y = None

    def _drop_cache(self) -> None:
        self._y = None

    def forward(self, x):
        self._y = type(self)._forward(x)
        return self._y

    def backward(self, dy):
        _need_forward(self, self._y)
        return type(self)._backward(dy, self._y)


class ReLU(_Activation):
    """max(x, 0), element-wise."""

    _forward = staticmethod(F.relu)
    _backward = staticmethod(F.relu_backward)


class Sigmoid(_Activation):
    """1 / (1 + exp(-x)), element-wise."""

    _forward = staticmethod(F.sigmoid)
    _backward = staticmethod(F.sigmoid_backward)


class Tanh(_Activation):
    """tanh(x), element-wise."""

    _forward = staticmethod(F.tanh)
    _backward = staticmethod(F.tanh_backward)


class Identity(Module):
    """y = x."""

    def forward(self, x):
        return x

    def backward(self, dy):
        return dy


class Flatten(Module):
    """(N, d1, d2, ...) -> (N, d1*d2*...)."""

    def __init__(self) -> None:
        super().__init__()
        self._shape = None

    def _drop_cache(self) -> None:
        self._shape = None

    def forward(self, x):
        self._shape = tuple(x.shape)
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        _need_forward(self, self._shape)
        return dy.reshape(self._shape)


class Linear(Module):
    """x (N, in_features) -> x @ weight.T + bias, weight (out_features, in_features)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, init: str = "he",
                 rng=None, dtype=np.float32) -> None:
        super().__init__()
        self.in_features = _positive_int("in_features", in_features)
        self.out_features = _positive_int("out_features", out_features)
        dt = _check_dtype(dtype)
        self.weight = self.register_parameter(
            "weight", _init_weight((self.out_features, self.in_features), init, rng, dt))
        self.bias = self.register_parameter("bias", np.zeros(self.out_features, dt)) if bias else None
        self._x = None

    def _drop_cache(self) -> None:
        self._x = None

    def forward(self, x):
        self._x = x
        return F.linear(x, self.weight.data, None if self.bias is None else self.bias.data)

    def backward(self, dy):
        _need_forward(self, self._x)
        dx, dw, db = F.linear_backward(dy, self._x, self.weight.data, need_db=self.bias is not None)
        self.weight.grad = dw
        if self.bias is not None:
            self.bias.grad = db
        return dx

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class Dropout(Module):
    """Inverted dropout: in training, zero each element with probability ``p`` and scale the rest
    by 1/(1-p); identity in eval mode. Each forward in training draws a new mask seed from
    ``self.generator``, a ``numpy.random.Generator`` seeded with ``seed`` (None: unseeded) whose
    state checkpoints carry (``Module.rng_state``)."""

    def __init__(self, p: float = 0.5, seed: Optional[int] = None) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float, np.floating)):
            raise TypeError(f"p must be a float, got {p!r}")
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"p must be in [0, 1), got {p}")
        self.p = float(p)
        self.generator = np.random.default_rng(seed)
        self._mask = None
        self._active = False

    def _drop_cache(self) -> None:
        self._mask = None

    def forward(self, x):
        self._active = self.training and self.p > 0.0
        if not self._active:
            return x
        y, self._mask = F.dropout(x, self.p, int(self.generator.integers(0, 2**31 - 1)))
        return y

    def backward(self, dy):
        if not self._active:
            return dy
        _need_forward(self, self._mask)
        return F.mul(dy, self._mask)

    def extra_repr(self) -> str:
        return f"p={self.p}"


# ---- batch normalisation -------------------------------------------------------------------

class BatchNorm2d(Module):
    """Batch normalisation of x (N, C, H, W) per channel, PyTorch's ``nn.BatchNorm2d``.

    In training mode the batch's statistics normalise and, with ``track_running_stats``, update
    the buffers ``running_mean``/``running_var`` (``momentum``; None: the cumulative average,
    1 / num_batches_tracked) and count ``num_batches_tracked``; in eval mode the running
    statistics normalise (without ``track_running_stats`` the batch's always do). ``affine``
    adds the parameters ``weight`` (ones) and ``bias`` (zeros). The state_dict keys are
    PyTorch's: weight, bias, running_mean, running_var, num_batches_tracked.
    """

    _relu = False

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, *, dtype=np.float32) -> None:
        super().__init__()
        self.num_features = _positive_int("num_features", num_features)
        self.eps = check_real("eps", eps, 0.0, lo_open=True)
        self.momentum = None if momentum is None else check_real("momentum", momentum, 0.0, 1.0)
        for name, flag in (("affine", affine), ("track_running_stats", track_running_stats)):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"{name} must be a bool, got {flag!r}")
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        dt = _check_dtype(dtype)
        C = self.num_features
        self.weight = self.register_parameter("weight", np.ones(C, dt)) if self.affine else None
        self.bias = self.register_parameter("bias", np.zeros(C, dt)) if self.affine else None
        if self.track_running_stats:
            self.register_buffer("running_mean", np.zeros(C, dt))
            self.register_buffer("running_var", np.ones(C, dt))
            self.register_buffer("num_batches_tracked", np.array(0, np.int64))
        self._cache = None

    @property
    def running_mean(self):
        return self._buffers.get("running_mean")

    @property
    def running_var(self):
        return self._buffers.get("running_var")

    @property
    def num_batches_tracked(self) -> int:
        return int(self._buffers["num_batches_tracked"]) if self.track_running_stats else 0

    def _drop_cache(self) -> None:
        self._cache = None

    def forward(self, x):
        if x.ndim != 4:
            raise ValueError(f"{type(self).__name__} expects x of rank 4 (N, C, H, W), got shape "
                             f"{tuple(x.shape)}")
        batch_stats = self.training or not self.track_running_stats
        tracking = self.training and self.track_running_stats
        factor = 0.0 if self.momentum is None else self.momentum
        if tracking and self.momentum is None:  # cumulative average over the batches seen
            factor = 1.0 / (self.num_batches_tracked + 1)
        w = None if self.weight is None else self.weight.data
        b = None if self.bias is None else self.bias.data
        fn = F.batch_norm_relu if self._relu else F.batch_norm
        y, mean, invstd = fn(x, self.running_mean, self.running_var, w, b, training=batch_stats,
                             momentum=factor, eps=self.eps)
        if tracking:
            self._buffers["num_batches_tracked"] = np.array(self.num_batches_tracked + 1, np.int64)
        self._cache = (x, y if self._relu else None, mean, invstd, batch_stats)
        return y

    def backward(self, dy):
        _need_forward(self, self._cache)
        x, y, mean, invstd, batch_stats = self._cache
        w = None if self.weight is None else self.weight.data
        if self._relu:
            dx, dw, db = F.batch_norm_relu_backward(dy, x, y, w, mean, invstd, training=batch_stats)
        else:
            dx, dw, db = F.batch_norm_backward(dy, x, w, mean, invstd, training=batch_stats)
        if self.affine:
            self.weight.grad, self.bias.grad = dw, db
        return dx

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNormReLU2d(BatchNorm2d):
    """``BatchNorm2d`` followed by a ReLU, in one fused pass forward and backward (the same
    parameters, buffers and state_dict keys as BatchNorm2d)."""

    _relu = True


class SubsamplePad2d(Module):
    """x (N, in_channels, H, W) -> x[:, :, ::stride, ::stride] between zero channels, (N,
    out_channels, ceil(H/stride), ceil(W/stride)): the parameter-free shortcut of He et al.'s
    CIFAR ResNets ("option A"), (out - in) // 2 zero channels before the input's and the rest
    after."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2) -> None:
        super().__init__()
        self.in_channels = _positive_int("in_channels", in_channels)
        self.out_channels = _positive_int("out_channels", out_channels)
        if self.out_channels < self.in_channels:
            raise ValueError(f"out_channels={out_channels} must be >= in_channels={in_channels}")
        self.stride = _positive_int("stride", stride)
        self.front = (self.out_channels - self.in_channels) // 2
        self._shape = None

    def _drop_cache(self) -> None:
        self._shape = None

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"SubsamplePad2d expects x of shape (N, {self.in_channels}, H, W), got "
                             f"{tuple(x.shape)}")
        s, lo = self.stride, self.front
        sub = x[:, :, ::s, ::s]
        be = get_backend()
        y = be.zeros((x.shape[0], self.out_channels) + tuple(sub.shape[2:]), x.dtype)
        be.copy(y[:, lo:lo + self.in_channels], sub)
        self._shape = tuple(x.shape)
        return y

    def backward(self, dy):
        _need_forward(self, self._shape)
        s, lo = self.stride, self.front
        be = get_backend()
        dx = be.zeros(self._shape, dy.dtype)
        be.copy(dx[:, :, ::s, ::s], dy[:, lo:lo + self.in_channels])
        return dx

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class Sequential(Module):
    """Runs its layers in order; backward runs them in reverse. Layers are named "0", "1", ...
    (or by the keys of an OrderedDict).

    With ``fusion`` on (``Module.set_fusion``), a layer followed by a ``ReLU`` runs as one step
    when the layer has a ReLU epilogue (``relu_epilogue``: a Conv2d, a Residual whose body ends in
    a Conv2d): ``forward_relu`` applies the ReLU (and a residual block's add) as the convolution
    stores its output. In backward, a Conv2d whose input is the output of such a step (or of a
    ReLU layer) returns the gradient at the ReLU's input (``through_relu``), so the ReLU's own
    backward is skipped; otherwise the step applies ``relu_backward`` before its layer's backward.
    The values are the unfused layers' (the same kernels' arithmetic in the same order).
    """

    def __init__(self, *layers) -> None:
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], OrderedDict):
            for name, layer in layers[0].items():
                self.add_module(name, layer)
        else:
            for i, layer in enumerate(layers):
                self.add_module(str(i), layer)
        self._plan = None

    def _drop_cache(self) -> None:
        self._plan = None

    def _steps(self) -> List[Tuple[Module, bool]]:
        """(layer, whether the ReLU layer after it runs in its epilogue), in order."""
        layers = list(self._modules.values())
        steps, i = [], 0
        while i < len(layers):
            fused = (self.fusion and i + 1 < len(layers) and type(layers[i + 1]) is ReLU
                     and layers[i].relu_epilogue(False))
            steps.append((layers[i], fused))
            i += 2 if fused else 1
        return steps

    def relu_epilogue(self, residual: bool) -> bool:
        steps = self._steps() if self.fusion else []
        return bool(steps) and not steps[-1][1] and steps[-1][0].relu_epilogue(residual)

    def forward_relu(self, x, residual=None):
        _need_epilogue(self, residual)
        return self._run(x, True, residual)

    def _run(self, x, relu: bool, residual):
        steps = self._steps()
        outputs = []
        for k, (layer, fused) in enumerate(steps):
            if relu and k == len(steps) - 1:
                x = layer.forward_relu(x, residual)
            else:
                x = layer.forward_relu(x) if fused else layer.forward(x)
            outputs.append(x if fused else None)
        self._plan = (steps, outputs)
        return x

    def append(self, layer: Module) -> Sequential:
        self.add_module(str(len(self._modules)), layer)
        return self

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def forward(self, x):
        return self._run(x, False, None)

    def backward(self, dy):
        _need_forward(self, self._plan)
        steps, outputs = self._plan
        masked = False  # dy is already the gradient at the input of the ReLU that ends this step
        for k in range(len(steps) - 1, -1, -1):
            layer, fused = steps[k]
            if masked and not fused:  # a ReLU layer, whose backward the convolution after it did
                masked = False
                continue
            if fused and not masked:
                dy = F.relu_backward(dy, outputs[k])
            prev = steps[k - 1] if k > 0 else None
            masked = (self.fusion and prev is not None and isinstance(layer, Conv2d)
                      and (prev[1] or type(prev[0]) is ReLU))
            dy = layer.backward(dy, through_relu=True) if masked else layer.backward(dy)
        return dy


class Residual(Module):
    """y = body(x) + shortcut(x) (shortcut None means identity). Apply a ReLU after it as its own
    layer when a ResNet block wants one."""

    def __init__(self, body: Module, shortcut: Optional[Module] = None) -> None:
        super().__init__()
        self.body = self.add_module("body", body)
        self.shortcut = None if shortcut is None else self.add_module("shortcut", shortcut)

    def forward(self, x):
        out = self.body.forward(x)
        skip = x if self.shortcut is None else self.shortcut.forward(x)
        return F.add(out, skip)

    def relu_epilogue(self, residual: bool) -> bool:
        return self.fusion and not residual and self.body.relu_epilogue(True)

    def forward_relu(self, x, residual=None):
        # relu(body(x) + skip): the body's last convolution adds the skip and applies the ReLU.
        _need_epilogue(self, residual)
        skip = x if self.shortcut is None else self.shortcut.forward(x)
        return self.body.forward_relu(x, skip)

    def backward(self, dy):
        dx = self.body.backward(dy)
        dskip = dy if self.shortcut is None else self.shortcut.backward(dy)
        return F.add(dx, dskip)
