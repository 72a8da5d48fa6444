"""``gpuconv train``: train a model from the zoo on the bundled digits, MNIST-style IDX files or
CIFAR-10/100 (``gpuconv.datasets.load_dataset`` detects which a ``--data`` directory holds).

Prints one line per epoch (loss, train/test accuracy, samples/s) to stdout and the progress of
the epoch to stderr (``gpuconv.tools.progress``: a live bar on a terminal, a plain line now and
then elsewhere, nothing with ``--quiet``); ``--log FILE`` appends the same lines to a file.
``--json FILE`` writes the final metrics as a document following ``METRICS_SCHEMA`` (a JSON
Schema, checked by ``validate_metrics``).

``--save CKPT`` writes a checkpoint at the end of every epoch (``gpuconv.nn.save_checkpoint``:
model, optimizer, learning-rate schedule, epochs done, data-order seed, dropout generators, and
the run's settings and history in ``meta``). ``--resume CKPT`` continues that run where it stopped,
so training 2 epochs and resuming for 2 more gives the weights of 4 epochs straight, bit for bit;
``--stop-after N`` ends an invocation after epoch N of a longer run (the schedule still spans
``--epochs``).

Started by an MPI launcher (``mpirun -np 4 gpuconv train ...``) it trains data-parallel
(``gpuconv.distributed``, docs/distributed.md): each rank takes its share of every global batch of
``--batch-size`` samples, cut from the order one process would use, so the run and its checkpoints
do not depend on the number of ranks (a run resumes on any number); logs, progress, checkpoints
and files come from rank 0, and an error on any rank ends the job.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass, fields
from typing import Any, Dict, List, Optional, TextIO, Tuple

import numpy as np

from .. import datasets, distributed, fileio, nn, optim, schedules
from ..backends import BACKEND_NAMES, auto_choice, resolve_backend, use_backend
from ..models import MODEL_NAMES, build_model
from ..train_step import TrainStep
from . import plots, report
from .harness import INTEGER, NUMBER, STRING, document, list_of, record, validate, value, write_json
from .progress import Reporter

__all__ = ["TrainConfig", "train", "evaluate", "make_schedule", "add_parser", "run", "METRICS_SCHEMA",
           "validate_metrics", "DEFAULT_LR", "RUN_SETTINGS"]

SCHEMA_ID = "gpuconv-train/1"
DEFAULT_LR = {"adam": 2e-3, "sgd": 0.05}
EVAL_BATCH = 1000
EVAL_PIXELS = EVAL_BATCH * 28 * 28  # evaluation batches hold at most this many input values...
SCHEDULES = ("cosine", "constant", "step")

_FRACTION = value("number", minimum=0.0, maximum=1.0)
_EPOCH = record({"epoch": INTEGER, "train_loss": NUMBER, "train_accuracy": _FRACTION, "test_loss": NUMBER,
                 "test_accuracy": _FRACTION, "seconds": NUMBER, "samples_per_second": NUMBER})

METRICS_SCHEMA: Dict[str, Any] = document(SCHEMA_ID, {
    "environment": report.ENVIRONMENT_SCHEMA,
    "model": STRING, "backend": STRING, "dataset": STRING, "optimizer": STRING, "lr": NUMBER,
    "batch_size": INTEGER, "ranks": INTEGER, "seed": INTEGER, "epochs": INTEGER, "num_parameters": INTEGER,
    "train_samples": INTEGER, "test_samples": INTEGER, "test_accuracy": _FRACTION, "test_loss": NUMBER,
    "train_loss": NUMBER, "train_accuracy": _FRACTION, "wall_seconds": NUMBER, "samples_per_second": NUMBER,
    "history": list_of(_EPOCH),
}, title="gpuconv train final metrics",
    description=("Accuracies are fractions in [0, 1] on the held-out test split; losses are mean "
                 "softmax cross-entropy; train_loss/train_accuracy are averaged over the last "
                 "epoch's training batches (weights changing during the epoch); wall_seconds "
                 "covers data loading, model building, training and evaluation; samples_per_second "
                 "counts training samples over training time only; history has one entry per epoch; "
                 "batch_size is the global batch, shared by the data-parallel ranks."))


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
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_epochs: int = 0
    lr_step_epochs: Optional[int] = None
    lr_gamma: float = 0.1
    seed: int = 0
    data: Optional[str] = None
    num_classes: Optional[int] = None
    save: Optional[str] = None
    json: Optional[str] = None
    plot: Optional[str] = None
    log: Optional[str] = None
    quiet: bool = False
    resume: Optional[str] = None
    stop_after: Optional[int] = None
    graph: Optional[bool] = None  # None: captured steps on cuda only (``graphed``)

    @classmethod
    def resuming(cls, path: str, **overrides: Any) -> TrainConfig:
        """The settings of the run checkpointed at ``path``, continuing it: ``overrides`` may set
        where and how it runs (backend, data directory, outputs, ``stop_after``, and ``epochs``
        when the schedule has no fixed length), and must equal the checkpoint's other settings."""
        saved = _saved_settings(nn.read_checkpoint(path, arrays=False))
        for key, given in overrides.items():
            if key in RUN_SETTINGS and key not in ("epochs", "data") and given != saved[key]:
                raise ValueError(f"--{key.replace('_', '-')} cannot change on --resume: the run in "
                                 f"{path} uses {saved[key]!r}, not {given!r}")
        settings = dict(saved, save=path)
        settings.update(overrides)
        return cls(**settings, resume=path)

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
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"--warmup-epochs must lie in [0, --epochs={self.epochs}), got "
                             f"{self.warmup_epochs}")
        if self.lr_step_epochs is not None and self.lr_step_epochs < 1:
            raise ValueError(f"--lr-step-epochs must be >= 1, got {self.lr_step_epochs}")
        if not 0 < self.lr_gamma <= 1:
            raise ValueError(f"--lr-gamma must lie in (0, 1], got {self.lr_gamma}")
        if self.num_classes is not None and self.num_classes < 2:
            raise ValueError(f"--num-classes must be >= 2, got {self.num_classes}")
        if self.stop_after is not None and not 1 <= self.stop_after <= self.epochs:
            raise ValueError(f"--stop-after must lie in [1, --epochs={self.epochs}], got {self.stop_after}")
        if self.stop_after is not None and self.save is None:
            raise ValueError("--stop-after ends a run early to continue it with --resume, which needs the "
                             "checkpoint that --save CKPT writes")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"--lr must be a positive number, got {self.lr}")
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
                target = fileio.check_writable(path, flag)  # links followed: the file written
                same = [f for f, p in outputs.items() if p == target]
                if same:
                    raise ValueError(f"{same[0]} and {flag} name the same file {path!r}")
                outputs[flag] = target
        if self.graph and self.backend not in ("cuda", "emulator", "auto"):
            raise ValueError(f"--graph needs the cuda or emulator backend, not {self.backend}")
        if self.plot is not None:
            plots.require_matplotlib()
            fileio.figure_format(self.plot, "--plot")


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


def graphed(cfg: TrainConfig, backend_name: str) -> bool:
    """Whether training steps are captured and replayed: ``--graph``/``--eager`` when given, else
    on the cuda backend only."""
    return backend_name == "cuda" if cfg.graph is None else cfg.graph


def _train_step(cfg: TrainConfig, model: nn.Module, opt: optim.Optimizer, backend,
                rep: Reporter) -> TrainStep:
    """The step of a one-rank run. On the emulator a graph is a test of graph safety: every replay
    is checked against a trace of the step and any failure raises; on a GPU a failure falls back to
    eager steps with a warning."""
    on_emulator = backend.name == "emulator"
    return TrainStep(model, opt, backend, graph=graphed(cfg, backend.name), check=on_emulator,
                     strict=on_emulator, warn=rep.note)


def _make_optimizer(cfg: TrainConfig, model: nn.Module) -> optim.Optimizer:
    lr = DEFAULT_LR[cfg.optimizer] if cfg.lr is None else cfg.lr
    if cfg.optimizer == "sgd":
        return optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return optim.Adam(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)


def make_schedule(cfg: TrainConfig, opt: optim.Optimizer, steps_per_epoch: int) -> schedules.Schedule:
    """The learning-rate schedule of ``cfg`` in optimizer steps: ``--warmup-epochs`` of linear
    warm-up, then cosine decay to 0 over the remaining epochs, a constant rate, or the rate times
    ``--lr-gamma`` every ``--lr-step-epochs`` (default a third of ``--epochs``)."""
    warmup = cfg.warmup_epochs * steps_per_epoch
    if cfg.schedule == "cosine":
        after: schedules.Schedule = schedules.Cosine(opt, total_steps=cfg.epochs * steps_per_epoch - warmup)
    elif cfg.schedule == "step":
        after = schedules.StepDecay(opt, step_size=_step_epochs(cfg) * steps_per_epoch, gamma=cfg.lr_gamma)
    else:
        after = schedules.Constant(opt)
    return schedules.LinearWarmup(opt, warmup, then=after) if warmup else after


def _step_epochs(cfg: TrainConfig) -> int:
    return cfg.lr_step_epochs or max(1, cfg.epochs // 3)


# The settings that define a run (a checkpoint keeps them; --resume takes them from it).
RUN_SETTINGS = ("model", "epochs", "batch_size", "lr", "optimizer", "momentum", "weight_decay", "schedule",
                "warmup_epochs", "lr_step_epochs", "lr_gamma", "seed", "data", "num_classes")


def _saved_settings(ckpt: Dict[str, Any]) -> Dict[str, Any]:
    settings = ckpt["meta"].get("settings")
    if ckpt["epoch"] is None or not isinstance(settings, dict) or set(settings) != set(RUN_SETTINGS):
        raise ValueError(f"checkpoint {ckpt['path']} holds no resumable training run (write one with "
                         f"gpuconv train --save)")
    return settings


def _check_resumable(cfg: TrainConfig, ckpt: Dict[str, Any], schedule: schedules.Schedule) -> None:
    saved = _saved_settings(ckpt)
    for key in RUN_SETTINGS:
        if key not in ("epochs", "data") and getattr(cfg, key) != saved[key]:
            raise ValueError(f"--{key.replace('_', '-')} is {getattr(cfg, key)!r} but the run in "
                             f"{cfg.resume} uses {saved[key]!r}")
    if cfg.epochs != saved["epochs"] and schedule.horizon is not None:
        raise ValueError(f"--epochs cannot change on --resume with the {cfg.schedule} schedule: it spans "
                         f"the run's {saved['epochs']} epochs (use --stop-after to end a run early)")
    done = ckpt["epoch"]
    if done >= (cfg.stop_after or cfg.epochs):
        raise ValueError(f"the run in {cfg.resume} has already done {done} of {cfg.epochs} epochs; "
                         f"nothing to resume" + ("" if schedule.horizon is not None else
                                                 " (pass a larger --epochs to train on)"))


def _check_data_fits(meta: Dict[str, Any], dataset: datasets.Dataset, where: str) -> None:
    mine = {"in_channels": dataset.in_channels, "image_size": dataset.image_size,
            "num_classes": dataset.num_classes}
    theirs = {k: meta.get(k) for k in mine}
    if mine != theirs:
        raise ValueError(f"the data ({dataset.name}: {mine}) does not fit the model in {where} ({theirs})")


def _announce_backend(cfg: TrainConfig, rep: Reporter) -> None:
    if cfg.backend == "auto":
        name, why = auto_choice()
        if name != "cuda":
            rep.note(f"gpuconv: backend auto -> {name} ({why})")


def train(cfg: TrainConfig, out: Optional[TextIO] = None, err: Optional[TextIO] = None) -> Dict[str, Any]:
    """Run one training (or continue one: ``cfg.resume``); return the final metrics
    (METRICS_SCHEMA) and write --json/--save/--plot. Reports go to ``out`` and ``err`` (default:
    sys.stdout and sys.stderr) and to the --log file, from rank 0 when an MPI launcher started
    several ranks (data-parallel: ``cfg.batch_size`` is the global batch, shared by the ranks)."""
    cfg.validate()
    t_start = time.perf_counter()
    backend = resolve_backend(cfg.backend)
    comm = distributed.communicator_for(backend)  # before any array is placed: it picks the GPU
    with distributed.abort_on_error(comm), contextlib.ExitStack() as stack:
        if cfg.batch_size < comm.size:
            raise ValueError(f"--batch-size ({cfg.batch_size}) is the global batch: it must be at least "
                             f"the number of ranks ({comm.size})")
        lead = comm.rank == 0
        log = (stack.enter_context(open(cfg.log, "a", encoding="utf-8"))
               if cfg.log is not None and lead else None)
        reporter = Reporter(sys.stdout if out is None else out, sys.stderr if err is None else err,
                            quiet=cfg.quiet or not lead, log=log)
        return _train(cfg, comm, backend, reporter, t_start)


def _train(cfg: TrainConfig, comm: distributed.Communicator, backend, rep: Reporter,
           t_start: float) -> Dict[str, Any]:
    lead = comm.rank == 0
    env = report.environment()
    ckpt = None if cfg.resume is None else nn.read_checkpoint(cfg.resume, arrays=False)
    _announce_backend(cfg, rep)
    dataset = datasets.load_dataset(cfg.data, num_classes=cfg.num_classes, seed=cfg.seed)
    history: List[Dict[str, Any]] = []
    with use_backend(backend):
        model = build_model(cfg.model, dataset.in_channels, dataset.image_size, dataset.num_classes,
                            seed=cfg.seed)
        opt = _make_optimizer(cfg, model)
        loss_fn = nn.SoftmaxCrossEntropy()
        train_time = 0.0
        n_train = len(dataset.train)
        n_batches = -(-n_train // cfg.batch_size)
        schedule = make_schedule(cfg, opt, n_batches)
        base_lr, first = schedule.base_lr, 1
        if ckpt is not None:
            _check_resumable(cfg, ckpt, schedule)
            _check_data_fits(ckpt["meta"], dataset, cfg.resume)
            nn.load_checkpoint(cfg.resume, model, opt, schedule)  # arrays checked before read
            history, first = list(ckpt["meta"]["history"]), ckpt["epoch"] + 1
        dp = distributed.DataParallel(model, comm)  # rank 0's weights on every rank
        stepper = None if comm.size > 1 else _train_step(cfg, model, opt, backend, rep)
        last_epoch = cfg.stop_after or cfg.epochs
        ranks = f", data-parallel on {comm.size} ranks ({comm.kind})" if comm.size > 1 else ""
        rep.say(f"{'resuming' if ckpt else 'training'} {cfg.model} ({model.num_parameters()} "
                f"parameters) on {dataset.name} ({n_train} train / {len(dataset.test)} test) with "
                f"backend {backend.describe()}{ranks}" + (f" at epoch {first}" if ckpt else ""))
        for epoch in range(first, last_epoch + 1):
            model.train()
            t0 = time.perf_counter()
            loss_sum, correct, seen = 0.0, 0, 0
            with rep.task(f"epoch {epoch}/{cfg.epochs}", n_train) as progress:
                for i, (xb, yb) in enumerate(datasets.iterate_batches(
                        dataset.train.images, dataset.train.labels, cfg.batch_size, shuffle=True,
                        seed=cfg.seed, epoch=epoch, shard=(comm.rank, comm.size))):
                    step_samples = min(cfg.batch_size, n_train - i * cfg.batch_size)  # all ranks'
                    if stepper is not None:  # one rank: eager or a replayed graph
                        loss, logits = stepper(xb, yb)
                    elif len(yb):
                        logits = dp.forward(backend.asarray(xb))
                        loss = loss_fn.forward(logits, backend.asarray(yb))
                        dp.backward(loss_fn.backward(), fraction=len(yb) / step_samples)
                    else:  # a last batch smaller than the number of ranks
                        dp.backward(None, fraction=0.0)
                    if len(yb):
                        loss_sum += float(backend.to_numpy(loss)) * len(yb)
                        correct += int((backend.to_numpy(logits).argmax(axis=1) == yb).sum())
                        seen += len(yb)
                    if stepper is None:
                        opt.step()
                    schedule.step()
                    progress.update(step_samples, loss_sum / max(seen, 1))
                backend.synchronize()
            seconds = time.perf_counter() - t0
            train_time += seconds
            loss_sum, correct = comm.allreduce(np.array([loss_sum, correct], dtype=np.float64))
            train_loss = float(loss_sum) / n_train
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"training diverged at epoch {epoch} (loss {train_loss}); "
                                         f"try a smaller --lr")
            # ...or --batch-size images, when larger ones would not fit that many.
            eval_batch = min(EVAL_BATCH, max(cfg.batch_size, EVAL_PIXELS // dataset.train.images[0].size))
            test_loss, test_acc = evaluate(model, dataset.test, backend, eval_batch, comm=comm)
            rec = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": int(correct) / n_train,
                   "test_loss": test_loss, "test_accuracy": test_acc, "seconds": seconds,
                   "samples_per_second": n_train / seconds}
            history.append(rec)
            rep.say(f"epoch {epoch:3d}/{cfg.epochs}  loss {train_loss:.4f}  "
                    f"train acc {100 * rec['train_accuracy']:6.2f}%  "
                    f"test acc {100 * test_acc:6.2f}%  test loss {test_loss:.4f}  "
                    f"{rec['samples_per_second']:8.0f} samples/s")
            if cfg.save is not None and lead:
                nn.save_checkpoint(cfg.save, model, opt, schedule, epoch=epoch, data_seed=cfg.seed,
                                   meta=_checkpoint_meta(cfg, dataset, history, backend.name))
        last = history[-1]
        metrics: Dict[str, Any] = {
            "schema": SCHEMA_ID, "environment": env, "model": cfg.model, "backend": backend.name,
            "dataset": dataset.name,
            "optimizer": cfg.optimizer, "lr": base_lr, "batch_size": cfg.batch_size, "ranks": comm.size,
            "seed": cfg.seed, "epochs": len(history), "num_parameters": model.num_parameters(),
            "train_samples": n_train, "test_samples": len(dataset.test),
            "test_accuracy": last["test_accuracy"], "test_loss": last["test_loss"],
            "train_loss": last["train_loss"], "train_accuracy": last["train_accuracy"],
            "wall_seconds": time.perf_counter() - t_start,
            "samples_per_second": n_train * (last_epoch - first + 1) / train_time, "history": history}
    validate_metrics(metrics)
    if not lead:
        return metrics
    if cfg.json is not None:
        write_json(cfg.json, metrics, METRICS_SCHEMA)
    if cfg.plot is not None:
        plots.training_curves(history, cfg.plot, title=f"{cfg.model} on {dataset.name} ({backend.name})")
    rep.say(f"test accuracy {100 * metrics['test_accuracy']:.2f}%  test loss "
            f"{metrics['test_loss']:.4f}  wall {metrics['wall_seconds']:.1f} s  "
            f"{metrics['samples_per_second']:.0f} samples/s")
    return metrics


def _checkpoint_meta(cfg: TrainConfig, dataset: datasets.Dataset, history: List[Dict[str, Any]],
                     backend: str) -> Dict[str, Any]:
    """What ``eval``, ``predict`` and ``--resume`` need besides the arrays: the model's input
    (shape, classes, the standardisation of raw pixels), the run's settings and its history."""
    settings = {k: getattr(cfg, k) for k in RUN_SETTINGS}
    settings["data"] = None if cfg.data is None else os.path.abspath(cfg.data)
    settings["lr"] = DEFAULT_LR[cfg.optimizer] if cfg.lr is None else cfg.lr     # defaults resolved,
    settings["lr_step_epochs"] = _step_epochs(cfg)                                 # so --epochs may grow
    return {"model": cfg.model, "in_channels": dataset.in_channels, "image_size": dataset.image_size,
            "num_classes": dataset.num_classes, "pixel_scale": dataset.scale, "mean": dataset.mean,
            "std": dataset.std, "dataset": dataset.name, "backend": backend, "settings": settings,
            "history": history, "metrics": history[-1]}


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``train`` on an argparse subparsers object."""
    d = TrainConfig()
    p = subparsers.add_parser(
        "train", help="train a CNN (default: LeNet on the bundled 8x8 digits)",
        description="Train a model from the zoo on the bundled 8x8 digits (default), MNIST-style IDX "
                    "files or CIFAR-10/100, or continue a run with --resume. Prints one line per epoch, "
                    "and the progress of the epoch: a live bar with rate, time left and running loss "
                    "on a terminal, a plain line at most every 10 s and 10% of an epoch when standard "
                    "error is not a terminal.")
    # Run settings default to None here so that --resume can tell which ones were given.
    p.add_argument("--model", choices=MODEL_NAMES, default=None, help=f"architecture (default {d.model})")
    p.add_argument("--backend", choices=BACKEND_NAMES + ("auto",), default=d.backend,
                   help="where to run; auto = $GPUCONV_BACKEND when set, else cuda when a GPU is usable, "
                        "else numpy (default %(default)s)")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"length of the run in passes over the training set (default {d.epochs})")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"images per training step; under MPI the global batch, shared by the ranks "
                        f"(default {d.batch_size})")
    p.add_argument("--optimizer", choices=optim.OPTIMIZER_NAMES, default=None,
                   help=f"how the weights are updated: sgd (with momentum) or adam (default {d.optimizer})")
    p.add_argument("--lr", type=float, default=None,
                   help=f"base learning rate (default {DEFAULT_LR['adam']} for adam, {DEFAULT_LR['sgd']} "
                        f"for sgd)")
    p.add_argument("--schedule", choices=SCHEDULES, default=None,
                   help=f"learning rate after the warm-up: cosine decay to 0 at the last step, constant, "
                        f"or step decay (default {d.schedule})")
    p.add_argument("--warmup-epochs", type=int, default=None, metavar="N",
                   help=f"linear warm-up: the rate rises in equal steps to lr over the first N epochs "
                        f"(default {d.warmup_epochs})")
    p.add_argument("--lr-step-epochs", type=int, default=None, metavar="N",
                   help="with --schedule step: multiply the rate by --lr-gamma every N epochs (default a "
                        "third of --epochs)")
    p.add_argument("--lr-gamma", type=float, default=None,
                   help=f"with --schedule step: the factor (default {d.lr_gamma})")
    p.add_argument("--momentum", type=float, default=None,
                   help=f"momentum of --optimizer sgd, in [0, 1) (default {d.momentum}; refused with adam)")
    p.add_argument("--weight-decay", type=float, default=None,
                   help=f"L2 weight decay added to every gradient (default {d.weight_decay})")
    p.add_argument("--seed", type=int, default=None,
                   help=f"seeds the initial weights, the order of the training images in every epoch "
                        f"and, for the bundled digits, which images form the test set (IDX and CIFAR "
                        f"files come split) (default {d.seed})")
    p.add_argument("--data", metavar="DIR", default=None,
                   help="directory with MNIST-style IDX files (train-images-idx3-ubyte or "
                        "train-images.idx3-ubyte, train-labels..., t10k-... or test-..., gzip or not; also "
                        "in raw/ or torchvision's MNIST/raw) or CIFAR-10/100 (python or binary version) "
                        "(default: the bundled 8x8 digits, 1438 train / 359 test)")
    p.add_argument("--num-classes", type=int, default=None, metavar="N",
                   help="output classes (default: from the labels)")
    p.add_argument("--save", metavar="CKPT", default=None,
                   help="write a checkpoint (.npz) after every epoch (default: none; with --resume: CKPT)")
    p.add_argument("--resume", metavar="CKPT", default=None,
                   help="continue the run saved in CKPT, with its settings; --epochs may grow only with "
                        "a constant or step schedule (default: a new run)")
    p.add_argument("--stop-after", type=int, default=None, metavar="EPOCH",
                   help="end this invocation after epoch EPOCH of the run, to continue with --resume "
                        "(default: run to the end)")
    p.add_argument("--json", metavar="FILE", default=None,
                   help=f"write the final metrics, every epoch and the environment as JSON, schema "
                        f"{SCHEMA_ID} (default: not written)")
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="draw loss and accuracy per epoch to this image; needs matplotlib "
                        "(default: not drawn)")
    p.add_argument("--log", metavar="FILE", default=None,
                   help="append the printed lines and a plain progress line at most every 10 s and 10%% "
                        "of an epoch to this file, even with --quiet (default: no log)")
    graph = p.add_mutually_exclusive_group()
    graph.add_argument("--eager", dest="graph", action="store_false", default=None,
                       help="run every training step from Python (default on numpy and the emulator)")
    graph.add_argument("--graph", dest="graph", action="store_true", default=None,
                       help="capture the training step once and replay it (a CUDA graph; default on cuda, "
                            "where a capture or a first replay that fails falls back to eager steps with a "
                            "warning). On the emulator every replay is checked for graph-unsafe code, "
                            "which raises (docs/graphs.md)")
    p.add_argument("--quiet", action="store_true",
                   help="print nothing but errors: no progress and no per-epoch lines (default: off)")
    p.set_defaults(func=run)
    return p


# Options that only one choice of another option uses: given with any other, they are refused.
_ONLY_WITH = {"momentum": ("optimizer", "sgd"), "lr_step_epochs": ("schedule", "step"),
              "lr_gamma": ("schedule", "step")}


def run(args: argparse.Namespace) -> int:
    """Entry point of ``gpuconv train``; returns the exit status."""
    names = {f.name for f in fields(TrainConfig)} - {"resume"}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    cfg = TrainConfig.resuming(args.resume, **given) if args.resume else TrainConfig(**given)
    for name, (other, needed) in _ONLY_WITH.items():
        if name in given and getattr(cfg, other) != needed:
            raise ValueError(f"--{name.replace('_', '-')} applies to --{other} {needed} only, not "
                             f"{getattr(cfg, other)}")
    train(cfg)
    return 0
