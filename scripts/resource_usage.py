"""Registers, spills, stack frame and shared memory of every kernel, from ptxas (via nvcc).

The compiling and parsing are ``gpuconv.profiler.resources``; this script prints its table:

    python scripts/resource_usage.py [--arch sm_90] [--arch sm_80] [--compiler nvcc|nvrtc]

one table per architecture; "default" marks kernels a default version uses. Exit status 1 when a
default-version kernel spills or has a stack frame. No GPU is needed.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from gpuconv.profiler.resources import (
    KernelUsage,
    expressions_by_file,
    find_nvcc,
    format_table,
    is_default,
    offenders,
    parse_resource_usage,
    resource_usage,
)

__all__ = [
    "KernelUsage",
    "expressions_by_file",
    "find_nvcc",
    "format_table",
    "is_default",
    "offenders",
    "parse_resource_usage",
    "resource_usage",
    "main",
]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", help="sm_90 and sm_80 by default")
    parser.add_argument("--compiler", choices=("nvcc", "nvrtc"), default="nvcc")
    args = parser.parse_args(argv)
    bad = []
    for arch, rows in resource_usage(tuple(args.arch or ("sm_90", "sm_80")), compiler=args.compiler).items():
        print(format_table(arch, rows))
        print()
        bad += [(arch, r) for r in offenders(rows)]
    for arch, r in bad:
        print(
            f"FAIL {arch}: default kernel {r.name} ({r.file}) has stack frame {r.stack_frame}, "
            f"spills {r.spill_stores}/{r.spill_loads}",
            file=sys.stderr,
        )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
