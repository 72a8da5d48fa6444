"""Checkpoints: one ``.npz`` file of host arrays, loaded without pickling.

Layout: ``"format"`` (``"gpuconv-checkpoint/1"``), ``"model/<param name>"`` for each parameter,
``"optimizer/<key>"`` for the optimizer's flat state (see ``gpuconv.optim``), and ``"meta"``, a
JSON document as a 0-d unicode array. Files are written with ``gpuconv.fileio.atomic_open``
(temporary file renamed over the target), so a failure never leaves a partial file and an older
checkpoint at that path stays intact.

Reading never takes memory the file does not justify: every entry's ``.npy`` header (shape and
dtype) is read first, and its size must agree with the zip member's declared size; 0-d entries
are bounded (``MAX_TEXT_CHARS`` for strings). ``load_checkpoint`` checks every declared shape and
dtype against the model and the optimizer before reading any array data, and changes nothing
unless the whole checkpoint fits.
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

__all__ = ["save_checkpoint", "load_checkpoint", "read_checkpoint", "FORMAT", "MAX_TEXT_CHARS"]

FORMAT = "gpuconv-checkpoint/1"
MAX_TEXT_CHARS = 1 << 20  # longest string entry ("meta" and the like) read from a checkpoint
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


def save_checkpoint(path: os.PathLike[str] | str, model: Module, optimizer=None,
                    meta: Optional[Dict[str, Any]] = None) -> None:
    """Write ``model`` (and ``optimizer``, and the JSON-serialisable ``meta``) to ``path``
    atomically, following ``gpuconv.fileio``'s rule (a symbolic link is followed; a directory or
    a device is refused with ValueError)."""
    if not isinstance(model, Module):
        raise TypeError(f"model must be a gpuconv.nn.Module, got {type(model).__name__}")
    try:
        meta_json = json.dumps({} if meta is None else meta, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"meta must be JSON-serialisable: {exc}") from None
    arrays = {"format": np.array(FORMAT), "meta": np.array(meta_json)}
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


def _read_entries(path: str, check: Optional[Callable[[Dict[str, Any]], None]]) -> Dict[str, np.ndarray]:
    """Every entry of the .npz at ``path``. Headers come first; 0-d entries are read, and
    ``check`` gets them together with zero-stride stand-ins (right shape and dtype, no memory) of
    the others before any of those is read."""
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
        if check is not None:
            check(values)
        for key, (shape, _, _) in headers.items():
            if shape != ():
                with zf.open(infos[key]) as f:
                    values[key] = _read_data(f, key, _read_header(f, key))
    return values


def _split(path: str, arrays: Dict[str, Any]) -> Dict[str, Any]:
    """{"model", "optimizer" or None, "meta"} from the raw entries (ValueError unless it is a
    gpuconv checkpoint)."""
    arrays = dict(arrays)
    fmt = arrays.pop("format", None)
    if fmt is None or fmt.shape != () or fmt.dtype.kind != "U" or str(fmt) != FORMAT:
        shown = None if fmt is None else (str(fmt) if fmt.shape == () else f"an array of shape {fmt.shape}")
        raise ValueError(f"{path!r} is not a gpuconv checkpoint: expected format {FORMAT!r}, got "
                         f"{shown!r}")
    meta_arr = arrays.pop("meta", None)
    if meta_arr is not None and (meta_arr.shape != () or meta_arr.dtype.kind != "U"):
        raise ValueError(f"checkpoint {path!r} has a 'meta' entry of shape {meta_arr.shape} dtype "
                         f"{meta_arr.dtype}, expected a 0-d string")
    try:
        meta = json.loads(str(meta_arr)) if meta_arr is not None else {}
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"checkpoint {path!r} has an unreadable 'meta' entry: {exc}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"checkpoint {path!r} has a 'meta' entry that is not a JSON object")
    model, optimizer = {}, {}
    for key, value in arrays.items():
        section, _, name = key.partition("/")
        if section == "model" and name:
            model[name] = value
        elif section == "optimizer" and name:
            optimizer[name] = value
        else:
            raise ValueError(f"checkpoint {path!r} has an unexpected entry {key!r}")
    return {"model": model, "optimizer": optimizer or None, "meta": meta}


class _Refused(Exception):
    """Carries a ValueError of the content checks past the handler of damaged files."""


def _read(path: os.PathLike[str] | str, check: Optional[Callable[[Dict[str, Any]], None]] = None
          ) -> Dict[str, Any]:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path!r} is not a regular file")

    def checked(values: Dict[str, Any]) -> None:
        try:
            ckpt = _split(path, values)
            if check is not None:
                check(ckpt)
        except ValueError as exc:
            raise _Refused(exc) from None

    try:
        return _split(path, _read_entries(path, checked))
    except _Refused as refused:
        raise refused.args[0] from None
    except PermissionError:
        raise
    except MemoryError:
        raise ValueError(f"checkpoint {path!r} declares more data than fits in memory") from None
    except _CORRUPT as exc:
        raise ValueError(f"checkpoint {path!r} is truncated or corrupt, or not an .npz file "
                         f"({type(exc).__name__}: {exc})") from None


def read_checkpoint(path: os.PathLike[str] | str) -> Dict[str, Any]:
    """Read and check a checkpoint file: {"model": {...}, "optimizer": {...} or None, "meta": dict}.

    Raises FileNotFoundError for a missing file and ValueError for one that is truncated,
    corrupt or not a gpuconv checkpoint. Memory stays within what the entries' headers declare
    (each entry's declared size must match its zip member).
    """
    return _read(path)


def load_checkpoint(path: os.PathLike[str] | str, model: Module, optimizer=None) -> Dict[str, Any]:
    """Load a checkpoint into ``model`` (and ``optimizer``) and return its ``meta`` dict.

    Keys, shapes and dtypes are checked strictly (ValueError naming the key and both shapes),
    from the entries' headers before any array data is read; nothing is changed unless the whole
    checkpoint fits.
    """
    def check(ckpt: Dict[str, Any]) -> None:
        model.check_state_dict(ckpt["model"])
        if optimizer is not None:
            if ckpt["optimizer"] is None:
                raise ValueError(f"checkpoint {os.fspath(path)!r} holds no optimizer state")
            optimizer.check_state_dict(ckpt["optimizer"])

    ckpt = _read(path, check)
    model.load_state_dict(ckpt["model"])
    if optimizer is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    return ckpt["meta"]
