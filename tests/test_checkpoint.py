"""Checkpoints: round trip, atomic writes, and validation of what is loaded."""
from __future__ import annotations

import io
import os
import stat
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import peak_memory

from gpuconv import nn, optim, schedules
from gpuconv.models import build_model
from gpuconv.nn.checkpoint import read_checkpoint


def _trained(seed: int = 0):
    model = build_model("lenet", 1, 8, 10, seed=seed)
    opt = optim.Adam(model.parameters(), lr=1e-2)
    x = np.random.default_rng(seed).standard_normal((4, 1, 8, 8)).astype(np.float32)
    loss = nn.SoftmaxCrossEntropy()
    loss(model.forward(x), np.arange(4))
    model.backward(loss.backward())
    opt.step()
    return model, opt


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)


def test_round_trip_restores_model_optimizer_and_meta(tmp_path):
    model, opt = _trained(0)
    path = tmp_path / "ckpt.npz"
    nn.save_checkpoint(path, model, opt, meta={"epoch": 3, "name": "lenet"})
    other, other_opt = _trained(1)
    meta = nn.load_checkpoint(path, other, other_opt)
    assert meta == {"epoch": 3, "name": "lenet"}
    assert _same(model, other)
    sa, sb = opt.state_dict(), other_opt.state_dict()
    assert sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)
    with np.load(path, allow_pickle=False) as data:  # loadable without pickle
        assert "model/0.weight" in data.files
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.npz"]


def test_truncated_or_corrupt_file_is_a_clear_error_and_model_unchanged(tmp_path):
    model, _ = _trained(0)
    path = tmp_path / "ckpt.npz"
    nn.save_checkpoint(path, model)
    raw = path.read_bytes()
    target, _ = _trained(1)
    before = target.state_dict()
    for i, data in enumerate((raw[: len(raw) // 2], raw[:10], b"not a zip file at all")):
        bad = tmp_path / f"bad{i}.npz"
        bad.write_bytes(data)
        with pytest.raises(ValueError, match="truncated or corrupt"):
            nn.load_checkpoint(bad, target)
    flipped = bytearray(raw)
    flipped[len(raw) // 3] ^= 0xFF
    (tmp_path / "flip.npz").write_bytes(bytes(flipped))
    with pytest.raises(ValueError):
        nn.load_checkpoint(tmp_path / "flip.npz", target)
    assert all(np.array_equal(v, before[k]) for k, v in target.state_dict().items())
    with pytest.raises(FileNotFoundError):
        nn.load_checkpoint(tmp_path / "absent.npz", target)


def test_wrong_shape_dtype_missing_and_extra_keys_are_named(tmp_path):
    model, _ = _trained(0)
    state = model.state_dict()

    def write(arrays, name):
        path = tmp_path / name
        payload = {"format": np.array("gpuconv-checkpoint/1"), "meta": np.array("{}")}
        payload.update((f"model/{k}", v) for k, v in arrays.items())
        np.savez(path, **payload)
        return path

    target, _ = _trained(1)
    before = target.state_dict()
    wrong_shape = dict(state, **{"7.weight": np.zeros((120, 255), np.float32)})
    with pytest.raises(ValueError, match=r"7\.weight.*\(120, 255\).*\(120, 256\)"):
        nn.load_checkpoint(write(wrong_shape, "shape.npz"), target)
    wrong_dtype = dict(state, **{"0.weight": state["0.weight"].astype(np.float64)})
    with pytest.raises(ValueError, match="0.weight.*float64.*float32"):
        nn.load_checkpoint(write(wrong_dtype, "dtype.npz"), target)
    missing = {k: v for k, v in state.items() if k != "11.bias"}
    with pytest.raises(ValueError, match="missing keys.*11.bias"):
        nn.load_checkpoint(write(missing, "missing.npz"), target)
    extra = dict(state, **{"99.weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="unexpected keys.*99.weight"):
        nn.load_checkpoint(write(extra, "extra.npz"), target)
    np.savez(tmp_path / "plain.npz", a=np.zeros(2))
    with pytest.raises(ValueError, match="not a gpuconv checkpoint"):
        nn.load_checkpoint(tmp_path / "plain.npz", target)
    assert all(np.array_equal(v, before[k]) for k, v in target.state_dict().items())


def test_bad_optimizer_state_leaves_model_unchanged(tmp_path):
    model, opt = _trained(0)
    path = tmp_path / "ckpt.npz"
    nn.save_checkpoint(path, model, opt)
    target, _ = _trained(1)
    before = target.state_dict()
    with pytest.raises(ValueError, match="expected 'SGD'"):
        nn.load_checkpoint(path, target, optim.SGD(target.parameters(), lr=0.1))
    assert all(np.array_equal(v, before[k]) for k, v in target.state_dict().items())
    nn.save_checkpoint(tmp_path / "noopt.npz", model)
    with pytest.raises(ValueError, match="no optimizer state"):
        nn.load_checkpoint(tmp_path / "noopt.npz", target, optim.Adam(target.parameters()))


def test_failed_write_leaves_no_partial_file_and_old_checkpoint_intact(tmp_path, monkeypatch):
    model, _ = _trained(0)
    path = tmp_path / "ckpt.npz"
    nn.save_checkpoint(path, model, meta={"version": "old"})
    old_bytes = path.read_bytes()
    newer, _ = _trained(1)
    real_savez = np.savez

    def failing_savez(f, **arrays):
        real_savez(f, **arrays)
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        nn.save_checkpoint(path, newer, meta={"version": "new"})
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]
    assert path.read_bytes() == old_bytes
    fresh, _ = _trained(2)
    assert nn.load_checkpoint(path, fresh) == {"version": "old"}
    assert _same(fresh, model)
    with pytest.raises(TypeError, match="JSON"):
        nn.save_checkpoint(tmp_path / "x.npz", model, meta={"bad": object()})
    assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]


def test_checkpoint_file_gets_the_umask_permissions_of_a_regular_file(tmp_path):
    model = nn.Sequential(nn.Linear(2, 2, rng=0))
    old = os.umask(0o022)
    try:
        nn.save_checkpoint(tmp_path / "m.npz", model)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "m.npz").st_mode) == 0o644
    assert os.listdir(tmp_path) == ["m.npz"]  # no temporary file left behind


# ---- memory bounded by the model: headers are checked before any data is read -----------------

def _npy_header(shape, dtype) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                               "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue()


def _npy(value) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(value), allow_pickle=False)
    return buf.getvalue()


def _write_zip(path, members) -> None:
    """A zip of deflated members written by hand, so that a member may be a header followed by
    ``zeros`` zero bytes (deflated by repeating one fully flushed block: 256 MiB cost ~0.3 MB and
    no time to build), with honest sizes and CRC-32."""
    chunk = bytes(1 << 20)
    out, central = bytearray(), bytearray()
    for name, head, zeros in members:
        assert zeros % len(chunk) == 0
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        data = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
        block = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)  # the same bytes for every chunk
        data += block * (zeros // len(chunk)) + c.flush()
        crc = zlib.crc32(head)
        for _ in range(zeros // len(chunk)):
            crc = zlib.crc32(chunk, crc)
        size, raw = len(head) + zeros, name.encode()
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, crc, len(data), size,
                               len(raw), 0, 0, 0, 0, 0, len(out)) + raw
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(data), size, len(raw), 0)
        out += raw + data
    n = len(members)
    out += central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(central), len(out), 0)
    Path(path).write_bytes(bytes(out))


def _members_of(model, **override):
    """The members of a valid checkpoint of ``model``, with some replaced: name -> (header, zeros)."""
    members = {"format.npy": (_npy("gpuconv-checkpoint/1"), 0), "meta.npy": (_npy("{}"), 0)}
    members.update((f"model/{k}.npy", (_npy(v), 0)) for k, v in model.state_dict().items())
    members.update(override)
    return [(name, head, zeros) for name, (head, zeros) in members.items()]



def test_a_large_entry_of_the_wrong_shape_is_refused_from_its_header(tmp_path):
    """256 MiB declared (0.3 MB of file): the old reader decompressed all of it before the shape
    check; now the declared shape is compared with the model's before any data is read."""
    model, _ = _trained(0)
    path = tmp_path / "big.npz"
    big = 1 << 28
    _write_zip(path, _members_of(model, **{"model/0.weight.npy": (_npy_header((big // 4,), "<f4"), big)}))
    assert path.stat().st_size < 1 << 20
    with zipfile.ZipFile(path) as zf:  # a well-formed zip: every CRC checks out
        assert zf.testzip() is None
    before = model.state_dict()

    def load():
        with pytest.raises(ValueError, match=r"0\.weight.*\(67108864,\).*\(32, 1, 5, 5\)"):
            nn.load_checkpoint(path, model)

    assert peak_memory(load)[1] < 8 << 20
    assert all(np.array_equal(v, before[k]) for k, v in model.state_dict().items())


def test_documents_first_then_arrays_checked_against_the_model_built_from_them(tmp_path):
    """What train --resume, eval and predict do: read the documents only (to learn the model),
    build the model, then load the arrays, each checked against it before its data is read."""
    model, _ = _trained(0)
    path = tmp_path / "big.npz"
    big = 1 << 28
    _write_zip(path, _members_of(model, **{"meta.npy": (_npy('{"model": "lenet"}'), 0),
                                           "model/0.weight.npy": (_npy_header((big // 4,), "<f4"), big)}))
    seen = {}

    def documents():
        seen["ckpt"] = read_checkpoint(path, arrays=False)

    assert peak_memory(documents)[1] < 8 << 20
    ckpt = seen["ckpt"]
    assert ckpt["meta"] == {"model": "lenet"} and ckpt["model"] is None and ckpt["version"] == 1
    with pytest.raises(ValueError, match="without its arrays"):
        nn.restore_checkpoint(ckpt, model)

    def arrays():
        with pytest.raises(ValueError, match=r"0\.weight.*\(67108864,\)"):
            read_checkpoint(path, model)

    assert peak_memory(arrays)[1] < 8 << 20


@pytest.mark.parametrize("key, head, match", [
    # 373 GiB declared by the header, a few bytes held: a raw MemoryError before
    ("model/0.weight.npy", _npy_header((100_000_000_000,), "<f4"), "declares shape"),
    ("optimizer/state.0.exp_avg.npy", _npy_header((10**6, 10**6), "<f8"), "declares shape"),
    # a 0-d string entry of 400 MB declared
    ("meta.npy", _npy_header((), "<U100000000"), "declares shape|0-d"),
    ("model/0.weight.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': '|O'}   \n", "corrupt"),
])
def test_entries_declaring_more_than_their_member_holds_are_refused_without_reading(tmp_path, key, head,
                                                                                       match):
    model, opt = _trained(0)
    path = tmp_path / "lie.npz"
    _write_zip(path, _members_of(model, **{key: (head, 0)}))
    for read in (lambda: read_checkpoint(path), lambda: nn.load_checkpoint(path, model, opt)):
        def run(read=read):
            with pytest.raises(ValueError, match=match):
                read()
        assert peak_memory(run)[1] < 4 << 20


# ---- format 2: what a resumed run needs -------------------------------------------------------

def _with_dropout(seed: int):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32, rng=seed), nn.ReLU(), nn.Dropout(0.5, seed=seed),
                          nn.Linear(32, 10, rng=seed + 1))
    opt = optim.Adam(model.parameters(), lr=1e-2)
    return model, opt, schedules.Cosine(opt, total_steps=50)


def _steps(model, opt, sched, n: int, seed: int = 5):
    """n training steps on fixed batches; returns the losses."""
    rng = np.random.default_rng(seed)
    loss_fn, losses = nn.SoftmaxCrossEntropy(), []
    for _ in range(n):
        x = rng.standard_normal((4, 1, 8, 8)).astype(np.float32)
        losses.append(float(loss_fn(model.forward(x), np.arange(4))))
        model.backward(loss_fn.backward())
        opt.step()
        sched.step()
    return losses


def test_format_2_carries_schedule_epoch_seed_and_dropout_generators(tmp_path):
    model, opt, sched = _with_dropout(0)
    _steps(model, opt, sched, 3)
    path = tmp_path / "ckpt.npz"
    nn.save_checkpoint(path, model, opt, sched, epoch=3, data_seed=7, meta={"note": "x"})
    expected = _steps(model, opt, sched, 4)          # what the original run does next

    other, other_opt, other_sched = _with_dropout(1)  # other weights, other dropout stream
    assert nn.load_checkpoint(path, other, other_opt, other_sched) == {"note": "x"}
    assert other_sched.last_step == 3 and other_opt.lr == sched.lr_at(3)
    assert _steps(other, other_opt, other_sched, 4) == expected  # bit for bit, dropout included
    assert _same(model, other)
    ckpt = nn.read_checkpoint(path)
    assert (ckpt["version"], ckpt["epoch"], ckpt["data_seed"]) == (2, 3, 7)
    assert ckpt["schedule"]["kind"] == "cosine" and set(ckpt["rng"]) == {"3"}


def test_format_1_files_still_load_without_training_state(tmp_path):
    model, _ = _trained(0)
    path = tmp_path / "v1.npz"
    np.savez(path, format=np.array("gpuconv-checkpoint/1"), meta=np.array('{"old": true}'),
             **{f"model/{k}": v for k, v in model.state_dict().items()})
    target, opt = _trained(1)
    assert nn.load_checkpoint(path, target) == {"old": True}
    assert _same(model, target)
    ckpt = nn.read_checkpoint(path)
    assert ckpt["version"] == 1 and ckpt["epoch"] is None and ckpt["schedule"] is None
    with pytest.raises(ValueError, match="no learning-rate schedule state.*format 1 predates it"):
        nn.load_checkpoint(path, target, schedule=schedules.Constant(opt))


def test_unknown_versions_and_bad_training_state_are_named(tmp_path):
    model, opt, sched = _with_dropout(0)
    path = tmp_path / "ckpt.npz"
    nn.save_checkpoint(path, model, opt, sched, epoch=1)
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}

    def variant(name, **changes):
        p = tmp_path / name
        np.savez(p, **dict(arrays, **changes))
        return p

    with pytest.raises(ValueError, match="format 'gpuconv-checkpoint/3'.*upgrade gpuconv"):
        nn.read_checkpoint(variant("v3.npz", format=np.array("gpuconv-checkpoint/3")))
    with pytest.raises(ValueError, match="not a gpuconv checkpoint"):
        nn.read_checkpoint(variant("other.npz", format=np.array("someone-else/2")))
    with pytest.raises(ValueError, match="unreadable 'training'"):
        nn.read_checkpoint(variant("json.npz", training=np.array("{not json")))
    with pytest.raises(ValueError, match="'epoch' must be a non-negative int"):
        nn.read_checkpoint(variant("epoch.npz", training=np.array(
            '{"epoch": -1, "data_seed": null, "schedule": null, "rng": {}}')))
    with pytest.raises(ValueError, match="has no 'training' entry"):
        nn.read_checkpoint(_without(tmp_path, arrays))

    target, target_opt, _ = _with_dropout(1)
    before = target.state_dict()
    with pytest.raises(ValueError, match="'total_steps' is 50 in the state and 60 here"):
        nn.load_checkpoint(path, target, target_opt, schedules.Cosine(target_opt, total_steps=60))
    no_dropout = nn.Sequential(nn.Flatten(), nn.Linear(64, 32, rng=0), nn.ReLU(), nn.Identity(),
                               nn.Linear(32, 10, rng=1))
    with pytest.raises(ValueError, match=r"random-generator state is for layers \['3'\]"):
        nn.load_checkpoint(path, no_dropout)
    assert all(np.array_equal(v, before[k]) for k, v in target.state_dict().items())


def _without(tmp_path, arrays):
    p = tmp_path / "no-training.npz"
    np.savez(p, **{k: v for k, v in arrays.items() if k != "training"})
    return p


def test_save_refuses_bad_epoch_and_seed(tmp_path):
    model, _ = _trained(0)
    with pytest.raises(TypeError, match="epoch"):
        nn.save_checkpoint(tmp_path / "x.npz", model, epoch=-1)
    with pytest.raises(TypeError, match="data_seed"):
        nn.save_checkpoint(tmp_path / "x.npz", model, data_seed=1.5)
    assert os.listdir(tmp_path) == []
