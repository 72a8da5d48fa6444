"""``gpuconv train``: train a model from the zoo on the bundled digits or on MNIST-style IDX files.

Prints one line per epoch (loss, train/test accuracy, samples/s) to stdout and a progress bar to
stderr (only on a terminal, and not with ``--quiet``). ``--json FILE`` writes the final metrics as
a document following ``METRICS_SCHEMA`` (a JSON Schema; ``validate_metrics`` checks it without
extra dependencies). ``--save`` writes a checkpoint after every epoch and ``--resume`` continues
from one.

Started by an MPI launcher (``mpirun -np 4 gpuconv train ...``) it trains data-parallel
(``gpuconv.distributed``): ``--batch-size`` samples per rank, a global batch of batch size x
ranks taken from the same shuffled order as one process would; logs, progress, checkpoints and
files come from rank 0. A checkpoint resumes on any number of ranks.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, TextIO, Tuple

import numpy as np

from . import datasets, distributed, nn, optim
from .backends import BACKEND_NAMES, cuda_unavailable_reason, resolve_backend, use_backend
from .models import MODEL_NAMES, build_model
from .nn.checkpoint import read_checkpoint

__all__ = ["TrainConfig", "train", "evaluate", "add_parser", "run", "METRICS_SCHEMA", "validate_metrics",
           "DEFAULT_LR"]

SCHEMA_ID = "gpuconv.train.metrics/2"
DEFAULT_LR = {"adam": 2e-3, "sgd": 0.05}
EVAL_BATCH = 1000
SCHEDULES = ("cosine", "constant")

_EPOCH_FIELDS = {"epoch": "integer", "train_loss": "number", "train_accuracy": "number",
                 "test_loss": "number", "test_accuracy": "number", "seconds": "number",
                 "samples_per_second": "number"}
_TOP_FIELDS = {"schema": "string", "model": "string", "backend": "string", "dataset": "string",
               "optimizer": "string", "lr": "number", "batch_size": "integer", "ranks": "integer",
               "seed": "integer",
               "epochs": "integer", "num_parameters": "integer", "train_samples": "integer",
               "test_samples": "integer", "test_accuracy": "number", "test_loss": "number",
               "train_loss": "number", "train_accuracy": "number", "wall_seconds": "number",
               "samples_per_second": "number", "history": "array"}

METRICS_SCHEMA: Dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": SCHEMA_ID,
    "title": "gpuconv train final metrics",
    "description": ("Accuracies are fractions in [0, 1] on the held-out test split; losses are mean "
                    "softmax cross-entropy; train_loss/train_accuracy are averaged over the last "
                    "epoch's training batches (weights changing during the epoch); wall_seconds "
                    "covers data loading, model building, training and evaluation; samples_per_second counts "
                    "training samples over training time only; batch_size is per rank, the global batch "
                    "is batch_size * ranks."),
    "type": "object",
    "required": list(_TOP_FIELDS),
    "properties": {
        **{k: {"type": t} for k, t in _TOP_FIELDS.items()},
        "schema": {"const": SCHEMA_ID},
        "history": {"type": "array", "items": {
            "type": "object", "required": list(_EPOCH_FIELDS),
            "properties": {k: {"type": t} for k, t in _EPOCH_FIELDS.items()}}},
    },
}


def _type_ok(value, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, {"string": str, "array": list}[kind])


def validate_metrics(doc: Dict[str, Any]) -> None:
    """Raise ValueError unless ``doc`` follows METRICS_SCHEMA (required keys, types, ranges)."""
    if not isinstance(doc, dict):
        raise ValueError(f"metrics must be a JSON object, got {type(doc).__name__}")
    for fields, obj, where in [(_TOP_FIELDS, doc, "metrics")] + [
            (_EPOCH_FIELDS, h, f"history[{i}]") for i, h in enumerate(doc.get("history", []))]:
        if not isinstance(obj, dict):
            raise ValueError(f"{where} must be an object")
        for key, kind in fields.items():
            if key not in obj:
                raise ValueError(f"{where} is missing {key!r}")
            if not _type_ok(obj[key], kind):
                raise ValueError(f"{where}[{key!r}] must be a finite {kind}, got {obj[key]!r}")
        for key in ("train_accuracy", "test_accuracy"):
            if not 0.0 <= obj[key] <= 1.0:
                raise ValueError(f"{where}[{key!r}] must lie in [0, 1], got {obj[key]}")
    if doc["schema"] != SCHEMA_ID:
        raise ValueError(f"metrics['schema'] must be {SCHEMA_ID!r}, got {doc['schema']!r}")
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
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    seed: int = 0
    data: Optional[str] = None
    save: Optional[str] = None
    json: Optional[str] = None
    plot: Optional[str] = None
    resume: Optional[str] = None
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
        if not 0 <= self.momentum < 1:
            raise ValueError(f"--momentum must lie in [0, 1), got {self.momentum}")
        if not self.weight_decay >= 0:
            raise ValueError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.seed < 0:
            raise ValueError(f"--seed must be >= 0, got {self.seed}")
        for flag, path in (("--save", self.save), ("--json", self.json), ("--plot", self.plot)):
            if path is not None:
                parent = os.path.dirname(os.path.abspath(path))
                if not os.path.isdir(parent):
                    raise ValueError(f"{flag}: directory {parent!r} does not exist")
        if self.plot is not None:
            try:
                import matplotlib  # noqa: F401
            except ImportError:
                raise ValueError("--plot needs matplotlib, which is not installed "
                                 "(pip install matplotlib, or pip install gpuconv[plot])") from None


class ProgressBar:
    """A plain-text progress bar on one terminal line (nothing when disabled)."""

    def __init__(self, stream: TextIO, enabled: bool, width: int = 30) -> None:
        self.stream, self.enabled, self.width = stream, enabled, width
        self._last = 0.0
        self._shown = False

    def update(self, label: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if not self.enabled or (now - self._last < 0.1 and done < total):
            return
        self._last = now
        filled = int(self.width * done / max(total, 1))
        self.stream.write(f"\r{label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total}")
        self.stream.flush()
        self._shown = True

    def clear(self) -> None:
        if self.enabled and self._shown:
            self.stream.write("\r" + " " * (self.width + 40) + "\r")
            self.stream.flush()
            self._shown = False


def evaluate(model: nn.Module, split: datasets.Split, backend, batch_size: int = EVAL_BATCH,
             comm: Optional[distributed.Communicator] = None) -> Tuple[float, float]:
    """(mean loss, accuracy in [0, 1]) of ``model`` in eval mode over ``split``; with a
    communicator of several ranks, each evaluates its shard of every batch and the sums are
    all-reduced."""
    was_training = model.training
    model.eval()
    loss_fn = nn.SoftmaxCrossEntropy()
    total_loss, correct = 0.0, 0
    shard = (0, 1) if comm is None else (comm.rank, comm.size)
    for xb, yb in datasets.iterate_batches(split.images, split.labels, batch_size, shuffle=False,
                                           shard=shard):
        if not len(yb):
            continue
        logits = model.forward(backend.asarray(xb))
        loss = loss_fn.forward(logits, backend.asarray(yb))
        total_loss += float(backend.to_numpy(loss)) * len(yb)
        correct += int((backend.to_numpy(logits).argmax(axis=1) == yb).sum())
    model.train(was_training)
    if comm is not None:
        total_loss, correct = comm.allreduce(np.array([total_loss, correct], dtype=np.float64))
    return float(total_loss) / len(split), int(correct) / len(split)


def _make_optimizer(cfg: TrainConfig, model: nn.Module) -> optim.Optimizer:
    lr = DEFAULT_LR[cfg.optimizer] if cfg.lr is None else cfg.lr
    if cfg.optimizer == "sgd":
        return optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return optim.Adam(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)


class _Silent:
    """The output stream of ranks other than 0."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def _resume_state(cfg: TrainConfig, meta: Dict[str, Any], dataset: datasets.Dataset) -> Tuple[int, list]:
    """(epochs done, their history) from a checkpoint's meta, checked against this run."""
    where = f"--resume {cfg.resume!r}"
    if not isinstance(meta.get("epoch"), int) or not isinstance(meta.get("history"), list):
        raise ValueError(f"{where}: the checkpoint holds no training state (epoch, history): it was not "
                         f"written by gpuconv train --save")
    for key, want in (("model", cfg.model), ("dataset", dataset.name)):
        if meta.get(key) != want:
            raise ValueError(f"{where}: the checkpoint is of {key} {meta.get(key)!r}, this run's is {want!r}")
    done = meta["epoch"]
    if not 1 <= done < cfg.epochs:
        raise ValueError(f"{where}: the checkpoint has {done} epochs done; --epochs ({cfg.epochs}) must be "
                         f"larger to train on")
    return done, list(meta["history"])


def train(cfg: TrainConfig, out: Optional[TextIO] = None, err: Optional[TextIO] = None) -> Dict[str, Any]:
    """Run one training; return the final metrics (METRICS_SCHEMA) and write --json/--save/--plot.
    Reports go to ``out`` and ``err`` (default: sys.stdout and sys.stderr), from rank 0 only."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    cfg.validate()
    t_start = time.perf_counter()
    backend = resolve_backend(cfg.backend)
    comm = distributed.communicator_for(backend)
    with distributed.abort_on_error(comm):
        lead = comm.rank == 0
        if not lead:
            out = err = _Silent()
        if cfg.backend == "auto":
            reason = cuda_unavailable_reason()
            if reason and not cfg.quiet:
                err.write(f"gpuconv: backend auto -> numpy ({reason})\n")
        dataset = datasets.load_dataset(cfg.data)
        return _train(cfg, comm, backend, dataset, out, err, lead, t_start)


def _train(cfg: TrainConfig, comm: distributed.Communicator, backend, dataset: datasets.Dataset,
           out: TextIO, err: TextIO, lead: bool, t_start: float) -> Dict[str, Any]:
    bar = ProgressBar(err, enabled=not cfg.quiet and err.isatty())
    history: List[Dict[str, Any]] = []
    with use_backend(backend):
        model = build_model(cfg.model, dataset.in_channels, dataset.image_size, dataset.num_classes,
                            seed=cfg.seed)
        opt = _make_optimizer(cfg, model)
        base_lr, first_epoch = opt.lr, 1
        if cfg.resume is not None:
            done, history = _resume_state(cfg, read_checkpoint(cfg.resume)["meta"], dataset)
            meta = nn.load_checkpoint(cfg.resume, model, opt)
            first_epoch = done + 1
            if cfg.lr is None and isinstance(meta.get("lr"), (int, float)):
                base_lr = float(meta["lr"])
            opt.lr = base_lr
        dp = distributed.DataParallel(model, comm)  # rank 0's weights on every rank
        loss_fn = nn.SoftmaxCrossEntropy()
        train_time = 0.0
        n_train = len(dataset.train)
        global_batch = cfg.batch_size * comm.size
        n_batches = -(-n_train // global_batch)
        total_steps, step = cfg.epochs * n_batches, (first_epoch - 1) * n_batches
        meta = {"model": cfg.model, "dataset": dataset.name, "in_channels": dataset.in_channels,
                "image_size": dataset.image_size, "num_classes": dataset.num_classes, "mean": dataset.mean,
                "std": dataset.std, "lr": base_lr, "ranks": comm.size, "batch_size": cfg.batch_size}
        if not cfg.quiet:
            par = (f", data-parallel on {comm.size} ranks ({comm.kind}, global batch {global_batch})"
                   if comm.size > 1 else "")
            out.write(f"training {cfg.model} ({model.num_parameters()} parameters) on {dataset.name} "
                      f"({n_train} train / {len(dataset.test)} test) with backend {backend.describe()}"
                      f"{par}\n")
            if first_epoch > 1:
                out.write(f"resuming from {cfg.resume} after epoch {first_epoch - 1}\n")
        for epoch in range(first_epoch, cfg.epochs + 1):
            model.train()
            t0 = time.perf_counter()
            loss_sum, correct = 0.0, 0
            for i, (xb, yb) in enumerate(datasets.iterate_batches(
                    dataset.train.images, dataset.train.labels, global_batch, shuffle=True,
                    seed=cfg.seed, epoch=epoch, shard=(comm.rank, comm.size))):
                if cfg.schedule == "cosine":
                    opt.lr = base_lr * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
                step += 1
                if len(yb):
                    logits = dp.forward(backend.asarray(xb))
                    loss = loss_fn.forward(logits, backend.asarray(yb))
                    dp.backward(loss_fn.backward(),
                                fraction=len(yb) / min(global_batch, n_train - i * global_batch))
                    loss_sum += float(backend.to_numpy(loss)) * len(yb)
                    correct += int((backend.to_numpy(logits).argmax(axis=1) == yb).sum())
                else:  # a last global batch smaller than the number of ranks
                    dp.backward(None, fraction=0.0)
                opt.step()
                bar.update(f"epoch {epoch}/{cfg.epochs}", i + 1, n_batches)
            backend.synchronize()
            seconds = time.perf_counter() - t0
            train_time += seconds
            bar.clear()
            loss_sum, correct = comm.allreduce(np.array([loss_sum, correct], dtype=np.float64))
            train_loss = float(loss_sum) / n_train
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"training diverged at epoch {epoch} (loss {train_loss}); "
                                         f"try a smaller --lr")
            test_loss, test_acc = evaluate(model, dataset.test, backend, comm=comm)
            rec = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": int(correct) / n_train,
                   "test_loss": test_loss, "test_accuracy": test_acc, "seconds": seconds,
                   "samples_per_second": n_train / seconds}
            history.append(rec)
            if not cfg.quiet:
                out.write(f"epoch {epoch:3d}/{cfg.epochs}  loss {train_loss:.4f}  "
                          f"train acc {100 * rec['train_accuracy']:6.2f}%  "
                          f"test acc {100 * test_acc:6.2f}%  test loss {test_loss:.4f}  "
                          f"{rec['samples_per_second']:8.0f} samples/s\n")
                out.flush()
            if cfg.save is not None and lead and epoch < cfg.epochs:
                nn.save_checkpoint(cfg.save, model, opt, meta=dict(meta, epoch=epoch, history=history))
        last = history[-1]
        metrics: Dict[str, Any] = {
            "schema": SCHEMA_ID, "model": cfg.model, "backend": backend.name, "dataset": dataset.name,
            "optimizer": cfg.optimizer, "lr": base_lr, "batch_size": cfg.batch_size, "ranks": comm.size,
            "seed": cfg.seed, "epochs": cfg.epochs, "num_parameters": model.num_parameters(),
            "train_samples": n_train, "test_samples": len(dataset.test),
            "test_accuracy": last["test_accuracy"], "test_loss": last["test_loss"],
            "train_loss": last["train_loss"], "train_accuracy": last["train_accuracy"],
            "wall_seconds": time.perf_counter() - t_start,
            "samples_per_second": n_train * (cfg.epochs - first_epoch + 1) / train_time, "history": history}
        if cfg.save is not None and lead:
            summary = {k: v for k, v in metrics.items() if k != "history"}
            nn.save_checkpoint(cfg.save, model, opt,
                               meta=dict(meta, epoch=cfg.epochs, history=history, metrics=summary))
    validate_metrics(metrics)
    if not lead:
        return metrics
    if cfg.json is not None:
        with open(cfg.json, "w", encoding="utf-8") as f:
            json.dump(metrics, f, indent=2)
            f.write("\n")
    if cfg.plot is not None:
        plot_history(history, cfg.plot, title=f"{cfg.model} on {dataset.name} ({backend.name})")
    if not cfg.quiet:
        out.write(f"test accuracy {100 * metrics['test_accuracy']:.2f}%  test loss "
                  f"{metrics['test_loss']:.4f}  wall {metrics['wall_seconds']:.1f} s  "
                  f"{metrics['samples_per_second']:.0f} samples/s\n")
    return metrics


def plot_history(history: List[Dict[str, Any]], path: str, title: str) -> None:
    """Loss and accuracy curves per epoch to an image file (needs matplotlib)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax_loss.plot(epochs, [h["test_loss"] for h in history], label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.plot(epochs, [100 * h["train_accuracy"] for h in history], label="train")
    ax_acc.plot(epochs, [100 * h["test_accuracy"] for h in history], label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``train`` on an argparse subparsers object."""
    d = TrainConfig()
    p = subparsers.add_parser(
        "train", help="train a CNN (default: LeNet on the bundled 8x8 digits)",
        description="Train a model from the zoo on the bundled digits (default) or on MNIST-style IDX "
                    "files, printing one line per epoch.")
    p.add_argument("--model", choices=MODEL_NAMES, default=d.model, help="architecture (default %(default)s)")
    p.add_argument("--backend", choices=BACKEND_NAMES + ("auto",), default=d.backend,
                   help="where to run; auto = cuda when a GPU is usable, else numpy (default %(default)s)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="default %(default)s")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="default %(default)s")
    p.add_argument("--optimizer", choices=optim.OPTIMIZER_NAMES, default=d.optimizer,
                   help="default %(default)s")
    p.add_argument("--lr", type=float, default=None,
                   help=f"learning rate (default {DEFAULT_LR['adam']} for adam, {DEFAULT_LR['sgd']} for sgd)")
    p.add_argument("--schedule", choices=SCHEDULES, default=d.schedule,
                   help="learning-rate schedule: cosine decay to 0 over the run, or constant "
                        "(default %(default)s)")
    p.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum (default %(default)s)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="L2 weight decay (default 0)")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seeds weights, data split and shuffling (default %(default)s)")
    p.add_argument("--data", metavar="DIR", default=None,
                   help="directory with MNIST/Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz], "
                        "train-labels-idx1-ubyte[.gz], t10k-...); default: the bundled 8x8 digits")
    p.add_argument("--save", metavar="PATH", default=None,
                   help="write a checkpoint (.npz) after every epoch (rank 0 under MPI)")
    p.add_argument("--resume", metavar="PATH", default=None,
                   help="continue the run saved in this checkpoint (on any number of ranks) up to --epochs; "
                        "same model and data, the same global batch (ranks x --batch-size) to repeat it")
    p.add_argument("--json", metavar="FILE", default=None,
                   help=f"write the final metrics as JSON (schema {SCHEMA_ID})")
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="write training curves (needs matplotlib)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch lines")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Entry point of ``gpuconv train``; returns the exit status."""
    cfg = TrainConfig(model=args.model, backend=args.backend, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                      momentum=args.momentum, schedule=args.schedule, weight_decay=args.weight_decay,
                      seed=args.seed, data=args.data, save=args.save, json=args.json, plot=args.plot,
                      resume=args.resume, quiet=args.quiet)
    train(cfg)
    return 0
