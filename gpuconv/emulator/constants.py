"""Sizes the emulator's Python side shares with cuda/emu/emu_runtime.h (passed to every build
as -D options, so each number is written once, here) and the thread orders of a launch."""
from __future__ import annotations

from ..cuda_limits import MAX_SHARED_OPTIN

MAX_DYN_SMEM = MAX_SHARED_OPTIN    # GPUCONV_EMU_MAX_DYN_SMEM: the buffer extern __shared__ aliases
CANARY_BYTES = 16 * 1024           # GPUCONV_EMU_CANARY_BYTES: checked bytes after the request
DYN_SMEM_TOTAL = MAX_DYN_SMEM + CANARY_BYTES
ORDERS = {"forward": 0, "reverse": 1, "random": 2}
