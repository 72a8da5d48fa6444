"""CIFAR-10/100 readers: every distributed layout, detection, and refusal of what is not CIFAR."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from cifar_files import _global, py2_pickle, write_cifar10_binary, write_cifar10_python, write_cifar100

from gpuconv import cifar, datasets


def _pixels(split: datasets.Split, ds: datasets.Dataset) -> np.ndarray:
    """The uint8 pixels a standardised split came from, rows of 3,072 in the files' order."""
    raw = np.rint((split.images.astype(np.float64) * ds.std + ds.mean) * 255.0)
    return raw.astype(np.uint8).reshape(len(split), -1)


@pytest.mark.parametrize("layout", ["python", "binary"])
@pytest.mark.parametrize("archive_dir", [False, True])
def test_cifar10_layouts_are_detected_and_read(tmp_path, layout, archive_dir):
    where = tmp_path / ("cifar-10-batches-py" if layout == "python" else "cifar-10-batches-bin") \
        if archive_dir else tmp_path
    ref = (write_cifar10_python if layout == "python" else write_cifar10_binary)(where)
    assert datasets.detect_format(tmp_path) == f"cifar10-{layout}"
    ds = datasets.load_dataset(str(tmp_path))
    assert (ds.name, ds.num_classes, ds.in_channels, ds.image_size) == ("cifar10", 10, 3, 32)
    assert ds.train.images.shape == (20, 3, 32, 32) and ds.test.images.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(_pixels(ds.train, ds), ref["train_x"])
    np.testing.assert_array_equal(_pixels(ds.test, ds), ref["test_x"])
    np.testing.assert_array_equal(ds.train.labels, ref["train_y"])
    np.testing.assert_array_equal(ds.test.labels, ref["test_y"])
    # channel-major rows: the first 1,024 bytes are the red plane, row by row
    img = ds.train.images[1].astype(np.float64) * ds.std + ds.mean
    np.testing.assert_allclose(img[0, 0, :], ref["train_x"][1, :32] / 255.0, atol=1e-6)
    np.testing.assert_allclose(img[2, 31, :], ref["train_x"][1, -32:] / 255.0, atol=1e-6)


@pytest.mark.parametrize("binary", [False, True])
def test_cifar100_fine_and_coarse_labels(tmp_path, binary):
    ref = write_cifar100(tmp_path / ("cifar-100-binary" if binary else "cifar-100-python"), binary)
    assert datasets.detect_format(tmp_path) == f"cifar100-{'binary' if binary else 'python'}"
    fine = datasets.load_dataset(str(tmp_path))
    assert fine.num_classes == 100 and fine.name == "cifar100"
    np.testing.assert_array_equal(fine.train.labels, ref["train_fine"])
    np.testing.assert_array_equal(_pixels(fine.test, fine), ref["test_x"])
    coarse = datasets.load_cifar_dataset(tmp_path, labels="coarse")
    assert coarse.num_classes == 20 and coarse.name == "cifar100-coarse"
    np.testing.assert_array_equal(coarse.test.labels, ref["test_coarse"])


def test_class_names_come_from_the_meta_file(tmp_path):
    write_cifar10_python(tmp_path)
    *_, classes, names = cifar.read_cifar(tmp_path, "cifar10-python")
    assert classes == 10 and names == [f"class{c}" for c in range(10)]


def test_num_classes_may_only_widen(tmp_path):
    write_cifar10_binary(tmp_path)
    assert datasets.load_dataset(str(tmp_path), num_classes=12).num_classes == 12
    with pytest.raises(ValueError, match="labels need 10 classes but num_classes is 5"):
        datasets.load_dataset(str(tmp_path), num_classes=5)


def test_missing_truncated_and_corrupt_files_are_named(tmp_path):
    write_cifar10_binary(tmp_path / "bin")
    (tmp_path / "bin" / "data_batch_3.bin").unlink()
    with pytest.raises(FileNotFoundError, match="cifar10-binary layout is incomplete: missing data_batch_3"):
        datasets.load_dataset(str(tmp_path / "bin"))
    write_cifar10_binary(tmp_path / "bin")
    path = tmp_path / "bin" / "test_batch.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"test_batch.bin: truncated or corrupt: 9218 bytes is not .*3073-"):
        datasets.load_dataset(str(tmp_path / "bin"))
    path.write_bytes(np.concatenate([[10], np.zeros(3072)]).astype(np.uint8).tobytes())
    with pytest.raises(ValueError, match=r"test_batch.bin: class labels must lie in \[0, 10\), got .*10\]"):
        datasets.load_dataset(str(tmp_path / "bin"))

    write_cifar10_python(tmp_path / "py")
    batch = tmp_path / "py" / "data_batch_2"
    raw = batch.read_bytes()
    batch.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="data_batch_2: truncated or corrupt pickle"):
        datasets.load_dataset(str(tmp_path / "py"))
    batch.write_bytes(py2_pickle({b"labels": [1, 2], b"data": np.zeros((3, 3072), np.uint8)}))
    with pytest.raises(ValueError, match="data_batch_2: 'labels' must hold 3 integer labels"):
        datasets.load_dataset(str(tmp_path / "py"))
    batch.write_bytes(py2_pickle({b"labels": [1], b"data": np.zeros((1, 1024), np.uint8)}))
    with pytest.raises(ValueError, match=r"data_batch_2: 'data' must be a uint8 array \(N, 3072\)"):
        datasets.load_dataset(str(tmp_path / "py"))
    batch.write_bytes(py2_pickle([1, 2]))
    with pytest.raises(ValueError, match="expected a pickled dict, got list"):
        datasets.load_dataset(str(tmp_path / "py"))


def test_a_pickle_that_would_run_code_is_refused_before_anything_runs(tmp_path):
    write_cifar10_python(tmp_path)
    marker = tmp_path / "ran"
    # os.system("touch <marker>") as a pickle: GLOBAL, argument tuple, REDUCE
    evil = (b"\x80\x02" + _global("os", "system") + b"(" + b"U" + bytes([len(f"touch {marker}")])
            + f"touch {marker}".encode() + b"tR.")
    assert pickle.loads(evil) == 0 and marker.exists()   # what an ordinary unpickler would do
    marker.unlink()
    (tmp_path / "test_batch").write_bytes(evil)
    with pytest.raises(ValueError, match="test_batch: refusing to load global os.system"):
        datasets.load_dataset(str(tmp_path))
    assert not marker.exists()
    # an array of Python objects is refused too
    obj_array = (b"\x80\x02}(U\x04data" + _global("numpy.core.multiarray", "_reconstruct")
                 + _global("numpy", "ndarray") + b"(J\x00\x00\x00\x00tU\x01b\x87R"
                 + b"(J\x01\x00\x00\x00(J\x01\x00\x00\x00t" + _global("numpy", "dtype")
                 + b"(U\x02O8J\x00\x00\x00\x00J\x01\x00\x00\x00tR" + b"\x89]tbu.")
    (tmp_path / "test_batch").write_bytes(obj_array)
    with pytest.raises(ValueError, match="refusing dtype object"):
        datasets.load_dataset(str(tmp_path))


def test_several_data_sets_in_one_directory_is_ambiguous(tmp_path):
    write_cifar10_python(tmp_path / "cifar-10-batches-py")
    write_cifar10_binary(tmp_path / "cifar-10-batches-bin")
    (tmp_path / "cifar-10-batches-py" / "empty").mkdir()
    with pytest.raises(ValueError, match="holds several data sets \\(cifar10-python, cifar10-binary\\)"):
        datasets.load_dataset(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no data set found"):
        datasets.load_dataset(str(tmp_path / "cifar-10-batches-py" / "empty"))
