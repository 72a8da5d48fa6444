"""The SASS of a compiled kernel: instruction mix, the innermost hot loop, global-load placement.

``disassemble(cubin)`` runs ``cuobjdump -sass`` (which needs nvdisasm) and ``parse`` splits its
text into one instruction list per kernel (mangled name). On a kernel's instructions:

* ``mix`` counts the instructions, the fused multiply-adds (FFMA, DFMA and the tensor-core HMMA /
  DMMA), and the global and shared loads and stores by width (8, 16, 32, 64, 128 bits);
* ``hot_loop`` finds the loops (a backward branch closes one: [target, branch]), keeps the
  innermost ones (those containing no other loop) and returns the one with the most
  multiply-adds (then the most instructions), or None for straight-line code;
* ``load_placement`` of a loop: for each global load, the multiply-adds issued between the load
  and the first instruction that reads its result (around the loop's back edge), as a fraction of
  one step's multiply (the loop's multiply-adds over its barriers); the median over the loads.
  ``loads_before_multiply`` is True when that is at least one half (the loads' latency is hidden
  behind the multiply), False otherwise, None when the loop has no global load or no multiply-add.
  This is the check for a double-buffered GEMM: the next tile's loads belong before the current
  tile's multiply, and ptxas may move them after it.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .toolchain import find_tool

__all__ = ["Instr", "Mix", "parse", "disassemble", "mix", "hot_loop", "load_placement", "FMA_OPS"]

FMA_OPS = ("FFMA", "DFMA", "HMMA", "DMMA")
_LINE = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")
_FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)")
_TARGET = re.compile(r"0x([0-9a-f]+)")


@dataclass(frozen=True)
class Instr:
    addr: int
    opcode: str  # with modifiers, e.g. "LDG.E.128.CONSTANT"
    operands: str

    @property
    def base(self) -> str:
        return self.opcode.split(".")[0]


def parse(text: str) -> Dict[str, List[Instr]]:
    """cuobjdump -sass text (one architecture) -> mangled kernel name -> instructions in order."""
    out: Dict[str, List[Instr]] = {}
    cur: Optional[List[Instr]] = None
    for line in text.splitlines():
        m = _FUNCTION.match(line)
        if m:
            cur = out.setdefault(m.group(1), [])
            continue
        m = _LINE.match(line)
        if m and cur is not None:
            cur.append(Instr(int(m.group(1), 16), m.group(3), m.group(4).strip()))
    return out


def disassemble(cubin: bytes) -> str:
    """``cuobjdump -sass`` of a cubin (needs cuobjdump and nvdisasm: a toolkit or the pip packages)."""
    tool = find_tool("cuobjdump")
    nvdisasm = find_tool("nvdisasm")
    if tool is None or nvdisasm is None:
        raise FileNotFoundError(
            "cuobjdump and nvdisasm are needed for SASS (pip install nvidia-cuda-cuobjdump "
            "nvidia-cuda-nvdisasm, or a CUDA toolkit)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        env = {"PATH": str(Path(nvdisasm).parent), "NVDISASM_PATH": str(Path(nvdisasm).parent)}
        import os

        res = subprocess.run(
            [tool, "-sass", str(path)],
            capture_output=True,
            text=True,
            env={**os.environ, **env, "PATH": env["PATH"] + os.pathsep + os.environ.get("PATH", "")},
        )
    if res.returncode != 0:
        raise RuntimeError(f"cuobjdump -sass failed: {res.stderr.strip()}")
    return res.stdout


def _width(opcode: str) -> int:
    mods = opcode.split(".")[1:]
    for m, w in (("128", 128), ("64", 64), ("U8", 8), ("S8", 8), ("U16", 16), ("S16", 16)):
        if m in mods:
            return w
    return 32


_MEM = {
    "LDG": "global_loads",
    "LDGSTS": "global_loads",
    "STG": "global_stores",
    "LDS": "shared_loads",
    "LDSM": "shared_loads",
    "STS": "shared_stores",
}


@dataclass
class Mix:
    """Instruction counts of a kernel or a loop."""

    instructions: int
    fma: int  # FFMA + DFMA + HMMA + DMMA
    by_op: Dict[str, int]  # each of FMA_OPS
    memory: Dict[str, Dict[int, int]]  # global_loads/... -> width in bits -> count

    @property
    def fma_fraction(self) -> float:
        return self.fma / self.instructions if self.instructions else 0.0

    @property
    def memory_instructions(self) -> int:
        return sum(sum(d.values()) for d in self.memory.values())

    def as_dict(self) -> dict:
        return {
            "instructions": self.instructions,
            "fma": self.fma,
            "fma_fraction": round(self.fma_fraction, 4),
            **{op.lower(): n for op, n in self.by_op.items()},
            **{k: {str(w): n for w, n in sorted(v.items())} for k, v in self.memory.items()},
        }


def mix(instrs: List[Instr]) -> Mix:
    body = [i for i in instrs if i.base != "NOP"]
    by_op = {op: sum(1 for i in body if i.base == op) for op in FMA_OPS}
    memory: Dict[str, Dict[int, int]] = {
        k: {} for k in ("global_loads", "global_stores", "shared_loads", "shared_stores")
    }
    for i in body:
        kind = _MEM.get(i.base)
        if kind:
            w = _width(i.opcode)
            memory[kind][w] = memory[kind].get(w, 0) + 1
    return Mix(len(body), sum(by_op.values()), by_op, memory)


def _loops(instrs: List[Instr]) -> List[Tuple[int, int]]:
    """(first index, last index) of every loop closed by a backward branch."""
    index = {i.addr: k for k, i in enumerate(instrs)}
    loops = []
    for k, i in enumerate(instrs):
        if i.base != "BRA":
            continue
        m = _TARGET.search(i.operands)
        if m and int(m.group(1), 16) < i.addr and int(m.group(1), 16) in index:
            loops.append((index[int(m.group(1), 16)], k))
    return loops


def hot_loop(instrs: List[Instr]) -> Optional[List[Instr]]:
    """The innermost loop with the most multiply-adds (then instructions), or None."""
    loops = _loops(instrs)
    inner = [(a, b) for a, b in loops if not any((c, d) != (a, b) and a <= c and d <= b for c, d in loops)]
    if not inner:
        return None
    best = max(inner, key=lambda ab: (mix(instrs[ab[0] : ab[1] + 1]).fma, ab[1] - ab[0]))
    return instrs[best[0] : best[1] + 1]


_NO_DEST = (
    "STS",
    "STG",
    "ST",
    "STL",
    "RED",
    "BAR",
    "BRA",
    "EXIT",
    "LDGSTS",
    "MEMBAR",
    "RET",
    "CALL",
    "DEPBAR",
    "WARPSYNC",
    "BSYNC",
    "BSSY",
    "NOP",
)
_REG = re.compile(r"\bR(\d+)\b")


def _sources(i: Instr) -> set:
    ops = i.operands if i.base in _NO_DEST else i.operands.partition(",")[2]
    return {int(r) for r in _REG.findall(ops)}


def load_placement(loop: List[Instr]) -> Optional[float]:
    """How much of a step's multiply hides the loop's global loads; None without a load or an FMA.

    For each global load: the multiply-adds issued between it and the first instruction reading its
    destination registers (following the loop around its back edge), over the multiply-adds of one
    step (the loop's, divided by its barriers when it has any); the median over the loads.
    """
    fma = [k for k, i in enumerate(loop) if i.base in FMA_OPS]
    loads = [k for k, i in enumerate(loop) if i.base == "LDG"]
    if not fma or not loads:
        return None
    per_step = len(fma) / max(1, sum(1 for i in loop if i.base == "BAR"))
    covered = []
    for k in loads:
        m = _REG.search(loop[k].operands)
        if m is None:
            continue
        first = int(m.group(1))
        dest = set(range(first, first + max(1, _width(loop[k].opcode) // 32)))
        n = 0
        for j in list(range(k + 1, len(loop))) + list(range(0, k + 1)):
            if dest & _sources(loop[j]):
                break
            n += loop[j].base in FMA_OPS
        covered.append(min(1.0, n / per_step))
    if not covered:
        return None
    covered.sort()
    return covered[len(covered) // 2]
