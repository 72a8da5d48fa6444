"""Datasets: bundled digits, the IDX reader and its error paths, synthetic batches, batching."""
from __future__ import annotations

import gzip
import struct
import zlib

import numpy as np
import pytest
from conftest import peak_memory

from gpuconv import datasets


def _idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    dtype = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[code]
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype).tobytes()


def _write_mnist(directory, n_train=12, n_test=5, size=6, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gz else ""
    files = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        for kind, arr in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            data = _idx_bytes(arr)
            path = directory / f"{prefix}-{kind}{suffix}"
            path.write_bytes(gzip.compress(data) if gz else data)
            files[(prefix, kind)] = (path, arr)
    return files


def test_bundled_digits_shapes_values_and_deterministic_stratified_split():
    d = datasets.load_digits()
    assert d.name == "digits" and d.num_classes == 10
    assert len(d.train) + len(d.test) == 1797
    assert d.train.images.shape == (len(d.train), 1, 8, 8) and d.train.images.dtype == np.float32
    assert d.train.labels.dtype == np.int32 and set(np.unique(d.test.labels)) == set(range(10))
    assert abs(float(d.train.images.mean())) < 1e-5 and abs(float(d.train.images.std()) - 1) < 1e-4
    counts = np.bincount(np.concatenate([d.train.labels, d.test.labels]))
    np.testing.assert_array_equal(np.bincount(d.test.labels), np.round(0.2 * counts))
    again = datasets.load_digits()
    np.testing.assert_array_equal(d.test.images, again.test.images)
    other = datasets.load_digits(seed=1)
    assert not np.array_equal(d.test.images, other.test.images)
    raw = np.load(datasets._DIGITS_PATH, allow_pickle=False)
    assert raw["images"].dtype == np.uint8 and raw["images"].shape == (1797, 8, 8)
    assert raw["images"].max() == 16 and raw["labels"].dtype == np.uint8
    assert datasets.load_digits(dtype=np.float64).train.images.dtype == np.float64


def test_split_puts_every_index_on_exactly_one_side():
    labels = np.random.default_rng(0).integers(0, 4, 101)
    tr, te = datasets.stratified_split(labels, 0.25, seed=3)
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, te])), np.arange(101))
    with pytest.raises(ValueError, match="test_fraction"):
        datasets.stratified_split(labels, 1.0, seed=0)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_dataset_reads_plain_and_gzip(tmp_path, gz):
    files = _write_mnist(tmp_path, gz=gz)
    d = datasets.load_idx_dataset(tmp_path)
    assert d.train.images.shape == (12, 1, 6, 6) and d.test.images.shape == (5, 1, 6, 6)
    np.testing.assert_array_equal(d.train.labels, files[("train", "labels-idx1-ubyte")][1])
    raw = files[("t10k", "images-idx3-ubyte")][1]
    np.testing.assert_allclose(d.test.images[:, 0] * d.std + d.mean, raw / 255.0, atol=1e-5)
    np.testing.assert_array_equal(datasets.read_idx(files[("train", "images-idx3-ubyte")][0]),
                                  files[("train", "images-idx3-ubyte")][1])


def test_read_idx_other_types(tmp_path):
    a = np.arange(-6, 6, dtype=np.int32).reshape(3, 4)
    (tmp_path / "a").write_bytes(_idx_bytes(a, 0x0C))
    out = datasets.read_idx(tmp_path / "a")
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, a)


def _corrupt_deflate(gz: bytes) -> bytes:
    """gzip data whose compressed stream (between the 10-byte header and the 8-byte trailer)
    has every bit flipped: zlib rejects it (zlib.error, not OSError)."""
    return gz[:10] + bytes(b ^ 0xFF for b in gz[10:-8]) + gz[-8:]


def test_read_idx_errors(tmp_path):
    good = _idx_bytes(np.zeros((2, 3, 3), np.uint8))
    cases = {
        "magic": (b"\x08\x03" + good[2:], "not an IDX file"),
        "code": (good[:2] + b"\x42" + good[3:], "unknown IDX type code 0x42"),
        "header": (good[:9], "truncated IDX header"),
        "data": (good[:-1], r"truncated: header declares shape \(2, 3, 3\)"),
        "extra": (good + b"\x00", "unexpected bytes"),
        "short": (b"\x00", "too short"),
        "gzip": (gzip.compress(good)[:-6], "gzip"),
        "deflate": (_corrupt_deflate(gzip.compress(good)), "corrupt or truncated gzip"),
    }
    for name, (data, match) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ValueError, match=match):
            datasets.read_idx(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        datasets.read_idx(tmp_path / "absent")


def test_idx_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        datasets.load_idx_dataset(tmp_path / "nowhere")
    files = _write_mnist(tmp_path)
    files[("t10k", "labels-idx1-ubyte")][0].unlink()
    with pytest.raises(FileNotFoundError, match="missing the test labels IDX file.*t10k-labels-idx1-ubyte"):
        datasets.load_idx_dataset(tmp_path)
    # labels and images swapped (an idx1 file where an idx3 file belongs)
    files = _write_mnist(tmp_path)
    img_path, lbl_path = files[("train", "images-idx3-ubyte")][0], files[("train", "labels-idx1-ubyte")][0]
    img, lbl = img_path.read_bytes(), lbl_path.read_bytes()
    img_path.write_bytes(lbl)
    with pytest.raises(ValueError, match="expected uint8 images of rank 3"):
        datasets.load_idx_dataset(tmp_path)
    img_path.write_bytes(img)
    lbl_path.write_bytes(_idx_bytes(np.zeros(11, np.uint8)))
    with pytest.raises(ValueError, match="holds 12 images but .* holds 11 labels"):
        datasets.load_idx_dataset(tmp_path)
    lbl_path.write_bytes(_idx_bytes(np.full(12, 10, np.uint8)))
    with pytest.raises(ValueError, match="labels need 11 classes but num_classes is 10"):
        datasets.load_idx_dataset(tmp_path, num_classes=10)
    lbl_path.write_bytes(lbl[:-3])
    with pytest.raises(ValueError, match="truncated"):
        datasets.load_idx_dataset(tmp_path)
    # an empty test split would make every accuracy a division by zero
    _write_mnist(tmp_path)
    files = _write_mnist(tmp_path, n_test=0)
    with pytest.raises(ValueError, match="holds no images"):
        datasets.load_idx_dataset(tmp_path)


def test_synthetic_batch_is_seeded():
    x, y = datasets.synthetic_batch(8, 3, 5, 7, 4, seed=1)
    assert x.shape == (8, 3, 5, 7) and x.dtype == np.float32 and y.dtype == np.int32
    assert y.min() >= 0 and y.max() < 4
    x2, y2 = datasets.synthetic_batch(8, 3, 5, 7, 4, seed=1)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert datasets.synthetic_batch(1, 1, 1, 1, 2, seed=0, dtype=np.float64)[0].dtype == np.float64
    with pytest.raises(ValueError, match="num_classes"):
        datasets.synthetic_batch(1, 1, 1, 1, 0, seed=0)


def test_iterate_batches_covers_everything_reproducibly():
    x = np.arange(10)[:, None].astype(np.float32)
    y = np.arange(10)
    batches = list(datasets.iterate_batches(x, y, 4, seed=1, epoch=0))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    order = np.concatenate([b[1] for b in batches])
    np.testing.assert_array_equal(np.sort(order), y)
    np.testing.assert_array_equal(np.concatenate([b[0][:, 0] for b in batches]), order)
    again = np.concatenate([b[1] for b in datasets.iterate_batches(x, y, 4, seed=1, epoch=0)])
    np.testing.assert_array_equal(order, again)
    next_epoch = np.concatenate([b[1] for b in datasets.iterate_batches(x, y, 4, seed=1, epoch=1)])
    assert not np.array_equal(order, next_epoch)
    assert [len(b[1]) for b in datasets.iterate_batches(x, y, 4, drop_last=True)] == [4, 4]
    plain = np.concatenate([b[1] for b in datasets.iterate_batches(x, y, 3, shuffle=False)])
    np.testing.assert_array_equal(plain, y)
    with pytest.raises(ValueError, match="batch_size"):
        next(datasets.iterate_batches(x, y, 0))


# ---- memory follows the header; constant data is refused -------------------------------------

def _gzip_of(head: bytes, zeros: int) -> bytes:
    """A gzip member of ``head`` followed by ``zeros`` zero bytes, built by repeating one fully
    flushed deflate block (64 MiB of zeros cost ~64 KB and no time)."""
    chunk = bytes(1 << 20)
    assert zeros % len(chunk) == 0
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
    body += (c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)) * (zeros // len(chunk)) + c.flush()
    crc = zlib.crc32(head)
    for _ in range(zeros // len(chunk)):
        crc = zlib.crc32(chunk, crc)
    return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + body
            + struct.pack("<II", crc, (len(head) + zeros) & 0xFFFFFFFF))



def test_gzip_stream_longer_than_its_header_is_refused_without_inflating_it(tmp_path):
    """64 MiB of zeros after an 18-byte array: the old reader inflated all of it (a 4 MB file
    expanding to 4 GiB took 8.4 GB) before comparing sizes; now reading stops after the declared
    data and one chunk more."""
    path = tmp_path / "bomb.gz"
    good = _idx_bytes(np.zeros((2, 3, 3), np.uint8))
    path.write_bytes(_gzip_of(good, 64 << 20))
    assert gzip.decompress(path.read_bytes())[:len(good)] == good  # a valid gzip stream

    def read():
        with pytest.raises(ValueError, match=r"unexpected bytes after the data of shape \(2, 3, 3\)"):
            datasets.read_idx(path)

    assert peak_memory(read)[1] < 4 << 20


def test_headers_declaring_more_than_the_file_can_hold_are_refused_before_reading(tmp_path):
    head = struct.pack(">BBBB", 0, 0, 0x08, 3) + struct.pack(">3I", 65536, 256, 256)  # 4 GiB
    for name, data, match in (("plain", head + bytes(100), "file holds 100"),
                              ("gz", gzip.compress(head + bytes(100)), "compressed bytes can expand to")):
        (tmp_path / name).write_bytes(data)

        def read(name=name, match=match):
            with pytest.raises(ValueError, match=match):
                datasets.read_idx(tmp_path / name)

        assert peak_memory(read)[1] < 1 << 20


def test_constant_training_images_are_refused(tmp_path):
    """Every pixel 7: float64 rounding gave a std of 1e-17, which passed 'std == 0', and training
    'succeeded' with a test loss of 1.2e17."""
    files = _write_mnist(tmp_path, n_train=50)
    path, images = files[("train", "images-idx3-ubyte")]
    path.write_bytes(_idx_bytes(np.full_like(images, 7)))
    with pytest.raises(ValueError, match="training images are constant"):
        datasets.load_idx_dataset(tmp_path)
    path.write_bytes(_idx_bytes(np.zeros_like(images)))
    with pytest.raises(ValueError, match="training images are constant"):
        datasets.load_idx_dataset(tmp_path)
    # One 8-bit step in one pixel is real variation, however large the set.
    nearly = np.full((2000, 28, 28), 200, np.uint8)
    nearly[0, 0, 0] = 201
    path.write_bytes(_idx_bytes(nearly))
    files[("train", "labels-idx1-ubyte")][0].write_bytes(_idx_bytes(np.zeros(2000, np.uint8)))
    files[("t10k", "images-idx3-ubyte")][0].write_bytes(_idx_bytes(np.zeros((5, 28, 28), np.uint8)))
    d = datasets.load_idx_dataset(tmp_path)
    assert np.isfinite(d.train.images).all() and abs(float(d.train.images.std()) - 1) < 1e-3


def _write_idx_set(directory, names, n_train=6, n_test=4, classes=3, gz=False, seed=0):
    """IDX files under the given spellings {(split, kind): file name}; returns the arrays."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        out[(split, "images")] = rng.integers(0, 256, size=(n, 5, 5), dtype=np.uint8)
        out[(split, "labels")] = rng.permutation(np.arange(n) % classes).astype(np.uint8)
    for key, name in names.items():
        data = _idx_bytes(out[key])
        (directory / name).write_bytes(gzip.compress(data) if gz else data)
    return out


_SPELLINGS = {
    "lecun": {("train", "images"): "train-images-idx3-ubyte", ("train", "labels"): "train-labels-idx1-ubyte",
              ("test", "images"): "t10k-images-idx3-ubyte", ("test", "labels"): "t10k-labels-idx1-ubyte"},
    "dotted": {("train", "images"): "train-images.idx3-ubyte", ("train", "labels"): "train-labels.idx1-ubyte",
               ("test", "images"): "t10k-images.idx3-ubyte", ("test", "labels"): "t10k-labels.idx1-ubyte"},
    "test-prefix": {("train", "images"): "train-images-idx3-ubyte",
                    ("train", "labels"): "train-labels.idx1-ubyte",
                    ("test", "images"): "test-images-idx3-ubyte",
                    ("test", "labels"): "test-labels.idx1-ubyte"},
}


@pytest.mark.parametrize("spelling", sorted(_SPELLINGS))
@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("subdir", ["", "raw", "MNIST/raw", "FashionMNIST/raw"])
def test_idx_files_under_every_common_spelling_and_layout(tmp_path, spelling, gz, subdir):
    names = {k: v + (".gz" if gz else "") for k, v in _SPELLINGS[spelling].items()}
    ref = _write_idx_set(tmp_path / subdir if subdir else tmp_path, names)
    assert datasets.detect_format(tmp_path) == "idx"
    d = datasets.load_dataset(str(tmp_path))
    assert d.num_classes == 3                                  # from the labels
    np.testing.assert_array_equal(d.train.labels, ref[("train", "labels")])
    np.testing.assert_array_equal(d.test.labels, ref[("test", "labels")])
    np.testing.assert_allclose(d.test.images[:, 0] * d.std + d.mean, ref[("test", "images")] / 255.0,
                               atol=1e-5)
    expected_name = subdir.split("/")[0] if "/" in subdir else tmp_path.name
    assert d.name == f"idx:{expected_name}"


def test_idx_plain_and_gzip_copies_side_by_side_take_the_plain_one(tmp_path):
    names = _SPELLINGS["lecun"]
    ref = _write_idx_set(tmp_path, names)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b broken: must not be read")
    np.testing.assert_array_equal(datasets.load_dataset(str(tmp_path)).train.labels, ref[("train", "labels")])


def test_idx_ambiguous_spellings_and_places_are_refused(tmp_path):
    _write_idx_set(tmp_path / "a", _SPELLINGS["lecun"])
    _write_idx_set(tmp_path / "a", {("test", "labels"): "test-labels-idx1-ubyte"})
    with pytest.raises(ValueError, match="ambiguous test labels: both t10k-labels-idx1-ubyte and test-"):
        datasets.load_dataset(str(tmp_path / "a"))
    _write_idx_set(tmp_path / "b" / "MNIST" / "raw", _SPELLINGS["lecun"])
    _write_idx_set(tmp_path / "b" / "FashionMNIST" / "raw", _SPELLINGS["lecun"])
    with pytest.raises(ValueError, match="holds IDX files in several places"):
        datasets.load_dataset(str(tmp_path / "b"))


def test_num_classes_given_or_from_labels(tmp_path):
    _write_idx_set(tmp_path, _SPELLINGS["lecun"], classes=4)
    assert datasets.load_dataset(str(tmp_path)).num_classes == 4
    assert datasets.load_dataset(str(tmp_path), num_classes=10).num_classes == 10
    with pytest.raises(ValueError, match="labels need 4 classes but num_classes is 3"):
        datasets.load_dataset(str(tmp_path), num_classes=3)
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        datasets.load_dataset(str(tmp_path), num_classes=1)
    assert datasets.load_dataset(None, num_classes=12).num_classes == 12
    with pytest.raises(ValueError, match="labels need 10 classes"):
        datasets.load_dataset(None, num_classes=9)
