"""CIFAR-10 and CIFAR-100 from the files their authors distribute, without unpickling objects.
(``gpuconv.datasets.load_cifar_dataset`` makes a training ``Dataset`` of them.)

Formats (https://www.cs.toronto.edu/~kriz/cifar.html), each image 3x32x32 uint8 stored channel
by channel (1,024 red, 1,024 green, 1,024 blue bytes, rows top to bottom):

=====================  ==========================================  ============================
format                 files                                       labels
=====================  ==========================================  ============================
``cifar10-python``     ``data_batch_1`` .. ``data_batch_5``,       ``b"labels"`` (10 classes)
                       ``test_batch``, ``batches.meta``
``cifar10-binary``     ``data_batch_1.bin`` .. ``data_batch_5.bin``, records of 1 label byte +
                       ``test_batch.bin``                          3,072 pixel bytes
``cifar100-python``    ``train``, ``test``, ``meta``               ``b"fine_labels"`` (100) and
                                                                   ``b"coarse_labels"`` (20)
``cifar100-binary``    ``train.bin``, ``test.bin``                 records of a coarse and a fine
                                                                   label byte + 3,072 pixel bytes
=====================  ==========================================  ============================

The python version is a pickle (protocol 2, written by Python 2) of a dict holding a NumPy
array. It is read by a ``pickle.Unpickler`` whose ``find_class`` hands out only what that needs
(NumPy's array reconstructor, ``ndarray`` and ``dtype``, and none with object dtype); any other
global in the stream is refused before anything is built, so a file cannot run code. Every file is
checked (missing, truncated, corrupt, wrong shapes or labels) with a ValueError or
FileNotFoundError naming it, the same rules as ``gpuconv.datasets.read_idx``.
"""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

__all__ = ["CIFAR_FORMATS", "ARCHIVE_DIRS", "detect_cifar", "read_cifar", "read_python_batch",
           "read_binary_batch"]

IMAGE_SHAPE = (3, 32, 32)
IMAGE_BYTES = 3 * 32 * 32
MAX_FILE_BYTES = 1 << 31  # far above the largest real file (CIFAR-100 train, 155 MB)

# format -> (training files, test file, meta file or None)
_LAYOUTS: Dict[str, Tuple[Tuple[str, ...], str, Optional[str]]] = {
    "cifar10-python": (tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"),
    "cifar10-binary": (tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin", None),
    "cifar100-python": (("train",), "test", "meta"),
    "cifar100-binary": (("train.bin",), "test.bin", None),
}
CIFAR_FORMATS = tuple(_LAYOUTS)
# The subdirectory each official archive unpacks to.
ARCHIVE_DIRS = {"cifar10-python": "cifar-10-batches-py", "cifar10-binary": "cifar-10-batches-bin",
                "cifar100-python": "cifar-100-python", "cifar100-binary": "cifar-100-binary"}
LABEL_KINDS = ("fine", "coarse")
_CLASSES = {"cifar10": {"fine": 10}, "cifar100": {"fine": 100, "coarse": 20}}


# ---- the restricted unpickler ----------------------------------------------------------------

class _Name:
    """A global the stream may name but not call (REDUCE on it fails)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_NDARRAY = _Name("numpy.ndarray")


def _reconstruct(cls, shape, typecode):
    """numpy's ``_reconstruct`` for plain ndarrays only. NumPy pickles an empty array here and
    gives it its shape and data through BUILD, which checks them against the bytes in the stream;
    any other shape would be memory of the stream's choosing, left uninitialised."""
    if cls is not _NDARRAY:
        raise pickle.UnpicklingError(f"refusing to reconstruct {cls!r}: only numpy.ndarray is allowed")
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape) \
            or 0 not in shape:
        raise pickle.UnpicklingError(f"refusing to reconstruct an array of shape {shape!r}: NumPy "
                                     f"pickles start from an empty one")
    return np.ndarray.__new__(np.ndarray, shape, _dtype(typecode))


def _dtype(spec, align=False, copy=False):
    """``numpy.dtype`` of a plain numeric type (never one that holds Python objects)."""
    if isinstance(spec, bytes):
        spec = spec.decode("ascii")
    if not isinstance(spec, str):
        raise pickle.UnpicklingError(f"refusing dtype spec {spec!r}: only type-code strings are allowed")
    dt = np.dtype(spec)
    if dt.hasobject or dt.kind not in "biuf":
        raise pickle.UnpicklingError(f"refusing dtype {dt}: only numeric dtypes are allowed")
    return dt


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Builds dicts, lists, strings, numbers and plain numeric NumPy arrays; refuses every other
    global (so no constructor or function of the stream's choosing ever runs)."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _reconstruct,
                ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
                ("numpy", "ndarray"): _NDARRAY,
                ("numpy", "dtype"): _dtype}

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: a CIFAR batch "
                                         f"holds only a dict, lists and a NumPy array") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refusing persistent ids")


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR file {str(path)!r} does not exist")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ValueError(f"{path}: {size} bytes, larger than any CIFAR file ({MAX_FILE_BYTES} at most)")
    return path.read_bytes()


def _unpickle(path: Path) -> dict:
    raw = _read_bytes(path)
    try:
        obj = _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        if "refusing" in str(exc):
            raise ValueError(f"{path}: {exc}") from None
        raise ValueError(f"{path}: truncated or corrupt pickle ({exc})") from None
    except (EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError,
            MemoryError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: truncated or corrupt pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    # Python 2 wrote the keys as byte strings; a file re-saved by Python 3 has str keys.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _labels(path: Path, batch: dict, key: str, n: int) -> np.ndarray:
    if key not in batch:
        raise ValueError(f"{path}: no {key!r} entry (has {sorted(map(str, batch))})")
    value = batch[key]
    try:
        labels = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {key!r} is not a list of integers ({exc})") from None
    if labels.shape != (n,) or (n and labels.dtype.kind not in "iu"):
        raise ValueError(f"{path}: {key!r} must hold {n} integer labels, got shape {labels.shape} "
                         f"dtype {labels.dtype}")
    return labels.astype(np.int64)


def read_python_batch(path: str | os.PathLike[str], label_keys: Tuple[str, ...] = ("labels",)
                      ) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """One pickled batch: (images uint8 (N, 3, 32, 32), {label key: int64 (N,)})."""
    path = Path(path)
    batch = _unpickle(path)
    if "data" not in batch:
        raise ValueError(f"{path}: no 'data' entry (has {sorted(map(str, batch))})")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != IMAGE_BYTES:
        got = (f"shape {data.shape} dtype {data.dtype}" if isinstance(data, np.ndarray)
               else type(data).__name__)
        raise ValueError(f"{path}: 'data' must be a uint8 array (N, {IMAGE_BYTES}), got {got}")
    n = data.shape[0]
    labels = {key: _labels(path, batch, key, n) for key in label_keys}
    return np.ascontiguousarray(data).reshape((n,) + IMAGE_SHAPE), labels


def read_binary_batch(path: str | os.PathLike[str], label_bytes: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """One binary batch of records (``label_bytes`` label bytes then 3,072 pixel bytes):
    (images uint8 (N, 3, 32, 32), labels uint8 (N, label_bytes))."""
    path = Path(path)
    raw = _read_bytes(path)
    record = label_bytes + IMAGE_BYTES
    if len(raw) == 0 or len(raw) % record:
        raise ValueError(f"{path}: truncated or corrupt: {len(raw)} bytes is not a positive whole "
                         f"number of {record}-byte records")
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
    images = np.ascontiguousarray(rows[:, label_bytes:]).reshape((-1,) + IMAGE_SHAPE)
    return images, np.ascontiguousarray(rows[:, :label_bytes])


def _check_range(path: Path, labels: np.ndarray, classes: int, what: str) -> None:
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise ValueError(f"{path}: {what} labels must lie in [0, {classes}), got values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")


def _label_names(path: Path, key: str, classes: int) -> List[str]:
    meta = _unpickle(path)
    names = meta.get(key)
    if not isinstance(names, list) or len(names) != classes or \
            not all(isinstance(s, (bytes, str)) for s in names):
        raise ValueError(f"{path}: {key!r} must list {classes} class names")
    return [s.decode("utf-8", "replace") if isinstance(s, bytes) else s for s in names]


def detect_cifar(directory: str | os.PathLike[str]) -> List[Tuple[str, Path]]:
    """(format, directory) of each CIFAR layout found in ``directory`` or in the subdirectory its
    official archive unpacks to (``cifar-10-batches-py`` ...); a layout counts when its first
    training file is there."""
    directory = Path(directory)
    found = []
    for fmt, (train, _, _) in _LAYOUTS.items():
        for where in (directory, directory / ARCHIVE_DIRS[fmt]):
            if (where / train[0]).is_file():
                found.append((fmt, where))
                break
    return found


def read_cifar(directory: str | os.PathLike[str], fmt: str, labels: str = "fine"
               ) -> Tuple[Tuple[np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray], int, List[str]]:
    """((train images, train labels), (test images, test labels), classes, class names) of the
    ``fmt`` layout in ``directory``: images uint8 (N, 3, 32, 32), labels int64 (N,). ``labels``
    picks CIFAR-100's ``"fine"`` (100) or ``"coarse"`` (20) labels. Class names come from the meta
    file (python version) and are empty for the binary version."""
    if fmt not in _LAYOUTS:
        raise ValueError(f"fmt must be one of {', '.join(CIFAR_FORMATS)}, got {fmt!r}")
    family = fmt.split("-")[0]
    if labels not in _CLASSES[family]:
        raise ValueError(f"labels must be one of {', '.join(_CLASSES[family])} for {family}, got {labels!r}")
    classes = _CLASSES[family][labels]
    directory = Path(directory)
    train_files, test_file, meta_file = _LAYOUTS[fmt]
    missing = [f for f in train_files + (test_file,) if not (directory / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory}: the {fmt} layout is incomplete: missing {', '.join(missing)}")

    def read(name: str) -> Tuple[np.ndarray, np.ndarray]:
        path = directory / name
        if fmt.endswith("-binary"):
            images, lab = read_binary_batch(path, 1 if family == "cifar10" else 2)
            lab = lab[:, 0 if family == "cifar10" or labels == "coarse" else 1].astype(np.int64)
        else:
            key = "labels" if family == "cifar10" else f"{labels}_labels"
            images, found = read_python_batch(path, (key,))
            lab = found[key]
        _check_range(path, lab, classes, labels if family == "cifar100" else "class")
        return images, lab

    parts = [read(f) for f in train_files]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    test = read(test_file)
    names: List[str] = []
    if meta_file is not None and (directory / meta_file).is_file():
        key = "label_names" if family == "cifar10" else f"{labels}_label_names"
        names = _label_names(directory / meta_file, key, classes)
    return train, test, classes, names
