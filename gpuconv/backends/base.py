"""The interface every backend implements.

``gpuconv.functional`` validates arguments (shapes, dtypes, hyper-parameters, backend of each
array) through ``gpuconv.geometry`` and only then calls a backend method, so a backend may assume:

  * arrays are of this backend's array type (``is_array``), float32 or float64 (indices int32,
    labels int32/int64), all floating inputs of one call share a dtype;
  * geometry records (``ConvGeometry``/``PoolGeometry``) already match the arrays' shapes;
  * arrays may be non-contiguous: a backend makes contiguous copies where it needs them.

Backends return new arrays, except the optimizer steps, which update their arrays in place.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from ..geometry import AugmentSpec, ConvGeometry, NormGeometry, PoolGeometry

Array = Any


class Backend:
    """Abstract backend. ``name`` is what ``use_backend`` takes; ``xp`` is its array module."""

    name: str = "abstract"
    xp: Any = None

    # ---- arrays -------------------------------------------------------------------------
    def is_array(self, a) -> bool:
        raise NotImplementedError

    def asarray(self, a, dtype=None) -> Array:
        """Host (NumPy) or same-backend data -> this backend's array."""
        raise NotImplementedError

    def to_numpy(self, a) -> Any:
        """This backend's array -> a NumPy array on the host."""
        raise NotImplementedError

    def zeros(self, shape, dtype) -> Array:
        return self.xp.zeros(shape, dtype=dtype)

    def copy(self, dst: Array, src: Array) -> None:
        """``dst[...] = src`` on the device (views allowed); a captured step's copies go through it."""
        dst[...] = src

    def upload(self, dst: Array, host) -> None:
        """Copy the host values ``host`` into the existing array ``dst`` of this backend (same
        shape); refreshes the inputs of a captured step between replays."""
        host = np.asarray(host)
        if host.shape != tuple(dst.shape):
            raise ValueError(f"upload: host values of shape {host.shape} do not fit the array of shape "
                             f"{tuple(dst.shape)}")
        dst[...] = self.asarray(host.astype(dst.dtype, copy=False))

    def synchronize(self) -> None:
        """Wait for queued device work (no-op on the CPU)."""

    def describe(self) -> str:
        """One line for logs and ``gpuconv info``."""
        return self.name

    # ---- convolution --------------------------------------------------------------------
    def conv2d(self, x: Array, weight: Array, bias: Optional[Array], g: ConvGeometry) -> Array:
        raise NotImplementedError

    def conv2d_relu(self, x: Array, weight: Array, bias: Optional[Array], residual: Optional[Array],
                    g: ConvGeometry) -> Array:
        """relu(conv2d(x, weight, bias) + residual) (no add when residual is None), the same
        values as those three ops one after another."""
        raise NotImplementedError

    def conv2d_backward(self, dy: Array, x: Array, weight: Array, g: ConvGeometry,
                        need_dx: bool = True, need_dw: bool = True, need_db: bool = True,
                        through_relu: bool = False
                        ) -> Tuple[Optional[Array], Optional[Array], Optional[Array]]:
        """(dx, dweight, dbias); an entry is None when not needed. ``through_relu``: x is a
        ReLU's output, and dx is relu_backward(dx, x), the gradient at that ReLU's input."""
        raise NotImplementedError

    # ---- pooling ------------------------------------------------------------------------
    def max_pool2d(self, x: Array, g: PoolGeometry) -> Tuple[Array, Array]:
        """(y, indices int32 flat h*W+w inside the input plane)."""
        raise NotImplementedError

    def max_pool2d_backward(self, dy: Array, indices: Array, g: PoolGeometry) -> Array:
        raise NotImplementedError

    def avg_pool2d(self, x: Array, g: PoolGeometry, count_include_pad: bool,
                   divisor_override: Optional[int]) -> Array:
        raise NotImplementedError

    def avg_pool2d_backward(self, dy: Array, g: PoolGeometry, count_include_pad: bool,
                            divisor_override: Optional[int], dtype) -> Array:
        raise NotImplementedError

    def l2_pool2d(self, x: Array, g: PoolGeometry) -> Array:
        raise NotImplementedError

    def l2_pool2d_backward(self, dy: Array, x: Array, y: Array, g: PoolGeometry) -> Array:
        raise NotImplementedError

    # ---- element-wise -------------------------------------------------------------------
    def relu(self, x: Array) -> Array:
        raise NotImplementedError

    def relu_backward(self, dy: Array, y: Array) -> Array:
        """dy where y > 0 else 0 (y is relu's output)."""
        raise NotImplementedError

    def sigmoid(self, x: Array) -> Array:
        raise NotImplementedError

    def sigmoid_backward(self, dy: Array, y: Array) -> Array:
        """dy * y * (1 - y) (y is sigmoid's output)."""
        raise NotImplementedError

    def tanh(self, x: Array) -> Array:
        raise NotImplementedError

    def tanh_backward(self, dy: Array, y: Array) -> Array:
        """dy * (1 - y^2) (y is tanh's output)."""
        raise NotImplementedError

    def dropout(self, x: Array, p: float, seed: int) -> Tuple[Array, Array]:
        """(y, mask) with mask in {0, 1/(1-p)} of x's dtype; y = x * mask."""
        raise NotImplementedError

    def mul(self, a: Array, b: Array) -> Array:
        raise NotImplementedError

    def add(self, a: Array, b: Array) -> Array:
        raise NotImplementedError

    # ---- dense layers and loss ----------------------------------------------------------
    def linear(self, x: Array, weight: Array, bias: Optional[Array]) -> Array:
        """x (N, I) @ weight (O, I)^T + bias (O,)."""
        raise NotImplementedError

    def linear_backward(self, dy: Array, x: Array, weight: Array, need_db: bool = True
                        ) -> Tuple[Array, Array, Optional[Array]]:
        raise NotImplementedError

    def softmax_cross_entropy(self, logits: Array, labels: Array, label_smoothing: float = 0.0
                              ) -> Tuple[Array, Array]:
        """(loss as a 0-d array, dlogits), mean over the batch; PyTorch's label smoothing."""
        raise NotImplementedError

    # ---- batch normalisation ------------------------------------------------------------
    def batch_norm(self, x: Array, running_mean: Optional[Array], running_var: Optional[Array],
                   weight: Optional[Array], bias: Optional[Array], g: NormGeometry, training: bool,
                   momentum: float, eps: float, relu: bool) -> Tuple[Array, Array, Array]:
        """(y, saved_mean, saved_invstd) of functional.batch_norm (relu: y = max(y, 0)); running
        statistics, when given and training, are updated in place."""
        raise NotImplementedError

    def batch_norm_backward(self, dy: Array, x: Array, y: Optional[Array], weight: Optional[Array],
                            saved_mean: Array, saved_invstd: Array, g: NormGeometry, training: bool
                            ) -> Tuple[Array, Array, Array]:
        """(dx, dweight, dbias) of functional.batch_norm_backward; with ``y`` (the output of the
        fused forward) dy counts only where y > 0."""
        raise NotImplementedError

    # ---- batch augmentation -------------------------------------------------------------
    def augment(self, x: Array, indices: Array, seed: int, epoch: int, spec: AugmentSpec) -> Array:
        """functional.augment; ``indices`` int32 (N,), the draws of ``gpuconv.augment_rng``."""
        raise NotImplementedError

    # ---- optimizer updates (in place) ---------------------------------------------------
    def sgd_step(self, param: Array, grad: Array, buf: Optional[Array], lr: float, momentum: float,
                 dampening: float, weight_decay: float, nesterov: bool, first_step: bool) -> None:
        """PyTorch's SGD rule; ``buf`` is the momentum buffer (None when momentum == 0)."""
        raise NotImplementedError

    def adam_step(self, param: Array, grad: Array, m: Array, v: Array, step: int, lr: float,
                  beta1: float, beta2: float, eps: float, weight_decay: float,
                  decoupled: bool = False) -> None:
        """PyTorch's Adam rule (L2 weight decay added to the gradient), or with ``decoupled``
        AdamW's (param *= 1 - lr * weight_decay first, no L2 term); ``step`` starts at 1."""
        raise NotImplementedError

    def sgd_step_dev(self, param: Array, grad: Array, buf: Optional[Array], hp: Array) -> None:
        """``sgd_step`` with its constants read from ``hp``, an array of this backend holding
        ``launch.optim.sgd_constants`` (graph-safe: nothing per step passes by value)."""
        raise NotImplementedError

    def adam_step_dev(self, param: Array, grad: Array, m: Array, v: Array, hp: Array) -> None:
        """``adam_step`` with its constants read from ``hp`` (``launch.optim.adam_constants``)."""
        raise NotImplementedError
