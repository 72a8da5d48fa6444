"""Checkpoints: one ``.npz`` file of host arrays, read without pickling.

Layout (format ``"gpuconv-checkpoint/2"``):

* ``"format"``: the format name and version, a 0-d unicode array;
* ``"model/<param name>"``: each parameter;
* ``"optimizer/<key>"``: the optimizer's flat state (see ``gpuconv.optim``), when saved;
* ``"training"``: a JSON document (0-d unicode array) with what a resumed run needs besides the
  arrays: ``"epoch"`` (epochs completed, or null), ``"data_seed"`` (the seed of the data order, or
  null), ``"schedule"`` (the learning-rate schedule's ``state_dict()``, or null) and ``"rng"``
  (``model.rng_state()``: the generator state of every layer that draws random numbers);
* ``"meta"``: a free JSON document for the caller.

Format 1 (no ``"training"`` entry) still loads: it restores the model and optimizer only. Files
are written with ``gpuconv.fileio.atomic_open`` (a temporary file renamed over the target), so a
failure never leaves a partial file and an older checkpoint at that path stays intact.

Reading never takes memory the file does not justify: every entry's ``.npy`` header (shape and
dtype) is read first and its size must agree with the zip member's; 0-d entries are bounded
(``MAX_TEXT_CHARS`` for strings). Given the model (and optimizer) it is for, ``read_checkpoint``
and ``load_checkpoint`` check every declared key, shape and dtype against them before reading any
array data; ``read_checkpoint(path, arrays=False)`` reads the documents only (to learn which model
to build). Loading validates everything before changing the model, the optimizer or the schedule.
"""
from __future__ import annotations

import json
import math
import os
import struct
import tokenize
import zipfile
import zlib
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from .. import fileio
from .module import Module

__all__ = ["save_checkpoint", "load_checkpoint", "read_checkpoint", "restore_checkpoint", "FORMAT",
           "MAX_TEXT_CHARS"]

_NAME = "gpuconv-checkpoint"
VERSION = 2
FORMAT = f"{_NAME}/{VERSION}"
_READABLE = (1, 2)
MAX_TEXT_CHARS = 1 << 20  # longest string entry ("meta", "training" and the like) read from a checkpoint
_MAX_0D_BYTES = 4 * MAX_TEXT_CHARS
_DEFLATE_MAX_RATIO = 1032  # no deflate stream expands more than this
_READ_CHUNK = 1 << 20
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}
# What a damaged zip or .npy can raise while being parsed (NumPy parses a .npy header as a Python
# literal: SyntaxError, tokenize.TokenError, RecursionError for deep nesting).
_CORRUPT = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, KeyError,
            NotImplementedError, zlib.error, struct.error, UnicodeDecodeError, OverflowError,
            SyntaxError, tokenize.TokenError, RecursionError)


def _json(what: str, value) -> str:
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} must be JSON-serialisable: {exc}") from None


def _optional_int(name: str, value) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise TypeError(f"{name} must be a non-negative int or None, got {value!r}")
    return int(value)


def save_checkpoint(path: os.PathLike[str] | str, model: Module, optimizer=None, schedule=None, *,
                    epoch: Optional[int] = None, data_seed: Optional[int] = None,
                    meta: Optional[Dict[str, Any]] = None) -> None:
    """Write ``model`` (and ``optimizer``, ``schedule``, the epochs completed, the data-order seed
    and the JSON-serialisable ``meta``) to ``path`` atomically, following ``gpuconv.fileio``'s rule
    (a symbolic link is followed; a directory or a device is refused with ValueError)."""
    if not isinstance(model, Module):
        raise TypeError(f"model must be a gpuconv.nn.Module, got {type(model).__name__}")
    training = {"epoch": _optional_int("epoch", epoch), "data_seed": _optional_int("data_seed", data_seed),
                "schedule": None if schedule is None else schedule.state_dict(),
                "rng": model.rng_state()}
    arrays = {"format": np.array(FORMAT), "meta": np.array(_json("meta", {} if meta is None else meta)),
              "training": np.array(_json("training state", training))}
    arrays.update((f"model/{k}", v) for k, v in model.state_dict().items())
    if optimizer is not None:
        arrays.update((f"optimizer/{k}", v) for k, v in optimizer.state_dict().items())
    with fileio.atomic_open(path, "wb", what="checkpoint path") as f:
        np.savez(f, **arrays)


_Header = Tuple[Tuple[int, ...], bool, np.dtype]


def _read_header(f, key: str) -> _Header:
    version = np.lib.format.read_magic(f)
    if version not in _HEADER_READERS:
        raise ValueError(f"entry {key!r} has unsupported .npy format version {version}")
    shape, fortran, dtype = _HEADER_READERS[version](f)
    if dtype.hasobject:
        raise ValueError(f"entry {key!r} holds Python objects (dtype {dtype}), which are never loaded")
    return tuple(int(d) for d in shape), bool(fortran), dtype


def _read_data(f, key: str, header: _Header) -> np.ndarray:
    """The array data after the header, read in chunks into an array of the declared size."""
    shape, fortran, dtype = header
    out = np.empty(math.prod(shape), dtype=dtype)
    raw = out.view(np.uint8) if out.nbytes else np.empty(0, np.uint8)
    pos = 0
    while pos < out.nbytes:
        chunk = f.read(min(_READ_CHUNK, out.nbytes - pos))
        if not chunk:
            raise ValueError(f"entry {key!r} is truncated: {pos} of {out.nbytes} data bytes")
        raw[pos:pos + len(chunk)] = np.frombuffer(chunk, np.uint8)
        pos += len(chunk)
    return out.reshape(shape, order="F" if fortran else "C")


def _read_entries(path: str, check: Callable[[Dict[str, Any]], None], arrays: bool) -> Dict[str, Any]:
    """Every entry of the .npz at ``path``. Headers come first; 0-d entries are read, and
    ``check`` gets them together with zero-stride stand-ins (right shape and dtype, no memory) of
    the others before any of those is read (never, unless ``arrays``)."""
    with zipfile.ZipFile(path) as zf:
        infos: Dict[str, zipfile.ZipInfo] = {}
        for info in zf.infolist():
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if key == info.filename or key in infos:
                raise ValueError(f"unexpected or repeated member {info.filename!r}")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise ValueError(f"member {info.filename!r} uses compression method "
                                 f"{info.compress_type}; only stored and deflated entries are read")
            if info.file_size > _DEFLATE_MAX_RATIO * info.compress_size + 1024:
                raise ValueError(f"member {info.filename!r} declares {info.file_size} bytes from "
                                 f"{info.compress_size} compressed bytes, more than deflate can give")
            infos[key] = info
        headers: Dict[str, _Header] = {}
        values: Dict[str, Any] = {}
        for key, info in infos.items():
            with zf.open(info) as f:
                header = _read_header(f, key)
                shape, _, dtype = header
                nbytes = math.prod(shape) * dtype.itemsize
                if f.tell() + nbytes != info.file_size:
                    raise ValueError(f"entry {key!r} declares shape {shape} dtype {dtype} "
                                     f"({nbytes} data bytes) but its member holds "
                                     f"{info.file_size - f.tell()}")
                if shape == ():
                    if nbytes > _MAX_0D_BYTES:
                        raise ValueError(f"entry {key!r} is a 0-d {dtype} of {nbytes} bytes, "
                                         f"more than the {_MAX_0D_BYTES} allowed")
                    values[key] = _read_data(f, key, header)
                else:
                    values[key] = np.broadcast_to(np.zeros((), dtype), shape)
            headers[key] = header
        check(values)
        for key, (shape, _, _) in headers.items():
            if shape != () and arrays:
                with zf.open(infos[key]) as f:
                    values[key] = _read_data(f, key, _read_header(f, key))
    return values


def _version(path: str, fmt) -> int:
    text = None if fmt is None or fmt.shape != () or fmt.dtype.kind != "U" else str(fmt)
    name, _, version = (text or "").partition("/")
    if name != _NAME or not version.isdigit():
        raise ValueError(f"{path!r} is not a gpuconv checkpoint: expected format {FORMAT!r}, got {text!r}")
    if int(version) not in _READABLE:
        raise ValueError(f"checkpoint {path!r} has format {text!r}, which this gpuconv cannot read "
                         f"(it reads versions {', '.join(map(str, _READABLE))}); "
                         f"{'upgrade gpuconv' if int(version) > VERSION else 'it is not a known version'}")
    return int(version)


def _document(path: str, arrays: Dict[str, np.ndarray], key: str, required: bool) -> Any:
    arr = arrays.pop(key, None)
    if arr is None:
        if required:
            raise ValueError(f"checkpoint {path!r} has no {key!r} entry")
        return None
    try:
        if arr.shape != () or arr.dtype.kind != "U":
            raise ValueError(f"expected a 0-d string, got shape {arr.shape} dtype {arr.dtype}")
        return json.loads(str(arr))
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"checkpoint {path!r} has an unreadable {key!r} entry: {exc}") from None


def _training(path: str, doc) -> Dict[str, Any]:
    if not isinstance(doc, dict) or set(doc) != {"epoch", "data_seed", "schedule", "rng"}:
        raise ValueError(f"checkpoint {path!r}: 'training' must hold exactly epoch, data_seed, "
                         f"schedule and rng, got {sorted(doc) if isinstance(doc, dict) else doc!r}")
    for key in ("epoch", "data_seed"):
        v = doc[key]
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise ValueError(f"checkpoint {path!r}: training {key!r} must be a non-negative int or "
                             f"null, got {v!r}")
    if doc["schedule"] is not None and not isinstance(doc["schedule"], dict):
        raise ValueError(f"checkpoint {path!r}: training 'schedule' must be an object or null")
    if not isinstance(doc["rng"], dict):
        raise ValueError(f"checkpoint {path!r}: training 'rng' must be an object")
    return doc


def _split(path: str, arrays: Dict[str, Any]) -> Dict[str, Any]:
    """The checkpoint's documents and sections from its raw entries (ValueError unless it is a
    gpuconv checkpoint of a readable version)."""
    arrays = dict(arrays)
    version = _version(path, arrays.pop("format", None))
    meta = _document(path, arrays, "meta", required=False)
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        raise ValueError(f"checkpoint {path!r}: 'meta' must be a JSON object")
    if version >= 2:
        training = _training(path, _document(path, arrays, "training", required=True))
    else:
        training = {"epoch": None, "data_seed": None, "schedule": None, "rng": None}
    model, optimizer = {}, {}
    for key, value in arrays.items():
        section, _, name = key.partition("/")
        if section == "model" and name:
            model[name] = value
        elif section == "optimizer" and name:
            optimizer[name] = value
        else:
            raise ValueError(f"checkpoint {path!r} has an unexpected entry {key!r}")
    return {"version": version, "model": model, "optimizer": optimizer or None, **training, "meta": meta,
            "path": path}


class _Refused(Exception):
    """Carries a ValueError of the content checks past the handler of damaged files."""


def read_checkpoint(path: os.PathLike[str] | str, model: Optional[Module] = None, optimizer=None, *,
                    arrays: bool = True) -> Dict[str, Any]:
    """Read and check a checkpoint file. Returns a dict with ``"version"`` (1 or 2), ``"model"``
    and ``"optimizer"`` (name -> array; optimizer None when not saved; both None when read with
    ``arrays=False``), ``"epoch"``, ``"data_seed"``, ``"schedule"`` (None when not saved), ``"rng"``
    (None in format 1), ``"meta"`` and ``"path"``.

    With ``model`` (and ``optimizer``), the entries' keys, shapes and dtypes are checked against
    them from the headers, before any array data is read (ValueError naming the entry). Without,
    memory stays within what the headers declare, each matching its zip member.

    Raises FileNotFoundError for a missing file and ValueError for one that is truncated,
    corrupt, of an unknown format version or not a gpuconv checkpoint.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path!r} is not a regular file")

    def check(values: Dict[str, Any]) -> None:
        try:
            ckpt = _split(path, values)
            if model is not None:
                model.check_state_dict(ckpt["model"])
            if optimizer is not None:  # shapes and dtypes here; values once read (restore_checkpoint)
                if ckpt["optimizer"] is None:
                    raise ValueError(f"checkpoint {path!r} holds no optimizer state")
                optimizer.check_entries(ckpt["optimizer"])
        except ValueError as exc:
            raise _Refused(exc) from None

    try:
        ckpt = _split(path, _read_entries(path, check, arrays))
    except _Refused as refused:
        raise refused.args[0] from None
    except PermissionError:
        raise
    except MemoryError:
        raise ValueError(f"checkpoint {path!r} declares more data than fits in memory") from None
    except _CORRUPT as exc:
        raise ValueError(f"checkpoint {path!r} is truncated or corrupt, or not an .npz file "
                         f"({type(exc).__name__}: {exc})") from None
    if not arrays:
        ckpt["model"] = ckpt["optimizer"] = None
    return ckpt


def restore_checkpoint(ckpt: Dict[str, Any], model: Module, optimizer=None, schedule=None) -> None:
    """Put a checkpoint read by ``read_checkpoint`` into ``model`` (parameters and random
    generators) and, when given, ``optimizer`` and ``schedule``. Keys, shapes, dtypes and the
    schedule's kind and parameters are checked strictly (ValueError naming what differs); nothing
    is changed unless the whole checkpoint fits."""
    where = f"checkpoint {ckpt.get('path', '<in memory>')!r}"
    if ckpt.get("model") is None:
        raise ValueError(f"{where} was read without its arrays (read_checkpoint(..., arrays=False)); "
                         f"read it with them to restore it")
    model.check_state_dict(ckpt["model"])
    if ckpt["rng"] is not None:
        model.check_rng_state(ckpt["rng"])
    if optimizer is not None:
        if ckpt["optimizer"] is None:
            raise ValueError(f"{where} holds no optimizer state")
        optimizer.check_state_dict(ckpt["optimizer"])
    if schedule is not None:
        if ckpt["schedule"] is None:
            raise ValueError(f"{where} holds no learning-rate schedule state"
                             + (" (format 1 predates it)" if ckpt["version"] < 2 else ""))
        schedule.check_state_dict(ckpt["schedule"])
    model.load_state_dict(ckpt["model"])
    if ckpt["rng"] is not None:
        model.load_rng_state(ckpt["rng"])
    if optimizer is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if schedule is not None:
        schedule.load_state_dict(ckpt["schedule"])


def load_checkpoint(path: os.PathLike[str] | str, model: Module, optimizer=None, schedule=None
                    ) -> Dict[str, Any]:
    """Load a checkpoint into ``model`` (and ``optimizer``, ``schedule``; see
    ``restore_checkpoint``) and return its ``meta`` dict. Every entry is checked against the
    model and the optimizer before its data is read."""
    ckpt = read_checkpoint(path, model, optimizer)
    restore_checkpoint(ckpt, model, optimizer, schedule)
    return ckpt["meta"]
