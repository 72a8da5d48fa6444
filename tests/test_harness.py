"""What the tools share (``gpuconv.tools.harness``): the backend factory, the tolerance pick, the
schema validator and the atomic JSON writer."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from gpuconv import tolerances
from gpuconv.backends.numpy_backend import NumpyBackend
from gpuconv.tools import bench, check, harness, train
from gpuconv.tools.harness import document, list_of, record, schema_errors, validate, value, write_json

SCHEMA = document("test/1", {
    "n": value("integer", minimum=1), "x": value("number", "null"), "frac": value("number", maximum=1.0),
    "rows": list_of(record({"name": value("string"), "ok": value("boolean")}))})


def good():
    return {"schema": "test/1", "n": 2, "x": None, "frac": 0.5, "rows": [{"name": "a", "ok": True}]}


# ---- schemas ------------------------------------------------------------------------------------
def test_every_document_schema_is_one_family():
    for schema in (bench.BENCH_SCHEMA, check.CHECK_SCHEMA, check.CHECK_SET_SCHEMA, train.METRICS_SCHEMA):
        assert schema["$schema"].startswith("https://json-schema.org/")
        assert schema["properties"]["schema"] == {"type": "string", "const": schema["$id"]}
        assert schema["required"][0] == "schema"


def test_schema_errors_name_every_departure_with_its_path():
    assert schema_errors(good(), SCHEMA) == []
    assert schema_errors(dict(good(), n=7, x=3), SCHEMA) == []          # an integer is a number
    doc = dict(good(), schema="other/1", n=True, x="1", frac=1.5,
               rows=[{"name": 3, "ok": 1}, {"ok": False}])
    assert schema_errors(doc, SCHEMA) == [
        "$.schema: must be 'test/1', got 'other/1'",
        "$.n: expected integer, got boolean",
        "$.x: expected number or null, got string",
        "$.frac: must be <= 1.0, got 1.5",
        "$.rows[0].name: expected string, got integer",
        "$.rows[0].ok: expected boolean, got integer",
        "$.rows[1]: missing key 'name'"]
    assert schema_errors(dict(good(), n=0), SCHEMA) == ["$.n: must be >= 1, got 0"]
    assert schema_errors(dict(good(), frac=float("nan")), SCHEMA) == ["$.frac: expected number, got nan"]
    assert schema_errors(dict(good(), x=float("inf")), SCHEMA) == ["$.x: expected number or null, got inf"]
    assert schema_errors([good()], SCHEMA) == ["$: expected object, got array"]


def test_validate_raises_value_error_listing_the_problems():
    validate(good(), SCHEMA)
    with pytest.raises(ValueError, match=r"metrics does not follow its schema: \$: missing key 'n'"):
        validate({k: v for k, v in good().items() if k != "n"}, SCHEMA, "metrics")
    with pytest.raises(ValueError, match="types must be among"):
        value("float")


# ---- writing ------------------------------------------------------------------------------------
def test_write_json_writes_valid_json_with_nan_as_null(tmp_path):
    path = tmp_path / "new" / "doc.json"          # a missing directory is created
    write_json(str(path), dict(good(), x=float("nan"), n=np.int64(3)), SCHEMA)
    assert json.loads(path.read_text()) == dict(good(), n=3)
    assert os.listdir(path.parent) == ["doc.json"]


def test_write_json_refuses_a_document_off_its_schema_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "doc.json"
    path.write_text("old\n")
    with pytest.raises(ValueError, match=r"\$.n: expected integer"):
        write_json(str(path), dict(good(), n="two"), SCHEMA)
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["doc.json"]


def test_write_json_is_atomic_and_synced(tmp_path, monkeypatch):
    """The text reaches a temporary file in the same directory, is synced, then replaces the
    target in one rename: when the rename fails, the old file is intact and nothing is left."""
    path = tmp_path / "doc.json"
    path.write_text("old\n")
    synced, renamed = [], []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        synced.append(fd)
        real_fsync(fd)

    def failing_replace(src, dst):
        renamed.append((os.path.dirname(src), os.path.basename(src), json.loads(open(src).read())))
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_json(str(path), good(), SCHEMA)
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["doc.json"]
    (folder, name, content), = renamed
    assert folder == str(tmp_path) and name.startswith(".doc.json.") and content == good()
    assert synced                                   # flushed to disk before the rename
    monkeypatch.setattr(os, "replace", real_replace)
    write_json(str(path), good(), SCHEMA)
    assert json.loads(path.read_text()) == good()


# ---- backends and tolerances --------------------------------------------------------------------
def test_tolerance_for_picks_tf32_or_the_dtypes_own():
    assert tolerances.tolerance_for("tf32", np.float32) == tolerances.TF32_RTOL
    assert tolerances.tolerance_for("fp32", np.float32) == tolerances.FLOAT32_RTOL
    assert tolerances.tolerance_for("fp32", np.float64) == tolerances.FLOAT64_RTOL
    with pytest.raises(ValueError, match="precision"):
        tolerances.tolerance_for("bf16", np.float32)


def test_make_backend_and_device():
    assert isinstance(harness.make_backend("numpy"), NumpyBackend)
    for bad in ("auto", "gpu", None):
        with pytest.raises(ValueError, match="backend must be one of"):
            harness.make_backend(bad)
    assert [harness.device(b) for b in ("numpy", "emulator", "cuda")] == ["cpu", "cpu", "cuda"]
    assert isinstance(harness.timer_for("emulator"), harness.WallTimer)


def test_make_backend_poisons_kernel_backends_only_when_asked():
    pytest.importorskip("gpuconv.backends.kernel_backend")
    plain, poisoned = harness.make_backend("emulator"), harness.make_backend("emulator", poison=True)
    assert (plain.poison, poisoned.poison) == (False, True) and plain is not poisoned
