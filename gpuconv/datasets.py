"""Data: the bundled UCI handwritten digits, MNIST-style IDX files, CIFAR (``gpuconv.cifar``),
synthetic batches, batching.

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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from . import cifar

__all__ = ["Split", "Dataset", "DATASET_NAMES", "load_digits", "load_idx_dataset", "read_idx",
           "find_idx_files", "idx_directories", "load_cifar_dataset", "detect_format", "check_num_classes",
           "load_dataset", "synthetic_batch", "iterate_batches", "stratified_split"]

DATASET_NAMES = ("digits",)
_CONSTANT_RTOL = 1e-12  # std at or below this fraction of the largest |value|: constant images
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
    """A train/test pair plus what a model needs to know about it: images are
    ``(raw / scale - mean) / std`` of the raw pixel values in the files."""

    name: str
    train: Split
    test: Split
    num_classes: int
    mean: float
    std: float
    scale: float = 1.0

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


def _with_channels(images: np.ndarray) -> np.ndarray:
    """(N, H, W) -> (N, 1, H, W); (N, C, H, W) unchanged."""
    return images[:, None] if images.ndim == 3 else images


def check_num_classes(num_classes: Optional[int], found: int, where) -> int:
    """The class count of a dataset whose labels need ``found``: ``num_classes`` when given (it
    may only be larger), else ``found`` (at least 2)."""
    if num_classes is None:
        return max(2, found)
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if num_classes < found:
        raise ValueError(f"{where}: labels need {found} classes but num_classes is {num_classes}")
    return int(num_classes)


def _standardise(train_x: np.ndarray, test_x: np.ndarray, scale: float, dtype: np.dtype,
                 name: str, labels: Tuple[np.ndarray, np.ndarray], num_classes: int) -> Dataset:
    tr = train_x.astype(np.float64)
    tr /= scale
    mean, std = float(tr.mean()), float(tr.std())
    # Rounding alone gives constant data a std of about 1e-16 of its magnitude; real variation
    # (one 8-bit step among 10^9 pixels: 1e-7 of the range) is far above this threshold.
    magnitude = float(np.abs(tr).max())
    if not std > _CONSTANT_RTOL * magnitude:
        raise ValueError(f"dataset {name!r}: the training images are constant (std {std:.3g} for "
                         f"values of magnitude {magnitude:.3g}); nothing can be learnt from them")
    tr -= mean
    tr /= std
    te = test_x.astype(np.float64)
    te /= scale
    te -= mean
    te /= std
    tr, te = _with_channels(tr.astype(dtype, copy=False)), _with_channels(te.astype(dtype, copy=False))
    return Dataset(name, Split(np.ascontiguousarray(tr), labels[0].astype(np.int32)),
                   Split(np.ascontiguousarray(te), labels[1].astype(np.int32)),
                   num_classes, mean, std, scale)


def load_digits(test_fraction: float = 0.2, seed: int = 0, dtype=np.float32) -> Dataset:
    """The bundled 8x8 digits: a stratified split (default 1,438 train / 359 test), images
    (N, 1, 8, 8) scaled by 1/16 then standardised with the training split's mean and std."""
    dt = _check_dtype(dtype)
    with np.load(_DIGITS_PATH, allow_pickle=False) as data:
        images, labels = data["images"], data["labels"]
    tr, te = stratified_split(labels, test_fraction, seed)
    return _standardise(images[tr], images[te], 16.0, dt, "digits", (labels[tr], labels[te]), 10)


_DEFLATE_MAX_RATIO = 1032  # no deflate stream expands more than this
_READ_CHUNK = 1 << 20


def _read_into(f, out: np.ndarray) -> int:
    """Fill ``out``'s bytes from the stream ``f`` in chunks; return how many bytes arrived."""
    view = memoryview(out).cast("B") if out.nbytes else memoryview(b"")
    pos = 0
    while pos < out.nbytes:
        chunk = f.read(min(_READ_CHUNK, out.nbytes - pos))
        if not chunk:
            break
        view[pos:pos + len(chunk)] = chunk
        pos += len(chunk)
    return pos


def _parse_idx(f, path: Path, stored_bytes: int, gz: bool) -> np.ndarray:
    """Read an IDX stream: the header first, then exactly the data it declares (never more)."""
    head = f.read(4)
    if len(head) < 4:
        raise ValueError(f"{path}: too short for an IDX header ({len(head)} bytes)")
    if head[0] != 0 or head[1] != 0:
        raise ValueError(f"{path}: not an IDX file (magic bytes {head.hex()}, expected "
                         f"00 00 <type> <ndim>)")
    code, ndim = head[2], head[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02x}")
    if ndim < 1:
        raise ValueError(f"{path}: IDX header declares {ndim} dimensions")
    raw_dims = f.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header ({4 + len(raw_dims)} bytes, need {4 + 4 * ndim})")
    dims = tuple(int(d) for d in np.frombuffer(raw_dims, dtype=">u4"))
    dtype = _IDX_DTYPES[code]
    header = 4 + 4 * ndim
    expected = math.prod(dims) * dtype.itemsize
    # What the file can hold at most: its own size, or what deflate can expand it to.
    can_hold = stored_bytes * _DEFLATE_MAX_RATIO if gz else stored_bytes - header
    if expected > can_hold:
        held = "" if gz else f", file holds {stored_bytes - header}"
        raise ValueError(f"{path}: truncated: header declares shape {dims} ({expected} data bytes)"
                         f"{held}" + (f", more than its {stored_bytes} compressed bytes can expand to"
                                      if gz else ""))
    try:
        out = np.empty(math.prod(dims), dtype=dtype)
    except MemoryError:
        raise ValueError(f"{path}: header declares shape {dims} ({expected} data bytes), more than "
                         f"fits in memory") from None
    got = _read_into(f, out)
    if got < expected:
        raise ValueError(f"{path}: truncated: header declares shape {dims} ({expected} data bytes), "
                         f"file holds {got}")
    if f.read(1):
        count = "" if gz else f" ({stored_bytes - header - expected} bytes)"
        raise ValueError(f"{path}: unexpected bytes after the data of shape {dims}{count}")
    return out.reshape(dims).astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (MNIST format; gzip-compressed or not, detected from the content).

    The header is read first and no more data than it declares is read or decompressed, so
    memory stays proportional to the declared array. Raises FileNotFoundError for a missing file
    and ValueError, naming the file, for a wrong magic number, an unknown type code, or a size
    that disagrees with the header.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {str(path)!r} does not exist")
    with open(path, "rb") as raw:
        stored = os.fstat(raw.fileno()).st_size
        gz = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        if not gz:
            return _parse_idx(raw, path, stored, gz=False)
        try:
            with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                return _parse_idx(f, path, stored, gz=True)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({exc})") from None


# IDX spellings: <split>-<kind>-idx<d>-ubyte or <split>-<kind>.idx<d>-ubyte, each optionally .gz;
# the test split is t10k-* (LeCun's files) or test-*.
_IDX_SPLITS = {"train": ("train",), "test": ("t10k", "test")}
_IDX_KINDS = {"images": "idx3", "labels": "idx1"}


def _idx_names(split: str, kind: str) -> List[str]:
    return [f"{prefix}-{kind}{sep}{_IDX_KINDS[kind]}-ubyte{gz}" for prefix in _IDX_SPLITS[split]
            for sep in ("-", ".") for gz in ("", ".gz")]


def find_idx_files(directory: str | os.PathLike[str]) -> Dict[Tuple[str, str], Path]:
    """{(split, kind): path} of the four IDX files in ``directory`` (split "train"/"test", kind
    "images"/"labels"), under any of the spellings ``_idx_names`` lists. Where a file exists both
    plain and gzipped the plain one is taken; two different spellings of one file are ambiguous."""
    directory = Path(directory)
    found: Dict[Tuple[str, str], Path] = {}
    for split in _IDX_SPLITS:
        for kind in _IDX_KINDS:
            names = _idx_names(split, kind)
            present = [n for n in names if (directory / n).is_file()]
            stems = sorted({n[:-3] if n.endswith(".gz") else n for n in present})
            if not present:
                raise FileNotFoundError(f"{directory}: missing the {split} {kind} IDX file "
                                        f"(looked for {', '.join(names)})")
            if len(stems) > 1:
                raise ValueError(f"{directory}: ambiguous {split} {kind}: both {' and '.join(stems)}")
            found[(split, kind)] = directory / (stems[0] if stems[0] in present else stems[0] + ".gz")
    return found


def idx_directories(directory: str | os.PathLike[str]) -> List[Path]:
    """Where IDX files may sit: ``directory`` itself, ``directory/raw`` and torchvision's
    ``directory/<Name>/raw`` (``MNIST/raw``, ``FashionMNIST/raw``, ...); those holding a training
    images file under some spelling."""
    directory = Path(directory)
    candidates = [directory, directory / "raw"]
    if directory.is_dir():
        candidates += sorted(p / "raw" for p in directory.iterdir() if p.is_dir())
    wanted = _idx_names("train", "images")
    return [c for c in candidates if c.is_dir() and any((c / n).is_file() for n in wanted)]


def _read_pair(files: Dict[Tuple[str, str], Path], split: str) -> Tuple[np.ndarray, np.ndarray]:
    img_path, lbl_path = files[(split, "images")], files[(split, "labels")]
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
    return images, labels


def load_idx_dataset(directory: str | os.PathLike[str], dtype=np.float32,
                     num_classes: Optional[int] = None) -> Dataset:
    """MNIST, Fashion-MNIST or any IDX image set from ``directory`` (or its ``raw`` or
    torchvision ``<Name>/raw`` subdirectory; see ``idx_directories``): training images and labels
    ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte``, test files ``t10k-*`` or
    ``test-*``; ``train-images.idx3-ubyte`` spellings and ``.gz`` work too (``find_idx_files``).
    Images (N, 1, H, W) scaled by 1/255 then standardised with the training split's mean and std.
    ``num_classes``: default the largest label + 1; may only be larger."""
    dt = _check_dtype(dtype)
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"data directory {str(directory)!r} does not exist")
    places = idx_directories(directory)
    if len(places) > 1:
        raise ValueError(f"{directory}: holds IDX files in several places "
                         f"({', '.join(str(p) for p in places)}); pass one of them")
    files = find_idx_files(places[0] if places else directory)
    tr_x, tr_y = _read_pair(files, "train")
    te_x, te_y = _read_pair(files, "test")
    if tr_x.shape[1:] != te_x.shape[1:]:
        raise ValueError(f"{directory}: training images are {tr_x.shape[1:]} but test images are "
                         f"{te_x.shape[1:]}")
    classes = check_num_classes(num_classes, int(max(tr_y.max(), te_y.max())) + 1, files[("train", "labels")])
    name = (places[0].parent if places and places[0].name == "raw" else directory).resolve().name
    return _standardise(tr_x, te_x, 255.0, dt, f"idx:{name}", (tr_y, te_y), classes)


def load_cifar_dataset(directory: str | os.PathLike[str], fmt: Optional[str] = None, labels: str = "fine",
                       dtype=np.float32, num_classes: Optional[int] = None) -> Dataset:
    """CIFAR-10 or CIFAR-100 from ``directory`` (``fmt`` None: the one layout
    ``gpuconv.cifar.detect_cifar`` finds there; ``labels`` "fine" or "coarse" for CIFAR-100).
    Images (N, 3, 32, 32) scaled by 1/255 then standardised with the training split's mean and
    std; ``num_classes`` (default: the format's) may only be larger."""
    dt = _check_dtype(dtype)
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"data directory {str(directory)!r} does not exist")
    if fmt is None:
        found = cifar.detect_cifar(directory)
        if not found:
            raise FileNotFoundError(f"{directory}: no CIFAR files (looked for data_batch_1, "
                                    f"data_batch_1.bin, train, train.bin here and in "
                                    f"{', '.join(sorted(set(cifar.ARCHIVE_DIRS.values())))})")
        if len(found) > 1:
            raise ValueError(f"{directory}: holds several CIFAR layouts "
                             f"({', '.join(f for f, _ in found)}); pass the directory of one")
        fmt, directory = found[0]
    (tr_x, tr_y), (te_x, te_y), classes, _ = cifar.read_cifar(directory, fmt, labels)
    classes = check_num_classes(num_classes, classes, directory)
    name = fmt.split("-")[0] + ("-coarse" if labels == "coarse" else "")
    return _standardise(tr_x, te_x, 255.0, dt, name, (tr_y, te_y), classes)


def detect_format(directory: str | os.PathLike[str]) -> str:
    """Which data set ``directory`` holds: ``"idx"`` or one of ``gpuconv.cifar.CIFAR_FORMATS``
    (FileNotFoundError when none, ValueError when several)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"data directory {str(directory)!r} does not exist")
    found = [fmt for fmt, _ in cifar.detect_cifar(directory)]
    if idx_directories(directory):
        found.insert(0, "idx")
    if not found:
        raise FileNotFoundError(
            f"{directory}: no data set found: expected MNIST-style IDX files (train-images-idx3-ubyte, "
            f"train-labels-idx1-ubyte, t10k-* or test-*, optionally .gz, here or in raw/ or "
            f"<Name>/raw/) or CIFAR-10/100 files (data_batch_1..5 and test_batch, their .bin "
            f"version, or train/test and train.bin/test.bin, here or in cifar-10-batches-py/ ...)")
    if len(found) > 1:
        raise ValueError(f"{directory}: holds several data sets ({', '.join(found)}); pass the "
                         f"directory of one")
    return found[0]


def load_dataset(data_dir: Optional[str] = None, dtype=np.float32,
                 num_classes: Optional[int] = None, seed: int = 0) -> Dataset:
    """The bundled digits when ``data_dir`` is None, split into train and test by ``seed``
    (``load_digits``), else the data set in ``data_dir``, IDX or CIFAR, as ``detect_format`` finds
    it; those come split (``seed`` unused)."""
    if data_dir is None:
        if num_classes is not None:
            check_num_classes(num_classes, 10, "the bundled digits")
        digits = load_digits(seed=seed, dtype=dtype)
        return digits if num_classes is None else replace(digits, num_classes=int(num_classes))
    fmt = detect_format(data_dir)
    if fmt == "idx":
        return load_idx_dataset(data_dir, dtype=dtype, num_classes=num_classes)
    return load_cifar_dataset(data_dir, dtype=dtype, num_classes=num_classes)


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
                    shard: Tuple[int, int] = (0, 1), with_indices: bool = False) -> Iterator[tuple]:
    """Yield (images[i], labels[i]) batches of ``batch_size`` (the last may be smaller unless
    ``drop_last``), or (images[i], labels[i], i) ``with_indices`` (i int64: the rows taken). With
    ``shuffle`` the order is a permutation drawn from a Generator seeded with (seed, epoch):
    reproducible, and different every epoch.

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
        yield (images[idx], labels[idx], idx) if with_indices else (images[idx], labels[idx])
