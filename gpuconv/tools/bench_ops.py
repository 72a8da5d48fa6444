"""What ``gpuconv bench`` times: one entry of ``OPS`` per (op, pass).

An entry says which suite layers it runs on (``kind``: ``conv`` for convolution layers, a pooling
kind for pooling layers) and on which backends, which random inputs it takes, how gpuconv computes
it (``run``, which on the NumPy backend in float64 is also the reference every result is checked
against), how the baselines compute it (PyTorch, and cuBLAS through CuPy where that applies) and
the FLOPs and bytes of one pass (``gpuconv.tools.suites``). Adding an op to the benchmark is adding
an entry.

Kernel backends time the passes their kernels implement, version by version; the NumPy backend
times the forward pass and the whole layer (forward then backward) against PyTorch CPU, and batch
normalisation's backward on its own (its inputs, the saved statistics, come from a forward).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from . import suites
from .harness import KERNEL_BACKENDS
from .suites import Cost

__all__ = ["BenchOp", "OPS", "Torch", "baseline_names"]

Arrays = Dict[str, Any]          # input name -> array (NumPy, device or torch)
Outputs = Tuple[Any, ...]
EVERY = ("numpy",) + KERNEL_BACKENDS
WHOLE_LAYER = ("numpy",)


def _no_inputs(be, g, a: Arrays) -> Arrays:
    return {}


@dataclass(frozen=True)
class BenchOp:
    """One (op, pass) of the benchmark."""

    op: str                     # row name: the kernel op (whose versions are timed), or a whole layer
    pass_name: str              # forward, backward_data, backward_filter, backward, forward_backward
    kind: str                   # the suite layers it runs on: "conv", a pooling or a batch-norm kind
    backends: Tuple[str, ...]   # the backends that time it
    inputs: Callable[[Any], Dict[str, Tuple[int, ...]]]   # geometry -> shapes of the random inputs
    run: Callable[[Any, Any, Arrays], Outputs]            # (backend, geometry, inputs) -> outputs
    cost: Callable[[Any], Cost]                           # geometry -> FLOPs and bytes of one pass
    # (NumPy backend, geometry, inputs) -> further inputs of ``run`` computed from those: the
    # indices of max pooling, the output of L2 pooling
    derived: Callable[[Any, Any, Arrays], Arrays] = _no_inputs
    # (Torch, geometry, tensors) -> the call PyTorch times, or None where it has no equivalent
    torch: Optional[Callable[[Torch, Any, Arrays], Optional[Callable[[], Outputs]]]] = None
    torch_grad: Tuple[str, ...] = ()    # the inputs PyTorch differentiates
    tf32: bool = False                  # torch-tf32 differs from torch (else it runs as torch)
    cupy_gemm: Optional[Callable[[Any, Arrays], Outputs]] = None   # (geometry, CuPy arrays)
    exact: Tuple[bool, ...] = ()        # outputs compared exactly (max-pooling indices)
    kernel: Optional[str] = None        # the kernel op whose versions are timed, where not ``op``
    # (a fused form: batch_norm_relu_forward runs the versions of batch_norm_forward)

    @property
    def kernel_op(self) -> str:
        """The op of ``gpuconv.backends.launch.VERSIONS`` this entry times."""
        return self.kernel or self.op


def baseline_names(entry: BenchOp, requested: Sequence[str]) -> Tuple[str, ...]:
    """The baselines that time ``entry``, in the order asked for: torch-tf32 where TF32 makes a
    difference (else it is torch), cupy-gemm where the entry has one."""
    names = []
    for b in requested:
        call = entry.torch if b in ("torch", "torch-tf32") else entry.cupy_gemm if b == "cupy-gemm" else None
        if call is None:
            continue
        name = "torch" if b == "torch-tf32" and not entry.tf32 else b
        if name not in names:
            names.append(name)
    return tuple(names)


class Torch:
    """PyTorch on one device ("cpu" or "cuda"), for the baselines."""

    def __init__(self, device: str, threads: Optional[int]) -> None:
        import torch
        import torch.nn.functional as F
        self.torch, self.F, self.device = torch, F, device
        if device == "cpu" and threads:
            torch.set_num_threads(threads)
        if device == "cuda":
            torch.backends.cudnn.benchmark = True

    def tensor(self, a: np.ndarray, grad: bool = False):
        t = self.torch.from_numpy(np.ascontiguousarray(a)).to(self.device)
        return t.requires_grad_(grad)

    def set_tf32(self, on: bool) -> None:
        if self.device == "cuda":
            self.torch.backends.cudnn.allow_tf32 = on
            self.torch.backends.cuda.matmul.allow_tf32 = on

    @staticmethod
    def host(t) -> np.ndarray:
        return t.detach().cpu().numpy()


def _total(cost: Callable[[Any, str], Cost], passes: Sequence[str]) -> Callable[[Any], Cost]:
    """The cost of several passes in a row (a whole layer)."""
    def total(g) -> Cost:
        costs = [cost(g, p) for p in passes]
        return Cost(sum(c.flops for c in costs), sum(c.bytes for c in costs))
    return total


# ---- convolution -------------------------------------------------------------------------------
def _conv_inputs(g) -> Dict[str, Tuple[int, ...]]:
    return {"x": g.x_shape, "w": g.w_shape, "b": (g.K,), "dy": g.y_shape}


def _conv_cost(*passes: str) -> Callable[[Any], Cost]:
    return _total(suites.conv_cost, passes)


def _torch_conv(make: Callable[[Torch, Arrays, Tuple[int, int], Tuple[int, int]], Outputs]):
    """A torch call of a conv pass, given stride and padding."""
    def setup(T: Torch, g, t: Arrays):
        stride, padding = (g.stride_h, g.stride_w), (g.pad_h, g.pad_w)
        return lambda: make(T, t, stride, padding)
    return setup


def _torch_conv_forward_backward(T: Torch, t: Arrays, stride, padding) -> Outputs:
    y = T.F.conv2d(t["x"], t["w"], t["b"], stride, padding)
    return (y,) + tuple(T.torch.autograd.grad(y, (t["x"], t["w"], t["b"]), t["dy"]))


def _cupy_gemm_forward(g, a: Arrays) -> Outputs:
    """im2col (strided slices into an (N, C·R·S, P·Q) buffer) + cupy.matmul (cuBLAS) + bias."""
    import cupy
    x, w, b = a["x"], a["w"], a["b"]
    xp = cupy.pad(x, ((0, 0), (0, 0), (g.pad_h, g.pad_bottom), (g.pad_w, g.pad_right)))
    cols = cupy.empty((g.N, g.C, g.R, g.S, g.P, g.Q), dtype=x.dtype)
    for r in range(g.R):
        for s in range(g.S):
            h0, w0 = r * g.dil_h, s * g.dil_w
            cols[:, :, r, s] = xp[:, :, h0:h0 + g.stride_h * (g.P - 1) + 1:g.stride_h,
                                  w0:w0 + g.stride_w * (g.Q - 1) + 1:g.stride_w]
    y = cupy.matmul(w.reshape(g.K, -1), cols.reshape(g.N, g.C * g.R * g.S, g.P * g.Q))
    return (y.reshape(g.N, g.K, g.P, g.Q) + b.reshape(1, g.K, 1, 1),)


# ---- pooling -----------------------------------------------------------------------------------
def _pool_inputs(g) -> Dict[str, Tuple[int, ...]]:
    return {"x": g.x_shape, "dy": g.y_shape}


def _torch_window(g) -> Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int]]:
    return (g.R, g.S), (g.stride_h, g.stride_w), (g.pad_h, g.pad_w)


def _torch_max(T: Torch, g, x, indices: bool = False):
    return T.F.max_pool2d(x, *_torch_window(g), return_indices=indices)


def _torch_avg(T: Torch, g, x):
    return T.F.avg_pool2d(x, *_torch_window(g), count_include_pad=True)


def _torch_l2(T: Torch, g, x):
    k, stride, _ = _torch_window(g)
    return T.F.lp_pool2d(x, 2.0, k, stride)


def _torch_forward(forward):
    return lambda T, g, t: lambda: (forward(T, g, t["x"]),)


def _torch_backward(forward):
    """dx by autograd through a forward graph built once, outside the timed call."""
    def setup(T: Torch, g, t: Arrays):
        y = forward(T, g, t["x"])
        return lambda: tuple(T.torch.autograd.grad(y, (t["x"],), t["dy"], retain_graph=True))
    return setup


def _torch_forward_backward(forward):
    def setup(T: Torch, g, t: Arrays):
        def call():
            y = forward(T, g, t["x"])
            return (y,) + tuple(T.torch.autograd.grad(y, (t["x"],), t["dy"]))
        return call
    return setup


def _unpadded(setup):
    """``setup`` on layers without padding, nothing on the others (torch's lp_pool2d has none)."""
    return lambda T, g, t: setup(T, g, t) if (g.pad_h, g.pad_w) == (0, 0) else None


def _pool_cost(kind: str, *passes: str) -> Callable[[Any], Cost]:
    return _total(lambda g, p: suites.pool_cost(g, kind, p), passes)


def _max_indices(be, g, a: Arrays) -> Arrays:
    return {"idx": be.max_pool2d(a["x"], g)[1]}


def _l2_output(be, g, a: Arrays) -> Arrays:
    return {"y": be.l2_pool2d(a["x"], g)}


def _max_forward_backward(be, g, a: Arrays) -> Outputs:
    y, idx = be.max_pool2d(a["x"], g)
    return (y, be.max_pool2d_backward(a["dy"], idx, g))


def _l2_forward_backward(be, g, a: Arrays) -> Outputs:
    y = be.l2_pool2d(a["x"], g)
    return (y, be.l2_pool2d_backward(a["dy"], a["x"], y, g))


def _avg_backward(be, g, a: Arrays):
    return be.avg_pool2d_backward(a["dy"], g, True, None, a["dy"].dtype)


# ---- batch normalisation (training mode) -------------------------------------------------------
BN_MOMENTUM, BN_EPS = 0.1, 1e-5


def _norm_inputs(g) -> Dict[str, Tuple[int, ...]]:
    x = (g.N, g.C, g.S)
    return {"x": x, "dy": x, "w": (g.C,), "b": (g.C,), "rm": (g.C,), "rv": (g.C,)}


def _norm_cost(kind: str, pass_name: str) -> Callable[[Any], Cost]:
    return lambda g: suites.norm_cost(g, kind, pass_name)


def _norm_forward(relu: bool):
    """y of the training forward; the running statistics are updated in place (not compared: they
    do not change y)."""
    def run(be, g, a: Arrays) -> Outputs:
        return (be.batch_norm(a["x"], a["rm"], a["rv"], a["w"], a["b"], g, True, BN_MOMENTUM, BN_EPS,
                              relu)[0],)
    return run


def _norm_backward(relu: bool):
    def run(be, g, a: Arrays) -> Outputs:
        return tuple(be.batch_norm_backward(a["dy"], a["x"], a["y"] if relu else None, a["w"], a["mean"],
                                            a["invstd"], g, True))
    return run


def _norm_saved(relu: bool):
    """The forward's saved mean and 1/std (in the inputs' dtype) and, fused, its output y: the mask
    source, computed in float32 from float32 x whatever the dtype, so that the float64 reference
    masks exactly the elements the float32 candidates mask."""
    def derived(be, g, a: Arrays) -> Arrays:
        _, mean, invstd = be.batch_norm(a["x"], None, None, a["w"], a["b"], g, True, BN_MOMENTUM, BN_EPS,
                                        False)
        out = {"mean": mean, "invstd": invstd}
        if relu:
            x32, w32, b32 = (a[k].astype(np.float32) for k in ("x", "w", "b"))
            y = be.batch_norm(x32, None, None, w32, b32, g, True, BN_MOMENTUM, BN_EPS, True)[0]
            out["y"] = y.astype(a["x"].dtype)
        return out
    return derived


def _torch_norm(T: Torch, t: Arrays, relu: bool):
    y = T.F.batch_norm(t["x"], t["rm"], t["rv"], t["w"], t["b"], training=True, momentum=BN_MOMENTUM,
                       eps=BN_EPS)
    return T.F.relu(y) if relu else y


def _torch_norm_forward(relu: bool):
    return lambda T, g, t: lambda: (_torch_norm(T, t, relu),)


def _torch_norm_backward(relu: bool):
    """dx, dweight, dbias by autograd through a batch_norm graph built once, outside the timed
    call; fused, the ReLU's backward (threshold_backward, as autograd runs it) masks dy by the
    given y first, so every candidate masks the same elements."""
    def setup(T: Torch, g, t: Arrays):
        y = _torch_norm(T, t, False)
        grad = (t["x"], t["w"], t["b"])
        if not relu:
            return lambda: tuple(T.torch.autograd.grad(y, grad, t["dy"], retain_graph=True))
        threshold_backward = T.torch.ops.aten.threshold_backward
        return lambda: tuple(T.torch.autograd.grad(y, grad, threshold_backward(t["dy"], t["y"], 0.0),
                                                   retain_graph=True))
    return setup


def _norm_entries(kind: str) -> Tuple[BenchOp, ...]:
    relu = kind == "batch_norm_relu"
    return (
        BenchOp(f"{kind}_forward", "forward", kind, EVERY, _norm_inputs, _norm_forward(relu),
                _norm_cost(kind, "forward"), torch=_torch_norm_forward(relu), kernel="batch_norm_forward"),
        BenchOp(f"{kind}_backward", "backward", kind, EVERY, _norm_inputs, _norm_backward(relu),
                _norm_cost(kind, "backward"), derived=_norm_saved(relu), torch=_torch_norm_backward(relu),
                torch_grad=("x", "w", "b"), kernel="batch_norm_backward"),
    )


# ---- the table ---------------------------------------------------------------------------------
_X = ("x",)

OPS: Tuple[BenchOp, ...] = (
    BenchOp("conv2d_forward", "forward", "conv", EVERY, _conv_inputs,
            lambda be, g, a: (be.conv2d(a["x"], a["w"], a["b"], g),), _conv_cost("forward"),
            torch=_torch_conv(lambda T, t, s, p: (T.F.conv2d(t["x"], t["w"], t["b"], s, p),)),
            tf32=True, cupy_gemm=_cupy_gemm_forward),
    BenchOp("conv2d_backward_data", "backward_data", "conv", KERNEL_BACKENDS, _conv_inputs,
            lambda be, g, a: (be.conv2d_backward(a["dy"], a["x"], a["w"], g, True, False, False)[0],),
            _conv_cost("backward_data"),
            torch=_torch_conv(lambda T, t, s, p: (
                T.torch.nn.grad.conv2d_input(t["x"].shape, t["w"], t["dy"], s, p),)), tf32=True),
    BenchOp("conv2d_backward_filter", "backward_filter", "conv", KERNEL_BACKENDS, _conv_inputs,
            lambda be, g, a: (be.conv2d_backward(a["dy"], a["x"], a["w"], g, False, True, False)[1],),
            _conv_cost("backward_filter"),
            torch=_torch_conv(lambda T, t, s, p: (
                T.torch.nn.grad.conv2d_weight(t["x"], t["w"].shape, t["dy"], s, p),)), tf32=True),
    BenchOp("conv2d_forward_backward", "forward_backward", "conv", WHOLE_LAYER, _conv_inputs,
            lambda be, g, a: ((be.conv2d(a["x"], a["w"], a["b"], g),)
                              + tuple(be.conv2d_backward(a["dy"], a["x"], a["w"], g))),
            _conv_cost(*suites.CONV_PASSES),
            torch=_torch_conv(_torch_conv_forward_backward), torch_grad=("x", "w", "b"), tf32=True),

    BenchOp("max_pool2d_forward", "forward", "max", EVERY, _pool_inputs,
            lambda be, g, a: tuple(be.max_pool2d(a["x"], g)), _pool_cost("max", "forward"),
            torch=lambda T, g, t: lambda: tuple(_torch_max(T, g, t["x"], indices=True)),
            exact=(False, True)),
    BenchOp("max_pool2d_backward", "backward", "max", KERNEL_BACKENDS, _pool_inputs,
            lambda be, g, a: (be.max_pool2d_backward(a["dy"], a["idx"], g),), _pool_cost("max", "backward"),
            derived=_max_indices, torch=_torch_backward(_torch_max), torch_grad=_X),
    BenchOp("max_pool2d_forward_backward", "forward_backward", "max", WHOLE_LAYER, _pool_inputs,
            _max_forward_backward, _pool_cost("max", *suites.POOL_PASSES),
            torch=_torch_forward_backward(_torch_max), torch_grad=_X),

    BenchOp("avg_pool2d_forward", "forward", "avg", EVERY, _pool_inputs,
            lambda be, g, a: (be.avg_pool2d(a["x"], g, True, None),), _pool_cost("avg", "forward"),
            torch=_torch_forward(_torch_avg)),
    BenchOp("avg_pool2d_backward", "backward", "avg", KERNEL_BACKENDS, _pool_inputs,
            lambda be, g, a: (_avg_backward(be, g, a),), _pool_cost("avg", "backward"),
            torch=_torch_backward(_torch_avg), torch_grad=_X),
    BenchOp("avg_pool2d_forward_backward", "forward_backward", "avg", WHOLE_LAYER, _pool_inputs,
            lambda be, g, a: (be.avg_pool2d(a["x"], g, True, None), _avg_backward(be, g, a)),
            _pool_cost("avg", *suites.POOL_PASSES),
            torch=_torch_forward_backward(_torch_avg), torch_grad=_X),

    BenchOp("l2_pool2d_forward", "forward", "l2", EVERY, _pool_inputs,
            lambda be, g, a: (be.l2_pool2d(a["x"], g),), _pool_cost("l2", "forward"),
            torch=_unpadded(_torch_forward(_torch_l2))),
    BenchOp("l2_pool2d_backward", "backward", "l2", KERNEL_BACKENDS, _pool_inputs,
            lambda be, g, a: (be.l2_pool2d_backward(a["dy"], a["x"], a["y"], g),),
            _pool_cost("l2", "backward"),
            derived=_l2_output, torch=_unpadded(_torch_backward(_torch_l2)), torch_grad=_X),
    BenchOp("l2_pool2d_forward_backward", "forward_backward", "l2", WHOLE_LAYER, _pool_inputs,
            _l2_forward_backward, _pool_cost("l2", *suites.POOL_PASSES),
            torch=_unpadded(_torch_forward_backward(_torch_l2)), torch_grad=_X),
) + tuple(e for kind in suites.NORM_KINDS for e in _norm_entries(kind))
