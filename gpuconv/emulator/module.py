"""``RawModule``/``RawKernel`` look-alikes that run CUDA kernels on the CPU, and ``check_orders``."""
from __future__ import annotations

import _signal  # signal.getsignal's implementation: 0.1 us, where signal.getsignal takes 5
import ctypes
import signal
import threading
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..cuda_limits import MAX_THREADS_PER_BLOCK, check_launch
from . import build
from .constants import MAX_DYN_SMEM, ORDERS
from .errors import BY_CODE, EmulatorError, KernelNotFoundError, LaunchError, OrderDependenceError

Dims = Union[int, Tuple[int, ...]]

launch_lock = threading.Lock()

# emu_runtime.h's gpuconv_emu_arg_kind.
_ARG_VALUE, _ARG_CONST_ARRAY, _ARG_ARRAY = 0, 1, 2
_DESCRIBE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)

# Scalar codes of the kernel signature -> (accepted NumPy scalar types, C spelling).
_SCALARS = {
    "bool": ((np.bool_,), "bool"),
    "char": ((np.int8, np.uint8), "char"),
    "i8": ((np.int8,), "signed char"),
    "u8": ((np.uint8,), "unsigned char"),
    "i16": ((np.int16,), "short"),
    "u16": ((np.uint16,), "unsigned short"),
    "i32": ((np.int32,), "int"),
    "u32": ((np.uint32,), "unsigned int"),
    "i64": ((np.int64,), "long long"),
    "u64": ((np.uint64,), "unsigned long long/size_t"),
    "f32": ((np.float32,), "float"),
    "f64": ((np.float64,), "double"),
}
# Vector pointee codes -> (element dtype, alignment in bytes).
_VECTORS = {
    "float2": (np.float32, 8), "float4": (np.float32, 16), "double2": (np.float64, 16),
    "double4": (np.float64, 16), "int2": (np.int32, 8), "int4": (np.int32, 16),
    "uint2": (np.uint32, 8), "uint4": (np.uint32, 16),
}


def _slot_of_scalar(x: np.generic) -> int:
    bits = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[x.dtype.itemsize]
    return int(x.view(bits))


class _Param:
    """Checks one argument against its parameter and gives the 8-byte slot cuLaunchKernel would copy."""

    def __init__(self, kernel: str, index: int, code: str):
        self.kernel, self.index, self.code = kernel, index, code
        self.pointer = code.startswith("*")
        if self.pointer:
            pointee = code[1:]
            self.const = pointee.startswith("c")
            pointee = pointee[1:] if self.const else pointee
            self.pointee = pointee
            if pointee in _VECTORS:
                dt, self.align = _VECTORS[pointee]
                self.dtypes = (np.dtype(dt),)
                self.ctype = pointee
            elif pointee in _SCALARS:
                types, self.ctype = _SCALARS[pointee]
                self.dtypes = tuple(np.dtype(t) for t in types)
                self.align = self.dtypes[0].itemsize
            else:  # void* or a struct: any array
                self.dtypes = ()
                self.align = 1
                self.ctype = "void" if pointee == "void" else "struct"
            self.ctype = ("const " if self.const else "") + self.ctype + "*"
        else:
            if code not in _SCALARS:
                self.types = ()
                self.ctype = "an unsupported by-value type"
            else:
                self.types, self.ctype = _SCALARS[code]

    def _where(self) -> str:
        return f"kernel {self.kernel!r} argument {self.index} ({self.ctype})"

    def slot(self, a: Any) -> Tuple[int, int, int]:
        """(slot value, array bytes, kind | element size << 8) as gpuconv_emu_launch takes them."""
        if self.pointer:
            if a is None:
                return 0, 0, _ARG_VALUE
            if not isinstance(a, np.ndarray):
                raise TypeError(f"{self._where()}: expected a NumPy array (or None for a null pointer), got "
                                f"{type(a).__name__}")
            if self.dtypes and a.dtype not in self.dtypes:
                want = " or ".join(str(d) for d in self.dtypes)
                raise TypeError(f"{self._where()}: expected an array of dtype {want}, got an array of dtype "
                                f"{a.dtype}")
            if not a.flags.c_contiguous:
                raise ValueError(f"{self._where()}: the array must be C-contiguous (a kernel sees only its "
                                 f"base pointer), got strides {a.strides}")
            if not self.const and not a.flags.writeable:
                raise ValueError(f"{self._where()}: the array is read-only (writeable=False), and the kernel "
                                 f"may write through this pointer to non-const; pass a writable array (or a "
                                 f"copy)")
            addr = a.ctypes.data
            if addr % self.align:
                raise ValueError(f"{self._where()}: data must be {self.align}-byte aligned, the array's data "
                                 f"address 0x{addr:x} is not")
            kind = _ARG_CONST_ARRAY if self.const else _ARG_ARRAY
            return addr, a.nbytes, kind | a.dtype.itemsize << 8
        if not self.types:
            raise TypeError(f"{self._where()}: the emulator cannot pass this parameter type")
        if type(a) not in self.types:
            want = " or ".join(f"np.{t.__name__}" for t in self.types)
            got = type(a).__name__
            if isinstance(a, (bool, int, float)):
                got = f"Python {got} {a!r} (CuPy would pass it as 8 bytes)"
            raise TypeError(f"{self._where()}: expected a NumPy scalar {want}, got {got}")
        return _slot_of_scalar(a), 0, _ARG_VALUE


def stop_on_sigint() -> bool:
    """Whether SIGINT should stop a launch: where Python would raise KeyboardInterrupt (the main
    thread, the default handler). Another handler runs when the launch has ended."""
    return (threading.get_ident() == threading.main_thread().ident
            and _signal.getsignal(signal.SIGINT) is signal.default_int_handler)


class Kernel:
    """A kernel of an emulated module; call it like ``cupy.RawKernel``.

    ``kernel(grid, block, args, shared_mem=0, order="forward", seed=0)``: grid and block are an
    int or a 1-3 tuple; args a tuple of NumPy arrays (C-contiguous; None passes a null pointer)
    and NumPy scalars of exactly the parameter's type. ``order`` is the order in which the
    threads of a block (and the blocks of the grid) start and resume: "forward", "reverse" or
    "random" (seeded by ``seed``).
    """

    max_threads_per_block = MAX_THREADS_PER_BLOCK

    def __init__(self, module: RawModule, name: str, entry: int, signature: str):
        self.module = module
        self.name = name
        self._entry = entry
        self._name_bytes = name.encode()
        codes = signature.split(":", 1)[1].split(",") if ":" in signature else []
        self.param_codes = codes
        self._params = [_Param(name, i, c) for i, c in enumerate(codes)]
        n = max(len(codes), 1)  # what gpuconv_emu_launch takes, filled under the launch lock
        self._slots, self._sizes = (ctypes.c_ulonglong * n)(), (ctypes.c_ulonglong * n)()
        self._kinds = (ctypes.c_uint * n)()
        self._smem = ctypes.cast(module._lib.gpuconv_emu_smem, ctypes.c_void_p).value

    def __repr__(self) -> str:
        return f"<emulated kernel {self.name} ({', '.join(p.ctype for p in self._params)})>"

    def check_args(self, args: Sequence[Any]) -> list:
        """Check ``args`` against the kernel's signature; their packed (value, size, kind) slots."""
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"kernel {self.name!r}: args must be a tuple, got {type(args).__name__}")
        if len(args) != len(self._params):
            raise TypeError(f"kernel {self.name!r} takes {len(self._params)} arguments "
                            f"({', '.join(p.ctype for p in self._params)}), got {len(args)}")
        return [p.slot(a) for p, a in zip(self._params, args)]

    def __call__(self, grid: Dims, block: Dims, args: Sequence[Any], shared_mem: int = 0,
                 order: str = "forward", seed: int = 0) -> None:
        g, b, shared_mem = check_launch(grid, block, shared_mem, MAX_DYN_SMEM, LaunchError)
        if order not in ORDERS:
            raise ValueError(f"order must be one of {sorted(ORDERS)}, got {order!r}")
        packed = self.check_args(args)
        n = len(args)
        grid_c = (ctypes.c_uint * 3)(*g)
        block_c = (ctypes.c_uint * 3)(*b)
        rt = build.runtime()
        slots, sizes, kinds = self._slots, self._sizes, self._kinds
        sigint = stop_on_sigint()
        with launch_lock:
            for i, (v, nbytes, kind) in enumerate(packed):
                slots[i], sizes[i], kinds[i] = v, nbytes, kind
            rc = rt.gpuconv_emu_launch(self._entry, slots, sizes, kinds, n, grid_c, block_c, int(shared_mem),
                                       ORDERS[order], int(seed) & 0xFFFFFFFFFFFFFFFF, self._name_bytes,
                                       self._smem, sigint)
            if rc:
                msg = rt.gpuconv_emu_error_message().decode(errors="replace")
                pc = rt.gpuconv_emu_error_pc()
        if rc:
            if pc:
                line = build.source_line(self.module.library_path, pc - 1)
                if line:
                    msg += f" (at {line})"
            raise BY_CODE.get(rc, EmulatorError)(msg)


class GlobalMemory:
    """A ``__constant__``/``__device__`` variable of an emulated module.

    ``view(dtype=None, shape=None)`` is a writable NumPy array over its bytes (dtype defaults to
    the variable's element type); ``copy_from(array)`` copies host data in (sizes must match);
    ``copy_to_host()`` returns a copy. ``ptr`` and ``nbytes`` as in CuPy's MemoryPointer.
    """

    def __init__(self, name: str, ptr: int, nbytes: int, dtype: np.dtype, owner: Any):
        self.name, self.ptr, self.nbytes, self.dtype = name, ptr, nbytes, dtype
        self._owner = owner  # keeps the library referenced

    def view(self, dtype: Any = None, shape: Optional[Tuple[int, ...]] = None) -> np.ndarray:
        dt = np.dtype(dtype) if dtype is not None else self.dtype
        buf = (ctypes.c_char * self.nbytes).from_address(self.ptr)
        arr = np.frombuffer(buf, dtype=dt, count=self.nbytes // dt.itemsize)
        return arr.reshape(shape) if shape is not None else arr

    def copy_from(self, array: Any) -> None:
        data = np.ascontiguousarray(array)
        if data.nbytes != self.nbytes:
            raise ValueError(f"global {self.name!r} holds {self.nbytes} bytes, the array has {data.nbytes}")
        ctypes.memmove(self.ptr, data.ctypes.data, self.nbytes)

    def copy_to_host(self) -> np.ndarray:
        return self.view().copy()


_GLOBAL_DTYPES = {"f32": np.float32, "f64": np.float64, "i32": np.int32, "u32": np.uint32, "i64": np.int64,
                  "u64": np.uint64, "i16": np.int16, "u16": np.uint16, "i8": np.int8, "u8": np.uint8,
                  "char": np.int8, "bool": np.bool_, "float2": np.float32, "float4": np.float32,
                  "double2": np.float64, "int2": np.int32, "int4": np.int32}


class RawModule:
    """Compile a CUDA source for the CPU emulator, like ``cupy.RawModule``.

    ``code`` (the source text) or ``path`` (a .cu file; its directory is searched for quoted
    includes) must be given. ``options`` are NVRTC options (-I, -D, -std honoured; GPU-only ones
    ignored). Template kernels and namespaced names need ``name_expressions``. ``profile=True``
    builds the module with the memory-access instrumentation ``gpuconv.emulator.profile`` reads
    (its kernels also run normally, more slowly).
    """

    def __init__(self, code: Optional[str] = None, path: Optional[Union[str, Path]] = None,
                 options: Sequence[str] = (), name_expressions: Sequence[str] = (), profile: bool = False):
        if (code is None) == (path is None):
            raise ValueError("RawModule needs exactly one of code= or path=")
        if path is not None:
            p = Path(path).resolve()
            if not p.is_file():
                raise FileNotFoundError(f"kernel source {str(path)!r} not found")
            text = p.read_text()
        else:
            if not isinstance(code, str):
                raise TypeError(f"code must be a str, got {type(code).__name__}")
            p, text = None, code
        if isinstance(name_expressions, str):
            raise TypeError("name_expressions must be a sequence of strings, not a string")
        self.name_expressions = tuple(name_expressions)
        self.options = tuple(options)
        self.profile = bool(profile)
        self.code, self.path = text, p  # the source text; its file (None for code=)
        built = build.build_module(text, p, self.options, self.name_expressions, profile=self.profile)
        self.library_path = built.path
        self.compiled = built.compiled
        self._lib = built.lib
        self._kernels = built.kernels
        self._entities = built.entities
        self._functions: dict = {}

    def _describe(self, name: str) -> Tuple[int, str, int]:
        table = ctypes.cast(ctypes.addressof(ctypes.c_void_p.in_dll(self._lib, "gpuconv_emu_describe_table")),
                            ctypes.POINTER(ctypes.c_void_p))
        fn = _DESCRIBE(table[self._entities[name]])
        entry, sig, addr = ctypes.c_void_p(), ctypes.c_char_p(), ctypes.c_void_p()
        fn(ctypes.byref(entry), ctypes.byref(sig), ctypes.byref(addr))
        return entry.value or 0, sig.value.decode(), addr.value or 0

    def get_function(self, name: str) -> Kernel:
        """The kernel ``name``: an extern "C" kernel, or one of the module's name expressions."""
        k = self._functions.get(name)
        if k is not None:
            return k
        if name not in self._entities:
            raise KernelNotFoundError(
                f"no kernel {name!r} in this module; extern \"C\" kernels: {self._kernels}; name "
                f"expressions: {list(self.name_expressions)} (templates and C++ names need "
                f"name_expressions=)")
        entry, sig, _ = self._describe(name)
        if not sig.startswith("K"):
            raise KernelNotFoundError(f"{name!r} is not a kernel (it is a variable)")
        k = Kernel(self, name, entry, sig)
        self._functions[name] = k
        return k

    def get_global(self, name: str) -> GlobalMemory:
        """A ``__constant__``/``__device__`` variable as a :class:`GlobalMemory`."""
        if name in self._entities:
            _, sig, addr = self._describe(name)
            if sig.startswith("G:"):
                _, code, size = sig.split(":")
                return GlobalMemory(name, addr, int(size), np.dtype(_GLOBAL_DTYPES.get(code, np.uint8)), self)
        try:
            addr = ctypes.addressof(ctypes.c_char.in_dll(self._lib, name))
        except ValueError:
            raise KernelNotFoundError(f"no global {name!r} in this module") from None
        size = build.runtime().gpuconv_emu_symbol_size(addr)
        return GlobalMemory(name, addr, int(size), np.dtype(np.uint8), self)


def RawKernel(code: str, name: str, options: Sequence[str] = ()) -> Kernel:
    """One kernel from source, like ``cupy.RawKernel`` (``name``: extern "C" name or a name expression)."""
    mod = RawModule(code=code, options=options)
    if name in mod._kernels:
        return mod.get_function(name)
    return RawModule(code=code, options=options, name_expressions=(name,)).get_function(name)


def check_orders(kernel: Kernel, grid: Dims, block: Dims, args: Sequence[Any], shared_mem: int = 0,
                 seeds: Sequence[int] = (1, 2, 3)) -> List[Any]:
    """Run ``kernel`` forward, reversed and in seeded random orders, each on fresh copies of ``args``.

    Raises :class:`OrderDependenceError` naming the order, the argument and the first differing
    element when any array argument differs bitwise from the forward run (a missing barrier, a
    race, or order-dependent float atomics). The caller's arrays are not modified; returns the
    arguments as left by the forward run.
    """
    runs = [("forward", 0), ("reverse", 0)] + [("random", int(s)) for s in seeds]
    ref: Optional[List[Any]] = None
    for order, seed in runs:
        copies = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
        kernel(grid, block, tuple(copies), shared_mem=shared_mem, order=order, seed=seed)
        if ref is None:
            ref = copies
            continue
        for i, (r, c) in enumerate(zip(ref, copies)):
            if not isinstance(r, np.ndarray):
                continue
            rb = r.reshape(-1).view(np.uint8).reshape(r.size, r.dtype.itemsize) if r.size else r
            cb = c.reshape(-1).view(np.uint8).reshape(c.size, c.dtype.itemsize) if c.size else c
            diff = np.nonzero((rb != cb).any(axis=1))[0] if r.size else []
            if len(diff):
                first = np.unravel_index(int(diff[0]), r.shape)
                how = order if order != "random" else f"random (seed {seed})"
                raise OrderDependenceError(
                    f"kernel {kernel.name!r}: argument {i} differs between thread orders 'forward' and "
                    f"'{how}' in {len(diff)} of {r.size} elements; first at index "
                    f"{tuple(int(j) for j in first)}: "
                    f"{r[first]!r} (forward) vs {c[first]!r} — a missing __syncthreads/__syncwarp or a race")
    assert ref is not None
    return ref

