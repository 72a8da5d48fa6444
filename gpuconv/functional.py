"""The public op API, named and ordered like ``torch.nn.functional``.

Every function validates its arguments (shapes and hyper-parameters through
``gpuconv.geometry``; dtypes, channel counts and the backend each array belongs to here), then
calls the matching method of the backend in force (``gpuconv.get_backend()``). Backends therefore
receive only arrays of their own type, float32/float64 with one dtype per call, and geometry
records that match the arrays.

Layout is NCHW: x (N, C, H, W), conv weight (K, C/groups, R, S), output (N, K, P, Q).
Backward functions take the upstream gradient ``dy`` first and return gradients in the order of
the forward function's arguments.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Optional, Sequence, Tuple, TypeVar

import numpy as np

from . import geometry
from .backends import get_backend
from .backends.base import Backend
from .geometry import IntPair, Padding

__all__ = [
    "conv2d", "conv2d_relu", "conv2d_backward",
    "max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
    "l2_pool2d", "l2_pool2d_backward",
    "relu", "relu_backward", "sigmoid", "sigmoid_backward", "tanh", "tanh_backward", "dropout",
    "add", "mul",
    "linear", "linear_backward", "softmax_cross_entropy", "sgd_step", "adam_step", "adamw_step",
    "batch_norm", "batch_norm_backward", "batch_norm_relu", "batch_norm_relu_backward",
    "augment",
]

Array = Any
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_FLOAT_TYPES = frozenset(dt.type for dt in FLOAT_DTYPES)  # dtype.type: a cheaper test than dtype ==
INDEX_DTYPE = np.dtype(np.int32)


# ---- shared validators ---------------------------------------------------------------------

def _array_origin(a) -> str:
    """Which backend an array of this type belongs to ("numpy", "cuda"), or "" for a foreign type."""
    return {"numpy": "numpy", "cupy": "cuda"}.get(type(a).__module__.split(".")[0], "")


# DLPack device types (dlpack.h): host memory, CUDA device memory.
_DL_CPU, _DL_CUDA = 1, 2


def _foreign_device(a) -> Optional[str]:
    """"cpu" or "cuda" for an array of another library that exports DLPack or the CUDA array
    interface (a torch tensor, a CuPy array seen from the CPU backends); None otherwise."""
    if isinstance(a, np.ndarray):
        return None
    if hasattr(a, "__cuda_array_interface__"):
        return "cuda"
    device = getattr(a, "__dlpack_device__", None)
    if device is None or not hasattr(a, "__dlpack__"):
        return None
    try:
        kind = int(device()[0])
    except Exception:  # an object that cannot say where it lives is not one we can take
        return None
    return {_DL_CPU: "cpu", _DL_CUDA: "cuda"}.get(kind, f"DLPack device type {kind}")


def _describe_type(a) -> str:
    return f"{type(a).__module__}.{type(a).__qualname__}"


def _adopt(backend: Backend, name: str, a):
    """``a`` as an array of ``backend`` when it is another library's array in the backend's memory
    (DLPack or CUDA array interface, zero-copy); anything else is returned unchanged."""
    where = _foreign_device(a)
    if where is None:
        return a
    home = "cpu" if backend.xp is np else "cuda"
    if where != home:
        fix = ("move it to the host first (torch: x.cpu(); CuPy: x.get()) or run on the cuda backend"
               if home == "cpu" else "move it to the GPU first (torch: x.cuda()) or run on a CPU backend")
        raise TypeError(f"{name} is a {_describe_type(a)} in {where} memory but the active backend "
                        f"{backend.name!r} works on {home} memory: {fix}")
    try:
        if hasattr(a, "__dlpack__"):
            return backend.xp.from_dlpack(a)
        return backend.xp.asarray(a)
    except (TypeError, ValueError, RuntimeError, BufferError) as exc:
        raise TypeError(f"{name}: cannot take the {_describe_type(a)} through DLPack ({exc}); "
                        f"convert it to an array of backend {backend.name!r} first") from None


class _Foreign(Exception):
    """Raised by the checks when an argument is another library's array, so ``_accepts_foreign``
    converts the arguments and calls the op again."""


def _accepts_foreign(op: Callable[..., _R]) -> Callable[..., _R]:
    """Let ``op`` take other libraries' arrays that live where the backend computes (see
    ``_adopt``). Costs nothing until a check meets one: then every argument is converted and the
    op runs again (checks come before any work, so nothing ran twice)."""
    @functools.wraps(op)
    def call(*args, **kwargs):
        try:
            return op(*args, **kwargs)
        except _Foreign:
            backend = get_backend()
            names = list(inspect.signature(op).parameters)
            args = tuple(_adopt(backend, names[i], a) for i, a in enumerate(args))
            kwargs = {k: _adopt(backend, k, v) for k, v in kwargs.items()}
            return op(*args, **kwargs)
    return call


def _check_array(backend: Backend, name: str, a) -> None:
    if not backend.is_array(a):
        if _foreign_device(a) is not None:
            raise _Foreign(name)
        if not hasattr(a, "shape") or not hasattr(a, "dtype"):
            raise TypeError(f"{name} must be an array of the active backend {backend.name!r}, "
                            f"got {type(a).__name__}")
        origin = _array_origin(a)
        if not origin:
            raise TypeError(f"{name} is a {_describe_type(a)}, not an array of the active backend "
                            f"{backend.name!r}: convert it with get_backend().asarray()")
        raise TypeError(
            f"{name} is an array of backend {origin!r} ({_describe_type(a)}) but the active backend "
            f"is {backend.name!r} (mixed backends): convert it with get_backend().asarray() or run "
            f"under use_backend({origin!r})")


def _check_float(backend: Backend, name: str, a) -> None:
    _check_array(backend, name, a)
    if a.dtype.type not in _FLOAT_TYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {a.dtype}")


def _check_same_dtype(named: Sequence[Tuple[str, Any]]) -> None:
    (first_name, first), *rest = [(n, a) for n, a in named if a is not None]
    for name, a in rest:
        if a.dtype is not first.dtype and a.dtype != first.dtype:
            raise TypeError(f"{name} has dtype {a.dtype} but {first_name} has dtype {first.dtype}: "
                            f"all floating arrays of one call must share a dtype")


def _check_rank(name: str, a, rank: int) -> None:
    if a.ndim != rank:
        geometry.check_shape(name, a.shape, rank)  # raises, naming the expected layout


def _check_shape_equals(name: str, a, expected, what: str) -> None:
    if tuple(a.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)} ({what}), got {tuple(a.shape)}")


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r} of type {type(value).__name__}")
    return bool(value)


def _check_x_shape(x_shape) -> Tuple[int, int, int, int]:
    if not isinstance(x_shape, (tuple, list)) or len(x_shape) != 4:
        raise ValueError(f"x_shape must be a 4-tuple (N, C, H, W), got {x_shape!r}")
    return tuple(geometry.check_int(f"x_shape[{i}]", v, 1) for i, v in enumerate(x_shape))


def _check_indices(backend: Backend, indices, y_shape) -> None:
    _check_array(backend, "indices", indices)
    if indices.dtype != INDEX_DTYPE:
        raise TypeError(f"indices must have dtype int32 (as returned by max_pool2d), got {indices.dtype}")
    _check_shape_equals("indices", indices, y_shape, "the max_pool2d output shape")


# ---- remembered checks ---------------------------------------------------------------------

_R = TypeVar("_R")
_PLAIN = frozenset((int, bool, float, str, type(None)))
_INT = frozenset((int,))
_REMEMBERED = 4096  # signatures per op before the memory is cleared


def _signature(backend: Backend, args: tuple) -> Optional[tuple]:
    """What a check's outcome depends on: each array's type, shape and dtype, and each other
    argument's type and value. None (not remembered) for arguments other than this backend's
    arrays, plain Python scalars, strings, None and tuples of ints."""
    key = [backend]
    is_array = backend.is_array
    for a in args:
        t = type(a)
        if t in _PLAIN:
            key += (t, a)
        elif t is tuple:
            if not set(map(type, a)) <= _INT:
                return None
            key.append(a)
        elif is_array(a):
            key += (t, a.shape, a.dtype)
        else:
            return None
    return tuple(key)


def _remembered(check: Callable[..., _R]) -> Callable[..., _R]:
    """Run ``check(backend, *args)`` once per signature and return its result after that.

    A training step validates the same few call signatures thousands of times, and a full check
    (shapes, dtypes, geometry) costs more than launching the kernel. The outcome depends only on
    the signature (``_signature``: the types are part of it, so ``stride=True`` never reuses the
    outcome of ``stride=1``); calls that raise are not remembered and raise again.
    """
    memory: dict = {}

    @functools.wraps(check)
    def checked(backend: Backend, *args) -> _R:
        key = _signature(backend, args)
        if key is None:
            return check(backend, *args)
        out = memory.get(key)
        if out is None:
            out = check(backend, *args)
            if len(memory) >= _REMEMBERED:
                memory.clear()
            memory[key] = out
        return out

    return checked


# ---- convolution ---------------------------------------------------------------------------

def _conv_geometry(backend: Backend, x, weight, stride, padding, dilation, groups):
    _check_float(backend, "x", x)
    _check_float(backend, "weight", weight)
    _check_rank("x", x, 4)
    _check_rank("weight", weight, 4)
    return geometry.conv2d_geometry(x.shape, weight.shape, stride, padding, dilation, groups)


@_remembered
def _conv2d_checks(backend: Backend, x, weight, bias, stride, padding, dilation, groups):
    g = _conv_geometry(backend, x, weight, stride, padding, dilation, groups)
    if bias is not None:
        _check_float(backend, "bias", bias)
        _check_shape_equals("bias", bias, (g.K,), "one value per output channel")
    _check_same_dtype([("x", x), ("weight", weight), ("bias", bias)])
    return g


@_remembered
def _conv2d_relu_checks(backend: Backend, x, weight, bias, residual, stride, padding, dilation, groups):
    g = _conv2d_checks(backend, x, weight, bias, stride, padding, dilation, groups)
    if residual is not None:
        _check_float(backend, "residual", residual)
        _check_shape_equals("residual", residual, g.y_shape, "the conv2d output shape (N, K, P, Q)")
        _check_same_dtype([("x", x), ("residual", residual)])
    return g


@_remembered
def _conv2d_backward_checks(backend: Backend, dy, x, weight, stride, padding, dilation, groups):
    g = _conv_geometry(backend, x, weight, stride, padding, dilation, groups)
    _check_float(backend, "dy", dy)
    _check_shape_equals("dy", dy, g.y_shape, "the conv2d output shape (N, K, P, Q)")
    _check_same_dtype([("dy", dy), ("x", x), ("weight", weight)])
    return g


@_accepts_foreign
def conv2d(x: Array, weight: Array, bias: Optional[Array] = None, stride: IntPair = 1,
           padding: Padding = 0, dilation: IntPair = 1, groups: int = 1) -> Array:
    """2-D cross-correlation: x (N, C, H, W), weight (K, C/groups, R, S), bias (K,) -> (N, K, P, Q).

    ``padding`` is an int, a pair, ``'valid'`` or ``'same'`` (output ceil(H/stride) x
    ceil(W/stride); an odd total padding puts the extra pixel at the bottom/right).
    """
    backend = get_backend()
    g = _conv2d_checks(backend, x, weight, bias, stride, padding, dilation, groups)
    return backend.conv2d(x, weight, bias, g)


@_accepts_foreign
def conv2d_relu(x: Array, weight: Array, bias: Optional[Array] = None, stride: IntPair = 1,
                padding: Padding = 0, dilation: IntPair = 1, groups: int = 1, *,
                residual: Optional[Array] = None) -> Array:
    """relu(conv2d(x, weight, bias, ...) + residual) in one kernel: the bias, the residual add
    (residual (N, K, P, Q), or None for none) and the ReLU are applied to each output value before
    it is stored. The same values as conv2d, add and relu one after another.

    Its gradients: with d = relu_backward(dy, y) (y this op's output), conv2d_backward(d, x,
    weight, ...) and d for the residual; or d comes straight from the next convolution's
    ``conv2d_backward(..., through_relu=True)`` when y is that convolution's only input.
    """
    backend = get_backend()
    g = _conv2d_relu_checks(backend, x, weight, bias, residual, stride, padding, dilation, groups)
    return backend.conv2d_relu(x, weight, bias, residual, g)


@_accepts_foreign
def conv2d_backward(dy: Array, x: Array, weight: Array, stride: IntPair = 1, padding: Padding = 0,
                    dilation: IntPair = 1, groups: int = 1, *, need_dx: bool = True,
                    need_dw: bool = True, need_db: bool = True, through_relu: bool = False
                    ) -> Tuple[Optional[Array], Optional[Array], Optional[Array]]:
    """Gradients of conv2d: dy (N, K, P, Q) -> (dx (N, C, H, W), dweight (K, C/groups, R, S),
    dbias (K,)); an entry whose ``need_*`` flag is False is None.

    ``through_relu=True`` says that x is the output of a ReLU (relu or conv2d_relu) and asks for
    the gradient at that ReLU's input instead: dx = relu_backward(dx, x), applied as backward-data
    stores dx (no separate pass). Only right when x feeds nothing but this convolution.
    """
    backend = get_backend()
    g = _conv2d_backward_checks(backend, dy, x, weight, stride, padding, dilation, groups)
    return backend.conv2d_backward(dy, x, weight, g, _check_bool("need_dx", need_dx),
                                   _check_bool("need_dw", need_dw),
                                   _check_bool("need_db", need_db),
                                   _check_bool("through_relu", through_relu))


# ---- pooling -------------------------------------------------------------------------------

def _pool_input(backend: Backend, x) -> None:
    _check_float(backend, "x", x)
    _check_rank("x", x, 4)


def _pool_dy(backend: Backend, dy, g: geometry.PoolGeometry) -> None:
    _check_float(backend, "dy", dy)
    _check_shape_equals("dy", dy, g.y_shape, "the pooling output shape (N, C, P, Q)")


@_accepts_foreign
def max_pool2d(x: Array, kernel_size: IntPair, stride: Optional[IntPair] = None, padding: IntPair = 0,
               dilation: IntPair = 1, ceil_mode: bool = False) -> Tuple[Array, Array]:
    """Max pooling: x (N, C, H, W) -> (y (N, C, P, Q), indices int32 (N, C, P, Q)).

    ``indices`` holds the flat offset h*W + w of the winner inside its input plane: the first
    maximum in raster order of the window, the first NaN when the window has one; padding never
    wins, and a window without any input element (possible with dilation) gives -inf and -1.
    """
    backend = get_backend()
    _pool_input(backend, x)
    g = geometry.pool2d_geometry(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    return backend.max_pool2d(x, g)


@_accepts_foreign
def max_pool2d_backward(dy: Array, indices: Array, x_shape: Sequence[int], kernel_size: IntPair,
                        stride: Optional[IntPair] = None, padding: IntPair = 0, dilation: IntPair = 1,
                        ceil_mode: bool = False) -> Array:
    """Gradient of max_pool2d: dy and indices (N, C, P, Q) -> dx (N, C, H, W) with x_shape.

    Each dy element goes to the input element its index names (accumulated where windows
    overlap) when that element is a cell of the output's own window, as every index
    ``max_pool2d`` returns is. Any other index (-1 for an empty window, a value outside the
    input plane, a cell of another window) contributes nothing, on every backend: the kernels
    apply this rule as they gather, so the device needs no check and no host synchronisation.
    """
    backend = get_backend()
    g = geometry.pool2d_geometry(_check_x_shape(x_shape), kernel_size, stride, padding, dilation,
                                 ceil_mode)
    _pool_dy(backend, dy, g)
    _check_indices(backend, indices, g.y_shape)
    return backend.max_pool2d_backward(dy, indices, g)


def _avg_options(count_include_pad, divisor_override) -> Tuple[bool, Optional[int]]:
    return (_check_bool("count_include_pad", count_include_pad),
            geometry.check_divisor_override(divisor_override))


@_accepts_foreign
def avg_pool2d(x: Array, kernel_size: IntPair, stride: Optional[IntPair] = None, padding: IntPair = 0,
               ceil_mode: bool = False, count_include_pad: bool = True,
               divisor_override: Optional[int] = None) -> Array:
    """Average pooling: x (N, C, H, W) -> (N, C, P, Q), PyTorch's divisor rule."""
    backend = get_backend()
    _pool_input(backend, x)
    g = geometry.pool2d_geometry(x.shape, kernel_size, stride, padding, 1, ceil_mode)
    cip, div = _avg_options(count_include_pad, divisor_override)
    return backend.avg_pool2d(x, g, cip, div)


@_accepts_foreign
def avg_pool2d_backward(dy: Array, x_shape: Sequence[int], kernel_size: IntPair,
                        stride: Optional[IntPair] = None, padding: IntPair = 0, ceil_mode: bool = False,
                        count_include_pad: bool = True, divisor_override: Optional[int] = None) -> Array:
    """Gradient of avg_pool2d: dy (N, C, P, Q) -> dx (N, C, H, W) with x_shape, dtype of dy."""
    backend = get_backend()
    g = geometry.pool2d_geometry(_check_x_shape(x_shape), kernel_size, stride, padding, 1, ceil_mode)
    _pool_dy(backend, dy, g)
    cip, div = _avg_options(count_include_pad, divisor_override)
    return backend.avg_pool2d_backward(dy, g, cip, div, dy.dtype)


@_accepts_foreign
def l2_pool2d(x: Array, kernel_size: IntPair, stride: Optional[IntPair] = None, padding: IntPair = 0,
              ceil_mode: bool = False) -> Array:
    """L2-norm pooling: y = sqrt(sum of x^2 over the zero-padded window); (N, C, H, W) -> (N, C, P, Q)."""
    backend = get_backend()
    _pool_input(backend, x)
    g = geometry.pool2d_geometry(x.shape, kernel_size, stride, padding, 1, ceil_mode)
    return backend.l2_pool2d(x, g)


@_accepts_foreign
def l2_pool2d_backward(dy: Array, x: Array, y: Array, kernel_size: IntPair,
                       stride: Optional[IntPair] = None, padding: IntPair = 0,
                       ceil_mode: bool = False) -> Array:
    """Gradient of l2_pool2d: dy, y (N, C, P, Q), x (N, C, H, W) -> dx = x * sum(dy / y), 0 where y = 0."""
    backend = get_backend()
    _pool_input(backend, x)
    g = geometry.pool2d_geometry(x.shape, kernel_size, stride, padding, 1, ceil_mode)
    _pool_dy(backend, dy, g)
    _check_float(backend, "y", y)
    _check_shape_equals("y", y, g.y_shape, "the l2_pool2d output shape (N, C, P, Q)")
    _check_same_dtype([("dy", dy), ("x", x), ("y", y)])
    return backend.l2_pool2d_backward(dy, x, y, g)


# ---- element-wise --------------------------------------------------------------------------

def _unary(name: str, x):
    backend = get_backend()
    _check_float(backend, name, x)
    return backend


def _same_shape_pair(name: str, a, ref_name: str, ref) -> Backend:
    """Both float arrays of the current backend, ``a`` of ``ref``'s shape and dtype."""
    backend = get_backend()
    _check_float(backend, name, a)
    _check_float(backend, ref_name, ref)
    _check_shape_equals(name, a, ref.shape, f"the shape of {ref_name}")
    _check_same_dtype([(name, a), (ref_name, ref)])
    return backend


def _unary_backward(dy, y):
    return _same_shape_pair("dy", dy, "y", y)


@_accepts_foreign
def relu(x: Array) -> Array:
    """max(x, 0), any shape."""
    return _unary("x", x).relu(x)


@_accepts_foreign
def relu_backward(dy: Array, y: Array) -> Array:
    """dy where y > 0 else 0; dy and y (relu's output) of one shape."""
    return _unary_backward(dy, y).relu_backward(dy, y)


@_accepts_foreign
def sigmoid(x: Array) -> Array:
    """1 / (1 + exp(-x)), any shape, without overflow."""
    return _unary("x", x).sigmoid(x)


@_accepts_foreign
def sigmoid_backward(dy: Array, y: Array) -> Array:
    """dy * y * (1 - y); y is sigmoid's output, same shape as dy."""
    return _unary_backward(dy, y).sigmoid_backward(dy, y)


@_accepts_foreign
def tanh(x: Array) -> Array:
    """tanh(x), any shape."""
    return _unary("x", x).tanh(x)


@_accepts_foreign
def tanh_backward(dy: Array, y: Array) -> Array:
    """dy * (1 - y^2); y is tanh's output, same shape as dy."""
    return _unary_backward(dy, y).tanh_backward(dy, y)


@_accepts_foreign
def add(a: Array, b: Array) -> Array:
    """a + b element-wise; a and b of one shape and dtype (residual connections)."""
    return _same_shape_pair("b", b, "a", a).add(a, b)


@_accepts_foreign
def mul(a: Array, b: Array) -> Array:
    """a * b element-wise; a and b of one shape and dtype (dropout's backward)."""
    return _same_shape_pair("b", b, "a", a).mul(a, b)


@_accepts_foreign
def dropout(x: Array, p: float, seed: int) -> Tuple[Array, Array]:
    """Inverted dropout: (y, mask), mask in {0, 1/(1-p)} of x's shape and dtype, y = x * mask.

    The same (x.shape, p, seed) gives the same mask on a given backend.
    """
    backend = _unary("x", x)
    p = geometry.check_real("p", p, 0.0, 1.0)
    seed = geometry.check_int("seed", seed, 0, maximum=None)
    return backend.dropout(x, p, seed)


# ---- dense layers and loss -----------------------------------------------------------------

def _linear_args(backend: Backend, x, weight) -> None:
    _check_float(backend, "x", x)
    _check_float(backend, "weight", weight)
    _check_rank("x", x, 2)
    geometry.check_shape("weight", weight.shape, 2)
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight must have shape (out_features, {x.shape[1]}) to match x of shape "
                         f"{tuple(x.shape)}, got {tuple(weight.shape)}")


@_accepts_foreign
def linear(x: Array, weight: Array, bias: Optional[Array] = None) -> Array:
    """x (N, I) @ weight (O, I)^T + bias (O,) -> (N, O)."""
    backend = get_backend()
    _linear_args(backend, x, weight)
    if bias is not None:
        _check_float(backend, "bias", bias)
        _check_shape_equals("bias", bias, (weight.shape[0],), "one value per output feature")
    _check_same_dtype([("x", x), ("weight", weight), ("bias", bias)])
    return backend.linear(x, weight, bias)


@_accepts_foreign
def linear_backward(dy: Array, x: Array, weight: Array, *, need_db: bool = True
                    ) -> Tuple[Array, Array, Optional[Array]]:
    """Gradients of linear: dy (N, O) -> (dx (N, I), dweight (O, I), dbias (O,) or None)."""
    backend = get_backend()
    _linear_args(backend, x, weight)
    _check_float(backend, "dy", dy)
    _check_shape_equals("dy", dy, (x.shape[0], weight.shape[0]), "the linear output shape (N, O)")
    _check_same_dtype([("dy", dy), ("x", x), ("weight", weight)])
    return backend.linear_backward(dy, x, weight, _check_bool("need_db", need_db))


@_accepts_foreign
def softmax_cross_entropy(logits: Array, labels: Array, label_smoothing: float = 0.0, *,
                          labels_checked: bool = False) -> Tuple[Array, Array]:
    """Mean cross-entropy of softmax(logits): logits (N, classes), labels integer (N,) in
    [0, classes) -> (loss as a 0-d array, dlogits (N, classes)); numerically stable.

    ``label_smoothing`` e in [0, 1] is PyTorch's: the target of row n is (1 - e) at its label
    plus e / classes everywhere. The labels' range is checked by reading it on the host, unless
    ``labels_checked`` (the caller checked them before they reached the device: a captured step
    may not read the device; a label out of range then gives a NaN loss, never a bad read)."""
    backend = get_backend()
    label_smoothing = geometry.check_real("label_smoothing", label_smoothing, 0.0, 1.0)
    _check_float(backend, "logits", logits)
    _check_rank("logits", logits, 2)
    _check_array(backend, "labels", labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be an integer array (class indices), got dtype {labels.dtype}")
    _check_shape_equals("labels", labels, (logits.shape[0],), "one class index per row of logits")
    classes = logits.shape[1]
    if labels.size and not labels_checked:
        lo, hi = int(backend.to_numpy(labels.min())), int(backend.to_numpy(labels.max()))
        if lo < 0 or hi >= classes:
            raise ValueError(f"labels must lie in [0, {classes}) for logits with {classes} classes, "
                             f"got values in [{lo}, {hi}]")
    if logits.shape[0] < 1:
        raise ValueError(f"logits must have at least one row, got shape {tuple(logits.shape)}")
    if labels.dtype not in (np.dtype(np.int32), np.dtype(np.int64)):
        labels = labels.astype(np.int64)
    return backend.softmax_cross_entropy(logits, labels, label_smoothing)


# ---- batch normalisation -------------------------------------------------------------------

def _check_channel_vector(backend: Backend, name: str, a, g: geometry.NormGeometry) -> None:
    _check_float(backend, name, a)
    _check_shape_equals(name, a, g.stats_shape, "one value per channel of x")


@_remembered
def _batch_norm_checks(backend: Backend, x, running_mean, running_var, weight, bias, training,
                       momentum, eps):
    _check_float(backend, "x", x)
    training = _check_bool("training", training)
    g = geometry.batch_norm_geometry(x.shape, training)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must both be arrays or both be None, got "
                         f"{'None' if running_mean is None else 'an array'} and "
                         f"{'None' if running_var is None else 'an array'}")
    if running_mean is None and not training:
        raise ValueError("running_mean and running_var are required when training=False "
                         "(evaluation normalises with the running statistics)")
    for name, a in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                    ("bias", bias)):
        if a is not None:
            _check_channel_vector(backend, name, a, g)
    _check_same_dtype([("x", x), ("running_mean", running_mean), ("running_var", running_var),
                       ("weight", weight), ("bias", bias)])
    momentum = geometry.check_real("momentum", momentum, 0.0, 1.0)
    eps = geometry.check_real("eps", eps, 0.0, lo_open=True)
    return g, training, momentum, eps


@_remembered
def _batch_norm_backward_checks(backend: Backend, dy, x, y, weight, saved_mean, saved_invstd, training):
    _check_float(backend, "x", x)
    training = _check_bool("training", training)
    g = geometry.batch_norm_geometry(x.shape, training)
    _check_float(backend, "dy", dy)
    _check_shape_equals("dy", dy, x.shape, "the shape of x")
    if y is not None:
        _check_float(backend, "y", y)
        _check_shape_equals("y", y, x.shape, "the shape of x (the forward output)")
    for name, a in (("weight", weight), ("saved_mean", saved_mean), ("saved_invstd", saved_invstd)):
        if a is not None:
            _check_channel_vector(backend, name, a, g)
    _check_same_dtype([("dy", dy), ("x", x), ("y", y), ("weight", weight), ("saved_mean", saved_mean),
                       ("saved_invstd", saved_invstd)])
    return g, training


def _batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, relu: bool):
    backend = get_backend()
    g, training, momentum, eps = _batch_norm_checks(backend, x, running_mean, running_var, weight, bias,
                                                    training, momentum, eps)
    return backend.batch_norm(x, running_mean, running_var, weight, bias, g, training, momentum, eps,
                              relu)


def _batch_norm_backward(dy, x, y, weight, saved_mean, saved_invstd, training):
    backend = get_backend()
    if saved_mean is None or saved_invstd is None:
        raise ValueError("saved_mean and saved_invstd (returned by the forward call) are required")
    g, training = _batch_norm_backward_checks(backend, dy, x, y, weight, saved_mean, saved_invstd,
                                              training)
    return backend.batch_norm_backward(dy, x, y, weight, saved_mean, saved_invstd, g, training)


@_accepts_foreign
def batch_norm(x: Array, running_mean: Optional[Array], running_var: Optional[Array],
               weight: Optional[Array] = None, bias: Optional[Array] = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5) -> Tuple[Array, Array, Array]:
    """Batch normalisation over channel 1 of x (N, C, *) -> (y, saved_mean (C,), saved_invstd (C,)).

    y = (x - mean) * invstd * weight + bias (weight 1 and bias 0 when None). In training, mean
    and the biased variance var are the batch's per-channel statistics, invstd = 1/sqrt(var + eps),
    and, unless they are None, ``running_mean``/``running_var`` are updated in place:
    running = (1 - momentum) * running + momentum * batch value, with the unbiased variance
    (var * count / (count - 1)) for running_var. In evaluation the running statistics normalise
    and are returned as the saved ones (saved_invstd = 1/sqrt(running_var + eps)). See
    docs/batchnorm.md.
    """
    return _batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, False)


@_accepts_foreign
def batch_norm_backward(dy: Array, x: Array, weight: Optional[Array], saved_mean: Array,
                        saved_invstd: Array, training: bool = True) -> Tuple[Array, Array, Array]:
    """Gradients of batch_norm: dy (N, C, *) -> (dx, dweight (C,), dbias (C,)).

    With xhat = (x - saved_mean) * saved_invstd: dbias = sum dy and dweight = sum dy * xhat over
    each channel (returned whether or not the forward had weight and bias). In training (through
    the batch statistics, count values per channel)
    dx = weight * saved_invstd * (dy - dbias / count - xhat * dweight / count); in evaluation
    (statistics fixed) dx = weight * saved_invstd * dy.
    """
    return _batch_norm_backward(dy, x, None, weight, saved_mean, saved_invstd, training)


@_accepts_foreign
def batch_norm_relu(x: Array, running_mean: Optional[Array], running_var: Optional[Array],
                    weight: Optional[Array] = None, bias: Optional[Array] = None, training: bool = False,
                    momentum: float = 0.1, eps: float = 1e-5) -> Tuple[Array, Array, Array]:
    """relu(batch_norm(x, ...)) in one pass: the same statistics, running-statistics update and
    saved values as batch_norm, y = max(batch-normalised x, 0)."""
    return _batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, True)


@_accepts_foreign
def batch_norm_relu_backward(dy: Array, x: Array, y: Array, weight: Optional[Array], saved_mean: Array,
                             saved_invstd: Array, training: bool = True) -> Tuple[Array, Array, Array]:
    """Gradients of batch_norm_relu: batch_norm_backward of (dy where y > 0, else 0); y is the
    forward output."""
    return _batch_norm_backward(dy, x, y, weight, saved_mean, saved_invstd, training)


# ---- batch augmentation --------------------------------------------------------------------

@_accepts_foreign
def augment(x: Array, seed: int, epoch: int, indices: Optional[Array] = None, *, crop_padding: int = 0,
            padding_mode: str = "zeros", flip: str = "none", cutout: int = 0) -> Array:
    """Augment a batch of images x (N, C, H, W) on the device -> y of x's shape and dtype.

    Each image is padded by ``crop_padding`` on every side (``padding_mode`` "zeros" or
    "reflect") and cropped back to H x W at a random offset, flipped horizontally (``flip``:
    "none", "random" with probability 1/2, or "alternate": a fixed random half of the images in
    even epochs and the other half in odd epochs), and a ``cutout`` x ``cutout`` square of it
    is set to zero (0: none). The draws of image n hash (seed, epoch, indices[n])
    (``gpuconv.augment_rng``): pass the images' dataset indices, an int array (N,) of the
    active backend with values in [0, 2^31); None means 0 ... N-1.
    """
    backend = get_backend()
    _check_float(backend, "x", x)
    spec = geometry.augment_spec(x.shape, crop_padding, padding_mode, flip, cutout)
    seed = geometry.check_int("seed", seed, 0, maximum=None)  # hashed modulo 2^64
    epoch = geometry.check_int("epoch", epoch, 0, maximum=None)  # hashed modulo 2^32
    if indices is None:
        indices = backend.asarray(np.arange(spec.N, dtype=np.int32))
    else:
        _check_array(backend, "indices", indices)
        if indices.dtype.kind not in "iu":
            raise TypeError(f"indices must be an integer array (image indices), got dtype {indices.dtype}")
        _check_shape_equals("indices", indices, (spec.N,), "one index per image of x")
        if indices.size:
            lo, hi = int(indices.min()), int(indices.max())
            if lo < 0 or hi > geometry.INT32_MAX:
                raise ValueError(f"indices must lie in [0, 2^31), got values in [{lo}, {hi}]")
        if indices.dtype != INDEX_DTYPE:
            indices = indices.astype(INDEX_DTYPE)
    return backend.augment(x, indices, seed, epoch, spec)


# ---- optimizer updates (in place) ----------------------------------------------------------

def _check_state(backend: Backend, param, named: Sequence[Tuple[str, Any]]) -> None:
    _check_float(backend, "param", param)
    for name, a in named:
        _check_float(backend, name, a)
        _check_shape_equals(name, a, param.shape, "the shape of param")
    _check_same_dtype([("param", param), *named])


@_accepts_foreign
def sgd_step(param: Array, grad: Array, buf: Optional[Array] = None, *, lr: float,
             momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
             nesterov: bool = False, first_step: bool = False) -> None:
    """One SGD update of ``param`` in place (PyTorch's rule); ``buf`` (param's shape) is the
    momentum buffer, required when momentum != 0 and initialised from the gradient when
    ``first_step``."""
    backend = get_backend()
    lr = geometry.check_real("lr", lr, 0.0)
    momentum = geometry.check_real("momentum", momentum, 0.0)
    dampening = geometry.check_real("dampening", dampening, 0.0, 1.0)
    weight_decay = geometry.check_real("weight_decay", weight_decay, 0.0)
    nesterov = _check_bool("nesterov", nesterov)
    first_step = _check_bool("first_step", first_step)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError(f"nesterov=True needs momentum > 0 and dampening == 0, got momentum={momentum}, "
                         f"dampening={dampening}")
    if momentum and buf is None:
        raise ValueError(f"buf (the momentum buffer) is required when momentum={momentum} != 0")
    named = [("grad", grad)] + ([("buf", buf)] if momentum else [])
    _check_state(backend, param, named)
    backend.sgd_step(param, grad, buf if momentum else None, lr, momentum, dampening, weight_decay,
                     nesterov, first_step)


@_accepts_foreign
def adam_step(param: Array, grad: Array, m: Array, v: Array, step: int, *, lr: float = 1e-3,
              beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
              weight_decay: float = 0.0) -> None:
    """One Adam update of ``param`` in place (PyTorch's rule, L2 weight decay); ``m`` and ``v``
    (param's shape) are the moment estimates, ``step`` counts updates from 1."""
    _adam(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay, False)


@_accepts_foreign
def adamw_step(param: Array, grad: Array, m: Array, v: Array, step: int, *, lr: float = 1e-3,
               beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
               weight_decay: float = 1e-2) -> None:
    """One AdamW update of ``param`` in place (PyTorch's rule: decoupled weight decay,
    param *= 1 - lr * weight_decay, then the Adam update without an L2 term); arguments as
    adam_step."""
    _adam(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay, True)


def _adam(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled: bool) -> None:
    backend = get_backend()
    step = geometry.check_int("step", step, 1, maximum=2**63 - 1)
    lr = geometry.check_real("lr", lr, 0.0)
    beta1 = geometry.check_real("beta1", beta1, 0.0, 1.0, hi_open=True)
    beta2 = geometry.check_real("beta2", beta2, 0.0, 1.0, hi_open=True)
    eps = geometry.check_real("eps", eps, 0.0)
    weight_decay = geometry.check_real("weight_decay", weight_decay, 0.0)
    _check_state(backend, param, [("grad", grad), ("m", m), ("v", v)])
    backend.adam_step(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled)

