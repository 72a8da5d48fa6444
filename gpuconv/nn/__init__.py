"""Layers with explicit forward/backward, containers, losses, initialisers and checkpoints."""
from __future__ import annotations

from . import init
from .checkpoint import load_checkpoint, read_checkpoint, restore_checkpoint, save_checkpoint
from .layers import (
                     AvgPool2d,
                     BatchNorm2d,
                     BatchNormReLU2d,
                     Conv2d,
                     Dropout,
                     Flatten,
                     GlobalAvgPool2d,
                     Identity,
                     L2Pool2d,
                     Linear,
                     MaxPool2d,
                     ReLU,
                     Residual,
                     Sequential,
                     Sigmoid,
                     SubsamplePad2d,
                     Tanh,
)
from .loss import SoftmaxCrossEntropy
from .module import Module, Parameter, to_host

__all__ = ["init", "Module", "Parameter", "to_host", "Conv2d", "MaxPool2d", "AvgPool2d", "L2Pool2d",
           "GlobalAvgPool2d", "ReLU", "Sigmoid", "Tanh", "Identity", "Flatten", "Linear", "Dropout",
           "Sequential", "Residual", "SoftmaxCrossEntropy", "save_checkpoint", "load_checkpoint",
           "read_checkpoint", "restore_checkpoint", "BatchNorm2d", "BatchNormReLU2d", "SubsamplePad2d"]
