"""Which communicator a process gets: MPI when an MPI launcher started it, NCCL on top for the
cuda backend, a single process otherwise (without importing mpi4py).

A process counts as launched by MPI when its launcher set one of ``LAUNCHER_VARIABLES``
(Open MPI's ``mpirun``, MPICH's and Intel MPI's ``mpiexec`` (Hydra), MVAPICH2, and Slurm's
``srun --mpi=pmi2|pmix``).
"""
from __future__ import annotations

import contextlib
import os
import sys
import traceback
from typing import Any, Dict, Iterator, Mapping, Optional, Union

from ..backends import Backend, BackendUnavailable
from .comm import Communicator, SingleProcess, timeout_from_env

__all__ = ["LAUNCHER_VARIABLES", "launched_by_mpi", "communicator_for", "abort_on_error",
           "distributed_info"]

LAUNCHER_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE")


def launched_by_mpi(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The launcher variable found in ``environ`` (default os.environ), or None."""
    environ = os.environ if environ is None else environ
    for name in LAUNCHER_VARIABLES:
        if environ.get(name):
            return name
    return None


def _mpi_world(timeout: Optional[float]) -> Communicator:
    variable = launched_by_mpi()
    if variable is None:
        return SingleProcess(timeout)
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        raise BackendUnavailable(
            f"this process was started by an MPI launcher ({variable}={os.environ[variable]}) but "
            f"mpi4py is not installed: pip install 'gpuconv[mpi]' (it needs an MPI library, e.g. "
            f"Open MPI)") from None
    from .mpi import MpiCommunicator
    return MpiCommunicator(timeout=timeout)


def communicator_for(backend: Union[str, Backend], timeout: Optional[float] = None) -> Communicator:
    """The job's communicator for training on ``backend`` (a Backend or its name).

    One process (no MPI launcher): ``SingleProcess``. Several ranks: ``MpiCommunicator`` for the
    numpy and emulator backends; for cuda, each rank first selects GPU ``local rank % devices``,
    then an ``NcclCommunicator`` bootstrapped over MPI. Call it before any array is placed on
    the GPU. ``timeout`` defaults to ``GPUCONV_DIST_TIMEOUT``.
    """
    name = backend.name if isinstance(backend, Backend) else backend
    if not isinstance(name, str):
        raise TypeError(f"backend must be a Backend or a backend name, got {backend!r}")
    if timeout is None:
        timeout = timeout_from_env()
    world = _mpi_world(timeout)
    if name != "cuda" or world.size == 1:
        return world
    import cupy
    local_rank, _ = world.local_rank_and_size()
    cupy.cuda.Device(local_rank % cupy.cuda.runtime.getDeviceCount()).use()
    from .nccl import NcclCommunicator
    return NcclCommunicator(world)


@contextlib.contextmanager
def abort_on_error(comm: Communicator, code: int = 2) -> Iterator[None]:
    """With several ranks, an exception inside the block is printed (``gpuconv: error on rank r
    of p: ...``; the traceback too with ``GPUCONV_DEBUG=1``) and ends the whole job through
    ``comm.abort(code)``, since the other ranks would otherwise wait in their next collective.
    With one rank the exception propagates unchanged."""
    try:
        yield
    except (Exception, KeyboardInterrupt) as exc:
        if comm.size == 1:
            raise
        sys.stdout.flush()
        if os.environ.get("GPUCONV_DEBUG"):
            traceback.print_exc()
        sys.stderr.write(f"gpuconv: error on rank {comm.rank} of {comm.size}: "
                         f"{type(exc).__name__}: {exc}\n")
        sys.stderr.flush()
        comm.abort(code)


def distributed_info() -> Dict[str, Any]:
    """What ``gpuconv info`` reports about data-parallel training (imports mpi4py only under an
    MPI launcher: importing it initialises MPI)."""
    from .nccl import nccl_version
    variable = launched_by_mpi()
    try:
        import mpi4py
        mpi4py_version: Optional[str] = mpi4py.__version__
    except ImportError:
        mpi4py_version = None
    info: Dict[str, Any] = {
        "launcher": variable, "mpi4py": mpi4py_version, "nccl": nccl_version(),
        "communicators": {"numpy": "mpi", "emulator": "mpi", "cuda": "nccl (bootstrapped over mpi)"}}
    if variable is not None and mpi4py_version is not None:
        from .mpi import MpiCommunicator, mpi_library_version
        comm = MpiCommunicator()
        info.update(rank=comm.rank, ranks=comm.size, mpi_library=mpi_library_version())
    return info
