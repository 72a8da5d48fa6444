"""How a kernel launch happens: CuPy on a GPU, or gpuconv's CPU emulator.

Both executors expose the same small interface, used only by ``KernelBackend``:

  ``name``                 "cuda" or "emulator"
  ``xp``                   the array module (cupy or numpy)
  ``load(path, options, name_expressions)`` -> module with ``get_function(name)``
  ``launch(fn, grid, block, args, shared_mem=0)``  (``KernelBackend.launch`` is this method)
  ``fill(a, value)``, ``copy(dst, src)``  device-side memset and copy (captured like launches)
  ``synchronize()``
  ``describe()``           one line for logs
  ``begin_capture()``, ``end_capture()`` -> graph with ``launch()``, ``abort_capture()``,
  ``capture_pool()``, ``capture_memory(pool)``  capture a step (``gpuconv.backends.graphs``)
  ``device_name()``        the device's name (the kernel-choice cache is kept per name)

``CupyExecutor`` also has ``time_call(run)``, seconds per call timed with CUDA events, which the
kernel-version selector uses when ``gpuconv.backends.benchmark`` is on.

CuPy's compile cache keys on the source text and the options only, so ``CupyExecutor.load``
adds ``-DGPUCONV_SRC_HASH=<hash>`` computed over the ``.cu`` file and every header in the CUDA
source directory: editing an included header recompiles.
"""
from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Any, Sequence, Tuple

import numpy as np

from ..cuda_limits import check_launch

_checked: set = set()  # (grid, block, shared_mem) 3-tuples of ints already found inside the limits


def checked_launch(grid, block, shared_mem):
    """``cuda_limits.check_launch`` remembered per configuration: a training step repeats the same
    few hundred launches, and the check would cost more than the launch itself."""
    key = (grid, block, shared_mem)
    if key in _checked:
        return key
    key = check_launch(grid, block, shared_mem)
    if key == (grid, block, shared_mem) and len(_checked) < 65536:
        _checked.add(key)
    return key


def source_hash(path: Path) -> str:
    """Hex digest over ``path`` and every ``*.cuh`` beside it (sorted), for compile-cache keys."""
    path = Path(path)
    h = hashlib.sha256()
    for p in [path] + sorted(path.parent.glob("*.cuh")):
        h.update(p.name.encode())
        h.update(b"\0")
        h.update(p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]


class CupyExecutor:
    """Launches through ``cupy.RawModule`` (NVRTC) on the current CUDA device."""

    name = "cuda"
    _capture_stream = None  # the stream of a capture under way

    def __init__(self) -> None:
        import cupy
        self._cupy = cupy
        self.xp = cupy

    def load(self, path: Path, options: Tuple[str, ...], name_expressions: Sequence[str]) -> Any:
        """Compile ``path`` (a .cu file) with NVRTC; the result caches on disk through CuPy."""
        path = Path(path)
        code = path.read_text()
        opts = tuple(options) + (f"-DGPUCONV_SRC_HASH=0x{source_hash(path)}",)
        return self._cupy.RawModule(code=code, options=opts, name_expressions=tuple(name_expressions),
                                    backend="nvrtc")

    def launch(self, fn, grid: Tuple[int, int, int], block: Tuple[int, int, int], args: tuple,
               shared_mem: int = 0) -> None:
        """Check the configuration against CUDA's limits, then launch.

        Argument types and contiguity are not re-checked here: the launch modules build every
        argument list, and the emulator checks each one against the kernel's C signature (exact
        scalar types, C-contiguous arrays) in every CPU test run of the same code."""
        grid, block, shared_mem = checked_launch(grid, block, shared_mem)
        fn(grid, block, args, shared_mem=shared_mem)

    def fill(self, a, value) -> None:
        a.fill(value)

    def copy(self, dst, src) -> None:
        dst[...] = src

    def synchronize(self) -> None:
        self._cupy.cuda.get_current_stream().synchronize()

    def time_call(self, run, warmup: int = 2, repeat: int = 5) -> float:
        """Seconds per call of ``run`` (kernel launches on the current stream): ``warmup`` calls,
        then ``repeat`` calls between two CUDA events."""
        cupy = self._cupy
        for _ in range(warmup):
            run()
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        for _ in range(repeat):
            run()
        end.record()
        end.synchronize()
        return cupy.cuda.get_elapsed_time(start, end) / 1e3 / repeat

    def device_name(self) -> str:
        props = self._cupy.cuda.runtime.getDeviceProperties(self._cupy.cuda.Device().id)
        return props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])

    # ---- graphs -------------------------------------------------------------------------
    def capture_pool(self):
        """A memory pool for what the array library allocates on its own (outside
        ``KernelBackend.empty``) in a step's warm-up and capture; the captured step keeps it, so no
        memory a graph touches returns to the shared pool (the warm-up fills it, so the capture
        needs no cudaMalloc)."""
        return self._cupy.cuda.MemoryPool()

    def capture_memory(self, pool):
        """Allocate from ``pool`` (``capture_pool``) in the enclosed code."""
        return self._cupy.cuda.using_allocator(pool.malloc)

    def begin_capture(self) -> None:
        """Capture on a fresh non-blocking stream (the legacy default stream cannot capture), after
        the work already queued has finished."""
        if self._capture_stream is not None:  # as the emulator: a second stream would leak the first
            raise RuntimeError("begin_capture: a capture is already under way")
        cupy = self._cupy
        cupy.cuda.Device().synchronize()
        self._capture_stream = cupy.cuda.Stream(non_blocking=True)
        self._capture_stream.__enter__()
        self._capture_stream.begin_capture()

    def end_capture(self) -> CudaGraph:
        stream = self._capture_stream
        if stream is None:
            raise RuntimeError("end_capture without begin_capture")
        try:
            graph = stream.end_capture()
        finally:
            stream.__exit__(None, None, None)
            self._capture_stream = None
        return CudaGraph(self._cupy, graph, stream)

    def abort_capture(self) -> None:
        """End a capture that failed; the partial graph is dropped."""
        if self._capture_stream is not None:
            try:
                self.end_capture()
            except Exception:  # the capture was already invalidated by the failure
                pass

    def describe(self) -> str:
        cupy = self._cupy
        dev = cupy.cuda.Device()
        gpu = self.device_name()
        cc = dev.compute_capability
        rt = cupy.cuda.runtime.runtimeGetVersion()
        return (f"cuda: {gpu} (sm_{cc}), CuPy {cupy.__version__}, "
                f"CUDA runtime {rt // 1000}.{rt % 1000 // 10}")


class CudaGraph:
    """A captured CUDA graph; ``launch()`` replays it on the current stream, so it is ordered with
    the uploads before it and the reads after it."""

    def __init__(self, cupy, graph, stream) -> None:
        self._cupy, self.graph, self.stream = cupy, graph, stream

    def launch(self) -> None:
        self.graph.launch(self._cupy.cuda.get_current_stream())


class EmulatorGraph:
    """The emulator's graph: the operations a capture recorded, replayed in order."""

    def __init__(self, executor: EmulatorExecutor, operations: list) -> None:
        self.executor, self.operations = executor, operations

    def launch(self) -> None:
        ex = self.executor
        if ex.recording is not None:
            raise RuntimeError("a graph cannot be launched while a capture is under way")
        for op in self.operations:
            if op[0] == "launch":
                _, fn, grid, block, args, shared_mem = op
                fn(grid, block, args, shared_mem=shared_mem, order=ex.order, seed=ex.seed)
            elif op[0] == "fill":
                op[1].fill(op[2])
            else:
                op[1][...] = op[2]


class EmulatorExecutor:
    """Launches on the CPU through ``gpuconv.emulator`` (same .cu files, compiled by g++).

    ``order`` ("forward", "reverse" or "random") and ``seed`` choose the order in which the
    threads of a block run; tests use several orders to expose missing barriers.
    """

    name = "emulator"

    def __init__(self, order: str = "forward", seed: int = 0) -> None:
        if order not in ("forward", "reverse", "random"):
            raise ValueError(f"order must be 'forward', 'reverse' or 'random', got {order!r}")
        self.xp = np
        self.order = order
        self.seed = int(seed)
        self.recording = None  # the operations of a capture under way (they do not run), else None

    def load(self, path: Path, options: Tuple[str, ...], name_expressions: Sequence[str]) -> Any:
        from .. import emulator
        return emulator.RawModule(path=str(path), options=tuple(options),
                                  name_expressions=tuple(name_expressions))

    def launch(self, fn, grid: Tuple[int, int, int], block: Tuple[int, int, int], args: tuple,
               shared_mem: int = 0) -> None:
        """The GPU path's limits first (the emulator alone would allow the opt-in shared memory
        size), then the emulated launch, which checks each argument against the kernel's
        signature."""
        grid, block, shared_mem = checked_launch(grid, block, shared_mem)
        if self.recording is not None:  # as in a CUDA stream capture: recorded, not run
            fn.check_args(args)  # the errors a real launch would give, at capture
            self.recording.append(("launch", fn, grid, block, tuple(args), shared_mem))
            return
        fn(grid, block, args, shared_mem=shared_mem, order=self.order, seed=self.seed)

    def fill(self, a, value) -> None:
        if self.recording is not None:
            self.recording.append(("fill", a, value))
        else:
            a.fill(value)

    def copy(self, dst, src) -> None:
        if self.recording is not None:
            self.recording.append(("copy", dst, src))
        else:
            dst[...] = src

    def synchronize(self) -> None:
        """Emulated launches are synchronous."""

    def device_name(self) -> str:
        return "emulator"

    # ---- graphs -------------------------------------------------------------------------
    def capture_pool(self):
        """No pool: every emulated buffer is a NumPy array, and the arena keeps the step's."""
        return None

    def capture_memory(self, pool):
        return contextlib.nullcontext()

    def begin_capture(self) -> None:
        """Record launches, fills and copies instead of running them, until ``end_capture``."""
        if self.recording is not None:
            raise RuntimeError("begin_capture: a capture is already under way")
        self.recording = []

    def end_capture(self) -> EmulatorGraph:
        if self.recording is None:
            raise RuntimeError("end_capture without begin_capture")
        ops, self.recording = self.recording, None
        return EmulatorGraph(self, ops)

    def abort_capture(self) -> None:
        self.recording = None

    def describe(self) -> str:
        return f"emulator: CUDA kernels on the CPU (thread order {self.order})"
