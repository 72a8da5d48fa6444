"""Bounded fuzzing of every file reader (IDX images and labels, CIFAR batches, checkpoints) with
Hypothesis: any byte string, and mutations of valid files (bytes flipped, cut, inserted; header
fields and .npy headers rewritten with consistent zip CRCs), gives a valid result or a ValueError,
within a time limit (the deadline) and a memory limit (peak traced allocations), and a refused
checkpoint leaves the model and optimizer unchanged.
"""
from __future__ import annotations

import gzip
import io
import pickle
import struct
import tempfile
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("hypothesis")
from hypothesis import event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.control import currently_in_test_context  # noqa: E402

from gpuconv import cifar, datasets, nn, optim  # noqa: E402
from gpuconv.nn.checkpoint import read_checkpoint  # noqa: E402

SETTINGS = settings(max_examples=200, deadline=2000)
MEMORY_LIMIT = 32 << 20  # traced bytes at peak, for files of a few kB


def _bounded(fn):
    """fn()'s result, or the ValueError it raised; fails on anything else or on a peak of traced
    memory over MEMORY_LIMIT."""
    tracemalloc.start()
    try:
        try:
            out = fn()
        except ValueError as exc:
            out = exc
        peak = tracemalloc.get_traced_memory()[1]
        if currently_in_test_context():
            event("refused" if isinstance(out, ValueError) else "read")  # --hypothesis-show-statistics
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_LIMIT, f"peak {peak} bytes"
    return out


@st.composite
def mutations(draw, data: bytes) -> bytes:
    """``data`` with a few random edits: flips, overwrites, cuts, insertions, deletions."""
    b = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "overwrite", "cut", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(b) - 1, 0)))
        if op == "flip" and b:
            b[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            b[pos:pos + len(chunk)] = chunk
        elif op == "cut":
            del b[pos:]
        elif op == "insert":
            b[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif b:
            del b[pos:pos + draw(st.integers(1, 16))]
    return bytes(b)


# ---- IDX --------------------------------------------------------------------------------------------

def _idx(array: np.ndarray, code: int = 0x08) -> bytes:
    dt = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    return (struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
            + array.astype(dt).tobytes())


VALID_IDX = [_idx(np.arange(2 * 5 * 5).reshape(2, 5, 5) % 256), _idx(np.arange(7) % 10),
             _idx(np.linspace(-1, 1, 12).reshape(3, 4), 0x0D), _idx(np.arange(6).reshape(1, 2, 3), 0x0B)]


@st.composite
def idx_files(draw) -> bytes:
    kind = draw(st.sampled_from(["random", "mutated", "mutated", "dims", "gz"]))
    if kind == "random":
        return draw(st.binary(max_size=200))
    base = draw(st.sampled_from(VALID_IDX))
    if kind == "dims":  # a header declaring other dimensions (up to 2^32 - 1 each)
        ndim = base[3]
        dims = draw(st.lists(st.integers(0, 2**32 - 1), min_size=ndim, max_size=ndim))
        base = base[:4] + struct.pack(f">{ndim}I", *dims) + base[4 + 4 * ndim:]
        return base
    data = draw(mutations(base))
    if kind == "gz":
        data = gzip.compress(data, mtime=0)
        if draw(st.booleans()):
            data = draw(mutations(data))
    return data


@SETTINGS
@given(data=idx_files())
def test_read_idx_gives_an_array_or_a_value_error(data):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "f"
        path.write_bytes(data)
        out = _bounded(lambda: datasets.read_idx(path))
    if isinstance(out, np.ndarray):
        raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
        assert out.shape == struct.unpack(f">{raw[3]}I", raw[4:4 + 4 * raw[3]])
        assert out.dtype.isnative


@settings(max_examples=60, deadline=4000)
@given(which=st.sampled_from(["train-images", "train-labels", "t10k-images", "t10k-labels"]),
       data=st.data())
def test_load_idx_dataset_gives_a_dataset_or_a_value_error(which, data):
    rng = np.random.default_rng(0)
    files = {"train-images": _idx(rng.integers(0, 256, (6, 4, 4))), "train-labels": _idx(np.arange(6) % 3),
             "t10k-images": _idx(rng.integers(0, 256, (3, 4, 4))), "t10k-labels": _idx(np.arange(3) % 3)}
    files[which] = data.draw(mutations(files[which]))
    with tempfile.TemporaryDirectory() as d:
        for name, content in files.items():
            prefix, kind = name.split("-")
            (Path(d) / f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte").write_bytes(content)
        out = _bounded(lambda: datasets.load_idx_dataset(d))
    if not isinstance(out, ValueError):
        assert np.isfinite(out.train.images).all() and len(out.test) >= 1


# ---- checkpoints --------------------------------------------------------------------------------------

def _model_and_optimizer():
    model = nn.Sequential(nn.Linear(3, 2, rng=0), nn.ReLU(), nn.Linear(2, 2, rng=1))
    opt = optim.Adam(model.parameters(), lr=1e-2)
    for p in model.parameters():
        p.grad = np.ones(p.shape, p.dtype)
    opt.step()
    return model, opt


def _checkpoint_bytes() -> bytes:
    model, opt = _model_and_optimizer()
    with tempfile.TemporaryDirectory() as d:
        nn.save_checkpoint(Path(d) / "c.npz", model, opt, meta={"epoch": 1})
        return (Path(d) / "c.npz").read_bytes()


VALID_CHECKPOINT = _checkpoint_bytes()
DESCRS = ["<f4", "<f8", ">f4", "<i8", "|u1", "|b1", "<U7", "<U400000000", "|V8", "|O", "<c8", "|S3"]


def _npy_header(shape, descr: str, fortran: bool) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": fortran, "shape": shape})
    return buf.getvalue()


@st.composite
def checkpoint_files(draw) -> bytes:
    kind = draw(st.sampled_from(["random", "mutated", "entry", "entry", "entry"]))
    if kind == "random":
        return draw(st.binary(max_size=400))
    if kind == "mutated":
        return draw(mutations(VALID_CHECKPOINT))
    # Rewrite one member (CRC and sizes consistent, so the reader gets past the zip layer).
    with zipfile.ZipFile(io.BytesIO(VALID_CHECKPOINT)) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    name = draw(st.sampled_from(sorted(members) + ["model/extra.npy", "stray.txt"]))
    shape = tuple(draw(st.lists(st.integers(0, 2**40), max_size=3)))
    how = draw(st.sampled_from(["header", "header+data", "bytes", "drop"]))
    if how == "drop":
        members.pop(name, None)
    elif how == "bytes":
        members[name] = draw(mutations(members.get(name, b"\x93NUMPY")))
    else:
        head = _npy_header(shape, draw(st.sampled_from(DESCRS)), draw(st.booleans()))
        members[name] = head + (draw(st.binary(max_size=64)) if how == "header+data" else b"")
    out = io.BytesIO()
    method = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    with zipfile.ZipFile(out, "w", compression=method) as zf:
        for n, content in members.items():
            zf.writestr(n, content)
    return out.getvalue()


@SETTINGS
@given(data=checkpoint_files())
def test_checkpoint_readers_give_a_checkpoint_or_a_value_error(data):
    model, opt = _model_and_optimizer()
    before_model, before_opt = model.state_dict(), opt.state_dict()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.npz"
        path.write_bytes(data)
        raw = _bounded(lambda: read_checkpoint(path))
        meta = _bounded(lambda: nn.load_checkpoint(path, model, opt))
    if isinstance(raw, ValueError):
        assert isinstance(meta, ValueError)
    if isinstance(meta, ValueError):
        after_model, after_opt = model.state_dict(), opt.state_dict()
        assert all(np.array_equal(after_model[k], v) for k, v in before_model.items())
        assert after_opt.keys() == before_opt.keys()
        assert all(np.array_equal(after_opt[k], v) for k, v in before_opt.items())
    else:
        assert isinstance(meta, dict)
        opt.step()  # a loaded state is usable


# ---- CIFAR batches ----------------------------------------------------------------------------------

def _python_batch(n: int = 2) -> bytes:
    data = (np.arange(n * cifar.IMAGE_BYTES) % 251).astype(np.uint8).reshape(n, cifar.IMAGE_BYTES)
    return pickle.dumps({b"data": data, b"labels": list(range(n)), b"batch_label": b"x"}, protocol=2)


VALID_CIFAR = {"python": _python_batch(), "binary": bytes(range(256)) * 24 + bytes(range(1 + 2 * 1))}
VALID_CIFAR["binary"] = VALID_CIFAR["binary"][:2 * (1 + cifar.IMAGE_BYTES)]


@SETTINGS
@given(kind=st.sampled_from(["python", "binary"]), how=st.sampled_from(["random", "mutated", "mutated"]),
       data=st.data())
def test_cifar_batches_give_images_or_a_value_error(kind, how, data):
    raw = data.draw(st.binary(max_size=400) if how == "random" else mutations(VALID_CIFAR[kind]))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "batch"
        path.write_bytes(raw)
        read = cifar.read_python_batch if kind == "python" else cifar.read_binary_batch
        out = _bounded(lambda: read(path))
    if not isinstance(out, ValueError):
        images = out[0]
        assert images.dtype == np.uint8 and images.shape[1:] == cifar.IMAGE_SHAPE


def _reconstruct_pickle(shape, labels: int) -> bytes:
    """A CIFAR-like dict whose 'data' comes from numpy's _reconstruct with ``shape`` and no state
    (no BUILD): an array the stream sized but never filled."""
    dims = b"".join(b"J" + struct.pack("<i", d) for d in shape)
    return (b"\x80\x02}(C\x04datacnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n(" + dims + b"t"
            + b"C\x01B\x87R" + b"C\x06labels" + pickle.dumps(list(range(labels)), protocol=2)[2:-1] + b"u.")


@pytest.mark.parametrize("shape, labels", [((2, 3072), 2), ((2**31 - 1,), 0), ((1, 2**31 - 1), 1)])
def test_a_cifar_pickle_cannot_size_an_array_without_its_data(tmp_path, shape, labels):
    """A 100-byte pickle asking numpy's reconstructor for a (2, 3072) uint8 array and no state gave
    two images of uninitialised memory; one asking for 2 GiB got them (virtual, but reserved)."""
    path = tmp_path / "data_batch_1"
    path.write_bytes(_reconstruct_pickle(shape, labels))
    out = _bounded(lambda: cifar.read_python_batch(path))
    assert isinstance(out, ValueError) and "empty" in str(out)
