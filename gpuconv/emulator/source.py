"""Reading kernel sources: NVRTC options, included files, the lint, kernel and global discovery.

The lint and the discovery work on g++'s preprocessed output (``-E`` with ``GPUCONV_EMU``
defined), so code inside ``#ifndef GPUCONV_EMU`` is never looked at, and file:line comes from the
preprocessor's line markers.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .errors import LintError

# NVRTC/nvcc options that only matter for GPU code generation.
_IGNORED_PREFIXES = (
    "--use_fast_math", "-use_fast_math", "-arch", "--gpu-architecture", "-lineinfo",
    "--generate-line-info", "--fmad", "-fmad", "-G", "--device-debug", "-default-device",
    "--extra-device-vectorization", "-ftz", "--ftz", "-prec-div", "--prec-div", "-prec-sqrt",
    "--prec-sqrt", "-rdc", "--relocatable-device-code", "-dlto", "--dlto", "-restrict", "--restrict",
    "-w", "--disable-warnings", "-maxrregcount", "--maxrregcount", "-Xptxas", "--ptxas-options",
    "-dopt", "--dopt", "--device-as-default-execution-space", "-minimal", "--minimal",
    "-ewp", "--extensible-whole-program", "-split-compile", "--split-compile", "-lto", "--lto",
)
# Options whose value may come as the next element.
_SEPARATE_VALUE = {"-arch", "--gpu-architecture", "-maxrregcount", "--maxrregcount", "-Xptxas",
                   "--ptxas-options", "-dopt", "--dopt"}
_STANDARDS = {"c++03": "c++17", "c++11": "c++17", "c++14": "c++17", "c++17": "c++17",
              "c++20": "c++20", "c++2a": "c++20"}


@dataclass
class Options:
    """NVRTC options translated for g++."""

    include_dirs: List[str] = field(default_factory=list)
    defines: List[str] = field(default_factory=list)
    std: str = "c++17"

    def gxx_flags(self) -> List[str]:
        flags = [f"-std={self.std}"]
        flags += [f"-I{d}" for d in self.include_dirs]
        flags += [f"-D{d}" for d in self.defines]
        return flags


def parse_options(options: Sequence[str]) -> Options:
    """Honour -I, -D and -std; accept and ignore GPU-only options; refuse anything else."""
    if isinstance(options, str):
        raise TypeError(f"options must be a sequence of strings, got the string {options!r}")
    out = Options()
    opts = list(options)
    i = 0
    while i < len(opts):
        o = opts[i]
        if not isinstance(o, str):
            raise TypeError(f"options[{i}] must be a string, got {type(o).__name__} {o!r}")
        inc, i = _option_value(opts, i, ("--include-path=", "-I"))
        if inc is not None:
            out.include_dirs.append(str(Path(inc).resolve()))
            i += 1
            continue
        d, i = _option_value(opts, i, ("--define-macro=", "-D"))
        if d is not None:
            out.defines.append(d)
            i += 1
            continue
        std, i = _option_value(opts, i, ("--std=", "-std="))
        if std is not None:
            if std not in _STANDARDS:
                raise ValueError(f"option {o!r}: unsupported C++ standard {std!r}; expected one of "
                                 f"{sorted(_STANDARDS)}")
            out.std = _STANDARDS[std]
        elif o.startswith(_IGNORED_PREFIXES):
            if o in _SEPARATE_VALUE:
                i += 1
        else:
            raise ValueError(f"option {o!r} is not understood by the CPU emulator; it honours -I, -D "
                             f"and -std and ignores GPU code-generation options")
        i += 1
    return out


def _option_value(opts: List[str], i: int, prefixes: Tuple[str, ...]) -> Tuple[Optional[str], int]:
    """(value, index of the last element used) when opts[i] is one of ``prefixes``, else (None, i)."""
    o = opts[i]
    for p in prefixes:
        if o == p.rstrip("="):
            if i + 1 >= len(opts):
                raise ValueError(f"option {o!r} needs a value")
            return opts[i + 1], i + 1
        if o.startswith(p):
            return o[len(p):], i
    return None, i


_INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.M)


def included_files(path: Optional[Path], text: str, include_dirs: Sequence[str]) -> List[Path]:
    """Project files reachable through #include (quoted relative to the including file, then -I dirs).

    An over-approximation (conditional includes count too) used for the build-cache key.
    """
    seen: Dict[Path, None] = {}
    stack: List[Tuple[Optional[Path], str]] = [(path, text)]
    while stack:
        cur, body = stack.pop()
        for m in _INCLUDE.finditer(body):
            kind, name = m.groups()
            cands = [cur.parent / name] if (kind == '"' and cur is not None) else []
            cands += [Path(d) / name for d in include_dirs]
            for c in cands:
                if c.is_file():
                    c = c.resolve()
                    if c not in seen:
                        seen[c] = None
                        stack.append((c, c.read_text(errors="replace")))
                    break
    return sorted(seen)


# ---- preprocessed text --------------------------------------------------------------------------

_LINEMARK = re.compile(r'^#\s*(\d+)\s+"((?:[^"\\]|\\.)*)"(.*)$')


@dataclass
class Line:
    file: str
    line: int
    system: bool
    text: str


def split_preprocessed(text: str) -> List[Line]:
    """Source lines of ``g++ -E`` output with their original file and line."""
    out: List[Line] = []
    file, line, system = "<unknown>", 1, False
    for raw in text.split("\n"):
        m = _LINEMARK.match(raw)
        if m:
            line = int(m.group(1))
            file = m.group(2).encode().decode("unicode_escape")
            system = " 3" in m.group(3)
            continue
        out.append(Line(file, line, system, raw))
        line += 1
    return out


_STRINGS = re.compile(r'"(?:[^"\\\n]|\\.)*"' + r"|'(?:[^'\\\n]|\\.)*'")


def _blank_strings(s: str) -> str:
    return _STRINGS.sub(lambda m: m.group(0) if m.group(0) == '"C"' else '""', s)


_LINT_RULES = [
    (re.compile(r"\b(?:asm|__asm__|__asm)\b"), "inline asm"),
    (re.compile(r"\b(?:wmma|nvcuda|mma)\s*::|\bmma_sync\b|\bload_matrix_sync\b"), "tensor-core wmma/mma"),
    (re.compile(r"\bcooperative_groups\b|\bthis_thread_block\s*\(|\bthis_grid\s*\("), "cooperative groups"),
    (re.compile(r"\b(?:texture|surface)\s*<|\b(?:tex|surf)[123]D\w*\s*\(|\btex1Dfetch\b|\bcuda(?:Texture|Surface)"
                r"Object_t\b"), "textures/surfaces"),
    (re.compile(r"\b__half2?\b|\b__nv_bfloat16\w*|\b__(?:float2half|half2float)\w*"),
     "__half / bfloat16 types"),
    (re.compile(r"<<<"), "kernel launch inside device code (dynamic parallelism)"),
    (re.compile(r"\b__(?:shfl|shfl_up|shfl_down|shfl_xor|ballot|any|all)\s*\("),
     "legacy warp intrinsic without _sync"),
]
_GPU_ONLY_HEADERS = ("cuda_fp16.h", "cuda_bf16.h", "mma.h", "cooperative_groups.h", "cuda_fp8.h",
                     "texture_fetch_functions.h", "cuda_pipeline.h", "cuda/barrier", "cuda/pipeline")


def lint(lines: Iterable[Line]) -> List[str]:
    """file:line messages for constructs the emulator cannot run (system headers are skipped)."""
    problems = []
    for ln in lines:
        if ln.system or not ln.text.strip():
            continue
        code = _blank_strings(ln.text)
        for rx, what in _LINT_RULES:
            if rx.search(code):
                problems.append(f"{ln.file}:{ln.line}: {what} cannot run on the CPU emulator: put it behind "
                                f"#ifndef GPUCONV_EMU with a portable version for #else")
    return problems


def lint_preprocessor_error(stderr: str) -> Optional[str]:
    """A LintError message when g++ -E failed on a GPU-only header, else None."""
    msgs = []
    for m in re.finditer(r"^(.+?:\d+):\d+: fatal error: (\S+): No such file or directory", stderr, re.M):
        if m.group(2).endswith(_GPU_ONLY_HEADERS):
            msgs.append(f"{m.group(1)}: #include <{m.group(2)}> is GPU-only: "
                        f"put it behind #ifndef GPUCONV_EMU")
    return "\n".join(msgs) if msgs else None


def raise_lint(problems: List[str]) -> None:
    if problems:
        raise LintError("the CPU emulator refuses this source:\n" + "\n".join(problems))


# ---- discovery ----------------------------------------------------------------------------------

_TOKENS = re.compile(r'extern\s*"C"\s*\{|namespace(?:\s+([A-Za-z_][\w:]*))?\s*\{|[{};]|\b__global__\b|'
                     r'\b__constant__\b|\b__device__\b')
_KERNEL = re.compile(r'__global__\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(?:(?:static|inline)\s+)*void\s+'
                     r'(?:__launch_bounds__\s*\([^)]*\)\s*)?([A-Za-z_]\w*)\s*\(')
_IDENT = re.compile(r"[A-Za-z_]\w*")


@dataclass
class Discovered:
    extern_c_kernels: List[str]
    globals: List[str]


def discover(lines: Sequence[Line]) -> Discovered:
    """extern "C" kernels and namespace-scope __constant__/__device__ variables of the user's files."""
    text = "\n".join(_blank_strings(ln.text) if not ln.system else "" for ln in lines)
    stack: List[Tuple[str, str]] = []  # (kind, namespace name)
    kernels: Dict[str, None] = {}
    globs: Dict[str, None] = {}
    stmt_start = 0
    skip_until = -1
    for m in _TOKENS.finditer(text):
        tok = m.group(0)
        if m.start() < skip_until:
            continue
        if tok.startswith("extern"):
            stack.append(("externC", ""))
            stmt_start = m.end()
        elif tok.startswith("namespace"):
            stack.append(("namespace", m.group(1) or ""))
            stmt_start = m.end()
        elif tok == "{":
            stack.append(("other", ""))
            stmt_start = m.end()
        elif tok == "}":
            if stack:
                stack.pop()
            stmt_start = m.end()
        elif tok == ";":
            stmt_start = m.end()
        elif any(k == "other" for k, _ in stack):
            continue
        elif tok == "__global__":
            km = _KERNEL.match(text, m.start())
            if not km:
                continue
            before = text[stmt_start:m.start()]
            if re.search(r"\btemplate\b", before):
                continue
            if re.search(r'extern\s*"C"', before) or any(k == "externC" for k, _ in stack):
                kernels[km.group(1)] = None
        else:  # __constant__ / __device__ at namespace scope: a variable unless it has a '('
            end = min((i for i in (text.find(";", m.end()), text.find("{", m.end())) if i >= 0),
                      default=len(text))
            decl = text[m.end():end]
            skip_until = end
            whole = text[stmt_start:end]
            if "(" in decl or re.search(r"\b(?:extern|template|typedef|using)\b", whole) or "<" in decl:
                continue
            if any(k == "namespace" for k, _ in stack):
                continue
            for part in decl.split("=")[0].split(","):
                ids = _IDENT.findall(re.sub(r"\[[^\]]*\]", "", part))
                if ids and ids[-1] not in ("__constant__", "__device__", "__shared__", "__managed__"):
                    globs[ids[-1]] = None
    return Discovered(list(kernels), list(globs))
