"""Data-parallel training: every rank holds the whole model, computes the gradient of its part of
the global batch, and the ranks sum their gradients before each optimizer step (the scheme of
PyTorch's DistributedDataParallel and ChainerMN).

* At construction the parameters are broadcast from rank 0, so every rank starts from the same
  weights whatever its seed; identical gradients and identical optimizer steps keep them equal.
* Gradients travel in **buckets** of about ``bucket_bytes``, filled in the order backward
  produces them (the parameters in reverse). A hook on each parameter
  (``Parameter.register_grad_hook``) copies its gradient into its bucket's flat buffer the moment
  the layer's backward assigns it, and a bucket whose gradients are all in is all-reduced at once
  (non-blocking) while the backward pass goes on through the earlier layers. Buckets start in
  index order on every rank, whatever order the hooks fire in, because every rank must issue
  its collectives in the same order. ``backward`` waits for all of them, then points each
  ``param.grad`` at its summed slice of the bucket, ready for the optimizer. On the cuda backend
  the all-reduce runs on the NCCL communicator's own stream (see ``nccl.py``).
* Each rank's gradient is scaled by its share of the global batch (``fraction``, its sample
  count over the global count) as it is copied, so the sum over ranks is the gradient of the mean
  loss over the whole global batch: exactly what one process computes on that batch, uneven last
  batches included. A rank with no sample in a batch passes ``dy=None`` and contributes zeros.
* BatchNorm: a normalisation layer that keeps to the parameter rule (its scale and shift are
  Parameters) works per rank with no change, each rank normalising with its own batch's
  statistics, as DistributedDataParallel does by default. A layer that needs statistics over the
  *global* batch (a SyncBatchNorm) defines ``attach_communicator(comm)``: DataParallel calls it on
  every such layer when it wraps the model, and the layer all-reduces its per-channel sums through
  ``comm.allreduce`` in its forward and backward.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from ..backends import get_backend
from ..nn.module import Module, Parameter
from .comm import Communicator, Work

__all__ = ["DataParallel", "DEFAULT_BUCKET_BYTES"]

# The zoo's gradients are 0.25 to 1.1 MB in float32: 256 KiB buckets give the larger models
# several all-reduces to overlap with backward. (DistributedDataParallel's 25 MiB suits models
# a hundred times larger.)
DEFAULT_BUCKET_BYTES = 256 * 1024


@dataclass
class _Bucket:
    params: List[Parameter]
    offsets: List[int]
    flat: object  # one contiguous array of the backend holding every gradient of the bucket
    pending: int = 0
    work: Optional[Work] = None


@dataclass
class CommStats:
    """Totals since construction: ``steps`` (backward calls), ``bytes`` (gradient bytes all-reduced
    by this rank), ``wait_seconds`` (time ``backward`` spent waiting for all-reduces to finish after
    the model's backward returned: the communication not hidden behind computation); ``buckets``
    is the number of buckets."""

    steps: int = 0
    bytes: int = 0
    wait_seconds: float = 0.0
    buckets: int = 0


class DataParallel:
    """Wrap ``model`` (on its placement, else the backend in force) for data-parallel training
    over ``comm``.

    Use ``forward`` as the model's, and ``backward(dy, fraction)`` in place of
    ``model.backward(dy)``; then step the optimizer as usual. With one rank it is the model itself:
    no hooks, no copies. Wrap the model after placing it on its backend.
    """

    def __init__(self, model: Module, comm: Communicator, bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> None:
        if not isinstance(model, Module):
            raise TypeError(f"model must be a gpuconv.nn.Module, got {type(model).__name__}")
        if not isinstance(comm, Communicator):
            raise TypeError(f"comm must be a gpuconv.distributed Communicator, got {type(comm).__name__}")
        if (isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, (int, np.integer))
                or bucket_bytes < 1):
            raise ValueError(f"bucket_bytes must be a positive int, got {bucket_bytes!r}")
        self.model, self.comm, self.bucket_bytes = model, comm, int(bucket_bytes)
        self.stats = CommStats()
        self._named: Dict[int, str] = {id(p): n for n, p in model.named_parameters()}
        self._buckets: List[_Bucket] = []
        self._where: Dict[int, tuple] = {}  # id(param) -> (bucket index, offset)
        self._removers: list = []
        self._xp = (model.placement or get_backend()).xp
        self._armed = False
        self._fraction = 1.0
        self._next = 0  # index of the next bucket to start
        self._ready: set = set()  # id() of the parameters whose gradient is in this step
        for _, m in model.named_modules():
            if hasattr(m, "attach_communicator"):
                m.attach_communicator(comm)
        self.broadcast_parameters()
        if comm.size > 1:
            self._build_buckets()

    # ---- set-up -------------------------------------------------------------------------
    def broadcast_parameters(self, root: int = 0) -> None:
        """Overwrite every rank's parameters with rank ``root``'s (one broadcast per parameter)."""
        if self.comm.size == 1:
            return
        for name, p in self.model.named_parameters():
            self.comm.check_array(p.data, f"parameter {name!r}")
            self.comm.broadcast(p.data, root)

    def _build_buckets(self) -> None:
        # As DistributedDataParallel: take the parameters in reverse (about the order backward
        # produces their gradients) and close a bucket once it holds bucket_bytes or more, or
        # when the dtype changes.
        groups: List[List[Parameter]] = []
        filled = self.bucket_bytes
        for p in reversed(list(self.model.parameters())):
            if filled >= self.bucket_bytes or groups[-1][0].dtype != p.dtype:
                groups.append([])
                filled = 0
            groups[-1].append(p)
            filled += p.size * p.dtype.itemsize
        for params in groups:
            offsets = list(np.cumsum([0] + [p.size for p in params[:-1]]))
            flat = self._xp.zeros(sum(p.size for p in params), dtype=params[0].dtype)
            index = len(self._buckets)
            self._buckets.append(_Bucket(params, [int(o) for o in offsets], flat))
            for p, off in zip(params, offsets):
                self._where[id(p)] = (index, int(off))
                self._removers.append(p.register_grad_hook(self._on_grad))
        self.stats.buckets = len(self._buckets)

    def close(self) -> None:
        """Remove the gradient hooks (the model trains alone again)."""
        for remove in self._removers:
            remove()
        self._removers = []

    @property
    def bucket_sizes(self) -> List[int]:
        """Bytes of each bucket, in the order they are all-reduced."""
        return [int(b.flat.nbytes) for b in self._buckets]

    # ---- training -----------------------------------------------------------------------
    def forward(self, x):
        return self.model.forward(x)

    __call__ = forward

    def backward(self, dy, fraction: Optional[float] = None):
        """Run the model's backward on ``dy`` (the gradient of this rank's loss) and leave in each
        ``param.grad`` the sum over ranks of ``fraction`` times the rank's gradient.

        ``fraction`` is this rank's share of the global batch (default ``1 / size``, right when
        every rank has as many samples); a rank without samples passes ``dy=None`` and
        ``fraction=0``. Returns the model's input gradient (None for ``dy=None``).
        """
        if self.comm.size == 1:
            if dy is None:
                raise ValueError("dy is None: a single rank must have samples to compute a gradient")
            return self.model.backward(dy)
        fraction = 1.0 / self.comm.size if fraction is None else fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating)) or not (
                math.isfinite(fraction) and 0.0 <= fraction <= 1.0):
            raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}")
        if dy is None and fraction != 0:
            raise ValueError(f"dy is None (no samples on this rank) but fraction is {fraction}, not 0")
        if self._armed:
            raise RuntimeError("DataParallel.backward called again before the previous one finished")
        for b in self._buckets:
            b.pending, b.work = len(b.params), None
        self._next, self._fraction, self._armed = 0, float(fraction), True
        self._ready.clear()
        try:
            if dy is None:
                dx = None
                for b in self._buckets:
                    b.flat.fill(0)
                    b.pending = 0
                self._start_ready()
            else:
                dx = self.model.backward(dy)
            self._finish()
        finally:
            self._armed = False
        return dx

    def _on_grad(self, p: Parameter) -> None:
        if not self._armed:
            return  # DataParallel itself handing the summed gradient back (or the model used alone)
        if id(p) in self._ready:
            raise RuntimeError(f"parameter {self._named[id(p)]!r} received a gradient twice in one "
                               f"backward pass (a layer used twice?); DataParallel needs one per step")
        self._ready.add(id(p))
        index, off = self._where[id(p)]
        b = self._buckets[index]
        g = p.grad
        if tuple(g.shape) != p.shape or np.dtype(g.dtype) != p.dtype:
            raise ValueError(f"gradient of {self._named[id(p)]!r} has shape {tuple(g.shape)} dtype "
                             f"{g.dtype}, the parameter {p.shape} {p.dtype}")
        self._xp.multiply(g.reshape(-1), self._fraction, out=b.flat[off:off + p.size])
        b.pending -= 1
        if b.pending == 0:
            self._start_ready()
        else:
            self._progress()

    def _start_ready(self) -> None:
        """Start, in index order, every bucket whose gradients are all in."""
        while self._next < len(self._buckets) and self._buckets[self._next].pending == 0:
            b = self._buckets[self._next]
            b.work = self.comm.iallreduce(b.flat)
            self.stats.bytes += int(b.flat.nbytes)
            self._next += 1
        self._progress()

    def _progress(self) -> None:
        for b in self._buckets[:self._next]:
            if b.work is not None and not b.work.done:
                b.work.test()

    def _finish(self) -> None:
        if any(b.pending for b in self._buckets):
            missing = [n for n, p in self.model.named_parameters() if id(p) not in self._ready]
            raise RuntimeError(f"parameters {missing} got no gradient in this backward pass: every rank "
                               f"must compute a gradient for every parameter")
        t0 = time.perf_counter()
        for b in self._buckets:
            b.work.wait()
        self.stats.wait_seconds += time.perf_counter() - t0
        self.stats.steps += 1
        self._armed = False
        for b in self._buckets:
            for p, off in zip(b.params, b.offsets):
                p.grad = b.flat[off:off + p.size].reshape(p.shape)
