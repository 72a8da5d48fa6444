"""The benchmark suites as data, with FLOP and minimal-byte counts and physical floors.

A suite entry is a layer shape (``ConvCase``, ``PoolCase`` or ``NormCase``) whose ``kinds`` select
the entries of ``gpuconv.tools.bench_ops.OPS`` timed on it; ``conv_cost``/``pool_cost``/``norm_cost``
count the arithmetic and the minimal traffic of one pass over a batch, and ``floor_seconds`` turns a
cost into the physical lower bound max(FLOPs / peak, bytes / bandwidth) on a given GPU.

Counting rules (float32 storage unless ``itemsize`` says otherwise):

* convolution, one pass = 2·N·K·(C/groups)·R·S·P·Q FLOPs (forward, backward-data and
  backward-filter cost the same); bytes = every tensor the pass reads or writes, once:
  forward x + w + bias + y, backward-data dy + w + dx, backward-filter dy + x + dw;
* pooling, forward = one operation per window element per output (two for L2: square, add);
  backward the same, except max pooling's, which only routes (0 FLOPs); bytes: max forward
  x + y + int32 indices, max backward dy + indices + dx, average forward x + y, backward dy + dx,
  L2 forward x + y, backward dy + x + y + dx;
* batch normalisation in training mode (x of N·C·S values, C channels), the ReLU-fused forms alike
  except where said. Forward: x read once, y written once, and per channel weight and bias read,
  running mean and variance read and written, saved mean and 1/std written: 2·N·C·S + 8·C
  elements. Backward: dy and x read, dx written, and per channel weight, saved mean and 1/std
  read, dweight and dbias written: 3·N·C·S + 5·C; the ReLU-fused backward also reads the forward's
  output y, the only source of its mask (y > 0): 4·N·C·S + 5·C. FLOPs per value: forward 6 (sum
  for the mean; deviation and square-add for the variance; subtract, scale, shift), 7 with the
  ReLU's max; backward 8 (sum of g; deviation and multiply-add for the sum of g·(x − mean);
  x̂ = deviation times 1/std; two multiply-subtracts and one scale for dx), the ReLU's mask a select.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, Optional, Tuple

from ..geometry import (
    ConvGeometry,
    NormGeometry,
    PoolGeometry,
    batch_norm_geometry,
    conv2d_geometry,
    pool2d_geometry,
)

__all__ = ["ConvCase", "PoolCase", "NormCase", "Cost", "Hardware", "HARDWARE", "SUITES", "CONV_PASSES",
           "POOL_PASSES", "POOL_KINDS", "NORM_PASSES", "NORM_KINDS", "get_suite", "conv_cost", "pool_cost",
           "norm_cost", "hardware_for",
           "floor_seconds", "multiple_of_floor", "DEFAULT_BATCH"]

DEFAULT_BATCH = 128
CONV_PASSES = ("forward", "backward_data", "backward_filter")
POOL_PASSES = ("forward", "backward")
POOL_KINDS = ("max", "avg", "l2")
INDEX_BYTES = 4  # max-pooling indices are int32
NORM_PASSES = ("forward", "backward")
NORM_KINDS = ("batch_norm", "batch_norm_relu")   # training mode, plain and with a fused ReLU


@dataclass(frozen=True)
class ConvCase:
    """One convolution layer of a suite: x (N, C, H, W) * w (K, C, R, S), square kernel.

    ``relu_after``: a ReLU follows the layer in its model, which the forward applies in its
    epilogue (``F.conv2d_relu``); ``relu_before``: x is a ReLU's output that only this layer reads,
    so backward-data applies the ReLU's mask (``through_relu``). ``gpuconv profile`` runs those
    fused variants, as training the model does.
    """

    family: ClassVar[str] = "conv"                 # what ``gpuconv bench --ops`` calls it
    kinds: ClassVar[Tuple[str, ...]] = ("conv",)   # the kinds of op benchmarked on it
    id: str
    layer: str
    C: int
    K: int
    kernel: int
    stride: int
    padding: int
    H: int
    W: int
    relu_after: bool = False
    relu_before: bool = False

    def geometry(self, batch: int = DEFAULT_BATCH) -> ConvGeometry:
        """The conv geometry at batch size ``batch``."""
        return conv2d_geometry((batch, self.C, self.H, self.W), (self.K, self.C, self.kernel, self.kernel),
                               stride=self.stride, padding=self.padding)


@dataclass(frozen=True)
class PoolCase:
    """One pooling layer of a suite; ``kinds`` are the pooling flavours benchmarked on it."""

    family: ClassVar[str] = "pool"
    id: str
    layer: str
    C: int
    kernel: int
    stride: int
    padding: int
    H: int
    W: int
    kinds: Tuple[str, ...]

    def geometry(self, batch: int = DEFAULT_BATCH) -> PoolGeometry:
        """The pooling geometry at batch size ``batch``."""
        return pool2d_geometry((batch, self.C, self.H, self.W), self.kernel, self.stride, self.padding)


@dataclass(frozen=True)
class NormCase:
    """One batch-normalisation layer of a suite (training mode, float32); ``kinds`` among
    ``NORM_KINDS``."""

    family: ClassVar[str] = "norm"
    id: str
    layer: str
    C: int
    H: int
    W: int
    kinds: Tuple[str, ...] = NORM_KINDS

    def geometry(self, batch: int = DEFAULT_BATCH) -> NormGeometry:
        """The batch-norm geometry at batch size ``batch``."""
        return batch_norm_geometry((batch, self.C, self.H, self.W), training=True)


SUITES: Dict[str, Tuple[object, ...]] = {
    "small-cnn": (
        ConvCase("L1", "LeNet conv1", 1, 6, 5, 1, 2, 28, 28, relu_after=True),
        ConvCase("L2", "LeNet conv2", 6, 16, 5, 1, 0, 14, 14, relu_after=True),
        ConvCase("C1", "ResNet-20 stem", 3, 16, 3, 1, 1, 32, 32),
        ConvCase("C2", "ResNet-20 stage 1", 16, 16, 3, 1, 1, 32, 32),
        ConvCase("C3", "ResNet-20 down", 16, 32, 3, 2, 1, 32, 32),
        ConvCase("C4", "ResNet-20 stage 2", 32, 32, 3, 1, 1, 16, 16),
        ConvCase("C5", "ResNet-20 stage 3", 64, 64, 3, 1, 1, 8, 8),
        ConvCase("C6", "small CIFAR CNN", 32, 64, 3, 1, 1, 32, 32, relu_after=True, relu_before=True),
        PoolCase("P1", "LeNet pool", 6, 2, 2, 0, 28, 28, POOL_KINDS),
        PoolCase("P2", "CIFAR pool", 64, 2, 2, 0, 32, 32, POOL_KINDS),
        PoolCase("P3", "overlapping max pool", 32, 3, 2, 1, 32, 32, ("max",)),
        PoolCase("P4", "global average pool", 64, 8, 1, 0, 8, 8, ("avg",)),
        NormCase("B1", "ResNet-20 stage 1 BN", 16, 32, 32),
        NormCase("B2", "ResNet-20 stage 3 BN", 64, 8, 8),
    ),
}


def get_suite(name: str) -> Tuple[object, ...]:
    """The cases of suite ``name`` (``"small-cnn"``)."""
    if name not in SUITES:
        raise ValueError(f"suite must be one of {', '.join(SUITES)}, got {name!r}")
    return SUITES[name]


@dataclass(frozen=True)
class Cost:
    """Arithmetic (FLOPs) and minimal memory traffic (bytes) of one pass."""

    flops: int
    bytes: int


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def conv_cost(g: ConvGeometry, pass_name: str, itemsize: int = 4, bias: bool = True) -> Cost:
    """FLOPs and minimal bytes of one convolution pass (see the module docstring)."""
    if pass_name not in CONV_PASSES:
        raise ValueError(f"pass_name must be one of {', '.join(CONV_PASSES)}, got {pass_name!r}")
    x, w, y = _numel(g.x_shape), _numel(g.w_shape), _numel(g.y_shape)
    if pass_name == "forward":
        elems = x + w + y + (g.K if bias else 0)
    elif pass_name == "backward_data":
        elems = y + w + x
    else:
        elems = y + x + w
    return Cost(g.flops, elems * itemsize)


def pool_cost(g: PoolGeometry, kind: str, pass_name: str, itemsize: int = 4) -> Cost:
    """FLOPs and minimal bytes of one pooling pass (see the module docstring)."""
    if kind not in POOL_KINDS:
        raise ValueError(f"kind must be one of {', '.join(POOL_KINDS)}, got {kind!r}")
    if pass_name not in POOL_PASSES:
        raise ValueError(f"pass_name must be one of {', '.join(POOL_PASSES)}, got {pass_name!r}")
    x, y = _numel(g.x_shape), _numel(g.y_shape)
    window_ops = y * g.R * g.S * (2 if kind == "l2" else 1)
    if kind == "max":
        if pass_name == "forward":
            return Cost(window_ops, (x + y) * itemsize + y * INDEX_BYTES)
        return Cost(0, (y + x) * itemsize + y * INDEX_BYTES)
    if kind == "avg":
        return Cost(window_ops, (x + y) * itemsize)
    if pass_name == "forward":
        return Cost(window_ops, (x + y) * itemsize)
    return Cost(window_ops, (2 * x + 2 * y) * itemsize)


def norm_cost(g: NormGeometry, kind: str, pass_name: str, itemsize: int = 4) -> Cost:
    """FLOPs and minimal bytes of one training-mode batch-norm pass (see the module docstring)."""
    if kind not in NORM_KINDS:
        raise ValueError(f"kind must be one of {', '.join(NORM_KINDS)}, got {kind!r}")
    if pass_name not in NORM_PASSES:
        raise ValueError(f"pass_name must be one of {', '.join(NORM_PASSES)}, got {pass_name!r}")
    x, relu = g.N * g.C * g.S, kind == "batch_norm_relu"
    if pass_name == "forward":
        return Cost((7 if relu else 6) * x, (2 * x + 8 * g.C) * itemsize)
    return Cost(8 * x, ((4 if relu else 3) * x + 5 * g.C) * itemsize)


@dataclass(frozen=True)
class Hardware:
    """Peak rates of one GPU: FP32 (FFMA) and TF32 tensor-core FLOP/s, copy bandwidth in bytes/s.

    The fields after ``bandwidth`` describe the chip for the time model of ``gpuconv profile``
    (``gpuconv.profiler.model``; sources and assumptions in docs/profiling.md): ``arch`` (the
    SASS it runs), ``sms``, ``clock_hz`` (the boost clock of the FP32 peak), ``dram_bandwidth``
    (published peak, bytes/s), ``l2_bytes``, ``l2_bytes_per_clock`` (L2 read bandwidth per clock;
    ``l2_published`` False where NVIDIA publishes none and the A100's figure is assumed),
    ``smem_bytes_per_clock`` (per SM: 32 banks of 4 bytes) and ``issue_per_clock`` (warp
    instructions per SM per clock: four schedulers, one each).
    """

    name: str
    fp32_flops: float
    tf32_flops: float
    bandwidth: float
    arch: str = "sm_90"
    sms: int = 0
    clock_hz: float = 0.0
    dram_bandwidth: float = 0.0
    l2_bytes: int = 0
    l2_bytes_per_clock: int = 0
    l2_published: bool = False
    smem_bytes_per_clock: int = 128
    issue_per_clock: int = 4


# bandwidth: the floor's copy rate, about 90 % of the published DRAM bandwidth (dram_bandwidth).
HARDWARE: Dict[str, Hardware] = {
    "H100": Hardware("NVIDIA H100 SXM", 66.9e12, 494.7e12, 3.0e12, arch="sm_90", sms=132, clock_hz=1.98e9,
                     dram_bandwidth=3.35e12, l2_bytes=50 * 2**20, l2_bytes_per_clock=5120),
    "H200": Hardware("NVIDIA H200", 66.9e12, 494.7e12, 4.3e12, arch="sm_90", sms=132, clock_hz=1.98e9,
                     dram_bandwidth=4.8e12, l2_bytes=50 * 2**20, l2_bytes_per_clock=5120),
    "A100": Hardware("NVIDIA A100 SXM 80GB", 19.5e12, 156e12, 0.9 * 2.039e12, arch="sm_80", sms=108,
                     clock_hz=1.41e9, dram_bandwidth=2.039e12, l2_bytes=40 * 2**20, l2_bytes_per_clock=5120,
                     l2_published=True),
    "RTX4090": Hardware("NVIDIA GeForce RTX 4090", 82.6e12, 82.6e12, 0.9 * 1.008e12, arch="sm_89", sms=128,
                        clock_hz=2.52e9, dram_bandwidth=1.008e12, l2_bytes=72 * 2**20,
                        l2_bytes_per_clock=5120),
}


def hardware_for(gpu_name: Optional[str]) -> Tuple[Hardware, bool]:
    """(hardware, matched) for a GPU name; an unknown or missing name gives the H100 with False."""
    name = (gpu_name or "").upper()
    for key in ("H200", "H100"):
        if key in name:
            return HARDWARE[key], True
    return HARDWARE["H100"], False


def floor_seconds(cost: Cost, hw: Hardware, math_mode: str = "fp32") -> float:
    """max(FLOPs / peak, bytes / bandwidth) in seconds; ``math_mode`` is ``"fp32"`` or ``"tf32"``."""
    if math_mode not in ("fp32", "tf32"):
        raise ValueError(f"math_mode must be 'fp32' or 'tf32', got {math_mode!r}")
    peak = hw.fp32_flops if math_mode == "fp32" else hw.tf32_flops
    return max(cost.flops / peak, cost.bytes / hw.bandwidth)


def multiple_of_floor(seconds: float, floor: float) -> float:
    """How many times its floor a measured time is."""
    if floor <= 0:
        raise ValueError(f"floor must be > 0 seconds, got {floor!r}")
    return seconds / floor
