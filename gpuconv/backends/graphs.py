"""Captured steps: run a step's kernels again and again without its Python (CUDA graphs).

``capture(backend, step)`` runs ``step()`` once eagerly (the warm-up), then captures a second call
through the executor's ``begin_capture``/``end_capture``: on a GPU a CUDA graph
(``cupy.cuda.Stream.begin_capture``), on the emulator the list of launches, fills and copies the
step made. ``CapturedStep.replay()`` launches that graph; the step's Python does not run, so its
launches, their arguments and the buffers they touch are those of the capture. The rules below
are what a real CUDA graph forbids or silently gets wrong; ``KernelBackend`` enforces them while a
capture is under way, on both executors, so CPU tests find the code a GPU graph would break on:

* **No host reads.** During capture nothing runs: a device-to-host copy (``to_numpy``) or a
  synchronisation fails on a GPU (``cudaErrorStreamCaptureUnsupported``) and would read values the
  step has not computed. Refused: keep results (the loss) in device buffers, read them after replay.
* **No host-to-device copies.** A copy from host memory is captured with its host address (or
  refused, from pageable memory), so a replay would copy stale or freed host memory. Refused:
  refresh a step's inputs with ``Backend.upload`` into its buffers before each replay.
* **No new buffers.** Every address a graph touches is baked into it: memory it uses must stay
  reserved for it. The warm-up step's allocations are recorded, in order, and kept (``Arena``);
  the capture must ask for the same (shape, dtype) sequence and gets the same buffers back, so a
  graph only touches memory it owns and every replay finds its outputs where the capture left them.
  An allocation the warm-up step did not make (a buffer created only from the second step on, or of
  another shape) is refused: on a GPU it would be a ``cudaMalloc`` during capture. (Arrays the array
  library makes on its own, as ``astype`` does, bypass this: on a GPU they come from a pool the
  graph keeps, on the emulator they are computed on the host at capture time and not replayed; the
  first replay's comparison with an eager step finds those.)
* **No per-step host values.** A kernel argument passed by value (a learning rate, Adam's step
  count) is replayed with its captured value. Nothing at replay can see a Python value change, so
  on the emulator ``CapturedStep.check(step)`` traces the step again (nothing runs, the arena hands
  out the same buffers) and compares every launch with the capture's: a scalar that differs, an
  array that is another buffer, or another sequence of launches raises ``GraphReplayError``. Keep
  such values in device memory (``Optimizer.prepare_step`` does) and pass a pointer.

The memory cost: the arena keeps every buffer one step allocates (activations, gradients and the
temporaries an eager step would free early).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, List, Tuple

import numpy as np

__all__ = ["GraphCaptureError", "GraphReplayError", "Arena", "CapturedStep", "Capturer", "capture"]

WARMUP, CAPTURE, TRACE = "warm-up", "capture", "trace"


class GraphCaptureError(RuntimeError):
    """The step did something a captured CUDA graph cannot replay (host read, upload, new buffer)."""


class GraphReplayError(RuntimeError):
    """A replay would not do what the step does now (a per-step host value, a replaced buffer)."""


class Arena:
    """The buffers of a captured step, in the order the step allocates them.

    The warm-up step records (``phase`` WARMUP); the capture and each trace (``rewind()`` first)
    get the same buffers back in the same order and must ask for the same shapes and dtypes."""

    def __init__(self) -> None:
        self.buffers: List[Any] = []
        self.phase = WARMUP
        self.cursor = 0

    def rewind(self, phase: str) -> None:
        self.phase, self.cursor = phase, 0

    def allocate(self, xp, shape, dtype):
        shape = (int(shape),) if np.ndim(shape) == 0 else tuple(int(s) for s in shape)
        dtype = np.dtype(dtype)
        if self.phase == WARMUP:
            a = xp.empty(shape, dtype=dtype)
            self.buffers.append(a)
            return a
        i = self.cursor
        if i >= len(self.buffers):
            raise GraphCaptureError(
                f"allocation #{i + 1} ({shape}, {dtype}) during {self.phase}: the warm-up step made only "
                f"{len(self.buffers)} allocations. A captured step may use only buffers the warm-up step "
                f"allocated (a new buffer during capture is a cudaMalloc a CUDA graph cannot own); "
                f"allocate it before capture or every step")
        a = self.buffers[i]
        if a.shape != shape or a.dtype != dtype:
            raise GraphCaptureError(
                f"allocation #{i + 1} during {self.phase} asks for ({shape}, {dtype}) but the warm-up step's "
                f"#{i + 1} was ({a.shape}, {a.dtype}): the step allocates differently from one call to the "
                f"next, so its buffers cannot be preallocated")
        self.cursor += 1
        return a

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.buffers)


def refuse(phase: str, what: str, advice: str) -> GraphCaptureError:
    """The error for graph-unsafe ``what`` during ``phase``."""
    return GraphCaptureError(f"{what} inside a captured step ({phase}): {advice}")


def describe_entry(entry: tuple) -> str:
    kind = entry[0]
    if kind == "launch":
        return f"kernel {getattr(entry[1], 'name', None) or getattr(entry[1], '__name__', repr(entry[1]))}"
    return kind


def _key(a) -> Tuple:
    """What a replay depends on in one launch argument: an array's address, shape and dtype, or a
    scalar's type and bytes."""
    if isinstance(a, np.ndarray):
        return ("array", a.__array_interface__["data"][0], a.shape, str(a.dtype))
    s = np.asarray(a)
    return ("scalar", str(s.dtype), s.tobytes())


def _show(key: Tuple) -> str:
    if key[0] == "array":
        return f"buffer 0x{key[1]:x} {key[2]} {key[3]}"
    return f"{np.frombuffer(key[2], dtype=key[1])[0]!r} ({key[1]})"


def compare(captured: List[tuple], traced: List[tuple]) -> None:
    """Raise GraphReplayError at the first difference between two recordings of a step."""
    for k, (a, b) in enumerate(zip(captured, traced)):
        where = f"operation #{k + 1} ({describe_entry(a)})"
        if a[0] != b[0] or (a[0] == "launch" and (a[1] is not b[1] or a[2:4] != b[2:4] or a[5] != b[5])):
            raise GraphReplayError(f"{where}: the step now issues {describe_entry(b)} with grid/block "
                                   f"{b[2:4] if b[0] == 'launch' else '-'} instead: its launches depend on "
                                   f"host state that changed since capture, which a graph cannot follow")
        args_a, args_b = (a[4], b[4]) if a[0] == "launch" else (a[1:], b[1:])
        for j, (x, y) in enumerate(zip(args_a, args_b)):
            kx, ky = _key(x), _key(y)
            if kx == ky:
                continue
            if kx[0] == "scalar" and ky[0] == "scalar":
                raise GraphReplayError(
                    f"{where} argument {j}: captured as {_show(kx)}, the step now passes {_show(ky)}. "
                    f"A graph replays the captured value: keep a value that changes between steps in "
                    f"device memory, refreshed outside the graph (Backend.upload), and pass its buffer")
            raise GraphReplayError(
                f"{where} argument {j}: captured as {_show(kx)}, the step now passes {_show(ky)}. "
                f"A graph replays the captured buffer: copy new values into the captured buffers "
                f"(Backend.upload) instead of passing new arrays")
    if len(captured) != len(traced):
        raise GraphReplayError(f"the step now issues {len(traced)} operations, the capture recorded "
                               f"{len(captured)}: its launches depend on host state that changed since "
                               f"capture")


class CapturedStep:
    """A step captured by ``capture``: ``replay()`` runs it, ``outputs`` is what the captured call
    returned (its buffers hold each replay's results), ``check(step)`` (emulator) compares the
    step's launches now with the capture's."""

    def __init__(self, backend, graph, arena: Arena, outputs: Any, pool: Any = None) -> None:
        self.backend, self.graph, self.arena, self.outputs = backend, graph, arena, outputs
        self.pool = pool  # kept: memory the graph may use

    def replay(self) -> None:
        """Launch the captured graph on the current stream (ordered with eager work there)."""
        self.graph.launch()

    def check(self, step: Callable[[], Any]) -> None:
        """Trace ``step()`` (nothing runs; emulator only) and raise GraphReplayError unless it
        issues exactly the captured operations with the same arguments and buffers. Host state
        the step's Python changes (counters, generators) changes as in an eager step."""
        ex = self.backend.executor
        if not hasattr(ex, "recording"):
            raise NotImplementedError(f"check: tracing needs the emulator executor, not {ex.name!r}")
        with _guarded(self.backend, self.arena, TRACE):
            ex.begin_capture()
            try:
                step()
            finally:
                traced = ex.end_capture().operations
        compare(self.graph.operations, traced)


@contextlib.contextmanager
def _guarded(backend, arena: Arena, phase: str) -> Iterator[None]:
    if getattr(backend, "graph_arena", None) is not None:
        raise GraphCaptureError("a capture is already under way on this backend: captures do not nest")
    arena.rewind(phase)
    backend.graph_arena = arena
    try:
        yield
    finally:
        backend.graph_arena = None


class Capturer:
    """Capture in two calls, so the caller keeps the warm-up step's results:
    ``warm_up(step)`` runs a real step, recording its allocations, and returns what it returned;
    ``capture(step)`` captures the next call (nothing runs) and returns the CapturedStep."""

    def __init__(self, backend) -> None:
        ex = getattr(backend, "executor", None)
        if not hasattr(ex, "begin_capture"):
            raise NotImplementedError(f"backend {backend.name!r} cannot capture graphs")
        self.backend, self.arena = backend, Arena()
        self.pool = ex.capture_pool()  # what the array library allocates on its own; the graph keeps it
        self._warm = False

    def warm_up(self, step: Callable[[], Any]) -> Any:
        with self.backend.executor.capture_memory(self.pool), _guarded(self.backend, self.arena, WARMUP):
            out = step()
        self.backend.synchronize()
        self._warm = True
        return out

    def capture(self, step: Callable[[], Any]) -> CapturedStep:
        if not self._warm:
            raise RuntimeError("capture: call warm_up(step) first")
        ex = self.backend.executor
        with ex.capture_memory(self.pool), _guarded(self.backend, self.arena, CAPTURE):
            ex.begin_capture()
            try:
                outputs = step()
            except BaseException:
                ex.abort_capture()
                raise
            graph = ex.end_capture()
        return CapturedStep(self.backend, graph, self.arena, outputs, self.pool)


def capture(backend, step: Callable[[], Any]) -> CapturedStep:
    """Run ``step()`` once eagerly (the warm-up: a real step whose allocations the arena records
    and keeps), then capture a second call into a graph and return it. Capturing runs nothing:
    the state after ``capture`` is that of one step. GraphCaptureError on graph-unsafe code."""
    cap = Capturer(backend)
    cap.warm_up(step)
    return cap.capture(step)
