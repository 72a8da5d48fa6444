"""``gpuconv train``: train a model from the zoo on the bundled digits or on MNIST-style IDX files.

Prints one line per epoch (loss, train/test accuracy, samples/s) to stdout and the progress of
the epoch to stderr (``gpuconv.tools.progress``: a live bar on a terminal, a plain line now and
then elsewhere, nothing with ``--quiet``); ``--log FILE`` appends the same lines to a file.
``--json FILE`` writes the final metrics as a document following ``METRICS_SCHEMA`` (a JSON
Schema, checked by ``validate_metrics``).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, TextIO, Tuple

from .. import datasets, nn, optim
from ..backends import BACKEND_NAMES, cuda_unavailable_reason, resolve_backend, use_backend
from ..models import MODEL_NAMES, build_model
from . import plots, report
from .harness import INTEGER, NUMBER, STRING, document, list_of, record, validate, value, write_json
from .progress import Reporter

__all__ = ["TrainConfig", "train", "evaluate", "add_parser", "run", "METRICS_SCHEMA", "validate_metrics",
           "DEFAULT_LR", "DEFAULT_MOMENTUM"]

SCHEMA_ID = "gpuconv-train/1"
DEFAULT_LR = {"adam": 2e-3, "sgd": 0.05}
DEFAULT_MOMENTUM = 0.9      # SGD's; Adam has no momentum setting
EVAL_BATCH = 1000
SCHEDULES = ("cosine", "constant")

_FRACTION = value("number", minimum=0.0, maximum=1.0)
_EPOCH = record({"epoch": INTEGER, "train_loss": NUMBER, "train_accuracy": _FRACTION, "test_loss": NUMBER,
                 "test_accuracy": _FRACTION, "seconds": NUMBER, "samples_per_second": NUMBER})

METRICS_SCHEMA: Dict[str, Any] = document(SCHEMA_ID, {
    "environment": report.ENVIRONMENT_SCHEMA,
    "model": STRING, "backend": STRING, "dataset": STRING, "optimizer": STRING, "lr": NUMBER,
    "batch_size": INTEGER, "seed": INTEGER, "epochs": INTEGER, "num_parameters": INTEGER,
    "train_samples": INTEGER, "test_samples": INTEGER, "test_accuracy": _FRACTION, "test_loss": NUMBER,
    "train_loss": NUMBER, "train_accuracy": _FRACTION, "wall_seconds": NUMBER, "samples_per_second": NUMBER,
    "history": list_of(_EPOCH),
}, title="gpuconv train final metrics",
    description=("Accuracies are fractions in [0, 1] on the held-out test split; losses are mean "
                 "softmax cross-entropy; train_loss/train_accuracy are averaged over the last "
                 "epoch's training batches (weights changing during the epoch); wall_seconds "
                 "covers data loading, model building, training and evaluation; samples_per_second "
                 "counts training samples over training time only; history has one entry per epoch."))


def validate_metrics(doc: Dict[str, Any]) -> None:
    """Raise ValueError unless ``doc`` follows METRICS_SCHEMA and has one history entry per epoch."""
    validate(doc, METRICS_SCHEMA, "metrics")
    if len(doc["history"]) != doc["epochs"]:
        raise ValueError(f"metrics has {len(doc['history'])} history entries for {doc['epochs']} epochs")


@dataclass
class TrainConfig:
    """Settings of one training run (the CLI's flags)."""

    model: str = "lenet"
    backend: str = "auto"
    epochs: int = 20
    batch_size: int = 32
    lr: Optional[float] = None
    optimizer: str = "adam"
    momentum: Optional[float] = None      # SGD only; None: DEFAULT_MOMENTUM
    weight_decay: float = 0.0
    schedule: str = "cosine"
    seed: int = 0
    data: Optional[str] = None
    save: Optional[str] = None
    json: Optional[str] = None
    plot: Optional[str] = None
    log: Optional[str] = None
    quiet: bool = False

    def validate(self) -> None:
        if self.model not in MODEL_NAMES:
            raise ValueError(f"--model must be one of {', '.join(MODEL_NAMES)}, got {self.model!r}")
        if self.backend not in BACKEND_NAMES + ("auto",):
            raise ValueError(f"--backend must be one of {', '.join(BACKEND_NAMES)}, auto; "
                             f"got {self.backend!r}")
        if self.optimizer not in optim.OPTIMIZER_NAMES:
            raise ValueError(f"--optimizer must be one of {', '.join(optim.OPTIMIZER_NAMES)}, "
                             f"got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"--lr must be a positive number, got {self.lr}")
        if self.momentum is not None:
            if self.optimizer != "sgd":
                raise ValueError(f"--momentum applies to --optimizer sgd only, not {self.optimizer}")
            if not 0 <= self.momentum < 1:
                raise ValueError(f"--momentum must lie in [0, 1), got {self.momentum}")
        if not self.weight_decay >= 0:
            raise ValueError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.seed < 0:
            raise ValueError(f"--seed must be >= 0, got {self.seed}")
        outputs: Dict[str, str] = {}
        for flag, path in (("--save", self.save), ("--json", self.json), ("--plot", self.plot),
                           ("--log", self.log)):
            if path is not None:
                parent = os.path.dirname(os.path.abspath(path))
                if not os.path.isdir(parent):
                    raise ValueError(f"{flag}: directory {parent!r} does not exist")
                same = [f for f, p in outputs.items() if os.path.abspath(p) == os.path.abspath(path)]
                if same:
                    raise ValueError(f"{same[0]} and {flag} name the same file {path!r}")
                outputs[flag] = path
        if self.plot is not None:
            plots.require_matplotlib()


def evaluate(model: nn.Module, split: datasets.Split, backend, batch_size: int = EVAL_BATCH
             ) -> Tuple[float, float]:
    """(mean loss, accuracy in [0, 1]) of ``model`` in eval mode over ``split``."""
    was_training = model.training
    model.eval()
    loss_fn = nn.SoftmaxCrossEntropy()
    total_loss, correct = 0.0, 0
    for xb, yb in datasets.iterate_batches(split.images, split.labels, batch_size, shuffle=False):
        logits = model.forward(backend.asarray(xb))
        loss = loss_fn.forward(logits, backend.asarray(yb))
        total_loss += float(backend.to_numpy(loss)) * len(yb)
        correct += int((backend.to_numpy(logits).argmax(axis=1) == yb).sum())
    model.train(was_training)
    return total_loss / len(split), correct / len(split)


def _make_optimizer(cfg: TrainConfig, model: nn.Module) -> optim.Optimizer:
    lr = DEFAULT_LR[cfg.optimizer] if cfg.lr is None else cfg.lr
    if cfg.optimizer == "sgd":
        momentum = DEFAULT_MOMENTUM if cfg.momentum is None else cfg.momentum
        return optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=cfg.weight_decay)
    return optim.Adam(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)


def train(cfg: TrainConfig, out: Optional[TextIO] = None, err: Optional[TextIO] = None) -> Dict[str, Any]:
    """Run one training; return the final metrics (METRICS_SCHEMA) and write --json/--save/--plot.
    Reports go to ``out`` and ``err`` (default: sys.stdout and sys.stderr) and to the --log file."""
    cfg.validate()
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(open(cfg.log, "a", encoding="utf-8")) if cfg.log is not None else None
        reporter = Reporter(sys.stdout if out is None else out, sys.stderr if err is None else err,
                            quiet=cfg.quiet, log=log)
        return _train(cfg, reporter)


def _train(cfg: TrainConfig, rep: Reporter) -> Dict[str, Any]:
    t_start = time.perf_counter()
    env = report.environment()
    if cfg.backend == "auto":
        reason = cuda_unavailable_reason()
        if reason:
            rep.note(f"gpuconv: backend auto -> numpy ({reason})")
    dataset = datasets.load_dataset(cfg.data, seed=cfg.seed)
    backend = resolve_backend(cfg.backend)
    history: List[Dict[str, Any]] = []
    with use_backend(backend):
        model = build_model(cfg.model, dataset.in_channels, dataset.image_size, dataset.num_classes,
                            seed=cfg.seed)
        opt = _make_optimizer(cfg, model)
        loss_fn = nn.SoftmaxCrossEntropy()
        train_time = 0.0
        n_train = len(dataset.train)
        n_batches = -(-n_train // cfg.batch_size)
        base_lr, total_steps, step = opt.lr, cfg.epochs * n_batches, 0
        rep.say(f"training {cfg.model} ({model.num_parameters()} parameters) on {dataset.name} "
                f"({n_train} train / {len(dataset.test)} test) with backend {backend.describe()}")
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            t0 = time.perf_counter()
            loss_sum, correct, seen = 0.0, 0, 0
            with rep.task(f"epoch {epoch}/{cfg.epochs}", n_train) as progress:
                for xb, yb in datasets.iterate_batches(dataset.train.images, dataset.train.labels,
                                                       cfg.batch_size, shuffle=True, seed=cfg.seed,
                                                       epoch=epoch):
                    if cfg.schedule == "cosine":
                        opt.lr = base_lr * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
                    step += 1
                    logits = model.forward(backend.asarray(xb))
                    loss = loss_fn.forward(logits, backend.asarray(yb))
                    model.backward(loss_fn.backward())
                    opt.step()
                    loss_sum += float(backend.to_numpy(loss)) * len(yb)
                    correct += int((backend.to_numpy(logits).argmax(axis=1) == yb).sum())
                    seen += len(yb)
                    progress.update(len(yb), loss_sum / seen)
                backend.synchronize()
            seconds = time.perf_counter() - t0
            train_time += seconds
            train_loss = loss_sum / n_train
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"training diverged at epoch {epoch} (loss {train_loss}); "
                                         f"try a smaller --lr")
            test_loss, test_acc = evaluate(model, dataset.test, backend)
            rec = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": correct / n_train,
                   "test_loss": test_loss, "test_accuracy": test_acc, "seconds": seconds,
                   "samples_per_second": n_train / seconds}
            history.append(rec)
            rep.say(f"epoch {epoch:3d}/{cfg.epochs}  loss {train_loss:.4f}  "
                    f"train acc {100 * rec['train_accuracy']:6.2f}%  "
                    f"test acc {100 * test_acc:6.2f}%  test loss {test_loss:.4f}  "
                    f"{rec['samples_per_second']:8.0f} samples/s")
        last = history[-1]
        metrics: Dict[str, Any] = {
            "schema": SCHEMA_ID, "environment": env, "model": cfg.model, "backend": backend.name,
            "dataset": dataset.name,
            "optimizer": cfg.optimizer, "lr": base_lr, "batch_size": cfg.batch_size, "seed": cfg.seed,
            "epochs": cfg.epochs, "num_parameters": model.num_parameters(), "train_samples": n_train,
            "test_samples": len(dataset.test), "test_accuracy": last["test_accuracy"],
            "test_loss": last["test_loss"], "train_loss": last["train_loss"],
            "train_accuracy": last["train_accuracy"],
            "wall_seconds": time.perf_counter() - t_start,
            "samples_per_second": n_train * cfg.epochs / train_time, "history": history}
        if cfg.save is not None:
            summary = {k: v for k, v in metrics.items() if k not in ("history", "environment")}
            nn.save_checkpoint(cfg.save, model, opt, meta={
                "model": cfg.model, "in_channels": dataset.in_channels, "image_size": dataset.image_size,
                "num_classes": dataset.num_classes, "mean": dataset.mean, "std": dataset.std,
                "metrics": summary})
    validate_metrics(metrics)
    if cfg.json is not None:
        write_json(cfg.json, metrics, METRICS_SCHEMA)
    if cfg.plot is not None:
        plots.training_curves(history, cfg.plot, title=f"{cfg.model} on {dataset.name} ({backend.name})")
    rep.say(f"test accuracy {100 * metrics['test_accuracy']:.2f}%  test loss "
            f"{metrics['test_loss']:.4f}  wall {metrics['wall_seconds']:.1f} s  "
            f"{metrics['samples_per_second']:.0f} samples/s")
    return metrics


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``train`` on an argparse subparsers object."""
    d = TrainConfig()
    p = subparsers.add_parser(
        "train", help="train a CNN (default: LeNet on the bundled 8x8 digits)",
        description="Train a model from the zoo on the bundled 8x8 digits (default) or on MNIST-style "
                    "IDX files. Prints one line per epoch, and the progress of the epoch: a live bar "
                    "with rate, time left and running loss on a terminal, a plain line at most every "
                    "10 s and 10% of an epoch when standard error is not a terminal.")
    p.add_argument("--model", choices=MODEL_NAMES, default=d.model, help="architecture (default %(default)s)")
    p.add_argument("--backend", choices=BACKEND_NAMES + ("auto",), default=d.backend,
                   help="where to run; auto = cuda when a GPU is usable, else numpy (default %(default)s)")
    p.add_argument("--epochs", type=int, default=d.epochs,
                   help="passes over the training set (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="images per training step (default %(default)s)")
    p.add_argument("--optimizer", choices=optim.OPTIMIZER_NAMES, default=d.optimizer,
                   help="how the weights are updated: sgd (with momentum) or adam (default %(default)s)")
    p.add_argument("--lr", type=float, default=None,
                   help=f"learning rate at the start of the run (default {DEFAULT_LR['adam']} for adam, "
                        f"{DEFAULT_LR['sgd']} for sgd)")
    p.add_argument("--schedule", choices=SCHEDULES, default=d.schedule,
                   help="learning rate over the run: cosine decay to 0 at the last step, or constant "
                        "(default %(default)s)")
    p.add_argument("--momentum", type=float, default=None,
                   help=f"momentum of --optimizer sgd, in [0, 1) (default {DEFAULT_MOMENTUM}; not accepted "
                        f"with adam)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help="L2 weight decay added to every gradient (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seeds the initial weights, the order of the training images in every epoch "
                        "and, for the bundled digits, which images form the test set (IDX files come "
                        "split) (default %(default)s)")
    p.add_argument("--data", metavar="DIR", default=None,
                   help="directory with MNIST or Fashion-MNIST IDX files (train-images-idx3-ubyte, "
                        "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each "
                        "optionally gzipped) (default: the bundled 8x8 digits, 1438 train / 359 test)")
    p.add_argument("--save", metavar="PATH", default=None,
                   help="write the trained model and optimizer state to this .npz checkpoint "
                        "(default: not saved)")
    p.add_argument("--json", metavar="FILE", default=None,
                   help=f"write the final metrics, every epoch and the environment as JSON, schema "
                        f"{SCHEMA_ID} (default: not written)")
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="draw loss and accuracy per epoch to this image; needs matplotlib "
                        "(default: not drawn)")
    p.add_argument("--log", metavar="FILE", default=None,
                   help="append the printed lines and a plain progress line at most every 10 s and 10%% "
                        "of an epoch to this file, even with --quiet (default: no log)")
    p.add_argument("--quiet", action="store_true",
                   help="print nothing but errors: no progress and no per-epoch lines (default: off)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Entry point of ``gpuconv train``; returns the exit status."""
    cfg = TrainConfig(model=args.model, backend=args.backend, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                      momentum=args.momentum, schedule=args.schedule, weight_decay=args.weight_decay,
                      seed=args.seed, data=args.data, save=args.save, json=args.json, plot=args.plot,
                      log=args.log, quiet=args.quiet)
    train(cfg)
    return 0
