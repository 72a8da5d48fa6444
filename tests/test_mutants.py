"""The mutation list stays usable (every mutant still applies to the tree), and scripts/mutants.py
plants, reports and restores as it says: a mutant whose original text no longer occurs would stop
being run without anyone noticing."""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("mutants_script", ROOT / "scripts" / "mutants.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["mutants_script"] = mod
    spec.loader.exec_module(mod)
    return mod


mutants = _script()


def test_every_listed_mutant_applies_exactly_once():
    listed = mutants.parse((ROOT / "tests" / "mutants.txt").read_text())
    assert len(listed) >= 40
    try:
        mutants.check_all(listed, ROOT)
    except mutants.ListError as exc:
        pytest.fail(f"update tests/mutants.txt to the code: {exc}")
    for m in listed:
        args = m.tests.split()
        for i, arg in enumerate(args):
            if not arg.startswith("-") and (i == 0 or args[i - 1] not in ("-m", "-k")):
                assert (ROOT / arg.split("::")[0]).exists(), f"mutant {m.id}: no test path {arg}"


def test_list_format_errors_are_named():
    good = "== a\nfile: f.py\nbug: b\n- x = 1\n+ x = 2\n"
    [m] = mutants.parse(good)
    assert (m.id, m.file, m.tests, m.original, m.replacement) == ("a", "f.py", "tests", "x = 1", "x = 2")
    assert mutants.parse("== d\nfile: f\nbug: b\n- gone\n")[0].replacement == ""
    for text, match in ((good + good, "already used"), ("file: f\n", "before the first"),
                        ("== a\nbug: b\n- x\n", "missing 'file:'"),
                        ("== a\nfile: f\nbug: b\n", "no '- ' line"),
                        ("== a\nfile: f\nbug: b\n- x\n+ x\n", "equals the original"),
                        ("== a\nfile: f\nbug: b\nwhat: x\n", "expected"),
                        ("== a\nfile: f\nbug: b\n+ y\n- x\n", "after the '\\+ ' lines")):
        with pytest.raises(mutants.ListError, match=match):
            mutants.parse(text)
    m = mutants.parse("== a\nfile: f\nbug: b\n- x = 1\n+ x = 2\n")[0]
    assert mutants.apply(m, "y = 0\nx = 1\n") == "y = 0\nx = 2\n"
    for text in ("y = 0\n", "x = 1\nx = 1\n"):
        with pytest.raises(mutants.ListError, match="occurs"):
            mutants.apply(m, text)


def test_a_run_kills_and_reports_survivors_without_touching_the_tree(tmp_path):
    """A tiny project: one function, one test; one mutant the test catches, one it cannot."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "lib.py").write_text("def double(x):\n    return 2 * x\n")
    (tmp_path / "tests" / "test_lib.py").write_text("from lib import double\n\n\ndef test_double():\n"
                                                   "    assert double(2) == 4\n")
    (tmp_path / "mutants.txt").write_text(
        "== times-three\nfile: lib.py\ntests: tests\nbug: triples\n- 2 * x\n+ 3 * x\n\n"
        "== same-at-two\nfile: lib.py\nbug: x + x equals 2 * x\n- 2 * x\n+ x + x\n")
    before = (tmp_path / "lib.py").read_bytes()
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "mutants.py"), "--list-file",
                           str(tmp_path / "mutants.txt"), "--root", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "KILLED   times-three" in proc.stdout
    assert "SURVIVED same-at-two" in proc.stdout
    assert "killed 1 of 2 (50.0 %)" in proc.stdout
    assert (tmp_path / "lib.py").read_bytes() == before


def test_ctrl_c_stops_the_tests_and_removes_the_scratch_copy(tmp_path):
    project, scratch_parent = tmp_path / "project", tmp_path / "tmp"
    (project / "tests").mkdir(parents=True)
    scratch_parent.mkdir()
    pid_file = tmp_path / "pid"
    (project / "lib.py").write_text("VALUE = 1\n")
    (project / "tests" / "test_slow.py").write_text(
        f"import os, time\n\n\ndef test_slow():\n    open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "    time.sleep(120)\n")
    (project / "mutants.txt").write_text("== two\nfile: lib.py\nbug: b\n- VALUE = 1\n+ VALUE = 2\n")
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "mutants.py"), "--no-baseline",
                             "--list-file", str(project / "mutants.txt"), "--root", str(project)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, TMPDIR=str(scratch_parent)))
    deadline = time.monotonic() + 60
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pid_file.exists(), "the mutant's tests never started"
    test_pid = int(pid_file.read_text())
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "interrupted" in err
    assert list(scratch_parent.iterdir()) == []                      # the scratch copy is gone
    assert (project / "lib.py").read_text() == "VALUE = 1\n"
    with pytest.raises(ProcessLookupError):                           # its test process was killed
        os.kill(test_pid, 0)
