"""``gpuconv eval``: the test accuracy and loss of a checkpoint written by ``gpuconv train --save``.

The model is rebuilt from the checkpoint's ``meta`` and evaluated on the test split of its own
training data (``--data`` another directory of the same shape of images) with the same function
``train`` uses, so for the data it was trained on it prints the figure ``train`` printed at that
epoch. Images are standardised as the model was trained: ``(raw / scale - mean) / std`` with the
checkpoint's mean and std.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, Optional, TextIO, Tuple

import numpy as np

from .. import datasets, nn
from ..backends import BACKEND_NAMES, Backend, resolve_backend, use_backend
from ..models import build_model
from . import report
from .harness import INTEGER, NUMBER, STRING, check_json_path, document, value, write_json
from .train import evaluate

__all__ = ["load_trained", "evaluate_checkpoint", "add_parser", "run", "EVAL_SCHEMA"]

SCHEMA_ID = "gpuconv-eval/1"
_FRACTION = value("number", minimum=0.0, maximum=1.0)
EVAL_SCHEMA: Dict[str, Any] = document(SCHEMA_ID, {
    "environment": report.ENVIRONMENT_SCHEMA,
    "checkpoint": STRING, "model": STRING, "dataset": STRING, "backend": STRING, "epoch": INTEGER,
    "test_samples": INTEGER, "test_accuracy": _FRACTION, "test_loss": NUMBER,
}, title="gpuconv eval", description="Accuracy (a fraction) and mean softmax cross-entropy of a "
                                     "checkpoint on the test split of a data set.")

_MODEL_KEYS = ("model", "in_channels", "image_size", "num_classes", "mean", "std")


def load_trained(path: str, backend: Backend) -> Tuple[nn.Module, Dict[str, Any]]:
    """(model in eval mode on ``backend``, meta) from a checkpoint of ``gpuconv train --save``."""
    ckpt = nn.read_checkpoint(path, arrays=False)
    meta = ckpt["meta"]
    missing = [k for k in _MODEL_KEYS if k not in meta]
    if missing:
        raise ValueError(f"checkpoint {path} does not say which model it holds (meta lacks "
                         f"{', '.join(missing)}); was it written by gpuconv train --save?")
    with use_backend(backend):
        model = build_model(meta["model"], meta["in_channels"], meta["image_size"], meta["num_classes"])
        nn.load_checkpoint(path, model)  # the arrays, checked against the model before read
    model.eval()
    meta = dict(meta, epoch=ckpt["epoch"])
    return model, meta


def _as_trained(dataset: datasets.Dataset, meta: Dict[str, Any]) -> datasets.Split:
    """The test split standardised with the checkpoint's mean and std (unchanged when the data is
    the training data, whose statistics they are)."""
    mean, std = meta["mean"], meta["std"]
    test = dataset.test
    if (dataset.mean, dataset.std) == (mean, std):
        return test
    raw = test.images.astype(np.float64) * dataset.std + dataset.mean   # raw / scale
    return datasets.Split(((raw - mean) / std).astype(test.images.dtype), test.labels)


def evaluate_checkpoint(path: str, data: Optional[str] = None, backend: str = "auto") -> Dict[str, Any]:
    """The EVAL_SCHEMA document of checkpoint ``path`` on the test split of ``data`` (default: the
    data it was trained on)."""
    be = resolve_backend(backend)
    model, meta = load_trained(path, be)
    settings = meta.get("settings", {})
    if data is None:
        data = settings.get("data")
    # the run's seed chose the bundled digits' test images: the same split, not another
    dataset = datasets.load_dataset(data, num_classes=meta["num_classes"], seed=settings.get("seed", 0))
    shape = (dataset.in_channels, dataset.image_size, dataset.image_size)
    wanted = (meta["in_channels"], meta["image_size"], meta["image_size"])
    if shape != wanted or dataset.num_classes != meta["num_classes"]:
        raise ValueError(f"the data ({dataset.name}: images {shape}, {dataset.num_classes} classes) does "
                         f"not fit the model in {path} (images {wanted}, {meta['num_classes']} classes)")
    with use_backend(be):
        loss, accuracy = evaluate(model, _as_trained(dataset, meta), be)
    return {"schema": SCHEMA_ID, "environment": report.environment(), "checkpoint": str(path),
            "model": meta["model"], "dataset": dataset.name,
            "backend": be.name, "epoch": meta["epoch"] or 0, "test_samples": len(dataset.test),
            "test_accuracy": accuracy, "test_loss": loss}


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``eval`` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "eval", help="test accuracy and loss of a saved model",
        description="Evaluate a checkpoint written by gpuconv train --save on the test split of its "
                    "training data (or of --data DIR) and print the accuracy and mean loss.")
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint file (.npz) of gpuconv train --save")
    p.add_argument("--data", metavar="DIR", default=None,
                   help="data set directory, as for train (default: the one the model was trained on)")
    p.add_argument("--backend", choices=BACKEND_NAMES + ("auto",), default="auto",
                   help="where to run (default %(default)s)")
    p.add_argument("--json", metavar="FILE", default=None,
                   help=f"write the result and the environment as JSON, schema {SCHEMA_ID} "
                        f"(default: not written)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace, out: Optional[TextIO] = None) -> int:
    """Entry point of ``gpuconv eval``; returns the exit status."""
    out = sys.stdout if out is None else out
    check_json_path(args.json)
    doc = evaluate_checkpoint(args.checkpoint, args.data, args.backend)
    if args.json is not None:
        write_json(args.json, doc, EVAL_SCHEMA)
    out.write(f"test accuracy {100 * doc['test_accuracy']:.2f}%  test loss {doc['test_loss']:.4f}  "
              f"({doc['test_samples']} images of {doc['dataset']}; {doc['model']} after epoch "
              f"{doc['epoch']}, backend {doc['backend']})\n")
    return 0
