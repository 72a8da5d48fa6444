"""``gpuconv predict``: the class and class probabilities of each image in a ``.npy`` file, by a
checkpoint written by ``gpuconv train --save``.

Input layouts: (N, C, H, W) or (N, H, W, C) with the model's channels and size, (N, H, W) or one
image (H, W) for a one-channel model, (C, H, W) for one image. Values: integer arrays are raw
pixels as in the training files (0..255; 0..16 for the bundled digits), float arrays intensities
in [0, 1]. They are standardised as the model was trained.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, Optional, TextIO

import numpy as np

from ..backends import BACKEND_NAMES, resolve_backend, use_backend
from . import report
from .evaluate import load_trained
from .harness import INTEGER, STRING, check_json_path, document, list_of, record, value, write_json
from .train import EVAL_BATCH

__all__ = ["read_images", "predict", "add_parser", "run", "PREDICT_SCHEMA"]

SCHEMA_ID = "gpuconv-predict/1"
_PROB = value("number", minimum=0.0, maximum=1.0)
PREDICT_SCHEMA: Dict[str, Any] = document(SCHEMA_ID, {
    "environment": report.ENVIRONMENT_SCHEMA,
    "checkpoint": STRING, "input": STRING, "model": STRING, "backend": STRING, "num_classes": INTEGER,
    "predictions": list_of(record({"index": INTEGER, "class": INTEGER, "probability": _PROB,
                                   "probabilities": list_of(_PROB)})),
}, title="gpuconv predict", description="For each input image in order, the most probable class, its "
                                        "probability and the softmax probabilities of every class.")
SHOWN = 10  # probabilities printed per image (all of them in --json)


def read_images(path: str, meta: Dict[str, Any]) -> np.ndarray:
    """The images of the ``.npy`` at ``path``, checked against the model described by ``meta`` and
    standardised as it was trained: float32 (N, C, H, W)."""
    try:
        a = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"INPUT {path!r} does not exist") from None
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"INPUT {path!r} is not a readable .npy array without pickled objects "
                         f"({exc})") from None
    if not isinstance(a, np.ndarray):
        raise ValueError(f"INPUT {path!r} holds several arrays (.npz); pass one .npy array of images")
    c, s = meta["in_channels"], meta["image_size"]
    layouts = [f"(N, {c}, {s}, {s})", f"(N, {s}, {s}, {c})", f"({c}, {s}, {s})"]
    if c == 1:
        layouts += [f"(N, {s}, {s})", f"({s}, {s})"]
    if a.shape[-3:] == (c, s, s) and a.ndim in (3, 4):
        a = a.reshape((-1, c, s, s))
    elif a.ndim == 4 and a.shape[1:] == (s, s, c):
        a = a.transpose(0, 3, 1, 2)
    elif c == 1 and a.shape[-2:] == (s, s) and a.ndim in (2, 3):
        a = a.reshape((-1, 1, s, s))
    else:
        raise ValueError(f"INPUT {path!r} has shape {a.shape}; the model takes images {', '.join(layouts)}")
    if a.shape[0] == 0:
        raise ValueError(f"INPUT {path!r} holds no images (shape {a.shape})")
    scale = meta.get("pixel_scale")
    if scale is None:
        raise ValueError("the checkpoint does not record the pixel scale of its training data; "
                         "save it again with this version of gpuconv train")
    if a.dtype.kind in "ui":
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > scale:
            raise ValueError(f"INPUT {path!r}: integer pixels must lie in [0, {scale:g}] as in the "
                             f"training data, got [{lo}, {hi}]")
        x = a.astype(np.float64) / scale
    elif a.dtype.kind == "f":
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise ValueError(f"INPUT {path!r}: float images must hold finite intensities in [0, 1], "
                             f"got values in [{np.min(a)}, {np.max(a)}]")
        x = a.astype(np.float64)
    else:
        raise ValueError(f"INPUT {path!r} has dtype {a.dtype}; expected integer pixels or float "
                         f"intensities")
    return np.ascontiguousarray((x - meta["mean"]) / meta["std"], dtype=np.float32)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict(checkpoint: str, input_path: str, backend: str = "auto") -> Dict[str, Any]:
    """The PREDICT_SCHEMA document of ``checkpoint`` on the images in ``input_path``."""
    be = resolve_backend(backend)
    model, meta = load_trained(checkpoint, be)
    x = read_images(input_path, meta)
    probs = []
    with use_backend(be):
        for start in range(0, len(x), EVAL_BATCH):
            probs.append(_softmax(be.to_numpy(model.forward(be.asarray(x[start:start + EVAL_BATCH])))))
    p = np.concatenate(probs)
    predictions = [{"index": i, "class": int(row.argmax()), "probability": float(row.max()),
                    "probabilities": [float(v) for v in row]} for i, row in enumerate(p)]
    return {"schema": SCHEMA_ID, "environment": report.environment(), "checkpoint": str(checkpoint),
            "input": str(input_path),
            "model": meta["model"], "backend": be.name, "num_classes": meta["num_classes"],
            "predictions": predictions}


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``predict`` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "predict", help="classify the images in a .npy file with a saved model",
        description="Print the most probable class and the class probabilities of each image in "
                    "INPUT.npy, by a checkpoint written by gpuconv train --save. Integer arrays are "
                    "raw pixels as in the training files; float arrays intensities in [0, 1].")
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint file (.npz) of gpuconv train --save")
    p.add_argument("input", metavar="INPUT.npy",
                   help="images (N, C, H, W) or (N, H, W, C); (N, H, W) for one-channel models")
    p.add_argument("--backend", choices=BACKEND_NAMES + ("auto",), default="auto",
                   help="where to run (default %(default)s)")
    p.add_argument("--json", metavar="FILE", default=None,
                   help=f"write every probability and the environment as JSON, schema {SCHEMA_ID} "
                        f"(default: not written)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace, out: Optional[TextIO] = None) -> int:
    """Entry point of ``gpuconv predict``; returns the exit status."""
    out = sys.stdout if out is None else out
    check_json_path(args.json)
    doc = predict(args.checkpoint, args.input, args.backend)
    if args.json is not None:
        write_json(args.json, doc, PREDICT_SCHEMA)
    shown = min(SHOWN, doc["num_classes"])
    label = "probabilities" if shown == doc["num_classes"] else f"top {shown}"
    for pred in doc["predictions"]:
        order = np.argsort(pred["probabilities"])[::-1][:shown] if shown < doc["num_classes"] \
            else range(doc["num_classes"])
        listed = "  ".join(f"{k}:{pred['probabilities'][k]:.4f}" for k in order)
        out.write(f"image {pred['index']}: class {pred['class']} (p {pred['probability']:.4f})  "
                  f"{label} {listed}\n")
    return 0
