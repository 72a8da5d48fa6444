"""Model zoo: small CNNs built from ``gpuconv.nn`` layers, sized from the input."""
from __future__ import annotations

from typing import Callable, Dict

import numpy as np

from . import nn

__all__ = ["MODEL_NAMES", "build_model", "lenet", "cifar_small", "resnet20", "MAX_DENSE_WEIGHTS"]

# LeNet flattens its last feature map into a dense layer, whose weights grow with the image
# area (120 x 3,968,064 for 2000x2000 images: 1.8 GiB, several times that while training).
# The zoo refuses such a layer before allocating anything.
MAX_DENSE_WEIGHTS = 2**25


def _check_sizes(name: str, in_channels: int, image_size: int, num_classes: int, min_size: int) -> None:
    for arg, v, lo in (("in_channels", in_channels, 1), ("image_size", image_size, min_size),
                       ("num_classes", num_classes, 2)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{arg} must be an int, got {v!r}")
        if v < lo:
            raise ValueError(f"model {name!r} needs {arg} >= {lo}, got {v}")


def lenet(in_channels: int, image_size: int, num_classes: int, rng: np.random.Generator,
          dtype=np.float32) -> nn.Sequential:
    """LeNet-5 style: conv 5x5 (c1, padding 2) -> ReLU -> max pool 2 -> conv (c2) -> ReLU -> max
    pool 2 -> flatten -> linear 120 -> ReLU -> linear 84 -> ReLU -> linear classes.

    Images of at least 20 pixels (28x28 MNIST) get LeNet-5's widths c1=6, c2=16 and its 5x5
    'valid' second conv (28 -> 14 -> 10 -> 5, as LeNet-5 on 32x32). Smaller images (8x8 digits)
    keep too few pixels for that, so the second conv is 3x3 with padding 1 (8 -> 4 -> 4 -> 2) and
    the widths are c1=32, c2=64. Input (N, in_channels, image_size, image_size) -> (N, num_classes).
    """
    _check_sizes("lenet", in_channels, image_size, num_classes, 4)
    classic = image_size >= 20
    c1, c2 = (6, 16) if classic else (32, 64)
    s1 = image_size // 2
    s2 = (s1 - 4) // 2 if classic else s1 // 2
    features = c2 * s2 * s2
    if features * 120 > MAX_DENSE_WEIGHTS:
        raise ValueError(
            f"model 'lenet' on {image_size}x{image_size} images would flatten {features} features "
            f"into a dense layer of {features * 120} weights (more than {MAX_DENSE_WEIGHTS}): "
            f"LeNet is for small images; use cifar-small or resnet20 (global pooling) or smaller "
            f"images")
    conv1 = nn.Conv2d(in_channels, c1, 5, padding=2, rng=rng, dtype=dtype)
    if classic:
        conv2 = nn.Conv2d(c1, c2, 5, rng=rng, dtype=dtype)
    else:
        conv2 = nn.Conv2d(c1, c2, 3, padding=1, rng=rng, dtype=dtype)
    return nn.Sequential(
        conv1, nn.ReLU(), nn.MaxPool2d(2), conv2, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(features, 120, rng=rng, dtype=dtype), nn.ReLU(),
        nn.Linear(120, 84, rng=rng, dtype=dtype), nn.ReLU(),
        nn.Linear(84, num_classes, init="glorot", rng=rng, dtype=dtype))


def cifar_small(in_channels: int, image_size: int, num_classes: int, rng: np.random.Generator,
                dtype=np.float32) -> nn.Sequential:
    """A small VGG-like CNN: conv 3x3 32 -> ReLU -> conv 3x3 64 -> ReLU -> max pool 2 -> conv 3x3
    128 -> ReLU -> max pool 2 -> global average pool -> linear classes (all convs padding 1).
    Input (N, in_channels, image_size, image_size) -> (N, num_classes)."""
    _check_sizes("cifar-small", in_channels, image_size, num_classes, 4)
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1, rng=rng, dtype=dtype), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1, rng=rng, dtype=dtype), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1, rng=rng, dtype=dtype), nn.ReLU(), nn.MaxPool2d(2),
        nn.GlobalAvgPool2d(), nn.Linear(128, num_classes, init="glorot", rng=rng, dtype=dtype))


def _basic_block(cin: int, cout: int, stride: int, rng, dtype) -> nn.Sequential:
    body = nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, rng=rng, dtype=dtype), nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1, init="zeros", rng=rng, dtype=dtype))
    shortcut = (nn.Conv2d(cin, cout, 1, stride=stride, rng=rng, dtype=dtype)
                if stride != 1 or cin != cout else None)
    return nn.Sequential(nn.Residual(body, shortcut), nn.ReLU())


def resnet20(in_channels: int, image_size: int, num_classes: int, rng: np.random.Generator,
             dtype=np.float32) -> nn.Sequential:
    """ResNet-20 (He et al. 2016, CIFAR variant): conv 3x3 16 -> ReLU, three stages of three basic
    blocks with 16, 32 and 64 channels (the first block of stages 2 and 3 has stride 2 and a 1x1
    stride-2 convolution as its shortcut), global average pool, linear classes.

    This library has no batch normalisation, so, as in Fixup (Zhang et al. 2019), the last conv
    of every residual branch starts at zero: each block begins as (a projection of) the identity
    and the 20-layer network trains stably without normalisation. Convolutions keep their biases.
    Input (N, in_channels, image_size, image_size) -> (N, num_classes).
    """
    _check_sizes("resnet20", in_channels, image_size, num_classes, 4)
    layers = [nn.Conv2d(in_channels, 16, 3, padding=1, rng=rng, dtype=dtype), nn.ReLU()]
    cin = 16
    for stage, cout in enumerate((16, 32, 64)):
        for block in range(3):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(_basic_block(cin, cout, stride, rng, dtype))
            cin = cout
    layers += [nn.GlobalAvgPool2d(), nn.Linear(64, num_classes, init="glorot", rng=rng, dtype=dtype)]
    return nn.Sequential(*layers)


_BUILDERS: Dict[str, Callable[..., nn.Sequential]] = {
    "lenet": lenet, "cifar-small": cifar_small, "resnet20": resnet20}
MODEL_NAMES = tuple(_BUILDERS)


def build_model(name: str, in_channels: int, image_size: int, num_classes: int, seed: int = 0,
                dtype=np.float32) -> nn.Sequential:
    """Build model ``name`` (one of MODEL_NAMES) for square images; weights drawn from
    ``numpy.random.default_rng(seed)`` on the host, placed on the current backend."""
    if name not in _BUILDERS:
        raise ValueError(f"model must be one of {', '.join(MODEL_NAMES)}, got {name!r}")
    return _BUILDERS[name](in_channels, image_size, num_classes, np.random.default_rng(seed), dtype)
