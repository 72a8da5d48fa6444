"""The NCCL communicator (``cupy.cuda.nccl``), for CuPy arrays on the cuda backend.

Bootstrapped over a host communicator (MPI for several ranks, or ``SingleProcess`` for one):
rank 0 makes the NCCL unique id and the host communicator broadcasts it; each rank then joins
``ncclCommInitRank`` on its current CUDA device (``gpuconv.distributed.world`` picks device
``local rank % device count`` before any array is made). NumPy arrays given to a collective go
through the host communicator, so one communicator serves both the gradients (on the GPU) and the
epoch's loss and accuracy counts (on the host).

Streams: a collective runs on the communicator's own non-blocking ``stream``. It starts after
the work already queued on the caller's current stream (an event recorded there, waited on by
``stream``), and ``Work.wait()`` makes the current stream wait for its completion event, so
kernels queued later see the result while kernels queued meanwhile (the rest of the backward
pass) overlap with it. ``wait()`` also polls the event from the host until the timeout, then
aborts the NCCL communicator (``ncclCommAbort`` ends its kernels) and raises.
"""
from __future__ import annotations

from typing import NoReturn, Optional

import numpy as np

from .comm import Communicator, Work, describe_array

__all__ = ["NcclCommunicator", "nccl_version"]

_UNIQUE_ID_BYTES = 128


def nccl_version() -> Optional[str]:
    """"major.minor.patch" of the NCCL library CuPy loads, or None when it has none."""
    try:
        from cupy.cuda import nccl
        code = int(nccl.get_version())
    except Exception:
        return None
    # NCCL_VERSION_CODE: major*1000 + minor*100 + patch up to 2.8, major*10000 + minor*100 + patch after.
    major, rest = (code // 10000, code % 10000) if code >= 10000 else (code // 1000, code % 1000)
    return f"{major}.{rest // 100}.{rest % 100}"


class _StreamWork(Work):
    """A collective on the communicator's stream: complete when its event has been reached."""

    __slots__ = ("_event", "_cuda")

    def __init__(self, event, cuda, what: str, comm: Communicator, on_timeout, keep) -> None:
        super().__init__(lambda: event.done, what, comm, on_timeout, keep)
        self._event, self._cuda = event, cuda

    def wait(self) -> None:
        """Order the current stream after the collective, then wait for it on the host (with the
        timeout)."""
        self._cuda.get_current_stream().wait_event(self._event)
        super().wait()


class NcclCommunicator(Communicator):
    """Collectives on CuPy arrays through NCCL; NumPy arrays through ``host``."""

    kind = "nccl"

    def __init__(self, host: Communicator, timeout: Optional[float] = None) -> None:
        import cupy
        from cupy.cuda import nccl
        if not isinstance(host, Communicator) or host.kind == "nccl":
            raise TypeError(f"host must be an MPI or single-process Communicator, got {host!r}")
        super().__init__(host.rank, host.size, host.timeout if timeout is None else timeout)
        self._cupy, self._nccl_mod, self.host = cupy, nccl, host
        self._dtypes = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64,
                        np.dtype(np.int32): nccl.NCCL_INT32, np.dtype(np.int64): nccl.NCCL_INT64}
        # The id is 128 C chars, signed or unsigned by platform: int32 carries either range.
        uid = np.zeros(_UNIQUE_ID_BYTES, dtype=np.int32)
        if self.rank == 0:
            uid[:] = nccl.get_unique_id()
        host.broadcast(uid, root=0)
        self.device = cupy.cuda.Device().id
        self._comm = nccl.NcclCommunicator(self.size, tuple(int(v) for v in uid), self.rank)
        self.stream = cupy.cuda.Stream(non_blocking=True)

    def _is_host(self, array) -> bool:
        return not isinstance(array, self._cupy.ndarray)

    def check_array(self, array, name: str = "array") -> None:
        if not isinstance(array, (np.ndarray, self._cupy.ndarray)):
            raise TypeError(f"{name} must be a CuPy or NumPy array, got {type(array).__name__}")
        super().check_array(array, name)
        if not self._is_host(array) and array.device.id != self.device:
            raise ValueError(f"{name} is on CUDA device {array.device.id}, the communicator on "
                             f"device {self.device}")

    def _enqueue(self, launch, what: str, array) -> Work:
        """Run ``launch(stream_ptr)`` on ``self.stream`` after the current stream's queued work."""
        cuda = self._cupy.cuda
        ready = cuda.Event(disable_timing=True)
        ready.record(cuda.get_current_stream())
        self.stream.wait_event(ready)
        launch(self.stream.ptr)
        finished = cuda.Event(disable_timing=True)
        finished.record(self.stream)
        return _StreamWork(finished, cuda, what, self, self._abort_nccl, array)

    def iallreduce(self, array) -> Work:
        self.check_array(array)
        if self._is_host(array):
            return self.host.iallreduce(array)
        dtype, ptr, n = self._dtypes[np.dtype(array.dtype)], array.data.ptr, array.size
        return self._enqueue(lambda s: self._comm.allReduce(ptr, ptr, n, dtype, self._nccl_mod.NCCL_SUM, s),
                             f"allreduce of {describe_array(array)} (NCCL)", array)

    def broadcast(self, array, root: int = 0):
        self.check_array(array)
        root = self.check_root(root)
        if self._is_host(array):
            return self.host.broadcast(array, root)
        dtype, ptr, n = self._dtypes[np.dtype(array.dtype)], array.data.ptr, array.size
        self._enqueue(lambda s: self._comm.bcast(ptr, n, dtype, root, s),
                      f"broadcast of {describe_array(array)} from rank {root} (NCCL)", array).wait()
        return array

    def barrier(self) -> None:
        self.host.barrier()

    def _abort_nccl(self) -> None:
        try:
            self._comm.abort()
        except Exception:  # already aborted, or an NCCL without ncclCommAbort
            pass

    def abort(self, code: int = 1) -> NoReturn:
        self._abort_nccl()
        self.host.abort(code)

    def describe(self) -> str:
        return (f"nccl {nccl_version()} on CUDA device {self.device} (bootstrap: {self.host.kind}), "
                f"rank {self.rank} of {self.size}")
