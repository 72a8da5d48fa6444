"""Training recipes: what each holds, how ``gpuconv train`` picks one and lets flags override it, and
that a run trains with every part of it (augmentation, label smoothing, decay groups)."""
from __future__ import annotations

import numpy as np
import pytest
from cifar_files import write_cifar10_binary
from documents import load_valid

from gpuconv import datasets, nn, optim, recipes, schedules, use_backend
from gpuconv import functional as F
from gpuconv.models import MODEL_NAMES, build_model
from gpuconv.tools.cli import main
from gpuconv.tools.train import METRICS_SCHEMA, TrainConfig


@pytest.fixture
def cifar_dir(tmp_path):
    write_cifar10_binary(tmp_path / "cifar" / "cifar-10-batches-bin", n=2, n_test=2)  # 10 train images
    return tmp_path / "cifar"


# ---- the recipes ------------------------------------------------------------------------------
def test_he_et_al_resnet20_cifar_recipe_holds_their_values():
    # He et al. 2016, section 4.2: weight decay 1e-4, momentum 0.9, batch 128, lr 0.1 divided by 10
    # at 32k and 48k iterations, stop at 64k; 4-pixel padded crops and horizontal flips. At 391
    # steps per epoch of 50,000 images: 32000 / 391 = 81.8, 48000 / 391 = 122.8, 64000 / 391 = 163.7.
    r = recipes.RECIPES["resnet20-cifar"]
    assert (r.model, r.optimizer, r.lr, r.momentum, r.nesterov) == ("resnet20", "sgd", 0.1, 0.9, False)
    assert (r.weight_decay, r.decay_bn_bias, r.batch_size, r.label_smoothing) == (1e-4, True, 128, 0.0)
    steps = -(-50000 // 128)
    assert [round(k / steps) for k in (32000, 48000, 64000)] == [*r.lr_milestones, r.epochs]
    assert (r.schedule, r.lr_gamma, r.warmup_epochs) == ("step", 0.1, 0)
    assert recipes.Augment.parse(r.augment) == recipes.Augment(crop_padding=4, flip="random")
    assert "91.25 %" in r.expected and "not yet reproduced" in r.expected


@pytest.mark.parametrize("name", recipes.RECIPE_NAMES)
def test_every_recipe_passes_the_checks_of_gpuconv_train(name):
    cfg = TrainConfig(recipe=name).resolved()
    cfg.validate()
    assert cfg.model in MODEL_NAMES
    assert {k: getattr(cfg, k) for k in recipes.Recipe.SETTINGS} == {
        **recipes.RECIPES[name].settings(), "lr_milestones": recipes.RECIPES[name].lr_milestones}


def test_the_recipe_of_a_model_and_its_data(cifar_dir, tmp_path):
    def chosen(**kw):
        return TrainConfig(**kw).resolved().recipe
    assert chosen() == "default" and TrainConfig().resolved().model == "lenet"
    assert chosen(model="resnet20") == "resnet20-digits"
    assert chosen(model="resnet20", data=str(cifar_dir)) == "resnet20-cifar"
    assert chosen(model="lenet", data=str(cifar_dir)) == "default"
    assert chosen(model="airbench", data=str(cifar_dir)) == "default"
    assert chosen(recipe="resnet20-cifar") == "resnet20-cifar"          # named: whatever the data
    # an override replaces one value and keeps the others
    cfg = TrainConfig(model="resnet20", data=str(cifar_dir), epochs=3, label_smoothing=0.1).resolved()
    assert (cfg.epochs, cfg.label_smoothing, cfg.lr, cfg.lr_milestones) == (3, 0.1, 0.1, (82, 123))
    # another optimizer than the recipe's brings its own rate unless --lr is given
    assert TrainConfig(model="resnet20", optimizer="adam").resolved().lr == recipes.DEFAULT_LR["adam"]
    assert TrainConfig(model="resnet20", optimizer="adam", lr=0.01).resolved().lr == 0.01
    # --lr-step-epochs replaces the recipe's milestones; other schedules use neither
    step = TrainConfig(recipe="resnet20-cifar", lr_step_epochs=10).resolved()
    assert (step.lr_milestones, step.lr_step_epochs) == (None, 10)
    cos = TrainConfig(recipe="resnet20-cifar", schedule="cosine").resolved()
    assert (cos.lr_milestones, cos.lr_step_epochs) == (None, None)
    assert cos.resolved() == cos                                          # resolving twice changes nothing


@pytest.mark.parametrize("text, expected, canonical", [
    ("none", recipes.Augment(), "none"),
    ("crop,flip", recipes.Augment(4, "random"), "crop=4,flip=random"),
    ("flip=alternate, crop=2, cutout", recipes.Augment(2, "alternate", 16),
     "crop=2,flip=alternate,cutout=16"),
    ("cutout=8", recipes.Augment(cutout=8), "cutout=8"),
])
def test_augment_specs_parse_and_print_back(text, expected, canonical):
    aug = recipes.Augment.parse(text)
    assert aug == expected and str(aug) == canonical and recipes.Augment.parse(canonical) == aug


@pytest.mark.parametrize("text, match", [
    ("crop,rotate", "unknown item 'rotate'"), ("crop=0", "crop takes a positive number"),
    ("crop=x", "crop takes a positive number"), ("flip=vertical", "flip must be random or alternate"),
    ("crop,crop=2", "crop given twice"), ("", "unknown item ''"),
    ("crop=\u00b2", "crop takes a positive number"), ("cutout=\u0663", "cutout takes a positive number"),
])
def test_bad_augment_specs_name_the_flag(text, match):
    with pytest.raises(ValueError, match=f"--augment: {match}"):
        recipes.Augment.parse(text, "--augment")


def test_an_augmentation_too_large_for_the_images_is_refused_naming_the_flag(capsys):
    with pytest.raises(ValueError, match=r"--augment cutout=9 does not fit 8x8 images"):
        recipes.Augment.parse("cutout=9").check(8, "--augment")
    assert main(["train", "--backend", "numpy", "--augment", "cutout=9", "--epochs", "1"]) == 2
    assert "--augment cutout=9 does not fit 8x8 images" in capsys.readouterr().err


@pytest.mark.parametrize("settings, match", [
    (dict(optimizer="sgdd"), "optimizer must be one of sgd, adam, adamw, got 'sgdd'"),
    (dict(schedule="cosinee"), "schedule must be one of .*, got 'cosinee'"),
    (dict(schedule="step"), "schedule 'step' needs lr_milestones or lr_step_epochs"),
])
def test_a_recipe_with_an_unknown_name_is_refused_by_its_builders(settings, match):
    # a misspelt optimizer or schedule must not quietly become Adam or a constant rate
    recipe = recipes.RECIPES["default"].with_settings(**settings)
    model = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(ValueError, match=match):
        recipe.make_schedule(recipe.make_optimizer(model), 10)


def test_a_run_too_short_for_its_schedule_names_the_flags(capsys):
    # one step per epoch (the digits' 1,437 training images in one batch): one-cycle needs two
    args = ["train", "--backend", "numpy", "--schedule", "onecycle", "--epochs", "1", "--batch-size", "5000"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--schedule onecycle over --epochs 1 of 1 steps (--batch-size 5000)" in err
    assert "total_steps must be >= 2" in err


@pytest.mark.parametrize("settings, kind, params", [
    (dict(schedule="onecycle"), "onecycle", {"total_steps": 30}),
    (dict(schedule="step", lr_milestones=(2, 4)), "multistep", {"milestones": [6, 12]}),
    (dict(schedule="step", lr_step_epochs=3), "step", {"step_size": 9}),
    (dict(schedule="cosine", warmup_epochs=2), "linear-warmup", {"warmup_steps": 6}),
])
def test_the_schedule_of_a_recipe_counts_optimizer_steps(settings, kind, params):
    opt = optim.SGD(nn.Linear(2, 2, rng=0).parameters(), lr=0.1)
    recipe = recipes.RECIPES["default"].with_settings(epochs=10, **settings)
    sched = recipe.make_schedule(opt, steps_per_epoch=3)
    assert sched.kind == kind and params.items() <= sched.state_dict().items()
    if kind == "linear-warmup":
        assert sched.then.kind == "cosine" and sched.then.total_steps == 24


# ---- a run applies the recipe ---------------------------------------------------------------------
def _reference_epoch(data_dir, seed: int, batch_size: int, weight_decay: float, label_smoothing: float):
    """One epoch of resnet20 with the resnet20-cifar recipe as the flags below change it, written
    out with the library's parts (not the recipe's builders), as a user would."""
    dataset = datasets.load_dataset(str(data_dir), seed=seed)
    with use_backend("numpy"):
        model = build_model("resnet20", 3, 32, 10, seed=seed)
        opt = optim.SGD(optim.decay_groups(model, weight_decay), lr=0.1, momentum=0.9, nesterov=True,
                        weight_decay=weight_decay)
        steps = -(-len(dataset.train) // batch_size)
        sched = schedules.MultiStepDecay(opt, [82 * steps, 123 * steps], gamma=0.1)
        loss_fn = nn.SoftmaxCrossEntropy(label_smoothing=label_smoothing)
        model.train()
        for xb, yb, idx in datasets.iterate_batches(dataset.train.images, dataset.train.labels, batch_size,
                                                    seed=seed, epoch=1, with_indices=True):
            x = F.augment(xb, seed, 1, idx.astype(np.int32), crop_padding=4, flip="random", cutout=8)
            loss_fn.forward(model.forward(x), yb)
            model.backward(loss_fn.backward())
            opt.step()
            sched.step()
    return model.state_dict()


def test_a_cifar_run_trains_with_the_recipe_and_the_flags_that_change_it(cifar_dir, tmp_path, capsys):
    ckpt, doc_path = tmp_path / "c.npz", tmp_path / "m.json"
    argv = ["train", "--data", str(cifar_dir), "--model", "resnet20", "--backend", "numpy", "--epochs", "1",
            "--batch-size", "10", "--seed", "5", "--nesterov", "--weight-decay", "0.05", "--no-decay-bn-bias",
            "--label-smoothing", "0.2", "--augment", "crop,flip,cutout=8", "--save", str(ckpt),
            "--json", str(doc_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "recipe resnet20-cifar: resnet20, sgd lr 0.1 momentum 0.9 nesterov, weight decay 0.05 (not on " \
           "BN/biases), batch 10, 1 epochs, step x0.1 after epochs 82,123, label smoothing 0.2, augment " \
           "crop=4,flip=random,cutout=8 (changed by" in out
    # the weights after a step (resnet20 at 32x32 is slow on the NumPy backend) are those of the same
    # step written out by hand, bit for bit: a run that skipped the augmentation, the label smoothing
    # or the decay groups would end elsewhere
    expected = _reference_epoch(cifar_dir, seed=5, batch_size=10, weight_decay=0.05, label_smoothing=0.2)
    saved = nn.read_checkpoint(ckpt)
    assert saved["model"].keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(saved["model"][name], value, err_msg=name)
    # the recipe in effect is in the metrics and in the checkpoint
    doc = load_valid(doc_path, METRICS_SCHEMA)
    assert doc["recipe"]["name"] == "resnet20-cifar" and "91.25 %" in doc["recipe"]["expected"]
    assert doc["recipe"]["overrides"] == ["--batch-size 10", "--epochs 1", "--nesterov",
                                          "--weight-decay 0.05", "--no-decay-bn-bias",
                                          "--label-smoothing 0.2", "--augment crop=4,flip=random,cutout=8"]
    settings = saved["meta"]["settings"]
    assert settings["recipe"] == "resnet20-cifar" and settings["augment"] == "crop=4,flip=random,cutout=8"
    assert {k: settings[k] for k in recipes.Recipe.SETTINGS} == doc["recipe"]["settings"]


def test_resnet20_on_the_digits_runs_its_recipe_by_default(tmp_path, capsys):
    # The 20 epochs take a minute on two cores (README: Recipes); the first shows the recipe applied.
    ckpt = tmp_path / "r.npz"
    assert main(["train", "--model", "resnet20", "--backend", "numpy", "--stop-after", "1",
                 "--save", str(ckpt)]) == 0
    assert "recipe resnet20-digits: resnet20, sgd lr 0.05 momentum 0.9 nesterov" in capsys.readouterr().out
    saved = nn.read_checkpoint(ckpt)
    settings = saved["meta"]["settings"]
    assert {k: settings[k] for k in recipes.Recipe.SETTINGS} == recipes.RECIPES["resnet20-digits"].settings()
    state = saved["optimizer"]
    assert str(state["optimizer"]) == "SGD" and float(state["hyper.nesterov"]) == 1.0
    assert float(state["group.0.weight_decay"]) == 5e-4 and float(state["group.1.weight_decay"]) == 0.0
    decay, no_decay = optim.decay_groups(build_model("resnet20", 1, 8, 10), 1.0)  # BN parameters, bias
    assert (state["group.0.params"].size, state["group.1.params"].size) == (len(decay["params"]),
                                                                          len(no_decay["params"]))
