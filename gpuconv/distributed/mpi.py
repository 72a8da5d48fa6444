"""The MPI communicator (mpi4py), for host arrays: the numpy and emulator backends, and the
bootstrap and host-side collectives of the NCCL communicator.

Every collective is MPI's non-blocking one (``Iallreduce``, ``Ibcast``, ``Ibarrier``) polled
with ``Request.Test`` until it completes or the timeout passes, so a rank that died or hung
makes the others raise :class:`~gpuconv.distributed.comm.CollectiveTimeout` instead of
blocking in ``MPI_Wait`` forever. Importing this module initialises MPI (mpi4py does so on
import); ``gpuconv.distributed.world`` imports it only when an MPI launcher started the process.
"""
from __future__ import annotations

from typing import NoReturn, Optional

import numpy as np

from .comm import Communicator, Work, describe_array

__all__ = ["MpiCommunicator", "mpi_library_version"]


def _mpi():
    from mpi4py import MPI
    return MPI


def mpi_library_version() -> str:
    """First line of the MPI library's version string (initialises MPI)."""
    return _mpi().Get_library_version().replace("\0", "").strip().splitlines()[0]


class MpiCommunicator(Communicator):
    """Collectives over an mpi4py communicator (default ``MPI.COMM_WORLD``) on NumPy arrays."""

    kind = "mpi"

    def __init__(self, comm=None, timeout: Optional[float] = None) -> None:
        MPI = _mpi()
        self._MPI = MPI
        self._comm = MPI.COMM_WORLD if comm is None else comm
        super().__init__(self._comm.Get_rank(), self._comm.Get_size(), timeout)
        self._local = None

    def check_array(self, array, name: str = "array") -> None:
        if not isinstance(array, np.ndarray):
            raise TypeError(f"{name} must be a NumPy array for the MPI communicator, got "
                            f"{type(array).__name__}")
        super().check_array(array, name)

    def iallreduce(self, array) -> Work:
        self.check_array(array)
        req = self._comm.Iallreduce(self._MPI.IN_PLACE, array, op=self._MPI.SUM)
        return Work(req.Test, f"allreduce of {describe_array(array)}", self, keep=array)

    def broadcast(self, array, root: int = 0):
        self.check_array(array)
        root = self.check_root(root)
        req = self._comm.Ibcast(array, root=root)
        Work(req.Test, f"broadcast of {describe_array(array)} from rank {root}", self, keep=array).wait()
        return array

    def barrier(self) -> None:
        Work(self._comm.Ibarrier().Test, "barrier", self).wait()

    def abort(self, code: int = 1) -> NoReturn:
        self._comm.Abort(code)
        raise SystemExit(code)  # not reached: MPI_Abort ends the process

    def local_rank_and_size(self):
        """(rank, number of ranks) among the ranks on this node (shared-memory domain)."""
        if self._local is None:
            node = self._comm.Split_type(self._MPI.COMM_TYPE_SHARED, key=self.rank)
            self._local = (node.Get_rank(), node.Get_size())
            node.Free()
        return self._local

    def describe(self) -> str:
        return f"mpi ({mpi_library_version()}), rank {self.rank} of {self.size}"
