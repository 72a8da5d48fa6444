"""Whole training steps for ``gpuconv bench --ops step``.

A step is forward, softmax cross-entropy, backward and an SGD update with momentum, on a
LeNet-5-style model (1×28×28) and ResNet-20 (3×32×32), run by ``gpuconv.train_step.TrainStep``
(what ``gpuconv train`` runs). Variants:

* ``gpuconv eager``: the step driven from Python, one launch after another;
* ``gpuconv graph`` (cuda and emulator): the same step captured once (``gpuconv.backends.graphs``:
  a CUDA graph on a GPU, the emulator's recorded launches on the CPU) and replayed, the batch and
  the update's constants copied into its buffers before each replay, the loss read after it. Its
  first replay is verified against an eager step from the same state; when capture or that check
  fails, the row says why;
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

from .. import optim, tolerances
from ..train_step import TrainStep
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


def gpuconv_step(name: str, in_ch: int, size: int, be, graph: bool,
                 warn: Optional[Callable[[str], None]] = None) -> TrainStep:
    """A TrainStep of model ``name`` (seed 0) on ``be`` with SGD (LR, MOMENTUM)."""
    model = build_model_on(name, in_ch, size, be)
    return TrainStep(model, optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM), be, graph=graph,
                     warn=warn)


def graph_variant(step: TrainStep, x, labels) -> Dict[str, Any]:
    """Take ``step`` (graph=True) through its eager step, its capture and its verified first
    replay on the batch (x, labels): {"status", "note", "rel_err"}; status "ok" when it now replays."""
    notes: List[str] = []
    step.warn = notes.append
    try:
        for _ in range(3):
            step(x, labels)
    except Exception as exc:  # a step that cannot run at all is this row's failure, not the run's
        return {"status": "failed", "note": f"{type(exc).__name__}: {exc}", "rel_err": None}
    if step.mode == "replay":
        return {"status": "ok", "note": "replay == eager step", "rel_err": step.verify_rel_err}
    note = notes[0] if notes else "not graphed"
    return {"status": "capture-failed" if "capture failed" in note else "failed", "note": note,
            "rel_err": step.verify_rel_err}


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
    capturing = hasattr(getattr(be, "executor", None), "begin_capture")
    rows: List[Dict[str, Any]] = []
    for name, (in_ch, size) in STEP_MODELS.items():
        x, labels = synthetic_batch(batch, in_ch, size, size, 10, seed=0)
        host_model = build_model_on(name, in_ch, size, "numpy")
        dx, dlabels = be.asarray(x), be.asarray(labels.astype(np.int32))
        eager = gpuconv_step(name, in_ch, size, be, graph=False)
        first_loss = float(np.asarray(be.to_numpy(eager(dx, dlabels)[0])))
        fns: Dict[str, Callable[[], Any]] = {"gpuconv eager": lambda s=eager, a=dx, b=dlabels: s(a, b)}
        graph_info: Optional[Dict[str, Any]] = None
        if capturing:
            graphed = gpuconv_step(name, in_ch, size, be, graph=True)
            graph_info = graph_variant(graphed, dx, dlabels)
            if graph_info["status"] == "ok":
                fns["gpuconv graph"] = lambda s=graphed, a=dx, b=dlabels: s(a, b)
        torch_loss: Dict[str, float] = {}
        for b in baselines:
            if b not in ("torch", "torch-tf32"):
                continue
            fn, loss0 = _torch_step(host_model, x, labels, device(backend), b == "torch-tf32")
            fns[b] = fn
            torch_loss[b] = loss0
        if on_gpu:
            timings = {k: timer.throughput(fn, repeat, INNER_STEPS) for k, fn in fns.items()}
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
            if k == "gpuconv graph":
                note, rel = graph_info["note"], graph_info["rel_err"]
            rows.append(_row(name, k, batch, status, note, t, rel))
        if graph_info is not None and graph_info["status"] != "ok":
            rows.append(_row(name, "gpuconv graph", batch, graph_info["status"], graph_info["note"], None,
                             graph_info["rel_err"]))
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
