"""Small CIFAR files in the layouts their authors distribute, for tests.

The python version is written as Python 2's cPickle (protocol 2) wrote it: byte strings as
SHORT_BINSTRING/BINSTRING, the image array through numpy.core.multiarray._reconstruct and a
BUILD of its state, so the reader is tested on the opcodes real files hold.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Dict, List

import numpy as np

PROTO, STOP, MARK, NONE, NEWFALSE = b"\x80\x02", b".", b"(", b"N", b"\x89"
EMPTY_DICT, SETITEMS, EMPTY_LIST, APPENDS, TUPLE = b"}", b"u", b"]", b"e", b"t"
TUPLE3, REDUCE, BUILD = b"\x87", b"R", b"b"


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _obj(o) -> bytes:
    if o is None:
        return NONE
    if o is False:
        return NEWFALSE
    if isinstance(o, int):
        return b"J" + struct.pack("<i", o)
    if isinstance(o, bytes):
        if len(o) < 256:
            return b"U" + bytes([len(o)]) + o
        return b"T" + struct.pack("<I", len(o)) + o
    if isinstance(o, tuple):
        return MARK + b"".join(_obj(x) for x in o) + TUPLE
    if isinstance(o, list):
        return EMPTY_LIST + (MARK + b"".join(_obj(x) for x in o) + APPENDS if o else b"")
    if isinstance(o, dict):
        return EMPTY_DICT + MARK + b"".join(_obj(k) + _obj(v) for k, v in o.items()) + SETITEMS
    if isinstance(o, np.ndarray):
        return _array(o)
    raise TypeError(type(o))


def _array(a: np.ndarray, module: str = "numpy.core.multiarray", dtype_code: bytes = b"u1") -> bytes:
    dtype = (_global("numpy", "dtype") + MARK + _obj(dtype_code) + _obj(0) + _obj(1) + TUPLE + REDUCE
             + _obj((3, b"|", None, None, None, -1, -1, 0)) + BUILD)
    head = (_global(module, "_reconstruct") + _global("numpy", "ndarray") + _obj((0,))
            + _obj(b"b") + TUPLE3 + REDUCE)
    state = MARK + _obj(1) + _obj(tuple(a.shape)) + dtype + NEWFALSE + _obj(a.tobytes()) + TUPLE
    return head + state + BUILD


def py2_pickle(obj) -> bytes:
    return PROTO + _obj(obj) + STOP


def _images(rng, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8)


def write_cifar10_python(directory: Path, n: int = 4, n_test: int = 3, seed: int = 0
                         ) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    train_x: List[np.ndarray] = []
    train_y: List[int] = []
    for i in range(1, 6):
        x, y = _images(rng, n), [int(v) for v in rng.integers(0, 10, n)]
        (directory / f"data_batch_{i}").write_bytes(py2_pickle(
            {b"batch_label": f"training batch {i} of 5".encode(), b"labels": y, b"data": x,
             b"filenames": [f"img{i}_{j}.png".encode() for j in range(n)]}))
        train_x.append(x)
        train_y += y
    tx, ty = _images(rng, n_test), [int(v) for v in rng.integers(0, 10, n_test)]
    (directory / "test_batch").write_bytes(py2_pickle(
        {b"batch_label": b"testing batch 1 of 1", b"labels": ty, b"data": tx,
         b"filenames": [b"t.png"] * n_test}))
    (directory / "batches.meta").write_bytes(py2_pickle(
        {b"num_cases_per_batch": n, b"label_names": [f"class{c}".encode() for c in range(10)],
         b"num_vis": 3072}))
    return {"train_x": np.concatenate(train_x), "train_y": np.array(train_y), "test_x": tx,
            "test_y": np.array(ty)}


def write_cifar10_binary(directory: Path, n: int = 4, n_test: int = 3, seed: int = 0
                         ) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    out: Dict[str, List[np.ndarray]] = {"train_x": [], "train_y": []}
    for name, count in [(f"data_batch_{i}.bin", n) for i in range(1, 6)] + [("test_batch.bin", n_test)]:
        x, y = _images(rng, count), rng.integers(0, 10, count, dtype=np.uint8)
        (directory / name).write_bytes(np.concatenate([y[:, None], x], axis=1).tobytes())
        if name.startswith("test"):
            out["test_x"], out["test_y"] = x, y
        else:
            out["train_x"].append(x)
            out["train_y"].append(y)
    return {"train_x": np.concatenate(out["train_x"]), "train_y": np.concatenate(out["train_y"]),
            "test_x": out["test_x"], "test_y": out["test_y"]}


def write_cifar100(directory: Path, binary: bool, n: int = 6, n_test: int = 3, seed: int = 0
                   ) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, count in (("train", n), ("test", n_test)):
        x = _images(rng, count)
        fine = rng.integers(0, 100, count, dtype=np.uint8)
        coarse = (fine // 5).astype(np.uint8)
        if binary:
            (directory / f"{split}.bin").write_bytes(
                np.concatenate([coarse[:, None], fine[:, None], x], axis=1).tobytes())
        else:
            (directory / split).write_bytes(py2_pickle(
                {b"filenames": [b"f.png"] * count, b"batch_label": split.encode(),
                 b"fine_labels": [int(v) for v in fine], b"coarse_labels": [int(v) for v in coarse],
                 b"data": x}))
        out.update({f"{split}_x": x, f"{split}_fine": fine, f"{split}_coarse": coarse})
    if not binary:
        (directory / "meta").write_bytes(py2_pickle(
            {b"fine_label_names": [f"f{c}".encode() for c in range(100)],
             b"coarse_label_names": [f"c{c}".encode() for c in range(20)]}))
    return out
