"""A training step (forward, softmax cross-entropy, backward, optimizer update), eager or replayed
from a captured graph (``gpuconv.backends.graphs``; docs/graphs.md).

``TrainStep(model, optimizer, backend, graph=True)`` runs its first call eagerly, captures the
second (the capture's warm-up is that step), verifies the first replay against an eager step
from the same state, and replays from then on. Per call, outside the graph: the batch is
uploaded into the step's input buffers and ``optimizer.prepare_step()`` copies the update's
constants (rate, bias corrections) into device memory; batch-norm counters, which the Python
forward counts on the host, are advanced by hand after each replay. A batch of another shape
(the last of an epoch) runs eagerly. Without ``strict``, a capture that fails or a replay that
differs from the eager step is reported through ``warn`` and the step stays eager; with
``strict`` (the emulator's ``--graph``) it raises. ``check`` (emulator) traces the step before
every replay and raises GraphReplayError when it would not replay what the step does now.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, List, Optional, Tuple

import numpy as np

from . import nn, tolerances
from .backends import graphs, use_backend
from .nn.layers import BatchNorm2d

__all__ = ["TrainStep"]


class _BatchCounters:
    """The host-side ``num_batches_tracked`` of a model's batch-norm layers."""

    def __init__(self, model) -> None:
        self.layers = [m for _, m in model.named_modules()
                       if isinstance(m, BatchNorm2d) and m.track_running_stats]

    def momentum_free(self) -> bool:
        """True when no layer reads its counter in forward (momentum None would bake 1/n)."""
        return all(m.momentum is not None for m in self.layers)

    @contextlib.contextmanager
    def unchanged(self) -> Iterator[None]:
        saved = [m.num_batches_tracked for m in self.layers]
        try:
            yield
        finally:
            for m, n in zip(self.layers, saved):
                m._buffers["num_batches_tracked"] = np.array(n, np.int64)

    def advance(self) -> None:
        """What one training forward does to them."""
        for m in self.layers:
            if m.training:
                m._buffers["num_batches_tracked"] = np.array(m.num_batches_tracked + 1, np.int64)


class TrainStep:
    """``step(x, labels)`` -> (loss, logits), arrays of ``backend`` (read them on the host after
    the call); x a float array (N, C, H, W), labels an int array (N,), on the host or the device.
    ``verify_rel_err``: the first replay's largest relative difference from the eager step."""

    def __init__(self, model, optimizer, backend, *, loss_fn: Optional[nn.SoftmaxCrossEntropy] = None,
                 graph: bool = False, check: bool = False, strict: bool = False,
                 warn: Optional[Callable[[str], None]] = None) -> None:
        self.model, self.optimizer, self.backend = model, optimizer, backend
        self.loss_fn = nn.SoftmaxCrossEntropy() if loss_fn is None else loss_fn
        self.counters = _BatchCounters(model)
        self.check, self.strict = bool(check), bool(strict)
        self.warn = warn or (lambda msg: None)
        self.mode = "off"
        if graph:
            if not hasattr(getattr(backend, "executor", None), "begin_capture"):
                self._give_up(f"backend {backend.name} cannot capture graphs", ValueError)
            elif not self.counters.momentum_free():
                self._give_up("a BatchNorm2d with momentum=None reads its host counter in every step",
                              graphs.GraphCaptureError)
            else:
                self.mode = "first"  # -> "capture" -> "verify" -> "replay", or "off"
        self.captured: Optional[graphs.CapturedStep] = None
        self.x = self.labels = None  # the captured step's input buffers
        self.shape: Optional[Tuple[int, ...]] = None
        self.classes = 0  # the logits' width, known after the first step
        self.replays = 0
        self.verify_rel_err: Optional[float] = None

    @property
    def graphed(self) -> bool:
        """True while steps are replayed from (or about to be captured into) a graph."""
        return self.mode != "off"

    # ---- the step -----------------------------------------------------------------------
    def _forward_backward(self, x, labels, labels_checked: bool = False):
        logits = self.model.forward(x)
        loss = self.loss_fn.forward(logits, labels, labels_checked)
        self.model.backward(self.loss_fn.backward())
        return loss, logits

    def _device_step(self) -> Tuple[object, object]:
        """What is captured: everything but the host half of the optimizer. The labels were checked
        on the host by ``_refresh`` (the loss would read them on the device)."""
        loss, logits = self._forward_backward(self.x, self.labels, labels_checked=True)
        self.optimizer.apply_step()
        return loss, logits

    def _labels(self, yb):
        """Host labels as an array, with their own dtype (the loss refuses floats; a cast would
        truncate 1.5 and wrap 2**32 + 1)."""
        return yb if self.backend.is_array(yb) else np.asarray(yb)

    def _eager(self, xb, yb):
        be = self.backend
        loss, logits = self._forward_backward(be.asarray(xb), be.asarray(self._labels(yb)))
        self.optimizer.step()
        return loss, logits

    def __call__(self, xb, yb):
        xb = xb if self.backend.is_array(xb) else np.asarray(xb)
        with use_backend(self.backend):  # the loss and any unplaced layer run here too
            return self._step(xb, yb)

    def _step(self, xb, yb):
        if self.mode == "first":
            self.mode, self.shape = "capture", tuple(xb.shape)  # the batch shape to capture
            loss, logits = self._eager(xb, yb)
            self.classes = int(logits.shape[1])
            return loss, logits
        if self.mode == "off" or tuple(xb.shape) != self.shape:
            return self._eager(xb, yb)
        if self.mode == "capture":
            return self._capture(xb, yb)
        self._refresh(xb, yb)
        if self.mode == "verify":
            return self._verify()
        return self._replay()

    def _refresh(self, xb, yb) -> None:
        """The host half of a step: new inputs (host labels range-checked here) and constants into
        the graph's buffers. The buffers' copies would cast and broadcast, so the checks of the
        eager step's ops are made here: x of the captured dtype, integer labels, one per image."""
        be = self.backend
        if xb.dtype != self.x.dtype:
            raise TypeError(f"x has dtype {xb.dtype} but the captured step takes {self.x.dtype}")
        yb = self._labels(yb)
        if yb.dtype.kind not in "iu":
            raise TypeError(f"labels must be an integer array (class indices), got dtype {yb.dtype}")
        if tuple(yb.shape) != tuple(self.labels.shape):
            raise ValueError(f"labels must have shape {tuple(self.labels.shape)} (one class index per "
                             f"image), got {tuple(yb.shape)}")
        if isinstance(yb, np.ndarray) and len(yb):  # on the host (the emulator's too)
            classes = self.classes
            lo, hi = int(np.min(yb)), int(np.max(yb))
            if lo < 0 or hi >= classes:
                raise ValueError(f"labels must lie in [0, {classes}) for logits with {classes} classes, "
                                 f"got values in [{lo}, {hi}]")
        for buf, new in ((self.x, xb), (self.labels, yb)):
            if be.is_array(new):
                if new is not buf:
                    be.copy(buf, new)  # device to device
            else:
                be.upload(buf, new)
        self.optimizer.prepare_step()

    def _capture(self, xb: np.ndarray, yb: np.ndarray):
        be = self.backend
        self.x = be.zeros(tuple(xb.shape), xb.dtype)
        self.labels = be.zeros((xb.shape[0],), np.int32)
        self._refresh(xb, yb)
        try:
            cap = graphs.Capturer(be)
        except Exception as exc:  # nothing has run: this step can still be an eager one
            self._give_up(f"capture failed: {type(exc).__name__}: {exc}", exc)
            return self._device_step()
        out = cap.warm_up(self._device_step)  # this call's step, run for real
        try:
            with self.counters.unchanged():
                self.captured = cap.capture(self._device_step)
        except Exception as exc:
            self._give_up(f"capture failed: {type(exc).__name__}: {exc}", exc)
            return out
        self.mode = "verify"
        return out

    def _state(self) -> List[object]:
        """The device arrays a step updates: parameters, model buffers, optimizer state."""
        arrays = [p.data for p in self.model.parameters()]
        arrays += [b for _, b in self.model.named_buffers() if self.backend.is_array(b)]
        for st in self.optimizer.state:
            arrays += [v for k, v in st.items() if k not in ("step", "hp") and self.backend.is_array(v)]
        return arrays

    def _verify(self):
        """The first replay, compared with an eager step from the same state (which is kept)."""
        be = self.backend
        state = self._state()
        start = [np.array(be.to_numpy(a), copy=True) for a in state]
        try:
            self._launch()
        except Exception as exc:
            if self.strict:
                raise
            self._restore(state, start)
            self._give_up(f"graph replay failed: {type(exc).__name__}: {exc}", exc)
            return self._device_step()
        loss, logits = self.captured.outputs
        replayed = [np.array(be.to_numpy(a), copy=True) for a in state + [loss, logits]]
        self._restore(state, start)
        loss, logits = self._forward_backward(self.x, self.labels, True)  # counts batch-norm batches
        self.optimizer.apply_step()
        eager = [be.to_numpy(a) for a in state + [loss, logits]]
        worst = 0.0
        for r, e in zip(replayed, eager):
            rel = tolerances.scaled_error(r, e)[1]
            if not rel <= worst:  # NaN is the worst
                worst = rel
        self.verify_rel_err = worst
        if not tolerances.passes(worst, tolerances.tolerance_for("fp32", np.float32)):
            self._give_up(f"the first graph replay differs from an eager step (rel err {worst:.3g})",
                          graphs.GraphReplayError)
        else:
            self.mode = "replay"
        return loss, logits

    def _restore(self, state: List[object], host: List[np.ndarray]) -> None:
        for a, h in zip(state, host):
            self.backend.upload(a, h)

    def _launch(self) -> None:
        if self.check:
            with self.counters.unchanged():
                self.captured.check(self._device_step)
        self.captured.replay()
        self.replays += 1

    def _replay(self):
        self._launch()
        self.counters.advance()
        return self.captured.outputs

    def _give_up(self, why: str, error) -> None:
        """Eager from now on, with a warning; ``strict``: raise instead."""
        self.mode = "off"
        if self.strict:
            if isinstance(error, BaseException):
                raise error
            raise error(why)
        self.warn(f"gpuconv: training step not graphed, running eagerly ({why})")
