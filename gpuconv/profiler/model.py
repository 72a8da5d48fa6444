"""A time estimate of one kernel launch from its measured access counts and its static facts.

The launch's time is predicted as the largest of five throughput terms plus a launch latency, and
the largest term is reported as what ``bound`` s it (docs/profiling.md states every assumption):

* ``compute``: the multiply-adds issued (FFMA/DFMA at the FP32 rate, HMMA at the TF32 rate);
* ``dram``: the distinct bytes the grid touches, plus the re-reads that miss when they exceed L2;
* ``l2``: the sectors that pass L1 (each block's distinct load sectors, every store sector);
* ``shared``: shared-memory wavefronts, one per SM per clock;
* ``issue``: warp instructions, four per SM per clock.

Dynamic instruction counts come from the emulator's requests scaled by the hot loop's SASS:
instructions = requests * (loop instructions / loop memory instructions), multiply-adds likewise;
a kernel without a loop issues its whole SASS once per warp.

Occupancy and waves: the busiest SM runs ceil(blocks / SMs) blocks, at most ``blocks_per_sm``
at a time; SM-local terms (compute, shared, issue) run at full rate with at least
``LOCAL_WARPS`` resident warps per SM and proportionally slower below; chip-wide terms (DRAM, L2)
need ``MEMORY_WARPS`` resident warps per SM on average over all SMs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional

from .occupancy import Occupancy

__all__ = ["Work", "Prediction", "predict", "LAUNCH_LATENCY_S", "LOCAL_WARPS", "MEMORY_WARPS"]

LAUNCH_LATENCY_S = 3e-6  # assumed; to calibrate against measured back-to-back launches
LOCAL_WARPS = 8  # resident warps per SM that keep FMA, shared memory and issue busy (2 per scheduler)
MEMORY_WARPS = 32  # resident warps per SM, averaged over the chip, that keep DRAM and L2 busy
FLOPS_PER_WARP_OP = {"FFMA": 64, "DFMA": 64, "HMMA": 2 * 16 * 8 * 8, "DMMA": 2 * 8 * 8 * 4}


@dataclass
class Work:
    """What one launch does, over its whole grid."""

    blocks: int
    threads_per_block: int
    dram_bytes_touched: float  # distinct bytes of the array arguments the grid touches
    l2_sectors: float  # sectors past L1: per-block distinct load sectors + store sectors
    shared_wavefronts: float
    instructions: float  # warp instructions
    fma_ops: Dict[str, float]  # warp-level FFMA / DFMA / HMMA / DMMA


@dataclass
class Prediction:
    seconds: float
    bound: str
    terms: Dict[str, float]  # seconds of each term, before the launch latency


def _dram_bytes(w: Work, hw: Any) -> float:
    touched = w.dram_bytes_touched
    traffic = w.l2_sectors * 32.0
    if touched <= hw.l2_bytes or traffic <= touched:
        return touched
    return touched + (traffic - touched) * (1.0 - hw.l2_bytes / touched)


def predict(w: Work, hw: Any, occ: Occupancy) -> Prediction:
    """The estimate for ``w`` on ``hw`` at occupancy ``occ`` (see the module docstring). ``hw`` has
    the fields of ``gpuconv.tools.suites.Hardware``: ``name``, ``sms``, ``clock_hz``, ``fp32_flops``,
    ``tf32_flops``, ``dram_bandwidth``, ``l2_bytes``, ``l2_bytes_per_clock``, ``smem_bytes_per_clock``,
    ``issue_per_clock``."""
    if occ.blocks_per_sm < 1:
        raise ValueError(f"the kernel cannot run on {hw.name}: no block fits on an SM ({occ.limiter})")
    if w.blocks < 1:
        raise ValueError(f"blocks must be >= 1, got {w.blocks}")
    warps_per_block = math.ceil(w.threads_per_block / 32)
    per_sm = math.ceil(w.blocks / hw.sms)  # blocks the busiest SM runs
    resident = min(per_sm, occ.blocks_per_sm) * warps_per_block
    local = min(1.0, resident / LOCAL_WARPS)
    chip_warps = min(w.blocks, occ.blocks_per_sm * hw.sms) * warps_per_block
    memory = min(1.0, chip_warps / (MEMORY_WARPS * hw.sms))
    share = per_sm / w.blocks  # the busiest SM's share of the work

    fp32_per_sm = hw.fp32_flops / hw.sms
    tf32_per_sm = hw.tf32_flops / hw.sms
    flops_fp = sum(n * FLOPS_PER_WARP_OP[op] for op, n in w.fma_ops.items() if op in ("FFMA", "DFMA"))
    flops_tc = sum(n * FLOPS_PER_WARP_OP[op] for op, n in w.fma_ops.items() if op in ("HMMA", "DMMA"))
    terms = {
        "compute": share * (flops_fp / fp32_per_sm + flops_tc / tf32_per_sm) / local,
        "dram": _dram_bytes(w, hw) / (hw.dram_bandwidth * memory),
        "l2": w.l2_sectors * 32.0 / (hw.l2_bytes_per_clock * hw.clock_hz * memory),
        "shared": share * w.shared_wavefronts / (hw.smem_bytes_per_clock / 128.0 * hw.clock_hz) / local,
        "issue": share * w.instructions / (hw.issue_per_clock * hw.clock_hz) / local,
    }
    bound = max(terms, key=lambda k: terms[k])
    return Prediction(terms[bound] + LAUNCH_LATENCY_S, bound, terms)


def instruction_estimate(requests: float, warps: int, mix: dict, loop: Optional[dict]) -> Dict[str, float]:
    """Warp instructions and multiply-adds of a launch: ``{"instructions": n, "FFMA": n, ...}``.

    ``requests``: the launch's global and shared requests (all warps); ``mix``/``loop``: the
    kernel's and its hot loop's ``sass.Mix.as_dict``; ``warps``: warps in the grid.
    """

    def memory_of(m: dict) -> int:
        return sum(
            sum(m[k].values()) for k in ("global_loads", "global_stores", "shared_loads", "shared_stores")
        )

    if loop and memory_of(loop):
        scale = requests / memory_of(loop)
        src = loop
    else:
        scale = float(warps)
        src = mix
    out = {"instructions": src["instructions"] * scale}
    for op in FLOPS_PER_WARP_OP:
        out[op] = src.get(op.lower(), 0) * scale
    return out
