"""Checkpoints: one ``.npz`` file of host arrays, loaded with ``allow_pickle=False``.

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
are written to a temporary file in the target directory and renamed over the target, so a failure
never leaves a partial file (and an older checkpoint at that path stays intact). Loading validates
everything before changing the model, the optimizer or the schedule.
"""
from __future__ import annotations

import json
import os
import secrets
import zipfile
from typing import Any, Dict, Optional

import numpy as np

from .module import Module

__all__ = ["save_checkpoint", "load_checkpoint", "read_checkpoint", "restore_checkpoint", "FORMAT"]

_NAME = "gpuconv-checkpoint"
VERSION = 2
FORMAT = f"{_NAME}/{VERSION}"
_READABLE = (1, 2)


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
    and the JSON-serialisable ``meta``) to ``path`` atomically."""
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
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(8)}.tmp")
    # os.open applies the umask to 0o666, so the checkpoint gets a regular file's permissions
    # (tempfile.mkstemp would leave it readable by its owner only).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


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
    except ValueError as exc:
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


def read_checkpoint(path: os.PathLike[str] | str) -> Dict[str, Any]:
    """Read and check a checkpoint file. Returns a dict with ``"version"`` (1 or 2), ``"model"``
    and ``"optimizer"`` (name -> array; optimizer None when not saved), ``"epoch"``,
    ``"data_seed"``, ``"schedule"`` (None when not saved), ``"rng"`` (None in format 1), ``"meta"``
    and ``"path"``.

    Raises FileNotFoundError for a missing file and ValueError for one that is truncated,
    corrupt, of an unknown format version or not a gpuconv checkpoint.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        raise ValueError(f"checkpoint {path!r} is truncated or corrupt, or not an .npz file "
                         f"({type(exc).__name__}: {exc})") from None
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


def restore_checkpoint(ckpt: Dict[str, Any], model: Module, optimizer=None, schedule=None) -> None:
    """Put a checkpoint read by ``read_checkpoint`` into ``model`` (parameters and random
    generators) and, when given, ``optimizer`` and ``schedule``. Keys, shapes, dtypes and the
    schedule's kind and parameters are checked strictly (ValueError naming what differs); nothing
    is changed unless the whole checkpoint fits."""
    where = f"checkpoint {ckpt.get('path', '<in memory>')!r}"
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
    ``restore_checkpoint``) and return its ``meta`` dict."""
    ckpt = read_checkpoint(path)
    restore_checkpoint(ckpt, model, optimizer, schedule)
    return ckpt["meta"]
