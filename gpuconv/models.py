"""Model zoo: small CNNs built from ``gpuconv.nn`` layers, sized from the input."""
from __future__ import annotations

from typing import Callable, Dict

import numpy as np

from . import nn

__all__ = ["MODEL_NAMES", "build_model", "lenet", "cifar_small", "resnet20", "resnet20_fixup", "airbench",
           "MAX_DENSE_WEIGHTS"]

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


def _fixup_block(cin: int, cout: int, stride: int, rng, dtype) -> nn.Sequential:
    body = nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, rng=rng, dtype=dtype), nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1, init="zeros", rng=rng, dtype=dtype))
    shortcut = (nn.Conv2d(cin, cout, 1, stride=stride, rng=rng, dtype=dtype)
                if stride != 1 or cin != cout else None)
    return nn.Sequential(nn.Residual(body, shortcut), nn.ReLU())


def resnet20_fixup(in_channels: int, image_size: int, num_classes: int, rng: np.random.Generator,
                   dtype=np.float32) -> nn.Sequential:
    """ResNet-20 without normalisation: conv 3x3 16 -> ReLU, three stages of three basic blocks
    with 16, 32 and 64 channels (the first block of stages 2 and 3 has stride 2 and a 1x1
    stride-2 convolution as its shortcut), global average pool, linear classes.

    As in Fixup (Zhang et al. 2019), the last conv of every residual branch starts at zero: each
    block begins as (a projection of) the identity and the 20-layer network trains stably without
    normalisation. Convolutions keep their biases.
    Input (N, in_channels, image_size, image_size) -> (N, num_classes).
    """
    _check_sizes("resnet20-fixup", in_channels, image_size, num_classes, 4)
    layers = [nn.Conv2d(in_channels, 16, 3, padding=1, rng=rng, dtype=dtype), nn.ReLU()]
    cin = 16
    for stage, cout in enumerate((16, 32, 64)):
        for block in range(3):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(_fixup_block(cin, cout, stride, rng, dtype))
            cin = cout
    layers += [nn.GlobalAvgPool2d(), nn.Linear(64, num_classes, init="glorot", rng=rng, dtype=dtype)]
    return nn.Sequential(*layers)


# ---- networks with batch normalisation ------------------------------------------------------

def _conv3x3(cin: int, cout: int, rng, dtype, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (a batch norm follows)."""
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False, rng=rng, dtype=dtype)


def _basic_block(cin: int, cout: int, stride: int, rng, dtype) -> nn.Sequential:
    """conv 3x3 -> BN -> ReLU -> conv 3x3 -> BN, plus the shortcut, then ReLU."""
    body = nn.Sequential(_conv3x3(cin, cout, rng, dtype, stride), nn.BatchNormReLU2d(cout, dtype=dtype),
                         _conv3x3(cout, cout, rng, dtype), nn.BatchNorm2d(cout, dtype=dtype))
    shortcut = nn.SubsamplePad2d(cin, cout, stride) if stride != 1 or cin != cout else None
    return nn.Sequential(nn.Residual(body, shortcut), nn.ReLU())


def resnet20(in_channels: int, image_size: int, num_classes: int, rng: np.random.Generator,
             dtype=np.float32) -> nn.Sequential:
    """ResNet-20 as He et al. (2016, section 4.2) train it on CIFAR-10: conv 3x3 16 -> BN -> ReLU,
    three stages of three basic blocks (conv-BN-ReLU-conv-BN plus shortcut, ReLU) with 16, 32 and
    64 channels, the first block of stages 2 and 3 at stride 2 with the parameter-free shortcut
    (subsampling, zero channels: option A), global average pool, linear classes. 0.27 M
    parameters at 3 input channels; convolutions have no bias (the batch norms carry it).
    Input (N, in_channels, image_size, image_size) -> (N, num_classes); images of at least 4
    pixels (the bundled 8x8 digits end the last stage at 2x2, CIFAR's 32x32 at 8x8).
    """
    _check_sizes("resnet20", in_channels, image_size, num_classes, 4)
    layers = [_conv3x3(in_channels, 16, rng, dtype), nn.BatchNormReLU2d(16, dtype=dtype)]
    cin = 16
    for stage, cout in enumerate((16, 32, 64)):
        for block in range(3):
            layers.append(_basic_block(cin, cout, 2 if stage > 0 and block == 0 else 1, rng, dtype))
            cin = cout
    layers += [nn.GlobalAvgPool2d(), nn.Linear(64, num_classes, init="glorot", rng=rng, dtype=dtype)]
    return nn.Sequential(*layers)


def airbench(in_channels: int, image_size: int, num_classes: int, rng: np.random.Generator,
             dtype=np.float32) -> nn.Sequential:
    """A fast CIFAR network in the manner of Jordan's airbench (2024): a conv 3x3 32 stem -> BN ->
    ReLU, then three blocks of 64, 256 and 256 channels, each conv 3x3 -> max pool 2 -> BN -> ReLU
    -> conv 3x3 -> BN -> ReLU, a max pool over what is left, and a linear layer without bias.
    (airbench itself starts with a fixed whitening convolution and uses GELU.) Input (N,
    in_channels, image_size, image_size) with image_size a multiple of 8 -> (N, num_classes).
    """
    _check_sizes("airbench", in_channels, image_size, num_classes, 8)
    if image_size % 8:
        raise ValueError(f"model 'airbench' halves the image three times: image_size must be a multiple "
                         f"of 8, got {image_size}")
    layers = [_conv3x3(in_channels, 32, rng, dtype), nn.BatchNormReLU2d(32, dtype=dtype)]
    cin = 32
    for width in (64, 256, 256):
        layers += [_conv3x3(cin, width, rng, dtype), nn.MaxPool2d(2), nn.BatchNormReLU2d(width, dtype=dtype),
                   _conv3x3(width, width, rng, dtype), nn.BatchNormReLU2d(width, dtype=dtype)]
        cin = width
    layers += [nn.MaxPool2d(image_size // 8), nn.Flatten(),
               nn.Linear(cin, num_classes, bias=False, init="glorot", rng=rng, dtype=dtype)]
    return nn.Sequential(*layers)


_BUILDERS: Dict[str, Callable[..., nn.Sequential]] = {
    "lenet": lenet, "cifar-small": cifar_small, "resnet20": resnet20, "resnet20-fixup": resnet20_fixup,
    "airbench": airbench}
MODEL_NAMES = tuple(_BUILDERS)


def build_model(name: str, in_channels: int, image_size: int, num_classes: int, seed: int = 0,
                dtype=np.float32) -> nn.Sequential:
    """Build model ``name`` (one of MODEL_NAMES) for square images; weights drawn from
    ``numpy.random.default_rng(seed)`` on the host, placed on the current backend."""
    if name not in _BUILDERS:
        raise ValueError(f"model must be one of {', '.join(MODEL_NAMES)}, got {name!r}")
    return _BUILDERS[name](in_channels, image_size, num_classes, np.random.default_rng(seed), dtype)
