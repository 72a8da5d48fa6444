"""Sizes and limits the emulator's Python side shares with its C++ side, and the thread orders.

Each number is written once, here: ``defines()`` passes them to every build of the runtime, of
the precompiled header and of a kernel module as ``-D`` options, and ``cuda/emu/emu_runtime.h``
refuses to compile without them.
"""
from __future__ import annotations

from typing import List

from ..cuda_limits import MAX_SHARED_OPTIN

MAX_DYN_SMEM = MAX_SHARED_OPTIN    # GPUCONV_EMU_MAX_DYN_SMEM: the largest dynamic shared memory request
# GPUCONV_EMU_SMEM_GUARD_BYTES: bytes of the dynamic shared buffer past the largest request. During a
# launch, the bytes from the request up to the next page boundary hold a canary and the whole pages
# after it are inaccessible (PROT_NONE).
SMEM_GUARD_BYTES = 16 * 1024
SMEM_ALIGN = 4096                  # alignment of the buffer, so that its page boundaries are known
DYN_SMEM_TOTAL = MAX_DYN_SMEM + SMEM_GUARD_BYTES
# GPUCONV_EMU_STACK_KB (read by the runtime at every launch): accepted range and defaults.
STACK_KB_MIN = 16
STACK_KB_MAX = 64 * 1024
STACK_KB_DEFAULT = 256
STACK_KB_DEFAULT_ASAN = 1024
TIMEOUT_DEFAULT_S = 600  # GPUCONV_EMU_TIMEOUT when unset
ORDERS = {"forward": 0, "reverse": 1, "random": 2}


def defines() -> List[str]:
    """The -D options every emulator build gets."""
    values = {"MAX_DYN_SMEM": MAX_DYN_SMEM, "SMEM_GUARD_BYTES": SMEM_GUARD_BYTES,
              "STACK_KB_MIN": STACK_KB_MIN, "STACK_KB_MAX": STACK_KB_MAX,
              "STACK_KB_DEFAULT": STACK_KB_DEFAULT, "STACK_KB_DEFAULT_ASAN": STACK_KB_DEFAULT_ASAN,
              "TIMEOUT_DEFAULT_S": TIMEOUT_DEFAULT_S}
    return [f"-DGPUCONV_EMU_{name}={value}u" for name, value in values.items()]
