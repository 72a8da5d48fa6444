"""Large images: memory follows what the data declares and the user asks for, or the command
refuses with a clear error before allocating (two 2000x2000 images took over 6 GB and ended in a
MemoryError traceback: LeNet's dense layer alone had 120 x 3,968,064 weights)."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from conftest import peak_memory

from gpuconv import datasets
from gpuconv.models import MAX_DENSE_WEIGHTS, build_model
from gpuconv.tools.cli import main


def _write_idx(directory, n_train: int, n_test: int, size: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for kind, a in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            head = struct.pack(">BBBB", 0, 0, 0x08, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
            (directory / f"{prefix}-{kind}").write_bytes(head + a.tobytes())



def test_lenet_refuses_images_whose_dense_layer_would_not_be_small():
    def build():
        with pytest.raises(ValueError, match=r"lenet.*2000x2000.*476167680 weights.*cifar-small"):
            build_model("lenet", 1, 2000, 10)

    assert peak_memory(build)[1] < 1 << 20
    assert build_model("lenet", 1, 28, 10).num_parameters() < 100_000  # MNIST: unchanged
    assert 16 * ((256 // 2 - 4) // 2) ** 2 * 120 <= MAX_DENSE_WEIGHTS  # 256x256 still builds


def test_training_on_two_2000x2000_images_fails_fast_with_a_clear_error(tmp_path, capsys):
    _write_idx(tmp_path, 1, 1, 2000)

    def run():
        assert main(["train", "--backend", "numpy", "--data", str(tmp_path), "--epochs", "1",
                     "--quiet"]) == 2

    assert peak_memory(run)[1] < 200 << 20  # the images, their float64 standardisation, no model
    err = capsys.readouterr().err
    assert err.startswith("gpuconv: error: model 'lenet' on 2000x2000 images") and "Traceback" not in err


def test_evaluation_batches_of_large_images_follow_the_batch_size(tmp_path, monkeypatch, capsys):
    """Evaluation used batches of 1,000 images whatever their size; now at most 1,000 MNIST
    images' worth of pixels, or --batch-size images when those are larger."""
    _write_idx(tmp_path, 4, 60, 128)
    seen = []
    real = datasets.iterate_batches

    def spy(images, labels, batch_size, *, shuffle=True, **kwargs):
        if not shuffle:
            seen.append(batch_size)
        return real(images, labels, batch_size, shuffle=shuffle, **kwargs)

    monkeypatch.setattr(datasets, "iterate_batches", spy)
    assert main(["train", "--backend", "numpy", "--data", str(tmp_path), "--epochs", "1",
                 "--batch-size", "4", "--quiet"]) == 0
    assert seen and max(seen) == 1000 * 28 * 28 // (128 * 128)
