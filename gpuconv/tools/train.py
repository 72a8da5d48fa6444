"""``gpuconv train``: train a model from the zoo on the bundled digits, MNIST-style IDX files or
CIFAR-10/100 (``gpuconv.datasets.load_dataset`` detects which a ``--data`` directory holds).

Prints one line per epoch (loss, train/test accuracy, samples/s) to stdout and the progress of
the epoch to stderr (``gpuconv.tools.progress``: a live bar on a terminal, a plain line now and
then elsewhere, nothing with ``--quiet``); ``--log FILE`` appends the same lines to a file.
``--json FILE`` writes the final metrics as a document following ``METRICS_SCHEMA`` (a JSON
Schema, checked by ``validate_metrics``).

The run starts from a training recipe (``gpuconv.recipes``): the one of its model and data
(``--recipe auto``, e.g. He et al.'s for ``--model resnet20`` on CIFAR) or the one ``--recipe``
names; each flag overrides one of its values. The recipe in effect is printed at the start and
kept in the ``--json`` document and the checkpoints. Training images are augmented on the device
batch by batch (``F.augment``, each image's draws from the seed, the epoch and its index).

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

from .. import backends, datasets, distributed, fileio, nn, recipes, schedules
from ..backends import BACKEND_NAMES, auto_choice, resolve_backend, use_backend
from ..models import MODEL_NAMES, build_model
from ..train_step import TrainStep
from . import plots, report
from .harness import (
    INTEGER,
    NUMBER,
    OBJECT,
    STRING,
    add_allow_tf32,
    document,
    list_of,
    record,
    validate,
    value,
    write_json,
)
from .progress import Reporter

__all__ = ["TrainConfig", "train", "evaluate", "add_parser", "run", "METRICS_SCHEMA",
           "validate_metrics", "DEFAULT_LR", "RUN_SETTINGS"]

SCHEMA_ID = "gpuconv-train/1"
DEFAULT_LR = recipes.DEFAULT_LR
EVAL_BATCH = 1000
EVAL_PIXELS = EVAL_BATCH * 28 * 28  # evaluation batches hold at most this many input values...
SCHEDULES = recipes.SCHEDULES

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
    "recipe": record({"name": STRING, "summary": STRING, "expected": STRING, "settings": OBJECT,
                      "overrides": list_of(STRING)}),
}, title="gpuconv train final metrics",
    description=("Accuracies are fractions in [0, 1] on the held-out test split; losses are mean "
                 "softmax cross-entropy; train_loss/train_accuracy are averaged over the last "
                 "epoch's training batches (weights changing during the epoch); wall_seconds "
                 "covers data loading, model building, training and evaluation; samples_per_second "
                 "counts training samples over training time only; history has one entry per epoch; "
                 "batch_size is the global batch, shared by the data-parallel ranks; recipe is the "
                 "training recipe in effect: its name, its settings after the flags' overrides, and "
                 "the flags that changed it."))


def validate_metrics(doc: Dict[str, Any]) -> None:
    """Raise ValueError unless ``doc`` follows METRICS_SCHEMA and has one history entry per epoch."""
    validate(doc, METRICS_SCHEMA, "metrics")
    if len(doc["history"]) != doc["epochs"]:
        raise ValueError(f"metrics has {len(doc['history'])} history entries for {doc['epochs']} epochs")


@dataclass
class TrainConfig:
    """Settings of one training run (the CLI's flags). The training settings left None take the
    values of the recipe (``recipe``: a name of ``gpuconv.recipes.RECIPES`` or "auto", the recipe
    of the model and data); ``resolved()`` fills them in."""

    model: Optional[str] = None
    backend: str = "auto"
    recipe: str = "auto"
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    optimizer: Optional[str] = None
    momentum: Optional[float] = None
    nesterov: Optional[bool] = None
    weight_decay: Optional[float] = None
    decay_bn_bias: Optional[bool] = None
    schedule: Optional[str] = None
    warmup_epochs: Optional[int] = None
    lr_milestones: Optional[Tuple[int, ...]] = None
    lr_step_epochs: Optional[int] = None
    lr_gamma: Optional[float] = None
    label_smoothing: Optional[float] = None
    augment: Optional[str] = None
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

    def base_recipe(self) -> recipes.Recipe:
        """The recipe this run starts from: ``recipe`` by name, or for "auto" the recipe of the
        model (default lenet) on the data (``--data``'s kind, found without reading it)."""
        if self.recipe != "auto":
            if self.recipe not in recipes.RECIPES:
                raise ValueError(f"--recipe must be one of {', '.join(recipes.RECIPE_NAMES)}, auto; got "
                                 f"{self.recipe!r}")
            return recipes.RECIPES[self.recipe]
        kind = ("digits" if self.data is None else
                "idx" if datasets.detect_format(self.data) == "idx" else "cifar")
        return recipes.recipe_for(self.model or "lenet", kind)

    def resolved(self) -> TrainConfig:
        """These settings with every training setting left None taken from the recipe, and
        ``recipe`` its name. An optimizer other than the recipe's brings its own default rate
        (``DEFAULT_LR``). A step schedule divides the rate by ``lr_gamma`` after the epochs
        ``lr_milestones`` or every ``lr_step_epochs`` (one of them given replaces the recipe's
        other; neither: every third of the run); other schedules have neither."""
        base = self.base_recipe()
        out = {k: getattr(self, k) for k in recipes.Recipe.SETTINGS}
        if out["lr"] is None and out["optimizer"] not in (None, base.optimizer):
            out["lr"] = DEFAULT_LR.get(out["optimizer"])  # None for an unknown one: validate() says so
        out = {k: (getattr(base, k) if v is None else v) for k, v in out.items()}
        if self.lr_milestones is not None:
            out["lr_step_epochs"] = None
        elif self.lr_step_epochs is not None:
            out["lr_milestones"] = None
        if out["schedule"] != "step":
            out["lr_milestones"] = out["lr_step_epochs"] = None
        elif out["lr_milestones"] is None and out["lr_step_epochs"] is None:
            out["lr_step_epochs"] = max(1, out["epochs"] // 3)
        if out["lr_milestones"] is not None:
            out["lr_milestones"] = tuple(out["lr_milestones"])
        out["augment"] = str(recipes.Augment.parse(out["augment"], "--augment"))
        settings = {f.name: getattr(self, f.name) for f in fields(self)}
        settings.update(out, recipe=base.name)
        return TrainConfig(**settings)

    def recipe_in_effect(self) -> recipes.Recipe:
        """The recipe with this (resolved) run's settings."""
        return self.base_recipe().with_settings(**{k: getattr(self, k) for k in recipes.Recipe.SETTINGS})

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
        """Raise ValueError naming the flag of the first bad setting (of a resolved config)."""
        if self.model not in MODEL_NAMES:
            raise ValueError(f"--model must be one of {', '.join(MODEL_NAMES)}, got {self.model!r}")
        if self.backend not in BACKEND_NAMES + ("auto",):
            raise ValueError(f"--backend must be one of {', '.join(BACKEND_NAMES)}, auto; "
                             f"got {self.backend!r}")
        if self.optimizer not in recipes.OPTIMIZERS:
            raise ValueError(f"--optimizer must be one of {', '.join(recipes.OPTIMIZERS)}, "
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
        m = self.lr_milestones
        if m is not None and (not m or m[0] < 1 or any(b <= a for a, b in zip(m, m[1:]))):
            raise ValueError(f"--lr-milestones must be increasing epochs >= 1, got {','.join(map(str, m))}")
        if self.schedule == "onecycle" and self.warmup_epochs:
            raise ValueError("--warmup-epochs does not apply to --schedule onecycle, whose rate rises over "
                             "the first 30% of the run")
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
        if self.optimizer == "sgd" and self.nesterov and self.momentum == 0:
            raise ValueError("--nesterov needs --momentum > 0 (pass --no-nesterov for plain SGD)")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"--label-smoothing must lie in [0, 1), got {self.label_smoothing}")
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


def _train_step(cfg: TrainConfig, model: nn.Module, opt, loss_fn: nn.SoftmaxCrossEntropy, backend,
                rep: Reporter) -> TrainStep:
    """The step of a one-rank run. On the emulator a graph is a test of graph safety: every replay
    is checked against a trace of the step and any failure raises; on a GPU a failure falls back to
    eager steps with a warning."""
    on_emulator = backend.name == "emulator"
    return TrainStep(model, opt, backend, loss_fn=loss_fn, graph=graphed(cfg, backend.name),
                     check=on_emulator, strict=on_emulator, warn=rep.note)


# The settings that define a run (a checkpoint keeps them; --resume takes them from it).
RUN_SETTINGS = ("recipe",) + recipes.Recipe.SETTINGS + ("seed", "data", "num_classes")
# What checkpoints written before recipes ran with (their other settings are all recorded).
_BEFORE_RECIPES = {"recipe": "default", "nesterov": False, "decay_bn_bias": True, "lr_milestones": None,
                   "label_smoothing": 0.0, "augment": "none"}


def _saved_settings(ckpt: Dict[str, Any]) -> Dict[str, Any]:
    settings = ckpt["meta"].get("settings")
    if isinstance(settings, dict) and "recipe" not in settings:
        settings = {**_BEFORE_RECIPES, **settings}
        if settings.get("schedule") != "step":
            settings["lr_step_epochs"] = None
    if ckpt["epoch"] is None or not isinstance(settings, dict) or set(settings) != set(RUN_SETTINGS):
        raise ValueError(f"checkpoint {ckpt['path']} holds no resumable training run (write one with "
                         f"gpuconv train --save)")
    if settings["lr_milestones"] is not None:
        settings = dict(settings, lr_milestones=tuple(settings["lr_milestones"]))
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


def _flag(setting: str, value: Any) -> str:
    """The flag that sets ``setting`` to ``value``, as typed."""
    name = setting.replace("_", "-")
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no-{name}"
    if isinstance(value, (tuple, list)):
        value = ",".join(map(str, value))
    return f"--{name} {value}"


def _overrides(recipe: recipes.Recipe) -> List[str]:
    """The flags by which ``recipe`` differs from the recipe of its name."""
    base = recipes.RECIPES[recipe.name].settings()
    return [_flag(k, v) for k, v in recipe.settings().items() if v != base[k]]


def _describe_recipe(recipe: recipes.Recipe) -> str:
    changed = _overrides(recipe)
    text = f"recipe {recipe.name}: {recipe.describe()}"
    if changed:
        return text + f" (changed by {' '.join(changed)})"
    return text + (f"; expected: {recipe.expected}" if recipe.expected else "")


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
    cfg = cfg.resolved()
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
    recipe = cfg.recipe_in_effect()
    augment = recipe.make_augment()
    augment.check(dataset.image_size, "--augment")
    history: List[Dict[str, Any]] = []
    with use_backend(backend):
        model = build_model(cfg.model, dataset.in_channels, dataset.image_size, dataset.num_classes,
                            seed=cfg.seed)
        opt = recipe.make_optimizer(model)
        loss_fn = recipe.make_loss()
        train_time = 0.0
        n_train = len(dataset.train)
        n_batches = -(-n_train // cfg.batch_size)
        try:
            schedule = recipe.make_schedule(opt, n_batches)
        except ValueError as exc:  # a run too short for its schedule, a milestone past int32 steps
            raise ValueError(f"--schedule {cfg.schedule} over --epochs {cfg.epochs} of {n_batches} steps "
                             f"(--batch-size {cfg.batch_size}): {exc}") from None
        base_lr, first = schedule.base_lr, 1
        if ckpt is not None:
            _check_resumable(cfg, ckpt, schedule)
            _check_data_fits(ckpt["meta"], dataset, cfg.resume)
            nn.load_checkpoint(cfg.resume, model, opt, schedule)  # arrays checked before read
            history, first = list(ckpt["meta"]["history"]), ckpt["epoch"] + 1
        dp = distributed.DataParallel(model, comm)  # rank 0's weights on every rank
        stepper = None if comm.size > 1 else _train_step(cfg, model, opt, loss_fn, backend, rep)
        last_epoch = cfg.stop_after or cfg.epochs
        ranks = f", data-parallel on {comm.size} ranks ({comm.kind})" if comm.size > 1 else ""
        rep.say(f"{'resuming' if ckpt else 'training'} {cfg.model} ({model.num_parameters()} "
                f"parameters) on {dataset.name} ({n_train} train / {len(dataset.test)} test) with "
                f"backend {backend.describe()}{ranks}" + (f" at epoch {first}" if ckpt else ""))
        rep.say(_describe_recipe(recipe))
        for epoch in range(first, last_epoch + 1):
            model.train()
            t0 = time.perf_counter()
            loss_sum, correct, seen = 0.0, 0, 0
            with rep.task(f"epoch {epoch}/{cfg.epochs}", n_train) as progress:
                for i, (xb, yb, idx) in enumerate(datasets.iterate_batches(
                        dataset.train.images, dataset.train.labels, cfg.batch_size, shuffle=True,
                        seed=cfg.seed, epoch=epoch, shard=(comm.rank, comm.size), with_indices=True)):
                    step_samples = min(cfg.batch_size, n_train - i * cfg.batch_size)  # all ranks'
                    if len(yb):  # augmentation (per epoch and image) runs before a captured step
                        x = (augment.apply(backend.asarray(xb), cfg.seed, epoch,
                                           backend.asarray(idx.astype(np.int32))) if augment.active else xb)
                    if stepper is not None:  # one rank: eager or a replayed graph
                        loss, logits = stepper(x, yb)
                    elif len(yb):
                        logits = dp.forward(backend.asarray(x))
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
            "samples_per_second": n_train * (last_epoch - first + 1) / train_time, "history": history,
            "recipe": {"name": recipe.name, "summary": recipe.summary, "expected": recipe.expected,
                       "settings": recipe.settings(), "overrides": _overrides(recipe)}}
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
    settings = {k: getattr(cfg, k) for k in RUN_SETTINGS}  # resolved: the recipe's values included
    settings["data"] = None if cfg.data is None else os.path.abspath(cfg.data)
    if settings["lr_milestones"] is not None:
        settings["lr_milestones"] = list(settings["lr_milestones"])
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
    # Run settings default to None here so that --resume can tell which ones were given, and the
    # training settings (those of a recipe) so that the recipe supplies the ones not given.
    recipe_list = "; ".join(f"{r.name}: {r.summary}" for r in recipes.RECIPES.values())
    ours = "(default: the recipe's)"
    p.add_argument("--recipe", choices=recipes.RECIPE_NAMES + ("auto",), default=None,
                   help=f"the training recipe that the flags below override; auto: resnet20-digits for "
                        f"--model resnet20 on the bundled digits, resnet20-cifar for it on CIFAR, default "
                        f"for anything else. {recipe_list} (default auto)")
    p.add_argument("--model", choices=MODEL_NAMES, default=None,
                   help="architecture (default: the recipe's; lenet with --recipe auto)")
    p.add_argument("--backend", choices=BACKEND_NAMES + ("auto",), default=d.backend,
                   help="where to run; auto = $GPUCONV_BACKEND when set, else cuda when a GPU is usable, "
                        "else numpy (default %(default)s)")
    add_allow_tf32(p)
    p.add_argument("--epochs", type=int, default=None,
                   help=f"length of the run in passes over the training set {ours}")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"images per training step; under MPI the global batch, shared by the ranks {ours}")
    p.add_argument("--optimizer", choices=recipes.OPTIMIZERS, default=None,
                   help=f"how the weights are updated: sgd (with momentum), adam, or adamw (decoupled weight "
                        f"decay) {ours}")
    p.add_argument("--lr", type=float, default=None,
                   help=f"base learning rate; the peak of --schedule onecycle (default: the recipe's when "
                        f"its optimizer is used, else "
                        f"{', '.join(f'{v} for {k}' for k, v in DEFAULT_LR.items())})")
    p.add_argument("--schedule", choices=SCHEDULES, default=None,
                   help=f"learning rate after the warm-up: cosine decay to 0 at the last step, constant, "
                        f"step decay, or one-cycle over the whole run (PyTorch's OneCycleLR defaults: up "
                        f"from lr/25 over 30%% of the steps, then down to lr/25e4) {ours}")
    p.add_argument("--warmup-epochs", type=int, default=None, metavar="N",
                   help=f"linear warm-up: the rate rises in equal steps to lr over the first N epochs {ours}")
    p.add_argument("--lr-milestones", type=_epoch_list, default=None, metavar="E1,E2,...",
                   help=f"with --schedule step: multiply the rate by --lr-gamma after each of these epochs "
                        f"{ours}")
    p.add_argument("--lr-step-epochs", type=int, default=None, metavar="N",
                   help="with --schedule step: multiply the rate by --lr-gamma every N epochs instead "
                        "(default: the recipe's milestones, else a third of --epochs)")
    p.add_argument("--lr-gamma", type=float, default=None, help=f"with --schedule step: the factor {ours}")
    p.add_argument("--momentum", type=float, default=None,
                   help=f"momentum of --optimizer sgd, in [0, 1); refused with the others {ours}")
    nesterov = p.add_mutually_exclusive_group()
    nesterov.add_argument("--nesterov", dest="nesterov", action="store_const", const=True, default=None,
                          help=f"Nesterov momentum for --optimizer sgd {ours}")
    nesterov.add_argument("--no-nesterov", dest="nesterov", action="store_const", const=False,
                          help=f"plain (heavy-ball) momentum for --optimizer sgd {ours}")
    p.add_argument("--weight-decay", type=float, default=None,
                   help=f"weight decay: L2 added to the gradient (sgd, adam) or decoupled (adamw) {ours}")
    decay = p.add_mutually_exclusive_group()
    decay.add_argument("--decay-bn-bias", dest="decay_bn_bias", action="store_const", const=True,
                       default=None, help=f"apply --weight-decay to every parameter {ours}")
    decay.add_argument("--no-decay-bn-bias", dest="decay_bn_bias", action="store_const", const=False,
                       help=f"apply --weight-decay to conv and linear weights only, not to batch-norm "
                            f"parameters and biases {ours}")
    p.add_argument("--label-smoothing", type=float, default=None, metavar="E",
                   help=f"the target of each image is 1 - E on its class plus E spread over all classes, "
                        f"E in [0, 1) {ours}")
    augment = p.add_mutually_exclusive_group()
    augment.add_argument("--augment", default=None, metavar="SPEC",
                         help=f"augment every training batch on the device: none, or a comma list of "
                              f"crop[=P] (pad by P pixels, default {recipes.DEFAULT_CROP}, and crop back "
                              f"at a random offset), flip[=random|alternate] (horizontal), cutout[=S] "
                              f"(zero an S x S square, default {recipes.DEFAULT_CUTOUT}), drawn from the "
                              f"seed, the epoch and the image {ours}")
    augment.add_argument("--no-augment", dest="augment", action="store_const", const="none",
                         help=f"the same as --augment none {ours}")
    p.add_argument("--seed", type=int, default=None,
                   help=f"seeds the initial weights, the order of the training images and their "
                        f"augmentation in every epoch and, for the bundled digits, which images form the "
                        f"test set (IDX and CIFAR files come split) (default {d.seed})")
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


def _epoch_list(text: str) -> Tuple[int, ...]:
    try:
        return tuple(int(e) for e in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected epochs separated by commas, like 82,123; got {text!r}") \
            from None


# Options that only one choice of another option uses: given with any other, they are refused.
_ONLY_WITH = {"momentum": ("optimizer", "sgd"), "nesterov": ("optimizer", "sgd"),
              "lr_step_epochs": ("schedule", "step"), "lr_milestones": ("schedule", "step"),
              "lr_gamma": ("schedule", "step")}


def run(args: argparse.Namespace) -> int:
    """Entry point of ``gpuconv train``; returns the exit status."""
    names = {f.name for f in fields(TrainConfig)} - {"resume"}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if "lr_milestones" in given and "lr_step_epochs" in given:
        raise ValueError("--lr-milestones and --lr-step-epochs are two ways to set the same decay: give one")
    cfg = TrainConfig.resuming(args.resume, **given) if args.resume else TrainConfig(**given)
    cfg = cfg.resolved()
    for name, (other, needed) in _ONLY_WITH.items():
        if name in given and getattr(cfg, other) != needed:
            raise ValueError(f"--{name.replace('_', '-')} applies to --{other} {needed} only, not "
                             f"{getattr(cfg, other)}")
    if args.allow_tf32:
        backends.allow_tf32 = True
    train(cfg)
    return 0
