"""The README says what the code and the tests do: its command-line synopsis is each command's
parser, and the case counts it quotes are the tests' own constants."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from gpuconv.tools.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _synopsis() -> dict:
    """command -> the text of its entry in the README's command-line block."""
    block = README.split("## Command line", 1)[1].split("```", 2)[1]
    entries: dict = {}
    command = None
    for line in block.splitlines():
        m = re.match(r"gpuconv (\w+)", line)
        if m:
            command = m.group(1)
            entries[command] = ""
        elif not line.startswith(" "):
            command = None  # another program's line (mpirun ...)
        if command and line.strip():
            entries[command] += " " + line.split("#")[0]
    return entries


def _subparsers() -> dict:
    parser = build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


def test_cli_synopsis_lists_every_argument_of_every_command():
    synopsis, parsers = _synopsis(), _subparsers()
    assert set(synopsis) == set(parsers)
    for command, parser in parsers.items():
        text = synopsis[command]
        shown = set(re.findall(r"--[\w-]+", text))
        options = {s for a in parser._actions for s in a.option_strings
                   if s.startswith("--") and s != "--help"}
        assert shown == options, f"gpuconv {command}: README {sorted(shown)}, parser {sorted(options)}"
        for action in parser._actions:
            if not action.option_strings:  # a positional argument: shown by its metavar, unbracketed
                name = action.metavar or action.dest.upper()
                assert re.search(rf"(^|\s){re.escape(name)}(\s|$)", text), f"gpuconv {command}: {name}"
                continue
            if action.dest == "help":
                continue
            opt = action.option_strings[-1]
            m = re.search(r"\[" + re.escape(opt) + r"(?: ([^\]]*))?\]", text)
            assert action.required or m, f"gpuconv {command}: {opt} is optional but not shown in brackets"
            if m and action.choices and m.group(1) and "|" in m.group(1):
                assert set(m.group(1).split("|")) == set(action.choices), (command, opt)


def _constant(path: str, name: str) -> int:
    m = re.search(rf"^{name} = (\d+)$", (ROOT / path).read_text(), re.M)
    assert m, f"{path} defines no {name}"
    return int(m.group(1))


@pytest.mark.parametrize("phrase, path, name", [
    ("on 200 random geometries for each convolution and", "tests/test_torch_crosscheck.py", "CASES"),
    ("pooling, forward and gradients, on 200 random geometries", "tests/test_torch_crosscheck.py", "CASES"),
    ("sharing no code with it — 240 random convolutions", "tests/test_reference_definitions.py", "N_CONV"),
    ("and 120 random geometries per pooling kind", "tests/test_reference_definitions.py", "N_POOL"),
    ("convolution on 56 random geometries", "tests/test_kernels_conv.py", "N_RANDOM"),
    ("pooling on 50 random plus 4", "tests/test_kernels_pool.py", "N_RANDOM"),
    ("the loss on 50 random shapes", "tests/test_kernels_elementwise.py", "N_RANDOM"),
])
def test_case_counts_quoted_by_the_readme_are_the_tests_constants(phrase, path, name):
    flat = " ".join(README.split())
    phrase = " ".join(phrase.split())
    assert phrase in flat, f"README no longer says {phrase!r}"
    number = int(re.search(r"\b(\d+) random", phrase).group(1))
    value = _constant(path, name)
    assert number == value, f"README says {number}, {path} has {name} = {value}"
