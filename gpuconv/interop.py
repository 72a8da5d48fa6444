"""PyTorch interop: the equivalent ``torch.nn`` module of a gpuconv model, and weights to and
from a PyTorch ``state_dict``. PyTorch is optional; it is imported when these functions run.

Parameter names and layouts are the same in both frameworks (``"0.weight"``,
``"3.body.0.bias"``; conv weights (K, C/groups, R, S), linear weights (out, in)), so
``to_torch(model).state_dict()`` and ``torch_state_dict(model)`` have the same keys, and
``load_torch_state_dict(model, module.state_dict())`` loads what a torch module learnt.

Layer by layer (``to_torch``):

==========================  ================================================================
gpuconv                     torch
==========================  ================================================================
Conv2d                      ``nn.Conv2d``; ``padding='same'`` as a Conv2d subclass that pads
                            each input by ``gpuconv.geometry``'s rule first (any stride, the
                            odd pixel at the bottom/right), which ``nn.Conv2d`` cannot do
Linear, ReLU, Sigmoid,      ``nn.Linear``, ``nn.ReLU``, ``nn.Sigmoid``, ``nn.Tanh``,
Tanh, Flatten, Identity     ``nn.Flatten``, ``nn.Identity``
MaxPool2d, AvgPool2d        ``nn.MaxPool2d``, ``nn.AvgPool2d`` (same arguments)
L2Pool2d                    ``sqrt(avg_pool2d(x * x, divisor_override=1))``: padding and
                            ``ceil_mode`` as gpuconv (``nn.LPPool2d`` has neither); its
                            gradient where a window is all zeros is NaN in torch, 0 in gpuconv
GlobalAvgPool2d             ``nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())``
Dropout                     ``nn.Dropout(p)``: same rate, another random stream (the masks
                            differ; compare in eval mode)
BatchNorm2d                 ``nn.BatchNorm2d`` (same arguments; running statistics and
                            ``num_batches_tracked`` under the same state_dict keys)
BatchNormReLU2d             a ``nn.BatchNorm2d`` subclass applying ReLU to its output
SubsamplePad2d              a module computing ``x[:, :, ::s, ::s]`` between zero channels
Residual                    a module computing ``body(x) + shortcut(x)`` (identity if None)
Sequential                  ``nn.Sequential`` with the same child names
==========================  ================================================================
"""
from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Any, Mapping

import numpy as np

from . import nn
from .geometry import conv2d_geometry

__all__ = ["to_torch", "torch_state_dict", "load_torch_state_dict"]


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("gpuconv.interop needs PyTorch (pip install torch)") from None
    return torch


@functools.cache
def _modules():
    """The torch modules without a torch.nn equivalent (defined once torch is importable)."""
    torch = _torch()
    tnn, TF = torch.nn, torch.nn.functional

    class SameConv2d(tnn.Conv2d):
        """Conv2d with gpuconv's ``padding='same'``: ceil(H/stride) outputs at any stride."""

        def forward(self, x):
            g = conv2d_geometry(tuple(x.shape), tuple(self.weight.shape), self.stride, "same",
                                self.dilation, self.groups)
            x = TF.pad(x, (g.pad_w, g.pad_right, g.pad_h, g.pad_bottom))
            return TF.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    class L2Pool2d(tnn.Module):
        """y = sqrt(sum of x^2 over each zero-padded window)."""

        def __init__(self, kernel_size, stride, padding, ceil_mode):
            super().__init__()
            self.kernel_size, self.stride = kernel_size, stride
            self.padding, self.ceil_mode = padding, ceil_mode

        def forward(self, x):
            return torch.sqrt(TF.avg_pool2d(x * x, self.kernel_size, self.stride, self.padding,
                                            self.ceil_mode, True, 1))

    class Residual(tnn.Module):
        """y = body(x) + shortcut(x); shortcut None is the identity."""

        def __init__(self, body, shortcut):
            super().__init__()
            self.body, self.shortcut = body, shortcut

        def forward(self, x):
            return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

    class BatchNormReLU2d(tnn.BatchNorm2d):
        """relu(BatchNorm2d(x)), with BatchNorm2d's parameters, buffers and state_dict keys."""

        def forward(self, x):
            return torch.relu(super().forward(x))

    class SubsamplePad2d(tnn.Module):
        """x[:, :, ::stride, ::stride] with ``front`` zero channels before and ``back`` after."""

        def __init__(self, front, back, stride):
            super().__init__()
            self.front, self.back, self.stride = front, back, stride

        def forward(self, x):
            s = self.stride
            return TF.pad(x[:, :, ::s, ::s], (0, 0, 0, 0, self.front, self.back))

    return SameConv2d, L2Pool2d, Residual, BatchNormReLU2d, SubsamplePad2d


def _convert(m: nn.Module):
    torch = _torch()
    tnn = torch.nn
    SameConv2d, L2Pool2d, Residual, BatchNormReLU2d, SubsamplePad2d = _modules()
    if isinstance(m, nn.Sequential):
        return tnn.Sequential(OrderedDict((name, _convert(c)) for name, c in m._modules.items()))
    if isinstance(m, nn.Residual):
        return Residual(_convert(m.body), None if m.shortcut is None else _convert(m.shortcut))
    if isinstance(m, nn.Conv2d):
        bias = m.bias is not None
        if m.padding == "same":
            return SameConv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, 0, m.dilation,
                              m.groups, bias=bias)
        padding = 0 if m.padding == "valid" else m.padding
        return tnn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, padding, m.dilation,
                          m.groups, bias=bias)
    if isinstance(m, nn.Linear):
        return tnn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
    if isinstance(m, nn.MaxPool2d):
        return tnn.MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation, ceil_mode=m.ceil_mode)
    if isinstance(m, nn.AvgPool2d):
        return tnn.AvgPool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                             m.divisor_override)
    if isinstance(m, nn.L2Pool2d):
        return L2Pool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode)
    if isinstance(m, nn.GlobalAvgPool2d):
        return tnn.Sequential(tnn.AdaptiveAvgPool2d(1), tnn.Flatten())
    if isinstance(m, nn.Dropout):
        return tnn.Dropout(m.p)
    if isinstance(m, nn.BatchNorm2d):
        kind = BatchNormReLU2d if isinstance(m, nn.BatchNormReLU2d) else tnn.BatchNorm2d
        return kind(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
    if isinstance(m, nn.SubsamplePad2d):
        return SubsamplePad2d(m.front, m.out_channels - m.in_channels - m.front, m.stride)
    simple = {nn.ReLU: tnn.ReLU, nn.Sigmoid: tnn.Sigmoid, nn.Tanh: tnn.Tanh, nn.Flatten: tnn.Flatten,
              nn.Identity: tnn.Identity}
    if type(m) in simple:
        return simple[type(m)]()
    raise ValueError(f"layer {type(m).__name__} has no torch.nn conversion (gpuconv.interop knows "
                     f"{', '.join(sorted(c.__name__ for c in _KNOWN))})")


_KNOWN = (nn.Sequential, nn.Residual, nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.AvgPool2d, nn.L2Pool2d,
          nn.GlobalAvgPool2d, nn.Dropout, nn.ReLU, nn.Sigmoid, nn.Tanh, nn.Flatten, nn.Identity,
          nn.BatchNorm2d, nn.BatchNormReLU2d, nn.SubsamplePad2d)


def torch_state_dict(model: nn.Module) -> OrderedDict[str, Any]:
    """The model's weights as a PyTorch ``state_dict`` (CPU tensors, copies): the keys and shapes
    of ``to_torch(model).state_dict()``."""
    torch = _torch()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a gpuconv.nn.Module, got {type(model).__name__}")
    return OrderedDict((k, torch.from_numpy(v)) for k, v in model.state_dict().items())


def to_torch(model: nn.Module, device=None):
    """An equivalent ``torch.nn`` module holding copies of ``model``'s weights, in their dtype, in
    ``model``'s training mode, on ``device`` (default: the CPU)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a gpuconv.nn.Module, got {type(model).__name__}")
    module = _convert(model)
    dtypes = {p.dtype for p in model.parameters()}
    if len(dtypes) > 1:
        raise ValueError(f"model mixes parameter dtypes {sorted(map(str, dtypes))}; cast it with "
                         f"model.to(dtype=...) first")
    if dtypes:
        module = module.to(_torch().from_numpy(np.zeros(0, dtypes.pop())).dtype)
    module.load_state_dict(torch_state_dict(model), strict=True)
    module.train(model.training)
    return module if device is None else module.to(device)


def load_torch_state_dict(model: nn.Module, state_dict: Mapping[str, Any]) -> None:
    """Load a PyTorch ``state_dict`` (tensors on any device, or arrays) into ``model``: keys,
    shapes and dtypes must match exactly (ValueError naming what differs); nothing changes on
    error."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of name -> tensor, got "
                        f"{type(state_dict).__name__}")
    model.load_state_dict({key: value.detach().cpu().numpy() if hasattr(value, "detach") else value
                           for key, value in state_dict.items()})
