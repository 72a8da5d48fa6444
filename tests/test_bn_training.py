"""Networks with batch normalisation train identically on the numpy backend and on the kernels
(on the emulator): the same loss curve, to the float32 tolerance, over a few steps of the
full recipe (augmentation on the device, label smoothing, SGD with Nesterov momentum and weight
decay that spares biases and batch norms), and the same running statistics afterwards."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close

from gpuconv import datasets, nn, optim, use_backend
from gpuconv import functional as F
from gpuconv.models import build_model
from gpuconv.nn.module import to_host

STEPS = 4
BATCH = 16


def _curve(backend: str, model_name: str, dtype):
    data = datasets.load_digits()
    # Noise breaks the exact ties of the digits' constant background: a max-pooling window of
    # equal values in exact arithmetic would otherwise be decided by rounding, differently on each
    # backend, and route its gradient elsewhere for no fault (as in gpuconv check).
    images = (data.train.images + 0.1 * np.random.default_rng(4).standard_normal(
        data.train.images.shape)).astype(dtype)
    with use_backend(backend) as be:
        model = build_model(model_name, 1, 8, 10, seed=1, dtype=dtype)
        opt = optim.SGD(optim.decay_groups(model, 5e-4), lr=0.05, momentum=0.9, nesterov=True)
        loss_fn = nn.SoftmaxCrossEntropy(label_smoothing=0.1)
        losses = []
        order = np.random.default_rng(0).permutation(len(data.train))
        for step in range(STEPS):
            idx = order[step * BATCH:(step + 1) * BATCH]
            x = F.augment(be.asarray(images[idx]), seed=7, epoch=step // 2,
                          indices=be.asarray(idx.astype(np.int32)), crop_padding=1,
                          padding_mode="reflect", flip="alternate", cutout=2)
            loss = loss_fn(model.forward(x), be.asarray(data.train.labels[idx]))
            model.backward(loss_fn.backward())
            opt.step()
            losses.append(float(be.to_numpy(loss)))
        buffers = {k: to_host(v).copy() for k, v in model.named_buffers()}
    return np.array(losses), buffers


@pytest.mark.parametrize("model_name", ["resnet20"])
def test_loss_curve_and_running_statistics_agree_across_backends(model_name):
    """The data are fixed (noise seed 4): a value that lands within float32 rounding of a kink
    (a residual sum of -0.3796179 + 0.3796181 before a ReLU, with noise seed 3) is decided
    differently on each backend and legitimately parts the curves by a percent, which says
    nothing about the kernels; these data meet no such value in the steps run. (airbench, whose
    last block sees 1x1 images at this size, is checked layer by layer in test_check.py and
    against torch in test_interop.py.)"""
    ref, ref_buffers = _curve("numpy", model_name, np.float32)
    got, buffers = _curve("emulator", model_name, np.float32)
    assert_close(got, ref, np.float32, what=f"{model_name} loss curve {ref} vs {got}")
    for k, v in ref_buffers.items():
        if v.dtype.kind == "f":
            assert_close(buffers[k], v, np.float32, what=k)
        else:
            assert int(buffers[k]) == int(v) == STEPS, k
