"""One rank of the data-parallel tests (started by tests/test_distributed.py, under mpirun or alone).

Trains a zoo model on the first ``--samples`` bundled digits for ``--steps`` steps of global
batches of ``--batch-size`` samples and writes, from every rank, ``<out>/rank<r>.npz``: the
global loss of every step (the mean over the global batch) and the final parameters.
``--fail-rank R --fail-at-step K --fail-mode exit|stop`` makes rank R exit, or stop responding,
just before step K.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

import numpy as np

from gpuconv import datasets, distributed, nn, optim, use_backend
from gpuconv.models import build_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="lenet")
    ap.add_argument("--backend", default="numpy")
    ap.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
    ap.add_argument("--samples", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--bucket-bytes", type=int, default=distributed.DEFAULT_BUCKET_BYTES)
    ap.add_argument("--fail-rank", type=int, default=-1)
    ap.add_argument("--fail-at-step", type=int, default=-1)
    ap.add_argument("--fail-mode", default="exit", choices=("exit", "stop"))
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    comm = distributed.communicator_for(a.backend)
    with distributed.abort_on_error(comm), use_backend(a.backend):
        data = datasets.load_digits()
        images, labels = data.train.images[:a.samples], data.train.labels[:a.samples]
        # Every rank but 0 starts from other weights: DataParallel must broadcast rank 0's.
        model = build_model(a.model, 1, 8, 10, seed=comm.rank)
        dp = distributed.DataParallel(model, comm, bucket_bytes=a.bucket_bytes)
        opt = (optim.Adam(model.parameters(), lr=2e-3) if a.optimizer == "adam"
               else optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
        loss_fn = nn.SoftmaxCrossEntropy()
        global_batch = a.batch_size
        losses, step, epoch = [], 0, 0
        while step < a.steps:
            for i, (xb, yb) in enumerate(datasets.iterate_batches(
                    images, labels, global_batch, seed=7, epoch=epoch, shard=(comm.rank, comm.size))):
                if step == a.fail_at_step and comm.rank == a.fail_rank:
                    sys.stdout.flush()
                    if a.fail_mode == "exit":
                        os._exit(3)
                    os.kill(os.getpid(), signal.SIGSTOP)
                n_global = min(global_batch, len(labels) - i * global_batch)
                if len(yb):
                    loss = float(loss_fn.forward(dp.forward(xb), yb))
                    dp.backward(loss_fn.backward(), fraction=len(yb) / n_global)
                else:
                    loss = 0.0
                    dp.backward(None, fraction=0.0)
                opt.step()
                total = comm.allreduce(np.array([loss * len(yb)]))
                losses.append(total[0] / n_global)
                step += 1
                if step == a.steps:
                    break
            epoch += 1
        np.savez(os.path.join(a.out, f"rank{comm.rank}.npz"), losses=np.array(losses),
                 buckets=np.array(dp.bucket_sizes, dtype=np.int64), **dict(model.state_dict()))


if __name__ == "__main__":
    main()
