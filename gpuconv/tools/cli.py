"""The ``gpuconv`` command: subcommands registered from their modules.

Each subcommand module exposes ``add_parser(subparsers)``, which sets ``func`` (``args -> int``).

Bad input (ValueError, TypeError, an unavailable backend, a learning rate that makes training
diverge), any OS error (a missing or unreadable file, an unwritable directory, a full disk), a
missing compiler for the emulator and running out of memory print ``gpuconv: error: ...`` and
exit with status 2, without a traceback; set ``GPUCONV_DEBUG=1`` to see the traceback. Status 1
is left to a command's own verdict (a failed ``gpuconv check`` comparison).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from .. import __version__
from ..backends import BackendUnavailable
from ..emulator.errors import CompileError
from . import bench, check, evaluate, info, predict, profile, train

__all__ = ["main", "build_parser"]

COMMANDS = (train, evaluate, predict, info, check, bench, profile)


class _Parser(argparse.ArgumentParser):
    """argparse with the command's own error format (``gpuconv: error: ...``, status 2)."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(2, f"gpuconv: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gpuconv", description="Small CNNs on NVIDIA GPUs with hand-written CUDA "
                     "kernels, checked against a NumPy reference.",
                     epilog="Run 'gpuconv COMMAND --help' for the options of a command. Bad arguments "
                            "are refused before any work starts. An error ends a command with "
                            "'gpuconv: error: ...' and exit status 2; set GPUCONV_DEBUG=1 to see its "
                            "traceback.")
    parser.add_argument("--version", action="version", version=f"gpuconv {__version__}",
                        help="print gpuconv's version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line ``argv`` (default: sys.argv[1:]); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    try:
        return int(args.func(args))
    except (ValueError, TypeError, OSError, BackendUnavailable, FloatingPointError, CompileError,
            MemoryError) as exc:
        if os.environ.get("GPUCONV_DEBUG"):
            raise
        sys.stdout.flush()
        text = str(exc) or type(exc).__name__
        if isinstance(exc, MemoryError):
            text = f"out of memory ({text}): use a smaller --batch-size, smaller images or a smaller model"
        sys.stderr.write(f"gpuconv: error: {text}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("gpuconv: interrupted\n")
        return 130
