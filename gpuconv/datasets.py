"""Data: the bundled UCI handwritten digits, MNIST-style IDX files, synthetic batches, batching.

Images are returned as float arrays (N, C, H, W) standardised with the mean and standard
deviation of the *training* split (one scalar each), labels as int32 (N,).

Bundled data: ``_data/digits.npz`` holds the 1,797 8x8 images (values 0..16) of the UCI
"Optical Recognition of Handwritten Digits" test set (E. Alpaydin and C. Kaynak, CC BY 4.0; see
``_data/DIGITS_LICENSE.txt``).
"""
from __future__ import annotations

import gzip
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Tuple

import numpy as np

__all__ = ["Split", "Dataset", "DATASET_NAMES", "load_digits", "load_idx_dataset", "read_idx",
           "load_dataset", "synthetic_batch", "iterate_batches", "stratified_split"]

DATASET_NAMES = ("digits",)
_DIGITS_PATH = Path(__file__).resolve().parent / "_data" / "digits.npz"

# IDX type codes -> big-endian NumPy dtypes.
_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


@dataclass(frozen=True)
class Split:
    """images (N, C, H, W) float, labels (N,) int32."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class Dataset:
    """A train/test pair plus what a model needs to know about it."""

    name: str
    train: Split
    test: Split
    num_classes: int
    mean: float
    std: float

    @property
    def in_channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[2])


def _check_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices), sorted: round(test_fraction * n_c) of each class c go to the
    test side, chosen by a Generator seeded with ``seed``."""
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(idx.size)]
        n_test = int(round(test_fraction * idx.size))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _standardise(train_x: np.ndarray, test_x: np.ndarray, scale: float, dtype: np.dtype,
                 name: str, labels: Tuple[np.ndarray, np.ndarray], num_classes: int) -> Dataset:
    tr = train_x.astype(np.float64) / scale
    te = test_x.astype(np.float64) / scale
    mean, std = float(tr.mean()), float(tr.std())
    if std == 0.0:
        raise ValueError(f"dataset {name!r}: the training images are constant (std 0)")
    tr = ((tr - mean) / std).astype(dtype)[:, None]
    te = ((te - mean) / std).astype(dtype)[:, None]
    return Dataset(name, Split(np.ascontiguousarray(tr), labels[0].astype(np.int32)),
                   Split(np.ascontiguousarray(te), labels[1].astype(np.int32)),
                   num_classes, mean, std)


def load_digits(test_fraction: float = 0.2, seed: int = 0, dtype=np.float32) -> Dataset:
    """The bundled 8x8 digits: a stratified split (default 1,438 train / 359 test), images
    (N, 1, 8, 8) scaled by 1/16 then standardised with the training split's mean and std."""
    dt = _check_dtype(dtype)
    with np.load(_DIGITS_PATH, allow_pickle=False) as data:
        images, labels = data["images"], data["labels"]
    tr, te = stratified_split(labels, test_fraction, seed)
    return _standardise(images[tr], images[te], 16.0, dt, "digits", (labels[tr], labels[te]), 10)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (MNIST format; gzip-compressed or not, detected from the content).

    Raises FileNotFoundError for a missing file and ValueError, naming the file, for a wrong
    magic number, an unknown type code, or a size that disagrees with the header.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {str(path)!r} does not exist")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({exc})") from None
    if len(raw) < 4:
        raise ValueError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (magic bytes {raw[:4].hex()}, expected "
                         f"00 00 <type> <ndim>)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02x}")
    if ndim < 1:
        raise ValueError(f"{path}: IDX header declares {ndim} dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = math.prod(dims) * dtype.itemsize
    got = len(raw) - header
    if got < expected:
        raise ValueError(f"{path}: truncated: header declares shape {dims} ({expected} data bytes), "
                         f"file holds {got}")
    if got > expected:
        raise ValueError(f"{path}: {got - expected} unexpected bytes after the data of shape {dims}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(directory: Path, stem: str) -> Path:
    base, kind = stem.rsplit("-", 1)
    names = [f"{stem}", f"{stem}.gz", f"{base}.{kind}", f"{base}.{kind}.gz"]
    for n in names:
        if (directory / n).is_file():
            return directory / n
    raise FileNotFoundError(f"{directory}: missing {stem} (looked for {', '.join(names)})")


def _read_pair(directory: Path, prefix: str, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    img_path = _find_idx(directory, f"{prefix}-images-idx3-ubyte")
    lbl_path = _find_idx(directory, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{img_path}: expected uint8 images of rank 3 (N, H, W), got dtype "
                         f"{images.dtype} shape {images.shape}")
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"{img_path}: expected square images, got {images.shape[1]}x{images.shape[2]}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(f"{lbl_path}: expected uint8 labels of rank 1 (N,), got dtype "
                         f"{labels.dtype} shape {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{img_path} holds {images.shape[0]} images but {lbl_path} holds "
                         f"{labels.shape[0]} labels")
    if images.shape[0] == 0:
        raise ValueError(f"{img_path}: holds no images (shape {images.shape}), expected at least one")
    if labels.size and int(labels.max()) >= num_classes:
        raise ValueError(f"{lbl_path}: label {int(labels.max())} out of range [0, {num_classes})")
    return images, labels


def load_idx_dataset(directory: str | os.PathLike[str], dtype=np.float32, num_classes: int = 10) -> Dataset:
    """MNIST or Fashion-MNIST from a directory holding train-images-idx3-ubyte,
    train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (each optionally
    ``.gz``; the ``train-images.idx3-ubyte`` spelling works too). Images (N, 1, H, W) scaled by
    1/255 then standardised with the training split's mean and std."""
    dt = _check_dtype(dtype)
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"data directory {str(directory)!r} does not exist")
    tr_x, tr_y = _read_pair(directory, "train", num_classes)
    te_x, te_y = _read_pair(directory, "t10k", num_classes)
    if tr_x.shape[1:] != te_x.shape[1:]:
        raise ValueError(f"{directory}: training images are {tr_x.shape[1:]} but test images are "
                         f"{te_x.shape[1:]}")
    return _standardise(tr_x, te_x, 255.0, dt, f"idx:{directory.resolve().name}", (tr_y, te_y),
                        num_classes)


def load_dataset(data_dir: Optional[str] = None, dtype=np.float32) -> Dataset:
    """The bundled digits (fixed split) when ``data_dir`` is None, else the IDX files in ``data_dir``."""
    if data_dir is None:
        return load_digits(dtype=dtype)
    return load_idx_dataset(data_dir, dtype=dtype)


def synthetic_batch(n: int, c: int, h: int, w: int, num_classes: int, seed: int,
                    dtype=np.float32) -> Tuple[np.ndarray, np.ndarray]:
    """Random standard-normal images (n, c, h, w) and uniform int32 labels (n,) in
    [0, num_classes), for benchmarks; the same arguments give the same batch."""
    for name, v in (("n", n), ("c", c), ("h", h), ("w", w), ("num_classes", num_classes)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    dt = _check_dtype(dtype)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dt)
    y = rng.integers(0, num_classes, size=n).astype(np.int32)
    return x, y


def iterate_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, *, shuffle: bool = True,
                    seed: int = 0, epoch: int = 0, drop_last: bool = False,
                    shard: Tuple[int, int] = (0, 1)) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Yield (images[i], labels[i]) batches of ``batch_size`` (the last may be smaller unless
    ``drop_last``). With ``shuffle`` the order is a permutation drawn from a Generator seeded with
    (seed, epoch): reproducible, and different every epoch.

    ``shard=(rank, ranks)`` yields only rank's part of each batch, its positions rank, rank + ranks,
    rank + 2*ranks, ...: over all ranks, the batches of one process in the same order (a
    data-parallel rank's share of each global batch; it may be empty in a last batch smaller
    than ``ranks``)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if (not isinstance(shard, tuple) or len(shard) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in shard)
            or not 0 <= shard[0] < shard[1]):
        raise ValueError(f"shard must be a pair (rank, ranks) of ints with 0 <= rank < ranks, got {shard!r}")
    n = int(labels.shape[0])
    if images.shape[0] != n:
        raise ValueError(f"images has {images.shape[0]} rows but labels has {n}")
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    rank, ranks = int(shard[0]), int(shard[1])
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size][rank::ranks]
        yield images[idx], labels[idx]
