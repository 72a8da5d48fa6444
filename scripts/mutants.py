#!/usr/bin/env python3
"""Plant each realistic bug of ``tests/mutants.txt`` in a scratch copy of the tree and check that
the tests named for it fail: the suite's kill rate.

    python scripts/mutants.py                  # every mutant; make mutants
    python scripts/mutants.py --no-torch       # the same with the PyTorch tier hidden
    python scripts/mutants.py --only ID[,ID]   # some mutants
    python scripts/mutants.py --check          # only check that every mutant still applies
    python scripts/mutants.py --list

The working tree is never written: the tracked and untracked-but-not-ignored files are copied to
a temporary directory once per worker, each mutant is written there, its tests run there (pytest
``-x``, with a time limit, Python bytecode not cached), and the file is put back before the next
one. The temporary directories are removed on every exit, Ctrl-C included.

A mutant is *killed* when its tests fail (or exceed the time limit, reported apart), *survived*
when they pass. Before the mutants, each distinct test selection runs once on the unmodified copy:
a selection that fails there would kill everything, so the run stops. Exit status 0 when every
mutant was killed, 1 when one survived, 2 for a bad list or a failing baseline.

List format (see the head of ``tests/mutants.txt``): entries start with ``== <id>`` and give
``file:``, ``bug:`` (in words), optionally ``tests:`` (pytest arguments; default the whole suite),
then ``- `` lines (the exact original text, which must occur exactly once in the file) and ``+ ``
lines (its replacement; none deletes it).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LIST = ROOT / "tests" / "mutants.txt"
DEFAULT_TESTS = "tests"
TIMEOUT_S = 600


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str
    bug: str
    tests: str
    original: str
    replacement: str
    line: int  # of the entry in the list, for messages


class ListError(ValueError):
    """A malformed entry of the mutant list, or one that no longer applies to the tree."""


def parse(text: str, source: str = "mutants.txt") -> List[Mutant]:
    """The entries of a mutant list (format in this module's docstring)."""
    entries: List[Mutant] = []
    cur: Optional[dict] = None

    def finish() -> None:
        if cur is None:
            return
        where = f"{source}:{cur['line']} ({cur['id']})"
        for key in ("file", "bug"):
            if not cur.get(key):
                raise ListError(f"{where}: missing '{key}:'")
        if not cur["minus"]:
            raise ListError(f"{where}: no '- ' line (the original text)")
        original, replacement = "\n".join(cur["minus"]), "\n".join(cur["plus"])
        if original == replacement:
            raise ListError(f"{where}: the replacement equals the original")
        entries.append(Mutant(cur["id"], cur["file"], cur["bug"], cur.get("tests") or DEFAULT_TESTS,
                              original, replacement, cur["line"]))

    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip("\n")
        if line.startswith("== "):
            finish()
            ident = line[3:].strip()
            if not ident or any(c.isspace() for c in ident):
                raise ListError(f"{source}:{n}: an id is one word, got {ident!r}")
            cur = {"id": ident, "line": n, "minus": [], "plus": []}
        elif line.startswith("#") or not line.strip():
            continue
        elif cur is None:
            raise ListError(f"{source}:{n}: text before the first '== <id>' line")
        elif line.startswith("- ") or line == "-":
            if cur["plus"]:
                raise ListError(f"{source}:{n}: a '- ' line after the '+ ' lines")
            cur["minus"].append(line[2:])
        elif line.startswith("+ ") or line == "+":
            cur["plus"].append(line[2:])
        else:
            key, sep, value = line.partition(":")
            if not sep or key not in ("file", "bug", "tests"):
                raise ListError(f"{source}:{n}: expected 'file:', 'bug:', 'tests:', '- ' or '+ ', "
                                f"got {line!r}")
            if key in cur:
                raise ListError(f"{source}:{n}: '{key}:' given twice")
            cur[key] = value.strip()
    finish()
    seen: Dict[str, int] = {}
    for m in entries:
        if m.id in seen:
            raise ListError(f"{source}:{m.line}: id {m.id!r} already used at line {seen[m.id]}")
        seen[m.id] = m.line
    return entries


def apply(m: Mutant, text: str) -> str:
    """``text`` (the file's content) with the mutant planted; ListError unless it applies once."""
    count = text.count(m.original)
    if count != 1:
        raise ListError(f"mutant {m.id} (line {m.line}): its original text occurs {count} times in "
                        f"{m.file}, expected once:\n{m.original}")
    return text.replace(m.original, m.replacement)


def check_all(mutants: Sequence[Mutant], root: Path) -> None:
    """Raise ListError unless every mutant applies to the tree at ``root``."""
    for m in mutants:
        path = root / m.file
        if not path.is_file():
            raise ListError(f"mutant {m.id} (line {m.line}): no file {m.file}")
        apply(m, path.read_text())


# ---- scratch copies -------------------------------------------------------------------------------

def tree_files(root: Path) -> List[str]:
    """Tracked files and untracked files that git does not ignore; without git, every file but
    version control, virtual environments and caches."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=root, capture_output=True, check=True).stdout
        return sorted({f for f in out.decode().split("\0") if f and (root / f).is_file()})
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "__pycache__", ".pytest_cache", "build"}
        return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                      if p.is_file() and not skip & set(p.relative_to(root).parts))


def make_scratch(root: Path, files: Sequence[str]) -> Path:
    scratch = Path(tempfile.mkdtemp(prefix="gpuconv-mutants-"))
    for f in files:
        dst = scratch / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / f, dst)
    return scratch


# ---- running tests --------------------------------------------------------------------------------

@dataclass
class Outcome:
    status: str    # "killed", "timeout", "survived", "error"
    seconds: float
    detail: str


def _env(scratch: Path, no_torch: bool) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(scratch) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("GPUCONV_CUDA_DIR", None)  # the scratch copy's cuda/
    if no_torch:
        env["GPUCONV_TESTS_NO_TORCH"] = "1"
    return env


_ACTIVE: Set[subprocess.Popen] = set()  # test runs in progress, killed on Ctrl-C


def run_tests(scratch: Path, tests: str, no_torch: bool, timeout: float) -> Tuple[Optional[int], float, str]:
    """(pytest exit status or None on timeout, seconds, last lines of output). pytest runs in its
    own process group, so a time-out or Ctrl-C kills everything it started."""
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests.split()]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=scratch, env=_env(scratch, no_torch), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    _ACTIVE.add(proc)
    try:
        out, _ = proc.communicate(timeout=timeout)
        rc: Optional[int] = proc.returncode
    except subprocess.TimeoutExpired:
        _kill(proc)
        out, rc = "", None
    finally:
        _ACTIVE.discard(proc)
    tail = "\n".join(out.strip().splitlines()[-3:])
    return rc, time.monotonic() - t0, tail


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _kill_active() -> None:
    for proc in list(_ACTIVE):
        _kill(proc)


def run_mutant(m: Mutant, scratch: Path, no_torch: bool, timeout: float) -> Outcome:
    path = scratch / m.file
    original = path.read_text()
    path.write_text(apply(m, original))
    try:
        rc, seconds, tail = run_tests(scratch, m.tests, no_torch, timeout)
    finally:
        path.write_text(original)
    if rc is None:
        return Outcome("timeout", seconds, f"tests exceeded {timeout:.0f} s")
    if rc == 0:
        return Outcome("survived", seconds, tail)
    if rc in (1, 2) or rc < 0:  # failures, a collection error (e.g. an import), a crash
        return Outcome("killed", seconds, tail)
    return Outcome("error", seconds, f"pytest exit status {rc}: {tail}")


# ---- the run --------------------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list-file", type=Path, default=DEFAULT_LIST,
                    help="the mutant list (default tests/mutants.txt)")
    ap.add_argument("--root", type=Path, default=ROOT,
                    help="the tree to copy and mutate (default: this checkout)")
    ap.add_argument("--only", default="", help="comma-separated ids to run")
    ap.add_argument("--no-torch", action="store_true",
                    help="hide PyTorch from the tests (GPUCONV_TESTS_NO_TORCH=1): the torch tier skips")
    ap.add_argument("--jobs", "-j", type=int, default=1, help="mutants run at once (a scratch copy each)")
    ap.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per test run (default 600)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the runs on the unmodified copy")
    ap.add_argument("--check", action="store_true", help="only check that every mutant applies")
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.timeout <= 0:
        ap.error(f"--timeout must be > 0, got {args.timeout}")

    try:
        mutants = parse(args.list_file.read_text(), str(args.list_file))
        check_all(mutants, args.root)
    except (OSError, ListError) as exc:
        print(f"mutants: {exc}", file=sys.stderr)
        return 2
    if args.only:
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = sorted(set(wanted) - {m.id for m in mutants})
        if unknown:
            print(f"mutants: --only: unknown ids {unknown}", file=sys.stderr)
            return 2
        mutants = [m for m in mutants if m.id in wanted]
    if args.list:
        for m in mutants:
            print(f"{m.id:32s} {m.file}: {m.bug}")
        return 0
    if args.check:
        print(f"mutants: all {len(mutants)} apply")
        return 0

    label = "without PyTorch" if args.no_torch else "with PyTorch" if _torch_importable() else \
        "without PyTorch (not installed)"
    print(f"mutants: {len(mutants)} from {args.list_file}, {label}, {args.jobs} at a time", flush=True)
    t_start = time.monotonic()
    files = tree_files(args.root)
    scratches: List[Path] = []
    try:
        scratches = [make_scratch(args.root, files) for _ in range(args.jobs)]
        if not args.no_baseline:
            for tests in sorted({m.tests for m in mutants}):
                rc, seconds, tail = run_tests(scratches[0], tests, args.no_torch, args.timeout)
                print(f"baseline  {seconds:6.1f} s  {tests}", flush=True)
                if rc != 0:
                    print(f"mutants: the unmodified tree fails `pytest {tests}` (status {rc}):\n{tail}",
                          file=sys.stderr)
                    return 2
        results = _run_all(mutants, scratches, args.no_torch, args.timeout)
    except KeyboardInterrupt:
        _kill_active()
        print("\nmutants: interrupted; the working tree was never modified", file=sys.stderr)
        return 130
    finally:
        for s in scratches:
            shutil.rmtree(s, ignore_errors=True)
    return _report(mutants, results, time.monotonic() - t_start, label)


def _torch_importable() -> bool:
    import importlib.util
    return importlib.util.find_spec("torch") is not None


def _run_all(mutants: Sequence[Mutant], scratches: Sequence[Path], no_torch: bool,
             timeout: float) -> Dict[str, Outcome]:
    results: Dict[str, Outcome] = {}
    free = list(scratches)
    width = max(len(m.id) for m in mutants)

    def one(m: Mutant) -> Tuple[Mutant, Outcome]:
        scratch = free.pop()
        try:
            return m, run_mutant(m, scratch, no_torch, timeout)
        finally:
            free.append(scratch)

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(scratches))
    try:
        futures = [pool.submit(one, m) for m in mutants]
        for fut in concurrent.futures.as_completed(futures):
            m, out = fut.result()
            results[m.id] = out
            print(f"{out.status.upper():8s} {m.id:{width}s} {out.seconds:6.1f} s  {m.file}", flush=True)
            if out.status in ("survived", "error"):
                print("         " + out.detail.replace("\n", "\n         "), flush=True)
    except BaseException:  # Ctrl-C: stop the runs in flight before waiting for their threads
        pool.shutdown(wait=False, cancel_futures=True)
        _kill_active()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results


def _report(mutants: Sequence[Mutant], results: Dict[str, Outcome], seconds: float, label: str) -> int:
    killed = [m for m in mutants if results[m.id].status in ("killed", "timeout")]
    survived = [m for m in mutants if results[m.id].status == "survived"]
    errors = [m for m in mutants if results[m.id].status == "error"]
    timeouts = [m for m in mutants if results[m.id].status == "timeout"]
    n = len(mutants)
    print(f"\nkilled {len(killed)} of {n} ({100.0 * len(killed) / n:.1f} %) {label}"
          f"{f', {len(timeouts)} of them by the time limit' if timeouts else ''}; "
          f"{seconds / 60:.1f} min in all")
    for m in survived:
        print(f"  survived: {m.id} ({m.file}): {m.bug}")
    for m in errors:
        print(f"  error: {m.id} ({m.file}): {results[m.id].detail}")
    return 0 if not survived and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
