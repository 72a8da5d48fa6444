"""One rank of gpuconv.distributed's NCCL communicator on the GPU, against host references.

    python scripts/nccl_check.py

Checks allreduce (sum and mean) for float32, float64, int32 and int64, a non-blocking allreduce
queued behind work on a non-default stream, broadcast, and a NumPy array routed through the host
communicator; prints one line per check and exits 1 if any fails. (More ranks need MPI:
``mpirun -np 2 python scripts/nccl_check.py`` runs the same checks with rank-dependent data.)
"""
from __future__ import annotations

import sys

import numpy as np


def main() -> int:
    import cupy

    from gpuconv.distributed import communicator_for
    from gpuconv.distributed.comm import SingleProcess
    from gpuconv.distributed.nccl import NcclCommunicator

    comm = communicator_for("cuda", timeout=60)
    if comm.kind != "nccl":  # one process: NCCL over a single-process bootstrap
        comm = NcclCommunicator(SingleProcess(timeout=60))
    print(comm.describe())
    rank, size = comm.rank, comm.size
    failures = 0

    def check(name: str, got, want) -> None:
        nonlocal failures
        ok = got.dtype == want.dtype and np.array_equal(got, want)
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}" + ("" if ok else f": got {got[:4]}, want {want[:4]}"))

    n = 1_000_003  # not a multiple of any chunk size
    for dtype in (np.float32, np.float64, np.int32, np.int64):
        # Integer-valued data: every order of summation gives the same bits.
        per_rank = [np.random.default_rng(r).integers(-1000, 1000, n).astype(dtype) for r in range(size)]
        want = np.sum(per_rank, axis=0, dtype=dtype)
        a = cupy.asarray(per_rank[rank])
        check(f"allreduce sum {np.dtype(dtype).name}[{n}]", cupy.asnumpy(comm.allreduce(a)), want)
        if np.dtype(dtype).kind == "f":
            a = cupy.asarray(per_rank[rank])
            check(f"allreduce mean {np.dtype(dtype).name}", cupy.asnumpy(comm.allreduce(a, op="mean")),
                  (want / dtype(size)).astype(dtype))
    with cupy.cuda.Stream(non_blocking=True):
        a = cupy.full(n, rank + 1.0, dtype=cupy.float32)
        a *= 2  # queued on this stream; the all-reduce must start after it
        work = comm.iallreduce(a)
        work.wait()
        got = cupy.asnumpy(a)
    check("iallreduce behind work on a non-default stream",
          got, np.full(n, sum(2.0 * (r + 1) for r in range(size)), np.float32))
    b = cupy.full(1000, float(rank), dtype=cupy.float64)
    check("broadcast from rank 0", cupy.asnumpy(comm.broadcast(b, root=0)), np.zeros(1000))
    h = np.array([rank + 1.0, 2.0])
    check("numpy array through the host communicator", comm.allreduce(h),
          np.array([size * (size + 1) / 2, 2.0 * size]))
    comm.barrier()
    print(f"nccl_check: {failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
