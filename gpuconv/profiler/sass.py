"""The SASS of a compiled kernel: instruction mix, the innermost hot loop, global-load placement.

``disassemble(cubin)`` runs ``cuobjdump -sass`` (which needs nvdisasm) and ``parse`` splits its
text into one instruction list per kernel (mangled name). On a kernel's instructions:

* ``mix`` counts the instructions, the fused multiply-adds (FFMA, DFMA and the tensor-core HMMA /
  DMMA), and the global and shared loads and stores by width (8, 16, 32, 64, 128 bits);
* ``hot_loop`` finds the loops (a backward branch closes one: [target, branch]), keeps the
  innermost ones (those containing no other loop) and returns the one with the most
  multiply-adds (then the most instructions), or None for straight-line code;
* ``load_placement`` of a loop: the fraction of its multiply-adds issued after its last global
  load. ``loads_before_multiply`` is True when at least half of them are (the loads' latency is
  hidden behind the multiply), False otherwise, None when the loop has no global load or no
  multiply-add. This is the check for a double-buffered GEMM: the next tile's loads belong before
  the current tile's multiply, and ptxas may move them after it.
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


def load_placement(loop: List[Instr]) -> Optional[float]:
    """Fraction of the loop's multiply-adds after its last global load; None without either."""
    fma = [k for k, i in enumerate(loop) if i.base in FMA_OPS]
    loads = [k for k, i in enumerate(loop) if i.base in ("LDG", "LDGSTS")]
    if not fma or not loads:
        return None
    return sum(1 for k in fma if k > loads[-1]) / len(fma)
