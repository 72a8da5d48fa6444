"""Checkpoints: one ``.npz`` file of host arrays, loaded with ``allow_pickle=False``.

Layout: ``"format"`` (``"gpuconv-checkpoint/1"``), ``"model/<param name>"`` for each parameter,
``"optimizer/<key>"`` for the optimizer's flat state (see ``gpuconv.optim``), and ``"meta"``, a
JSON document as a 0-d unicode array. Files are written with ``gpuconv.fileio.atomic_open``
(temporary file renamed over the target), so a failure never leaves a partial file and an older
checkpoint at that path stays intact. Loading validates everything before changing the model or
the optimizer.
"""
from __future__ import annotations

import json
import os
import zipfile
from typing import Any, Dict, Optional

import numpy as np

from .. import fileio
from .module import Module

__all__ = ["save_checkpoint", "load_checkpoint", "read_checkpoint", "FORMAT"]

FORMAT = "gpuconv-checkpoint/1"


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


def read_checkpoint(path: os.PathLike[str] | str) -> Dict[str, Any]:
    """Read and check a checkpoint file: {"model": {...}, "optimizer": {...} or None, "meta": dict}.

    Raises FileNotFoundError for a missing file and ValueError for one that is truncated,
    corrupt or not a gpuconv checkpoint.
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
    fmt = arrays.pop("format", None)
    if fmt is None or fmt.shape != () or str(fmt) != FORMAT:
        raise ValueError(f"{path!r} is not a gpuconv checkpoint: expected format {FORMAT!r}, got "
                         f"{None if fmt is None else str(fmt)!r}")
    meta_arr = arrays.pop("meta", None)
    try:
        meta = json.loads(str(meta_arr)) if meta_arr is not None else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"checkpoint {path!r} has an unreadable 'meta' entry: {exc}") from None
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


def load_checkpoint(path: os.PathLike[str] | str, model: Module, optimizer=None) -> Dict[str, Any]:
    """Load a checkpoint into ``model`` (and ``optimizer``) and return its ``meta`` dict.

    Keys, shapes and dtypes are checked strictly (ValueError naming the key and both shapes);
    nothing is changed unless the whole checkpoint fits.
    """
    ckpt = read_checkpoint(path)
    model.check_state_dict(ckpt["model"])
    if optimizer is not None:
        if ckpt["optimizer"] is None:
            raise ValueError(f"checkpoint {os.fspath(path)!r} holds no optimizer state")
        optimizer.check_state_dict(ckpt["optimizer"])
    model.load_state_dict(ckpt["model"])
    if optimizer is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    return ckpt["meta"]
