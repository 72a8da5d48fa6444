"""Whole training steps for ``gpuconv bench --ops step``.

A step is forward, softmax cross-entropy, backward and an SGD update with momentum, on a
LeNet-5-style model (1×28×28) and ResNet-20 (3×32×32). Variants:

* ``gpuconv eager``: the step driven from Python, one launch after another;
* ``gpuconv graph`` (cuda only): the same step captured once in a CUDA graph on a non-blocking
  stream (``Stream.begin_capture``/``end_capture``) and replayed with ``Graph.launch``; the loss
  stays on the device. The replay is verified against an eager step from the same state first.
  When capture fails, the row says why;
* ``torch`` / ``torch-tf32``: the equivalent ``torch.nn`` model (``gpuconv.interop.to_torch``:
  same weights, its first loss compared with gpuconv's) with ``torch.optim.SGD``, eager, on the
  same device.

On a GPU the time per step is taken from CUDA events around several back-to-back steps, so host
launch overhead counts: that is what a training loop pays.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from .. import tolerances
from . import report
from .harness import INTEGER, NUMBER_OR_NULL, STRING, device, make_backend, record

__all__ = ["run_steps", "format_steps", "STEP_MODELS", "STEP_SCHEMA"]

# model -> (in_channels, image_size)
STEP_MODELS = {"lenet": (1, 28), "resnet20": (3, 32)}
LR, MOMENTUM = 0.01, 0.9
INNER_STEPS = 5
_OPT = NUMBER_OR_NULL
STEP_SCHEMA = record({"model": STRING, "variant": STRING, "batch": INTEGER, "status": STRING, "note": STRING,
                      "us": _OPT, "p10_us": _OPT, "p90_us": _OPT, "host_us": _OPT, "rel_err": _OPT,
                      "vs_torch": _OPT})


class _GpuconvStep:
    """One SGD-with-momentum training step of a gpuconv model on one backend, loss kept on device."""

    def __init__(self, model, be, x, labels) -> None:
        self.model, self.be = model, be
        self.params = list(model.parameters())
        self.bufs = [be.zeros(p.shape, p.dtype) for p in self.params]
        self.x, self.labels = be.asarray(x), be.asarray(labels)
        self.first = True

    def __call__(self):
        from ..backends import use_backend
        be = self.be
        with use_backend(be):
            logits = self.model.forward(self.x)
            loss, dlogits = be.softmax_cross_entropy(logits, self.labels)
            self.model.backward(dlogits)
            for p, buf in zip(self.params, self.bufs):
                be.sgd_step(p.data, p.grad, buf, LR, MOMENTUM, 0.0, 0.0, False, self.first)
        self.first = False
        return loss

    def state(self) -> List[np.ndarray]:
        return [np.array(self.be.to_numpy(a), copy=True) for a in [p.data for p in self.params] + self.bufs]

    def set_state(self, host: List[np.ndarray]) -> None:
        for a, h in zip([p.data for p in self.params] + self.bufs, host):
            a[...] = self.be.asarray(h)


def _max_rel(a: List[np.ndarray], b: List[np.ndarray]) -> float:
    worst = 0.0
    for x, y in zip(a, b):
        rel = tolerances.scaled_error(x, y)[1]
        if not (rel <= worst):
            worst = rel
    return worst


def _capture(step: _GpuconvStep, timer, repeat: int) -> Dict[str, Any]:
    """Capture ``step`` in a CUDA graph, verify one replay against an eager step, time replays."""
    import cupy
    stream = cupy.cuda.Stream(non_blocking=True)
    # A non-blocking stream does not wait for the legacy default stream, where the model was
    # copied to the device and its first step ran: finish that work before touching its arrays.
    cupy.cuda.Device().synchronize()
    with stream:
        step()                      # warm the stream's memory pool so capture allocates nothing new
    stream.synchronize()
    graph, reason = None, ""
    with stream:
        stream.begin_capture()
        try:
            step()
        except Exception as exc:
            reason = f"capture failed: {type(exc).__name__}: {exc}"
        finally:
            try:
                graph = stream.end_capture()
            except Exception as exc:
                reason = reason or f"capture failed: {type(exc).__name__}: {exc}"
                graph = None
    if graph is None or reason:
        return {"status": "capture-failed", "note": reason or "capture returned no graph"}
    try:
        return _verify_and_time(step, graph, stream, timer, repeat)
    except Exception as exc:  # a replay that cannot run is this row's failure, not the whole run's
        return {"status": "failed", "note": f"graph replay failed: {type(exc).__name__}: {exc}"}


def _verify_and_time(step: _GpuconvStep, graph, stream, timer, repeat: int) -> Dict[str, Any]:
    """Replay ``graph`` once from the current state, compare with an eager step from the same
    state, then time back-to-back replays on ``stream``."""
    import cupy
    start = step.state()
    graph.launch(stream)
    stream.synchronize()
    replayed = step.state()
    step.set_state(start)
    cupy.cuda.Device().synchronize()   # the copies ran on the default stream, the step runs on `stream`
    with stream:
        step()
    stream.synchronize()
    rel = _max_rel(replayed, step.state())
    if not tolerances.passes(rel, tolerances.tolerance_for("fp32", np.float32)):
        return {"status": "failed", "rel_err": rel,
                "note": f"graph replay differs from an eager step: rel err {rel:.3g}"}
    t = timer.throughput(lambda: graph.launch(stream), repeat, INNER_STEPS, stream=stream)
    return {"status": "ok", "rel_err": rel, "timing": t, "note": "replay == eager step"}


def _row(model: str, variant: str, batch: int, status: str = "ok", note: str = "", timing=None,
         rel_err: Optional[float] = None) -> Dict[str, Any]:
    return {"model": model, "variant": variant, "batch": batch, "status": status, "note": note,
            "us": timing.median if timing else None,
            "p10_us": timing.percentile(10) if timing else None,
            "p90_us": timing.percentile(90) if timing else None,
            "host_us": timing.host_median if timing else None,
            "rel_err": None if rel_err is None or math.isnan(rel_err) else float(rel_err), "vs_torch": None}


def run_steps(backend: str, baselines: Sequence[str], batch: int, repeat: int, timer,
              log: Callable[[str], None] = print) -> List[Dict[str, Any]]:
    """Time training steps of each model in STEP_MODELS; one row per (model, variant). ``timer``
    is ``harness.timer_for(backend)`` (or a stand-in with the same methods)."""
    from ..datasets import synthetic_batch
    be = make_backend(backend)
    on_gpu = device(backend) == "cuda"
    rows: List[Dict[str, Any]] = []
    for name, (in_ch, size) in STEP_MODELS.items():
        x, labels = synthetic_batch(batch, in_ch, size, size, 10, seed=0)
        host_model = build_model_on(name, in_ch, size, "numpy")
        model = build_model_on(name, in_ch, size, be)
        step = _GpuconvStep(model, be, x, labels)
        first_loss = float(np.asarray(be.to_numpy(step())))
        fns: Dict[str, Callable[[], Any]] = {"gpuconv eager": step}
        extra: Dict[str, Dict[str, Any]] = {}
        torch_loss: Dict[str, float] = {}
        for b in baselines:
            if b not in ("torch", "torch-tf32"):
                continue
            fn, loss0 = _torch_step(host_model, x, labels, device(backend), b == "torch-tf32")
            fns[b] = fn
            torch_loss[b] = loss0
        if on_gpu:
            timings = {k: timer.throughput(fn, repeat, INNER_STEPS) for k, fn in fns.items()}
            graph_step = _GpuconvStep(build_model_on(name, in_ch, size, be), be, x, labels)
            graph_step()
            extra["gpuconv graph"] = _capture(graph_step, timer, repeat)
        else:
            res = timer.measure([lambda i, f=f: f() for f in fns.values()], 1, repeat)
            timings = dict(zip(fns, res))
        for k, t in timings.items():
            rel = None
            status = "ok" if math.isfinite(first_loss) else "failed"
            if k in torch_loss:
                rel = abs(torch_loss[k] - first_loss) / abs(torch_loss[k])
                ok = rel <= tolerances.tolerance_for("tf32" if k == "torch-tf32" else "fp32", np.float32)
                status = "ok" if ok else "mismatch"
            note = "first loss vs gpuconv's" if k in torch_loss else f"first loss {first_loss:.6g}"
            rows.append(_row(name, k, batch, status, note, t, rel))
        for k, info in extra.items():
            rows.append(_row(name, k, batch, info["status"], info.get("note", ""), info.get("timing"),
                             info.get("rel_err")))
    for r in rows:
        ref = next((q for q in rows if q["model"] == r["model"] and q["variant"] == "torch"), None)
        if ref and ref["us"] and r["us"] and r["variant"].startswith("gpuconv"):
            r["vs_torch"] = r["us"] / ref["us"]
        log(f"  step {r['model']:9} {r['variant']:14} {r['status']:8} us={report.fmt(r['us'])} {r['note']}")
    return rows


def build_model_on(name: str, in_ch: int, size: int, be):
    """build_model(name, seed 0) on the host, moved to ``be``."""
    from ..backends import use_backend
    from ..models import build_model
    with use_backend("numpy"):
        model = build_model(name, in_ch, size, 10, seed=0)
    return model.to(be)


def _torch_step(host_model, x: np.ndarray, labels: np.ndarray, device: str, tf32: bool):
    """(step function, first loss): torch eager SGD step on an equivalent model."""
    import torch
    import torch.nn.functional as F

    from ..interop import to_torch
    tm = to_torch(host_model, device)
    opt = torch.optim.SGD(tm.parameters(), lr=LR, momentum=MOMENTUM)
    tx = torch.from_numpy(x).to(device)
    ty = torch.from_numpy(labels.astype(np.int64)).to(device)

    def step():
        if device == "cuda":
            torch.backends.cudnn.allow_tf32 = tf32
            torch.backends.cuda.matmul.allow_tf32 = tf32
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(tm(tx), ty)
        loss.backward()
        opt.step()
        return loss

    first = float(step().detach().cpu())
    return step, first


def format_steps(steps: List[Dict[str, Any]], markdown: bool = False) -> str:
    """Table of training-step times."""
    headers = ["model", "batch", "variant", "status", "µs/step", "p10", "p90", "host µs", "÷torch", "rel err",
               "note"]
    rows = [[s["model"], s["batch"], s["variant"], s["status"], s["us"], s["p10_us"], s["p90_us"],
             s["host_us"], s["vs_torch"], s["rel_err"], s["note"]] for s in steps]
    return report.format_table(headers, rows, markdown)
