"""Writing files: the one rule for every file gpuconv writes (checkpoints, JSON reports, plots).

* A symbolic link is followed: writing through it replaces the file it points to, and the link
  stays a link.
* The file written must be a regular file or a new path; anything else (a directory, a device
  such as ``/dev/null`` or ``/dev/full``, a FIFO, a socket) is refused with ``ValueError``, as is
  an existing file without write permission.
* The data goes to a temporary file in the target's directory, which is flushed, fsync'ed and
  renamed over the target (``os.replace``): a reader sees the old file or the new one, never a
  partial one, and a failure (a full disk, an exception while producing the data, Ctrl-C) removes
  the temporary file and leaves the old file intact.
* The target's directory must exist, unless the writer asks for missing directories to be
  created (``make_parents``; the JSON reports of the command-line tools do).
* A new file gets the permissions ``open()`` would give it (0o666 minus the umask); a replaced
  file keeps its permission bits.
* Temporary files are named ``.<name>.gpuconv-tmp-<pid>-<8 hex digits>``, with ``<name>`` cut to
  at most 64 bytes so that any valid target name fits the 255-byte limit of a file name. One left
  behind by a process that no longer runs (killed with SIGKILL during a write) is removed by the
  next write into the same directory.

``check_writable`` applies the same rule without writing, so that command-line tools can refuse
a bad output path before any work starts.
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from typing import IO, Iterator, Optional

__all__ = ["check_writable", "atomic_open", "write_text", "write_bytes", "save_figure", "figure_format",
           "remove_stale_temporaries", "TMP_MARKER"]

TMP_MARKER = ".gpuconv-tmp-"
_NAME_BYTES = 64  # bytes of the target's name kept in a temporary file's name
_TMP_NAME = re.compile(r"\..*" + re.escape(TMP_MARKER) + r"(\d+)-[0-9a-f]{8}", re.DOTALL)


def _describe(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))
    return next((text for test, text in kinds if test(mode)), "not a regular file")


def _nearest_directory(directory: str, what: str) -> str:
    """``directory`` or, when it does not exist yet, its nearest existing ancestor, which must
    be a directory (ValueError naming ``what`` otherwise)."""
    probe = directory
    while not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"{what}: cannot create directory {directory!r}: {probe!r} is not a directory")
    return probe


def _resolve(path, what: str, make_parents: bool = False) -> str:
    """The absolute path that a write to ``path`` replaces, symbolic links followed; ValueError
    naming ``what`` unless that is a writable regular file or a new name in an existing directory
    (or, with ``make_parents``, in a directory that can be created)."""
    try:
        raw = os.fspath(path)
    except TypeError:
        raise TypeError(f"{what} must be a path, got {path!r} of type {type(path).__name__}") from None
    if isinstance(raw, bytes):
        raw = os.fsdecode(raw)
    if not raw:
        raise ValueError(f"{what} must be a non-empty path")
    target = os.path.realpath(raw)
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise ValueError(f"{what}: cannot use {raw!r}: {exc.strerror or exc}") from None
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{what}: {raw!r} is {_describe(st.st_mode)}; gpuconv writes only "
                             f"regular files (an existing one is replaced)")
        if not os.access(target, os.W_OK):
            raise ValueError(f"{what}: {raw!r} exists and is read-only")
    directory = os.path.dirname(target)
    if make_parents:
        _nearest_directory(directory, what)
    elif not os.path.isdir(directory):
        raise ValueError(f"{what}: directory {directory!r} does not exist")
    return target


def _temporary_name(target: str) -> str:
    directory, name = os.path.split(target)
    prefix = os.fsdecode(os.fsencode(name)[:_NAME_BYTES])
    return os.path.join(directory, f".{prefix}{TMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}")


def _pid_running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    return True


def remove_stale_temporaries(directory: str) -> int:
    """Remove the temporary files of writes into ``directory`` whose process no longer runs;
    return how many were removed. Errors (a vanished file, no permission) are ignored."""
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    for entry in entries:
        m = _TMP_NAME.fullmatch(entry.name)
        if m is None or _pid_running(int(m.group(1))):
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed += 1
        except OSError:
            pass
    return removed


def check_writable(path, what: str = "path", make_parents: bool = False) -> str:
    """Refuse ``path`` (ValueError naming ``what``, e.g. the command-line option) unless gpuconv
    could write it: the rule above, plus a probe that a file can be created in its directory
    (a read-only directory or file system fails here, even for root). With ``make_parents`` (a
    writer that creates missing directories) the probe goes to the nearest existing ancestor.
    Returns the resolved path. Writes nothing that stays."""
    target = _resolve(path, what, make_parents)
    directory = _nearest_directory(os.path.dirname(target), what)
    probe = _temporary_name(os.path.join(directory, os.path.basename(target)))
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise ValueError(f"{what}: cannot create files in {directory!r}: "
                         f"{exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)
    return target


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path, mode: str = "wb", what: str = "path", encoding: Optional[str] = None,
                make_parents: bool = False) -> Iterator[IO]:
    """Open a temporary file for writing; when the block ends without an exception it replaces
    ``path`` (the rule above), otherwise it is removed and ``path`` is left as it was.
    ``mode`` is ``"wb"`` or ``"w"`` (text, ``encoding`` default UTF-8); ``make_parents`` creates
    missing directories first."""
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    target = _resolve(path, what, make_parents)
    directory = os.path.dirname(target)
    if make_parents:
        os.makedirs(directory, exist_ok=True)
    remove_stale_temporaries(directory)
    try:
        keep_mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        keep_mode = None
    tmp = _temporary_name(target)
    # os.open applies the umask to 0o666, as open() does for a new file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        if keep_mode is not None:
            os.chmod(fd, keep_mode)
        kwargs = {} if mode == "wb" else {"encoding": encoding or "utf-8", "newline": ""}
        with os.fdopen(fd, mode, **kwargs) as f:
            fd = -1  # owned by f from here on
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def write_bytes(path, data: bytes, what: str = "path") -> None:
    """Write ``data`` to ``path`` atomically (the rule above)."""
    with atomic_open(path, "wb", what) as f:
        f.write(data)


def write_text(path, text: str, what: str = "path", make_parents: bool = False) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (the rule above)."""
    with atomic_open(path, "w", what, make_parents=make_parents) as f:
        f.write(text)


def figure_format(path, what: str = "path") -> str:
    """The image format a matplotlib figure saved at ``path`` gets (from the extension, png when
    there is none); ValueError naming ``what`` for one matplotlib cannot write. Imports matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ValueError(f"{what} needs matplotlib, which is not installed (pip install matplotlib, "
                         f"or pip install gpuconv[plot])") from None
    ext = os.path.splitext(os.fspath(path))[1][1:].lower() or "png"
    supported = Figure().canvas.get_supported_filetypes()
    if ext not in supported:
        raise ValueError(f"{what}: matplotlib cannot write {ext!r} images; use one of "
                         f"{', '.join(sorted(supported))}")
    return ext


def save_figure(fig, path, what: str = "path", **savefig_kwargs) -> None:
    """``fig.savefig`` to ``path`` atomically (the rule above), in the format its extension names."""
    fmt = figure_format(path, what)
    with atomic_open(path, "wb", what) as f:
        fig.savefig(f, format=fmt, **savefig_kwargs)
