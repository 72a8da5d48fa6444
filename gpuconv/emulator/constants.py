"""Limits shared with cuda/emu/emu_runtime.h and CUDA's launch limits."""
from __future__ import annotations

MAX_DYN_SMEM = 227 * 1024          # GPUCONV_EMU_MAX_DYN_SMEM
CANARY_BYTES = 16 * 1024           # GPUCONV_EMU_CANARY_BYTES
DYN_SMEM_TOTAL = MAX_DYN_SMEM + CANARY_BYTES
MAX_THREADS_PER_BLOCK = 1024
MAX_BLOCK = (1024, 1024, 64)
MAX_GRID = (2 ** 31 - 1, 65535, 65535)
ORDERS = {"forward": 0, "reverse": 1, "random": 2}
