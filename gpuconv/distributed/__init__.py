"""Data-parallel training over MPI (host arrays) and NCCL (GPU arrays).

    from gpuconv import distributed

    comm = distributed.communicator_for(backend)   # SingleProcess, MpiCommunicator or NcclCommunicator
    with distributed.abort_on_error(comm):
        model = build_model(...)                   # any seed: rank 0's weights are broadcast
        dp = distributed.DataParallel(model, comm)
        for xb, yb in datasets.iterate_batches(..., batch_size * comm.size, shard=(comm.rank, comm.size)):
            loss = loss_fn.forward(dp.forward(xb), yb)
            dp.backward(loss_fn.backward(), fraction=len(yb) / global_count)
            opt.step()

Start it with any MPI launcher (``mpirun -np 4 python train.py``); without one it is a single
process and mpi4py is never imported. See docs/distributed.md.
"""
from __future__ import annotations

from .comm import (
    DEFAULT_TIMEOUT,
    TIMEOUT_ENV,
    CollectiveTimeout,
    Communicator,
    SingleProcess,
    Work,
    timeout_from_env,
)
from .data_parallel import DEFAULT_BUCKET_BYTES, CommStats, DataParallel
from .world import LAUNCHER_VARIABLES, abort_on_error, communicator_for, distributed_info, launched_by_mpi

__all__ = ["Communicator", "SingleProcess", "Work", "CollectiveTimeout", "TIMEOUT_ENV", "DEFAULT_TIMEOUT",
           "timeout_from_env", "DataParallel", "CommStats", "DEFAULT_BUCKET_BYTES", "communicator_for",
           "abort_on_error", "launched_by_mpi", "distributed_info", "LAUNCHER_VARIABLES"]
