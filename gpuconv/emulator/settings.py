"""The emulator's environment settings, each read and checked in one place.

``GPUCONV_EMU_STACK_KB``  stack of each emulated thread in KiB, an integer in
                          [STACK_KB_MIN, STACK_KB_MAX] (default 256, 1024 under ASan)
``GPUCONV_EMU_TIMEOUT``   seconds one launch may run before it is stopped with
                          ``LaunchTimeoutError``: a positive number, or ``inf`` (default 600)
``GPUCONV_EMU_ASAN``      1 builds and runs kernels with AddressSanitizer
``GPUCONV_EMU_CXX``       the C++ compiler (default g++)

A malformed value is a ``ValueError`` naming the variable, raised by the launch or build that
reads it.
"""
from __future__ import annotations

import math
import os
from typing import Optional, Tuple

STACK_KB_MIN = 16
STACK_KB_MAX = 64 * 1024
STACK_KB_DEFAULT = 256
STACK_KB_DEFAULT_ASAN = 1024
TIMEOUT_DEFAULT = 600.0


def asan_enabled() -> bool:
    return os.environ.get("GPUCONV_EMU_ASAN", "") not in ("", "0")


def compiler() -> str:
    return os.environ.get("GPUCONV_EMU_CXX", "g++")


def stack_kb() -> int:
    raw = os.environ.get("GPUCONV_EMU_STACK_KB", "").strip()
    if not raw:
        return STACK_KB_DEFAULT_ASAN if asan_enabled() else STACK_KB_DEFAULT
    try:
        kb = int(raw)
    except ValueError:
        kb = None
    if kb is None or not STACK_KB_MIN <= kb <= STACK_KB_MAX:
        raise ValueError(f"GPUCONV_EMU_STACK_KB must be an integer number of KiB in {STACK_KB_MIN}.."
                         f"{STACK_KB_MAX}, got {raw!r}")
    return kb


def timeout_s() -> float:
    raw = os.environ.get("GPUCONV_EMU_TIMEOUT", "").strip()
    if not raw:
        return TIMEOUT_DEFAULT
    try:
        t = float(raw)
    except ValueError:
        t = math.nan
    if not t > 0:  # also refuses nan
        raise ValueError(f"GPUCONV_EMU_TIMEOUT must be a positive number of seconds (or inf for no limit), "
                         f"got {raw!r}")
    return t


_last: list = [None, None]  # the raw values launch_limits last parsed, and the result


def launch_limits() -> Tuple[int, float]:
    """(stack_kb(), timeout_s()), parsed again only when the variables change (read at every launch)."""
    env = os.environ
    raw: Tuple[Optional[str], ...] = (env.get("GPUCONV_EMU_STACK_KB"), env.get("GPUCONV_EMU_TIMEOUT"),
                                      env.get("GPUCONV_EMU_ASAN"))
    if raw != _last[0]:
        _last[1] = (stack_kb(), timeout_s())
        _last[0] = raw
    return _last[1]
