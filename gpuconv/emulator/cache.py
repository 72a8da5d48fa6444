"""The emulator's on-disk build cache: entries published whole and verified before use.

An entry is a directory ``<root>/<name>/`` holding the files of one build and ``SHA256SUMS``
(size and SHA-256 of each file). It is built in a temporary directory, summed, and renamed into
place, so other processes see all of it or none of it. ``lookup`` checks every file against its
record before anything is loaded from it: a damaged or incomplete entry (a library truncated by
a full disk or a crash, a file edited by hand) is removed and the caller builds it again,
instead of crashing in ``dlopen``.

Root: ``gpuconv._paths.cache_root() / "emu"`` (``$GPUCONV_CACHE_DIR/emu``, else under
``$XDG_CACHE_HOME`` or ``~/.cache``: ``.../gpuconv/emu``).
"""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from .._paths import cache_root

SUMS = "SHA256SUMS"
_STALE_TEMP_S = 24 * 3600  # temporary directories older than this were left by killed builds
_swept = set()


def root() -> Path:
    d = cache_root() / "emu"
    d.mkdir(parents=True, exist_ok=True)
    if d not in _swept:
        _swept.add(d)
        _sweep(d)
    return d


def _sweep(d: Path) -> None:
    """Remove temporary directories that builds killed long ago left behind."""
    now = time.time()
    for p in d.glob("tmp-*"):
        try:
            if now - p.lstat().st_mtime > _STALE_TEMP_S:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        except OSError:
            pass


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _intact(entry: Path) -> bool:
    try:
        records = (entry / SUMS).read_text().splitlines()
        if not records:
            return False
        for rec in records:
            digest, size, name = rec.split(" ", 2)
            f = entry / name
            if f.stat().st_size != int(size) or _digest(f) != digest:
                return False
    except (OSError, ValueError):
        return False
    return True


def discard(entry: Path) -> None:
    """Remove an entry (renamed aside first, so no other process sees it half removed)."""
    aside = Path(tempfile.mkdtemp(dir=entry.parent, prefix="tmp-discard-"))
    try:
        os.replace(entry, aside / "entry")
    except OSError:
        pass  # already gone, or another process is replacing it
    shutil.rmtree(aside, ignore_errors=True)


def lookup(name: str) -> Optional[Path]:
    """The directory of entry ``name`` when it is complete and undamaged, else None (a damaged
    entry is removed)."""
    entry = root() / name
    if not entry.exists():
        return None
    if _intact(entry):
        return entry
    discard(entry)
    return None


@contextmanager
def building(name: str) -> Iterator[Path]:
    """A temporary directory for the files of entry ``name``; when the block succeeds they are
    summed and published (unless another process published the entry first)."""
    d = root()
    tmp = Path(tempfile.mkdtemp(dir=d, prefix=f"tmp-{name[:40]}-"))
    try:
        yield tmp
        files = sorted(p for p in tmp.iterdir() if p.is_file())
        (tmp / SUMS).write_text("".join(f"{_digest(p)} {p.stat().st_size} {p.name}\n" for p in files))
        try:
            os.replace(tmp, d / name)
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def clear() -> None:
    """Remove every entry (libraries already loaded stay usable)."""
    shutil.rmtree(root(), ignore_errors=True)
    _swept.clear()
