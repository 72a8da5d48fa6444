"""The emulator's environment settings.

Read by the build (Python):

``GPUCONV_EMU_ASAN``      1 builds and runs kernels with AddressSanitizer
``GPUCONV_EMU_CXX``       the C++ compiler (default g++)

Read by the runtime at every launch, with their limits from ``constants.py``:

``GPUCONV_EMU_STACK_KB``  stack of each emulated thread in KiB, an integer in
                          [STACK_KB_MIN, STACK_KB_MAX] (default 256, 1024 under ASan)
``GPUCONV_EMU_TIMEOUT``   seconds one launch may run before it is stopped with
                          ``LaunchTimeoutError``: a positive number, or ``inf`` (default 600)

A malformed value is a ``ValueError`` naming the variable, raised by the launch that reads it.
"""
from __future__ import annotations

import os


def asan_enabled() -> bool:
    return os.environ.get("GPUCONV_EMU_ASAN", "") not in ("", "0")


def compiler() -> str:
    return os.environ.get("GPUCONV_EMU_CXX", "g++")
