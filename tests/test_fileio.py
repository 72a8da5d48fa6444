"""The one rule for every file gpuconv writes (gpuconv.fileio), through the library writers
(checkpoints, JSON reports, plots) and the command line: links followed, devices and directories
refused, atomic replacement, temporary files that never outlive their process, output paths
checked before any work, OS errors reported as ``gpuconv: error: ...`` with status 2."""
from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpuconv import fileio, nn
from gpuconv.tools import harness
from gpuconv.tools.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _model():
    return nn.Sequential(nn.Linear(3, 2, rng=0))


def _temporaries(directory) -> list:
    return [p for p in os.listdir(directory) if fileio.TMP_MARKER in p]


# ---- the rule, on the library writers -----------------------------------------------------------

def _figure(path):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure
    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    fileio.save_figure(fig, path)


WRITERS = {
    "checkpoint": lambda path: nn.save_checkpoint(path, _model()),
    "json": lambda path: harness.write_json(str(path), {"a": 1}, harness.record({"a": harness.INTEGER})),
    "text": lambda path: fileio.write_text(path, "new\n"),
    "figure": _figure,
}


@pytest.mark.parametrize("writer", WRITERS)
def test_writing_through_a_symlink_replaces_its_target_and_keeps_the_link(tmp_path, writer):
    target = tmp_path / "real" / "file.png"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "link.png"
    link.symlink_to(target)
    WRITERS[writer](link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() != b"old"
    assert _temporaries(tmp_path) == [] and _temporaries(target.parent) == []
    dangling = tmp_path / "dangling.png"
    dangling.symlink_to(tmp_path / "real" / "new.png")
    WRITERS[writer](dangling)
    assert dangling.is_symlink() and (tmp_path / "real" / "new.png").is_file()


def _device(tmp_path, name: str) -> str:
    """A character device to write at: for root, a node made in tmp_path with the numbers of
    /dev/null (1, 3) or /dev/full (1, 7), so that a regression can never replace the machine's
    own; for other users the real one, which they cannot replace."""
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        if not os.path.exists(f"/dev/{name}"):
            pytest.skip(f"/dev/{name} does not exist here")
        return f"/dev/{name}"
    path = str(tmp_path / name)
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, {"null": 3, "full": 7}[name]))
    except OSError as exc:
        pytest.skip(f"cannot create a device node: {exc}")
    return path


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("name", ["null", "full"])
def test_devices_are_refused_and_left_alone(tmp_path, writer, name):
    device = _device(tmp_path, name)
    before = os.stat(device)
    with pytest.raises(ValueError, match="character device"):
        WRITERS[writer](device)
    after = os.stat(device)
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev


@pytest.mark.parametrize("writer", WRITERS)
def test_directories_fifos_and_links_to_them_are_refused(tmp_path, writer):
    (tmp_path / "d").mkdir()
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "to_dir").symlink_to(tmp_path / "d")
    for name, kind in (("d", "a directory"), ("fifo", "a FIFO"), ("to_dir", "a directory")):
        with pytest.raises(ValueError, match=kind):
            WRITERS[writer](tmp_path / name)
    assert sorted(os.listdir(tmp_path)) == ["d", "fifo", "to_dir"] and os.listdir(tmp_path / "d") == []


def test_a_244_character_name_works_and_temporary_names_fit_255_bytes(tmp_path, monkeypatch):
    name = "c" * 240 + ".npz"
    seen = []
    real_open = os.open

    def spy(path, *args, **kwargs):
        seen.append(os.path.basename(os.fsencode(path)))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    nn.save_checkpoint(tmp_path / name, _model())
    fileio.write_text(tmp_path / ("é" * 127), "x")  # 254 bytes in UTF-8
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == sorted([name, "é" * 127])
    assert seen and all(len(s) <= 255 for s in seen)


def test_failures_remove_the_temporary_file_and_keep_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with fileio.atomic_open(path, "w") as f:
            f.write("partial")
            raise RuntimeError("boom")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        fileio.write_text(path, "new")
    monkeypatch.undo()
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]


def test_permissions_new_files_get_the_umask_replaced_files_keep_theirs(tmp_path):
    old = os.umask(0o027)
    try:
        fileio.write_text(tmp_path / "new", "x")
        kept = tmp_path / "kept"
        kept.write_text("x")
        kept.chmod(0o604)
        fileio.write_text(kept, "y")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "new").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(kept).st_mode) == 0o604 and kept.read_text() == "y"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anything")
def test_read_only_files_and_directories_are_refused(tmp_path):
    ro = tmp_path / "ro.txt"
    ro.write_text("keep")
    ro.chmod(0o444)
    with pytest.raises(ValueError, match="read-only"):
        fileio.write_text(ro, "x")
    d = tmp_path / "d"
    d.mkdir()
    d.chmod(0o555)
    try:
        with pytest.raises(ValueError, match="cannot create files"):
            fileio.check_writable(d / "x.json", "--json")
    finally:
        d.chmod(0o755)


def test_check_writable_probes_the_directory_and_leaves_nothing(tmp_path, monkeypatch):
    assert fileio.check_writable(tmp_path / "x.json", "--json") == str(tmp_path / "x.json")
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="--json: directory .* does not exist"):
        fileio.check_writable(tmp_path / "no" / "x.json", "--json")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="--save: cannot use .*file/x.npz': Not a directory"):
        fileio.check_writable(tmp_path / "file" / "x.npz", "--save")
    real_open = os.open

    def read_only_fs(path, flags, *args):
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system", path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only_fs)
    with pytest.raises(ValueError, match="--plot: cannot create files in .*Read-only file system"):
        fileio.check_writable(tmp_path / "x.png", "--plot")


_KILLED_WRITER = """
import os, signal, sys
from gpuconv import fileio
with fileio.atomic_open(sys.argv[1], "wb") as f:
    f.write(b"x" * 1000)
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_temporary_files_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "ckpt.npz"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(target)], env=env)
    assert proc.returncode == -signal.SIGKILL
    left = _temporaries(tmp_path)
    assert len(left) == 1 and left[0].startswith(".ckpt.npz" + fileio.TMP_MARKER)
    # A live process's temporary file (this one's) is never touched.
    mine = tmp_path / f".other{fileio.TMP_MARKER}{os.getpid()}-0123abcd"
    mine.write_bytes(b"in progress")
    nn.save_checkpoint(target, _model())
    assert sorted(os.listdir(tmp_path)) == sorted(["ckpt.npz", mine.name])


# ---- the command line ---------------------------------------------------------------------------

def _run(argv, capsys):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


TRAIN = ["train", "--backend", "numpy", "--epochs", "1", "--batch-size", "256", "--quiet"]


@pytest.mark.parametrize("flag", ["--save", "--json", "--plot"])
def test_bad_output_paths_fail_before_training_with_status_2(tmp_path, capsys, flag, monkeypatch):
    from gpuconv import datasets
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("training started"))
    cases = [(str(tmp_path), "is a directory"), (str(tmp_path / "no" / "f.out"), "does not exist"),
             (_device(tmp_path, "full"), "is a character device")]
    for path, match in cases:
        rc, _, err = _run(TRAIN + [flag, path], capsys)
        assert rc == 2 and err.startswith(f"gpuconv: error: {flag}") and match in err, err
        assert "Traceback" not in err
    if flag == "--plot":
        pytest.importorskip("matplotlib")
        rc, _, err = _run(TRAIN + [flag, str(tmp_path / "curves.xyz")], capsys)
        assert rc == 2 and "cannot write 'xyz' images" in err


def test_save_onto_dev_null_leaves_the_device_node(tmp_path, capsys):
    null = _device(tmp_path, "null")
    rc, _, err = _run(TRAIN + ["--save", null], capsys)
    assert rc == 2 and "character device" in err
    assert stat.S_ISCHR(os.stat(null).st_mode)


def test_bench_and_check_check_their_outputs_first(tmp_path, capsys):
    """Their JSON writer creates missing directories, so only what cannot become one is refused."""
    (tmp_path / "file").write_text("")
    rc, _, err = _run(["check", "--model", "lenet", "--backends", "numpy,numpy", "--json", str(tmp_path)],
                      capsys)
    assert rc == 2 and "--json" in err and "a directory" in err
    rc, _, err = _run(["check", "--model", "lenet", "--backends", "numpy,numpy", "--json",
                       str(tmp_path / "file" / "sub" / "c.json")], capsys)
    assert rc == 2 and "--json" in err and "not a directory" in err.lower()
    rc, _, err = _run(["bench", "--backend", "numpy", "--json", str(tmp_path / "file" / "b.json")], capsys)
    assert rc == 2 and "--json" in err and "not a directory" in err.lower()


def test_bench_checks_its_plot_path_first(tmp_path, capsys):
    """--plot needs a baseline; on numpy the default one is PyTorch, so this needs it installed."""
    pytest.importorskip("torch")
    rc, _, err = _run(["bench", "--backend", "numpy", "--plot", str(tmp_path / "no" / "b.png")], capsys)
    assert rc == 2 and "--plot: directory" in err


def test_os_errors_while_running_are_reported_with_status_2(tmp_path, capsys, monkeypatch):
    from gpuconv import datasets

    def unreadable(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(datasets, "read_idx", unreadable)
    (tmp_path / "data").mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (tmp_path / "data" / stem).write_bytes(b"")
    rc, _, err = _run(TRAIN + ["--data", str(tmp_path / "data")], capsys)
    assert rc == 2 and err.startswith("gpuconv: error: [Errno 13] Permission denied")
    monkeypatch.undo()

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    rc, _, err = _run(TRAIN + ["--json", str(tmp_path / "m.json")], capsys)
    assert rc == 2 and "No space left on device" in err and os.listdir(tmp_path) == ["data"]


def _cli(args, env_extra):
    env = dict(os.environ, PYTHONPATH=str(ROOT), **env_extra)
    env.pop("GPUCONV_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "gpuconv", *args], env=env, capture_output=True,
                          text=True, timeout=300)


def test_emulator_setup_errors_are_reported_with_status_2(tmp_path):
    """An unwritable cache directory and a missing compiler: one line, status 2, no traceback."""
    (tmp_path / "file").write_text("")
    args = ["train", "--backend", "emulator", "--epochs", "1", "--quiet"]
    proc = _cli(args, {"GPUCONV_CACHE_DIR": str(tmp_path / "file" / "cache")})
    assert proc.returncode == 2 and proc.stderr.startswith("gpuconv: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _cli(args, {"GPUCONV_CACHE_DIR": str(tmp_path / "cache"),
                       "GPUCONV_EMU_CXX": str(tmp_path / "no-such-compiler")})
    assert proc.returncode == 2 and "needs a C++ compiler" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_json_written_by_train_is_valid_and_atomic(tmp_path, capsys):
    path = tmp_path / "m.json"
    path.write_text("previous")
    rc, _, _ = _run(TRAIN + ["--json", str(path)], capsys)
    assert rc == 0 and json.loads(path.read_text())["epochs"] == 1
    assert os.listdir(tmp_path) == ["m.json"]
    np.testing.assert_equal(json.loads(path.read_text())["batch_size"], 256)
