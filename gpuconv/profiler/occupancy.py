"""Theoretical occupancy by the CUDA occupancy rules (what the CUDA Occupancy Calculator and
``cudaOccupancyMaxActiveBlocksPerMultiprocessor`` compute), for sm_80, sm_86, sm_89 and sm_90.

Limits per architecture are those of the CUDA C++ Programming Guide's table of technical
specifications per compute capability; registers are allocated per warp in units of 256 from the
four 16 K-register quarters of the SM's register file (a warp's registers live in one quarter);
shared memory per block is rounded up to 128 bytes after adding the 1 KiB the system reserves per
block, and the SM is assumed to run its largest shared-memory carve-out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

__all__ = ["Arch", "ARCHS", "Occupancy", "occupancy"]


@dataclass(frozen=True)
class Arch:
    name: str
    max_warps_per_sm: int
    max_blocks_per_sm: int
    max_threads_per_block: int
    registers_per_sm: int
    max_registers_per_thread: int
    register_unit: int  # registers allocated per warp in multiples of this
    register_quarters: int  # a warp's registers come from one of this many partitions
    shared_per_sm: int  # bytes, the largest carve-out
    max_shared_per_block: int  # bytes, opt-in
    shared_reserved_per_block: int
    shared_unit: int


ARCHS: Dict[str, Arch] = {
    "sm_80": Arch("sm_80", 64, 32, 1024, 65536, 255, 256, 4, 167936, 166912, 1024, 128),
    "sm_86": Arch("sm_86", 48, 16, 1024, 65536, 255, 256, 4, 102400, 101376, 1024, 128),
    "sm_89": Arch("sm_89", 48, 24, 1024, 65536, 255, 256, 4, 102400, 101376, 1024, 128),
    "sm_90": Arch("sm_90", 64, 32, 1024, 65536, 255, 256, 4, 233472, 232448, 1024, 128),
}


@dataclass(frozen=True)
class Occupancy:
    blocks_per_sm: int
    warps_per_sm: int
    fraction: float  # warps_per_sm / the architecture's maximum
    limiter: str  # "warps", "blocks", "registers" or "shared memory"


def _up(x: int, unit: int) -> int:
    return -(-x // unit) * unit


def occupancy(arch: str, threads_per_block: int, registers: int, shared_bytes: int) -> Occupancy:
    """Resident blocks and warps per SM of a kernel with ``registers`` per thread and
    ``shared_bytes`` (static + dynamic) per block."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    a = ARCHS[arch]
    for name, v in (
        ("threads_per_block", threads_per_block),
        ("registers", registers),
        ("shared_bytes", shared_bytes),
    ):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be an int >= 0, got {v!r}")
    if not 1 <= threads_per_block <= a.max_threads_per_block:
        raise ValueError(
            f"threads_per_block must be in [1, {a.max_threads_per_block}], got {threads_per_block}"
        )
    if registers > a.max_registers_per_thread:
        raise ValueError(f"registers must be <= {a.max_registers_per_thread}, got {registers}")
    warps = -(-threads_per_block // 32)
    limits = {"warps": a.max_warps_per_sm // warps, "blocks": a.max_blocks_per_sm}
    regs_per_warp = _up(max(registers, 1) * 32, a.register_unit)
    warps_by_regs = (a.registers_per_sm // a.register_quarters // regs_per_warp) * a.register_quarters
    limits["registers"] = warps_by_regs // warps if regs_per_warp * warps <= a.registers_per_sm else 0
    smem = _up(shared_bytes + a.shared_reserved_per_block, a.shared_unit)
    limits["shared memory"] = a.shared_per_sm // smem if shared_bytes <= a.max_shared_per_block else 0
    limiter = min(limits, key=lambda k: limits[k])
    blocks = limits[limiter]
    return Occupancy(blocks, blocks * warps, blocks * warps / a.max_warps_per_sm, limiter)
