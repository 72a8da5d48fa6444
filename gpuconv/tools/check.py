"""``gpuconv check``: layer-by-layer agreement of two backends on the same model and batch.

The model is built once per backend from the same seed on the host and moved with ``.to()``, so
both sides start from identical weights. One forward pass, the softmax cross-entropy loss and one
backward pass run on the same batch on the first backend (the reference); every leaf layer
records its input, output, incoming gradient, returned gradient (dx) and parameter gradients.

In ``layer`` mode (the default) every leaf layer of the second backend then runs on the
reference's input and incoming gradient, so each row measures that layer alone and a fault shows
in the layer that has it; the whole network also runs end to end on the second backend and its
logits and loss are compared. In ``chain`` mode only the end-to-end runs are compared, layer by
layer, and errors propagate as they would in training (a near-tie inside a max-pooling window can
then route a gradient to another element, legitimately).

Models run unfused (``Module.set_fusion(False)``): a fused pair of layers (conv and ReLU) has no
result of its own layers to record; fusion gives the unfused layers' bits.

Errors are max|a - b| and max|a - b| / max|ref|, held to ``gpuconv.tolerances``. Kernel backends
run with poisoned outputs (NaN-filled before each kernel), so an element a kernel forgets to
write fails. Exit status 1 when anything fails.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import tolerances
from ..backends import resolve_backend
from . import report
from .harness import (
    BOOLEAN,
    INTEGER,
    NUMBER,
    NUMBER_OR_NULL,
    STRING,
    STRING_OR_NULL,
    check_json_path,
    document,
    list_of,
    make_backend,
    record,
    write_json,
)
from .report import ENVIRONMENT_SCHEMA

__all__ = ["add_parser", "run", "run_check", "CHECK_SCHEMA", "CHECK_SET_SCHEMA", "MODEL_INPUTS",
           "format_layers"]

# model -> (in_channels, image_size, num_classes)
MODEL_INPUTS: Dict[str, Tuple[int, int, int]] = {
    "lenet": (1, 28, 10), "cifar-small": (3, 32, 10), "resnet20": (3, 32, 10), "resnet20-fixup": (3, 32, 10),
    "airbench": (3, 32, 10)}
EMULATOR_DEFAULT_BATCH = 2
DEFAULT_BATCH = 8

ENTRY_SCHEMA = record({"layer": STRING, "type": STRING, "tensor": STRING, "shape": list_of(INTEGER),
                       "max_abs_err": NUMBER_OR_NULL, "rel_err": NUMBER_OR_NULL, "tolerance": NUMBER,
                       "passed": BOOLEAN})
CHECK_SCHEMA = document("gpuconv-check/1", {
    "environment": ENVIRONMENT_SCHEMA,
    "settings": record({"model": STRING, "backends": list_of(STRING), "reference": STRING, "dtype": STRING,
                        "batch": INTEGER, "seed": INTEGER, "data": STRING, "image_size": INTEGER,
                        "in_channels": INTEGER, "weights": STRING, "mode": STRING}),
    "entries": list_of(ENTRY_SCHEMA), "passed": BOOLEAN, "failures": INTEGER, "error": STRING_OR_NULL,
})
# Several check documents in one file (scripts/gpu_check.sh).
CHECK_SET_SCHEMA = document("gpuconv-check-set/1", {"runs": list_of(CHECK_SCHEMA)})


@dataclass
class _Recording:
    """Per leaf layer, on the host: its input, output, incoming gradient dy, returned gradient
    dx and parameter gradients; then the logits, the loss and its gradient."""

    order: List[str] = field(default_factory=list)
    types: Dict[str, str] = field(default_factory=dict)
    inputs: Dict[str, np.ndarray] = field(default_factory=dict)
    outputs: Dict[str, np.ndarray] = field(default_factory=dict)
    dys: Dict[str, np.ndarray] = field(default_factory=dict)
    dx: Dict[str, np.ndarray] = field(default_factory=dict)
    grads: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)
    buffers: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)  # running statistics
    logits: Optional[np.ndarray] = None
    loss: Optional[np.ndarray] = None
    dlogits: Optional[np.ndarray] = None


def _leaves(model) -> List[Tuple[str, Any]]:
    return [(name or "model", m) for name, m in model.named_modules() if not list(m.children())]


def _instrument(model, be, rec: _Recording) -> None:
    """Wrap each leaf layer's forward/backward (on the instance) to record results on the host."""
    for name, layer in _leaves(model):
        rec.order.append(name)
        rec.types[name] = type(layer).__name__
        fwd, bwd = layer.forward, layer.backward

        def forward(x, _name=name, _fwd=fwd):
            rec.inputs[_name] = np.array(be.to_numpy(x), copy=True)
            y = _fwd(x)
            rec.outputs[_name] = np.array(be.to_numpy(y), copy=True)
            return y

        def backward(dy, _name=name, _bwd=bwd):
            rec.dys[_name] = np.array(be.to_numpy(dy), copy=True)
            dx = _bwd(dy)
            rec.dx[_name] = np.array(be.to_numpy(dx), copy=True)
            return dx

        layer.forward, layer.backward = forward, backward


def fill_zero_params(state: Dict[str, np.ndarray], seed: int) -> Dict[str, np.ndarray]:
    """Replace every all-zero floating parameter or buffer (zero-initialised residual branches,
    biases, running means; counters stay) by seeded random values: N(0, 1/fan_in) for weights,
    N(0, 0.1²) for vectors. Returns a new dict."""
    rng = np.random.default_rng(seed + 1)
    out = {}
    for name, a in state.items():
        if a.size and a.dtype.kind == "f" and not np.any(a):
            scale = 0.1 if a.ndim == 1 else 1.0 / math.sqrt(int(np.prod(a.shape[1:])))
            a = (rng.standard_normal(a.shape) * scale).astype(a.dtype)
        out[name] = a
    return out


def _host_copy(be, a) -> np.ndarray:
    return np.array(be.to_numpy(a), copy=True)


def _run_model(model_name: str, be, x: np.ndarray, labels: np.ndarray, seed: int, dtype,
               weights: str, feed: Optional[_Recording] = None) -> _Recording:
    """Forward, loss and backward of the model on ``be``.

    Without ``feed`` the whole network runs (each layer consumes the previous layer's result on
    ``be``). With ``feed`` (the reference's recording) each leaf layer runs on its own, on the
    reference's input and incoming gradient, so its result measures that layer alone.
    """
    from .. import functional as F
    from ..backends import use_backend
    from ..models import build_model
    in_ch, size, classes = x.shape[1], x.shape[2], 10
    with use_backend("numpy"):
        model = build_model(model_name, in_ch, size, classes, seed=seed, dtype=dtype)
        if weights == "filled":
            model.load_state_dict(fill_zero_params(model.state_dict(), seed))
    model.to(be).set_fusion(False)  # each leaf layer's own results: no fused pairs
    rec = _Recording()
    _instrument(model, be, rec)
    with use_backend(be):
        if feed is None:
            logits = model.forward(be.asarray(x))
            loss, dlogits = F.softmax_cross_entropy(logits, be.asarray(labels))
            model.backward(dlogits)
        else:
            for name, layer in _leaves(model):
                layer.forward(be.asarray(feed.inputs[name]))
                layer.backward(be.asarray(feed.dys[name]))
            logits = be.asarray(feed.logits)
            loss, dlogits = F.softmax_cross_entropy(logits, be.asarray(labels))
        be.synchronize()
    rec.logits = _host_copy(be, logits)
    rec.loss = np.asarray(be.to_numpy(loss)).reshape(1)
    rec.dlogits = _host_copy(be, dlogits)
    for name, layer in _leaves(model):
        rec.grads[name] = {p: np.array(be.to_numpy(a), copy=True)
                           for p, a in layer.grads.items() if a is not None}
        rec.buffers[name] = {b: _host_copy(be, a) for b, a in layer.named_buffers() if a.dtype.kind == "f"}
    return rec


def make_batch(data: str, batch: int, in_channels: int, image_size: int, seed: int,
               dtype) -> Tuple[np.ndarray, np.ndarray]:
    """x (batch, in_channels, image_size, image_size) and int32 labels (batch,).

    ``digits``: the bundled 8x8 digits (standardised), nearest-neighbour upscaled, repeated over
    channels, plus seeded N(0, 0.1²) noise; ``synthetic``: standard-normal images with random labels.

    The noise matters: upscaled digits have large constant regions, where activations are equal
    in exact arithmetic, so which element of a max-pooling window wins would be decided by
    rounding, differently on each backend, and the routed gradients would differ for no fault.
    """
    from ..datasets import load_digits, synthetic_batch
    if data == "synthetic":
        return synthetic_batch(batch, in_channels, image_size, image_size, 10, seed, dtype)
    if data != "digits":
        raise ValueError(f"data must be 'digits' or 'synthetic', got {data!r}")
    ds = load_digits(dtype=np.float64)
    images, labels = ds.train.images, ds.train.labels
    pick = np.random.default_rng(seed).choice(len(images), size=batch, replace=batch > len(images))
    img = images[pick]                                   # (batch, 1, 8, 8)
    rows = np.arange(image_size) * img.shape[2] // image_size
    cols = np.arange(image_size) * img.shape[3] // image_size
    img = img[:, :, rows][:, :, :, cols]
    x = np.repeat(img, in_channels, axis=1)
    x = x + 0.1 * np.random.default_rng(seed + 2).standard_normal(x.shape)
    return np.ascontiguousarray(x.astype(dtype)), labels[pick].astype(np.int32)


def _compare(layer: str, ltype: str, tensor: str, a: Optional[np.ndarray], ref: Optional[np.ndarray],
             tol: float) -> Dict[str, Any]:
    if a is None or ref is None or a.shape != ref.shape:
        abs_err = rel = math.nan
        shape = list(ref.shape if ref is not None else (a.shape if a is not None else ()))
    else:
        abs_err, rel = tolerances.scaled_error(a, ref)
        shape = list(ref.shape)
    return {"layer": layer, "type": ltype, "tensor": tensor, "shape": [int(s) for s in shape],
            "max_abs_err": None if math.isnan(abs_err) else abs_err,
            "rel_err": None if math.isnan(rel) else rel, "tolerance": tol,
            "passed": tolerances.passes(rel, tol)}


def compare_recordings(ref: _Recording, other: _Recording, tol: float,
                       end_to_end: Optional[_Recording] = None) -> List[Dict[str, Any]]:
    """One entry per (leaf layer, tensor): output, dx, every parameter gradient and every floating
    buffer after the step (batch norm's running statistics); then the loss
    (and its gradient); then, given the other backend's whole-network run ``end_to_end``, its
    logits and loss against the reference's."""
    entries = []
    for name in ref.order:
        t = ref.types[name]
        entries.append(_compare(name, t, "output", other.outputs.get(name), ref.outputs.get(name), tol))
        entries.append(_compare(name, t, "dx", other.dx.get(name), ref.dx.get(name), tol))
        for p, g in ref.grads.get(name, {}).items():
            entries.append(_compare(name, t, f"d{p}", other.grads.get(name, {}).get(p), g, tol))
        for b, v in ref.buffers.get(name, {}).items():
            entries.append(_compare(name, t, b, other.buffers.get(name, {}).get(b), v, tol))
    entries.append(_compare("loss", "SoftmaxCrossEntropy", "output", other.loss, ref.loss, tol))
    entries.append(_compare("loss", "SoftmaxCrossEntropy", "dx", other.dlogits, ref.dlogits, tol))
    if end_to_end is not None:
        entries.append(_compare("network", "end to end", "logits", end_to_end.logits, ref.logits, tol))
        entries.append(_compare("network", "end to end", "loss", end_to_end.loss, ref.loss, tol))
    return entries


def run_check(model: str, backends: Sequence[str], dtype: str = "float32", batch: Optional[int] = None,
              seed: int = 0, data: str = "digits", image_size: Optional[int] = None,
              weights: str = "filled", mode: str = "layer",
              log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run the check and return the result document (see ``CHECK_SCHEMA``)."""
    if model not in MODEL_INPUTS:
        raise ValueError(f"model must be one of {', '.join(MODEL_INPUTS)}, got {model!r}")
    if len(backends) != 2 or backends[0] == backends[1]:
        raise ValueError(f"backends must name two different backends, e.g. numpy,emulator; "
                         f"got {list(backends)}")
    for b in backends:
        if b not in ("numpy", "emulator", "cuda"):
            raise ValueError(f"backends must be among numpy, emulator, cuda; got {b!r}")
    if mode not in ("layer", "chain"):
        raise ValueError(f"mode must be 'layer' or 'chain', got {mode!r}")
    if weights not in ("init", "filled"):
        raise ValueError(f"weights must be 'init' or 'filled', got {weights!r}")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    in_ch, default_size, _ = MODEL_INPUTS[model]
    size = default_size if image_size is None else image_size
    if batch is None:
        batch = EMULATOR_DEFAULT_BATCH if "emulator" in backends else DEFAULT_BATCH
        if "emulator" in backends:
            log(f"note: batch {batch} by default because the emulator runs every CUDA thread on the CPU")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if size < 1:
        raise ValueError(f"image_size must be >= 1, got {size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    for b in backends:
        resolve_backend(b)    # BackendUnavailable, saying why, before any work
    tol = tolerances.tolerance(dtype)
    x, labels = make_batch(data, batch, in_ch, size, seed, np.dtype(dtype))
    doc: Dict[str, Any] = {
        "schema": CHECK_SCHEMA["$id"], "environment": report.environment(),
        "settings": {"model": model, "backends": list(backends), "reference": backends[0], "dtype": dtype,
                     "batch": batch, "seed": seed, "data": data, "image_size": size, "in_channels": in_ch,
                     "weights": weights, "mode": mode},
        "entries": [], "passed": False, "failures": 0, "error": None,
    }
    name = backends[0]
    try:
        ref = _run_model(model, make_backend(name, poison=True), x, labels, seed, np.dtype(dtype), weights)
        name = backends[1]
        be = make_backend(name, poison=True)
        whole = _run_model(model, be, x, labels, seed, np.dtype(dtype), weights)
        alone = _run_model(model, be, x, labels, seed, np.dtype(dtype), weights, feed=ref) \
            if mode == "layer" else None
    except Exception as exc:  # reported in the output; the exit status says it failed
        doc["error"] = f"backend {name}: {type(exc).__name__}: {exc}"
        doc["failures"] = 1
        return doc
    if mode == "layer":
        doc["entries"] = compare_recordings(ref, alone, tol, end_to_end=whole)
    else:
        doc["entries"] = compare_recordings(ref, whole, tol)
    doc["failures"] = sum(not e["passed"] for e in doc["entries"])
    doc["passed"] = doc["failures"] == 0
    return doc


_COLUMNS = (("output", "y"), ("dx", "dx"), ("dweight", "dW"), ("dbias", "db"))
_ALIASES = {"logits": "output"}


def format_layers(doc: Dict[str, Any], markdown: bool = False) -> str:
    """One row per layer: max abs and relative error of y, dx, dW, db; tolerance; pass/fail."""
    by_layer: Dict[str, List[Dict[str, Any]]] = {}
    for e in doc["entries"]:
        by_layer.setdefault(e["layer"], []).append(e)
    headers = ["layer", "type"]
    for _, short in _COLUMNS:
        headers += [f"{short} abs", f"{short} rel"]
    headers += ["tol", "result"]
    rows = []
    for layer, es in by_layer.items():
        cells: List[Any] = [layer, es[0]["type"]]
        named = {_ALIASES.get(e["tensor"], e["tensor"]): e for e in es}
        for tensor, _ in _COLUMNS:
            e = named.get(tensor)
            cells += [e["max_abs_err"], e["rel_err"]] if e else ["", ""]
        others = [e for e in es if _ALIASES.get(e["tensor"], e["tensor"]) not in dict(_COLUMNS)]
        failed = [e["tensor"] for e in es if not e["passed"]]
        verdict = "pass" if not failed else "FAIL (" + ", ".join(failed) + ")"
        if others:
            verdict += "; also " + ", ".join(f"{e['tensor']} rel {report.fmt(e['rel_err'])}" for e in others)
        rows.append(cells + [es[0]["tolerance"], verdict])
    return report.format_table(headers, rows, markdown)


DESCRIPTION = (
    "Run one model on two backends from the same weights and the same batch, and compare, layer by "
    "layer, the output, the gradient passed back and the parameter gradients of the second backend "
    "with those of the first (the reference). Errors are max|a - b| / max|reference|, held to the "
    "tolerance of the dtype. Kernel backends run with every output filled with NaN before each "
    "kernel, so an element a kernel forgets to write fails. Exit status 1 when a comparison fails.")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``gpuconv check``."""
    p = subparsers.add_parser(
        "check", help="layer-by-layer agreement of two backends (forward and gradients)",
        description=DESCRIPTION)
    p.add_argument("--model", default="lenet", choices=sorted(MODEL_INPUTS),
                   help="the model of the zoo to run (default %(default)s)")
    p.add_argument("--backends", default="numpy,emulator",
                   help="two of numpy, emulator, cuda; the first is the reference (default %(default)s)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                   help="precision of weights, inputs and computation (default %(default)s)")
    p.add_argument("--batch", type=int, default=None,
                   help=f"images in the batch (default {DEFAULT_BATCH}; {EMULATOR_DEFAULT_BATCH} when one "
                        f"backend is the emulator, which runs every CUDA thread on the CPU)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the weights, the choice of images and their noise (default %(default)s)")
    p.add_argument("--data", default="digits", choices=("digits", "synthetic"),
                   help="'digits': bundled digits scaled up to the model's input, with a little noise; "
                        "'synthetic': random images (default %(default)s)")
    p.add_argument("--image-size", type=int, default=None,
                   help="height and width of the input (default 28 for lenet, 32 for the others)")
    p.add_argument("--weights", default="filled", choices=("filled", "init"),
                   help="'init': the model's initial weights; 'filled': the same, with every all-zero "
                        "parameter (zero-initialised residual branches, biases) replaced by seeded "
                        "random values so that every path carries signal (default %(default)s)")
    p.add_argument("--mode", default="layer", choices=("layer", "chain"),
                   help="'layer': every layer of the second backend runs on the reference's input "
                        "and incoming gradient, so each row measures that layer alone, plus an end-to-end "
                        "row (logits, loss); 'chain': the whole network runs on each backend and errors "
                        "propagate (a near-tie in a max-pooling window may then route a gradient "
                        "elsewhere) (default %(default)s)")
    p.add_argument("--json", default=None, metavar="FILE",
                   help=f"write every comparison, the settings and the environment as JSON, schema "
                        f"{CHECK_SCHEMA['$id']} (default: not written)")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    """CLI entry: print the table; exit 1 when any comparison fails or a backend cannot run."""
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    check_json_path(args.json)
    doc = run_check(args.model, backends, args.dtype, args.batch, args.seed, args.data, args.image_size,
                    args.weights, args.mode)
    s = doc["settings"]
    print(f"gpuconv check --model {s['model']}: {s['backends'][1]} vs {s['reference']} (reference), "
          f"{s['dtype']}, batch {s['batch']}, {s['data']} images {s['in_channels']}x{s['image_size']}"
          f"x{s['image_size']}, seed {s['seed']}, weights {s['weights']}, mode {s['mode']}")
    print("errors: abs = max|a-b|, rel = max|a-b| / max|ref|")
    if doc["entries"]:
        print(format_layers(doc))
    if doc["error"]:
        print(f"error: {doc['error']}")
    print(f"{'PASS' if doc['passed'] else 'FAIL'}: {doc['failures']} comparison(s) failed "
          f"out of {len(doc['entries'])}")
    if args.json:
        write_json(args.json, doc, CHECK_SCHEMA)
        print(f"wrote {args.json}")
    return 0 if doc["passed"] else 1
