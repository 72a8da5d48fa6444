"""Named training recipes: the optimizer, learning-rate schedule, batch, length, loss and batch
augmentation a model is trained with on a data set, and the builders that turn them into objects.

``gpuconv train`` starts from the recipe of its model and data (``recipe_for``) and lets each flag
override one value; the recipe in effect is printed, written to ``--json`` and kept in checkpoints.

``RECIPES`` holds ``default`` (Adam with cosine decay, no regularisation: every model and data
without a recipe of its own), ``resnet20-digits`` (ResNet-20 on the bundled 8x8 digits: SGD with
Nesterov momentum, cosine decay, weight decay on weights only, label smoothing, no augmentation,
since a flipped digit is another digit) and ``resnet20-cifar`` (He et al. 2016, section 4.2: SGD
with momentum, lr 0.1 divided by 10 at their 32k and 48k iterations of 64k, i.e. after epochs 82
and 123 of 164 at 391 steps of 128 of the 50,000 images, weight decay 1e-4, padded random crops
and horizontal flips); each ``Recipe`` lists its values.

Expected accuracy (``Recipe.expected``): ResNet-20 with He et al.'s recipe reaches 91.25 % on
CIFAR-10 (their Table 6), a figure not yet reproduced with gpuconv. One difference remains: images
are standardised with one mean and standard deviation over all pixels (He et al. subtract the
per-pixel mean), so the padding of a crop is the mean colour.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Dict, Optional, Tuple

from . import functional as F
from . import nn, optim, schedules
from .geometry import FLIP_MODES, augment_spec

__all__ = ["Augment", "Recipe", "RECIPES", "RECIPE_NAMES", "recipe_for", "DEFAULT_LR", "SCHEDULES",
           "OPTIMIZERS"]

OPTIMIZERS = optim.OPTIMIZER_NAMES
DEFAULT_LR = {"adam": 2e-3, "adamw": 2e-3, "sgd": 0.05}  # an optimizer's rate when a recipe has none
SCHEDULES = ("cosine", "constant", "step", "onecycle")
DEFAULT_CROP, DEFAULT_CUTOUT = 4, 16  # bare "crop" and "cutout" in an augmentation spec


@dataclass(frozen=True)
class Augment:
    """Batch augmentation on the device (``F.augment``): pad by ``crop_padding`` (zeros) and crop
    back at a random offset, flip horizontally (``flip`` "none", "random" or "alternate"), zero
    a ``cutout`` x ``cutout`` square (0: none). Written as text: ``"none"`` or a comma list of
    ``crop[=P]`` (P default 4), ``flip[=random|alternate]`` and ``cutout[=S]`` (S default 16)."""

    crop_padding: int = 0
    flip: str = "none"
    cutout: int = 0

    @classmethod
    def parse(cls, text: str, name: str = "augment") -> Augment:
        """The augmentation ``text`` describes; ValueError naming ``name`` when it is not one."""
        if not isinstance(text, str):
            raise TypeError(f"{name} must be a string, got {text!r}")
        if text.strip() == "none":
            return cls()
        values: Dict[str, Any] = {}
        for item in text.split(","):
            key, has_value, arg = item.strip().partition("=")
            field = {"crop": "crop_padding", "flip": "flip", "cutout": "cutout"}.get(key)
            if field is None:
                raise ValueError(f"{name}: unknown item {item.strip()!r} in {text!r} (expected 'none' or a "
                                 f"comma list of crop[=P], flip[=random|alternate], cutout[=S])")
            if field in values:
                raise ValueError(f"{name}: {key} given twice in {text!r}")
            if key == "flip":
                arg = arg if has_value else "random"
                if arg not in FLIP_MODES[1:]:
                    raise ValueError(f"{name}: flip must be random or alternate, got {arg!r}")
                values[field] = arg
            else:
                size = arg if has_value else str(DEFAULT_CROP if key == "crop" else DEFAULT_CUTOUT)
                if not (size.isascii() and size.isdigit()) or int(size) < 1:  # not '²'
                    raise ValueError(f"{name}: {key} takes a positive number of pixels, got {size!r}")
                values[field] = int(size)
        return cls(**values)

    @property
    def active(self) -> bool:
        return bool(self.crop_padding or self.flip != "none" or self.cutout)

    def __str__(self) -> str:
        items = ([f"crop={self.crop_padding}"] if self.crop_padding else []) + \
                ([f"flip={self.flip}"] if self.flip != "none" else []) + \
                ([f"cutout={self.cutout}"] if self.cutout else [])
        return ",".join(items) or "none"

    def check(self, image_size: int, name: str = "augment") -> None:
        """ValueError naming ``name`` unless this augmentation fits images of ``image_size``."""
        try:
            augment_spec((1, 1, image_size, image_size), self.crop_padding, "zeros", self.flip, self.cutout)
        except ValueError as exc:
            raise ValueError(f"{name} {self} does not fit {image_size}x{image_size} images: {exc}") from None

    def apply(self, x, seed: int, epoch: int, indices):
        """``x`` augmented (a new array), or ``x`` itself when nothing is to be done; ``indices``:
        the images' indices in the data set (the draws hash seed, epoch and index)."""
        if not self.active:
            return x
        return F.augment(x, seed, epoch, indices, crop_padding=self.crop_padding, flip=self.flip,
                         cutout=self.cutout)


@dataclass(frozen=True)
class Recipe:
    """A named set of training settings (the fields after ``name``, one per ``gpuconv train``
    flag of the same name) with a summary and, where a source gives one, the expected accuracy.

    ``lr_milestones`` (epochs after which the rate is multiplied by ``lr_gamma``) or
    ``lr_step_epochs`` (every so many epochs) shape the ``step`` schedule; ``decay_bn_bias``
    False leaves batch-norm parameters and biases undecayed (``optim.decay_groups``)."""

    name: str
    model: str
    optimizer: str
    lr: float
    batch_size: int
    epochs: int
    schedule: str
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    decay_bn_bias: bool = True
    warmup_epochs: int = 0
    lr_milestones: Optional[Tuple[int, ...]] = None
    lr_step_epochs: Optional[int] = None
    lr_gamma: float = 0.1
    label_smoothing: float = 0.0
    augment: str = "none"
    summary: str = ""
    expected: str = ""

    SETTINGS = ("model", "optimizer", "lr", "batch_size", "epochs", "schedule", "momentum", "nesterov",
                "weight_decay", "decay_bn_bias", "warmup_epochs", "lr_milestones", "lr_step_epochs",
                "lr_gamma", "label_smoothing", "augment")

    def settings(self) -> Dict[str, Any]:
        """The training settings (JSON-serialisable: milestones as a list)."""
        out = {k: getattr(self, k) for k in self.SETTINGS}
        if out["lr_milestones"] is not None:
            out["lr_milestones"] = list(out["lr_milestones"])
        return out

    def with_settings(self, **values: Any) -> Recipe:
        """This recipe with some settings replaced (the name is kept)."""
        if "lr_milestones" in values and values["lr_milestones"] is not None:
            values["lr_milestones"] = tuple(values["lr_milestones"])
        return replace(self, **values)

    def describe(self) -> str:
        """One line of the values that matter (those of the optimizer and schedule in use)."""
        s = self
        opt = f"{s.optimizer} lr {s.lr:g}"
        if s.optimizer == "sgd":
            opt += f" momentum {s.momentum:g}" + (" nesterov" if s.nesterov else "")
        decay = (f"weight decay {s.weight_decay:g}" + ("" if s.decay_bn_bias else " (not on BN/biases)")
                 if s.weight_decay else "no weight decay")
        sched = s.schedule
        if s.schedule == "step":
            when = (f"after epochs {','.join(map(str, s.lr_milestones))}" if s.lr_milestones
                    else f"every {s.lr_step_epochs} epochs")
            sched += f" x{s.lr_gamma:g} {when}"
        if s.warmup_epochs:
            sched = f"{s.warmup_epochs}-epoch warm-up then {sched}"
        return (f"{s.model}, {opt}, {decay}, batch {s.batch_size}, {s.epochs} epochs, {sched}, label "
                f"smoothing {s.label_smoothing:g}, augment {s.augment}")

    # ---- builders ------------------------------------------------------------------------
    def make_optimizer(self, model: nn.Module) -> optim.Optimizer:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        params = (model.parameters() if self.decay_bn_bias or not self.weight_decay
                  else optim.decay_groups(model, self.weight_decay))
        if self.optimizer == "sgd":
            return optim.SGD(params, lr=self.lr, momentum=self.momentum, nesterov=self.nesterov,
                             weight_decay=self.weight_decay)
        cls = optim.AdamW if self.optimizer == "adamw" else optim.Adam
        return cls(params, lr=self.lr, weight_decay=self.weight_decay)

    def make_schedule(self, opt: optim.Optimizer, steps_per_epoch: int) -> schedules.Schedule:
        """The schedule in optimizer steps: ``warmup_epochs`` of linear warm-up, then cosine decay
        to 0 over the remaining epochs, a constant rate, step decay, or one-cycle over the whole
        run (PyTorch's defaults: 30 % rising, from lr/25 to lr/25e4)."""
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.schedule == "step" and not self.lr_milestones and self.lr_step_epochs is None:
            raise ValueError("schedule 'step' needs lr_milestones or lr_step_epochs")
        total, warmup = self.epochs * steps_per_epoch, self.warmup_epochs * steps_per_epoch
        if self.schedule == "onecycle":
            return schedules.OneCycle(opt, total_steps=total)
        if self.schedule == "cosine":
            after: schedules.Schedule = schedules.Cosine(opt, total_steps=total - warmup)
        elif self.schedule == "step" and self.lr_milestones:
            after = schedules.MultiStepDecay(opt, [m * steps_per_epoch for m in self.lr_milestones],
                                             gamma=self.lr_gamma)
        elif self.schedule == "step":
            after = schedules.StepDecay(opt, step_size=self.lr_step_epochs * steps_per_epoch,
                                        gamma=self.lr_gamma)
        else:
            after = schedules.Constant(opt)
        return schedules.LinearWarmup(opt, warmup, then=after) if warmup else after

    def make_loss(self) -> nn.SoftmaxCrossEntropy:
        return nn.SoftmaxCrossEntropy(label_smoothing=self.label_smoothing)

    def make_augment(self) -> Augment:
        return Augment.parse(self.augment)


RECIPES: Dict[str, Recipe] = {r.name: r for r in (
    Recipe("default", model="lenet", optimizer="adam", lr=2e-3, batch_size=32, epochs=20, schedule="cosine",
           summary="Adam with cosine decay, no regularisation or augmentation: for every model and data "
                   "without a recipe of their own"),
    Recipe("resnet20-digits", model="resnet20", optimizer="sgd", lr=0.05, batch_size=32, epochs=20,
           schedule="cosine", momentum=0.9, nesterov=True, weight_decay=5e-4, decay_bn_bias=False,
           label_smoothing=0.1,
           summary="ResNet-20 on the bundled 8x8 digits: SGD with Nesterov momentum, cosine decay, weight "
                   "decay on weights only, label smoothing; no augmentation"),
    Recipe("resnet20-cifar", model="resnet20", optimizer="sgd", lr=0.1, batch_size=128, epochs=164,
           schedule="step", momentum=0.9, weight_decay=1e-4, lr_milestones=(82, 123), lr_gamma=0.1,
           augment="crop=4,flip=random",
           summary="He et al. (2016, section 4.2): SGD momentum 0.9, lr 0.1 divided by 10 at 32k and 48k "
                   "iterations of 64k, weight decay 1e-4, batch 128, padded crops and flips",
           expected="91.25 % test accuracy on CIFAR-10 (He et al. 2016, Table 6); not yet reproduced "
                    "with gpuconv"),
)}
RECIPE_NAMES = tuple(RECIPES)

# (model, data kind) -> recipe; anything else gets "default".
_BY_MODEL_DATA = {("resnet20", "digits"): "resnet20-digits", ("resnet20", "cifar"): "resnet20-cifar"}


def recipe_for(model: str, data_kind: str) -> Recipe:
    """The recipe of ``model`` on data of ``data_kind`` ("digits", "idx" or "cifar"): its own
    where one exists, else ``default`` with that model."""
    name = _BY_MODEL_DATA.get((model, data_kind))
    return RECIPES[name] if name else RECIPES["default"].with_settings(model=model)

