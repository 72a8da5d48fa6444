"""Data-parallel speed on this machine: an epoch of cifar-small on 1 and 2 ranks, and all-reduce time
against message size.

    python scripts/dist_speed.py [--images 1024] [--batch 64] [--repeat 3] [--json FILE]

Starts ``mpirun -np R`` runs of itself for each configuration, alternating them ``--repeat`` times
so that a change in the machine's load hits every configuration alike, and prints medians:

* seconds for one epoch of ``--images`` synthetic 3x32x32 images (``datasets.synthetic_batch``)
  at the same global batch ``--batch`` (one rank: the whole batch; two ranks: half each, the same
  training), numpy backend, one BLAS thread per rank; also one rank with two BLAS threads (the
  same two cores used by threads instead of ranks). The first step of each run is not timed.
* per training step, the gradient bytes each rank all-reduces and the time ``backward`` waited
  for the all-reduces after the model's backward returned (the communication not hidden);
* ``comm.allreduce`` on two ranks for messages of 4 KiB to 4 MiB (median of 50), with the bus
  bandwidth 2(p-1)/p * bytes / time of a ring all-reduce.

Needs Open MPI's mpirun and mpi4py (scripts/install_mpi.sh).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SWEEP_BYTES = (4 << 10, 64 << 10, 256 << 10, 378_152, 1 << 20, 4 << 20)


def worker(images: int, batch: int) -> dict:
    from gpuconv import datasets, distributed, nn, optim, use_backend
    from gpuconv.models import build_model

    comm = distributed.communicator_for("numpy")
    with distributed.abort_on_error(comm), use_backend("numpy"):
        x, y = datasets.synthetic_batch(images, 3, 32, 32, 10, seed=0)
        model = build_model("cifar-small", 3, 32, 10, seed=0)
        dp = distributed.DataParallel(model, comm)
        opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        loss_fn = nn.SoftmaxCrossEntropy()
        steps = 0
        for i, (xb, yb) in enumerate(datasets.iterate_batches(x, y, batch, seed=0, epoch=1,
                                                              shard=(comm.rank, comm.size))):
            if i == 1:  # the first step (allocations, first touches) is not timed
                comm.barrier()
                t0, wait0, bytes0 = time.perf_counter(), dp.stats.wait_seconds, dp.stats.bytes
            loss_fn.forward(dp.forward(xb), yb)
            dp.backward(loss_fn.backward(), fraction=len(yb) / min(batch, images - i * batch))
            opt.step()
            steps += i >= 1
        comm.barrier()
        seconds = time.perf_counter() - t0
        result = {"rank": comm.rank, "ranks": comm.size, "steps": steps, "seconds_per_step": seconds / steps,
                  "epoch_seconds": seconds / steps * -(-images // batch),
                  "bytes_per_step": (dp.stats.bytes - bytes0) / steps,
                  "wait_ms_per_step": 1e3 * (dp.stats.wait_seconds - wait0) / steps, "sweep": []}
        if comm.size > 1:
            for nbytes in SWEEP_BYTES:
                a = np.ones(nbytes // 4, np.float32)
                times = []
                for _ in range(50):
                    comm.barrier()
                    t = time.perf_counter()
                    comm.allreduce(a)
                    times.append(time.perf_counter() - t)
                result["sweep"].append({"bytes": a.nbytes, "median_ms": 1e3 * statistics.median(times)})
    return result


def run(ranks: int, threads: int, images: int, batch: int) -> dict:
    version = subprocess.run(["mpirun", "--version"], capture_output=True, text=True).stdout
    extra = ["--oversubscribe"] if "Open MPI" in version else []
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads), OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    cmd = ["mpirun", *extra, "-np", str(ranks), sys.executable, __file__, "--worker",
           "--images", str(images), "--batch", str(batch)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=64, help="global batch (default %(default)s)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.images < 2 * a.batch or a.batch < 2 or a.batch % 2:
        ap.error("--batch must be even and --images at least two batches")
    if a.worker:
        result = worker(a.images, a.batch)
        if result["rank"] == 0:
            print(json.dumps(result))
        return 0
    if shutil.which("mpirun") is None:
        print("dist_speed: mpirun not found (scripts/install_mpi.sh)", file=sys.stderr)
        return 1
    configs = {"1 rank, 1 thread": (1, 1), "2 ranks, 1 thread each": (2, 1), "1 rank, 2 threads": (1, 2)}
    runs = {k: [] for k in configs}
    loads = []
    for _ in range(a.repeat):
        for name, (ranks, threads) in configs.items():
            loads.append(os.getloadavg()[0])
            runs[name].append(run(ranks, threads, a.images, a.batch))
    med = {k: statistics.median(r["epoch_seconds"] for r in v) for k, v in runs.items()}
    base = med["1 rank, 1 thread"]
    print(f"cifar-small, one epoch of {a.images} synthetic 3x32x32 images, global batch {a.batch}, numpy "
          f"backend; {a.repeat} alternating runs each, medians; 1-min load average during the runs "
          f"{min(loads):.1f} to {max(loads):.1f} on {os.cpu_count()} CPUs\n")
    print("| configuration | epoch s (runs) | speed-up over 1 rank | allreduce bytes/step | "
          "exposed wait ms/step |")
    print("|---|---|---|---|---|")
    for name, v in runs.items():
        r = v[0]
        each = ", ".join(f"{x['epoch_seconds']:.2f}" for x in v)
        print(f"| {name} | {med[name]:.2f} ({each}) | "
              f"{base / med[name]:.2f} | {r['bytes_per_step']:.0f} | "
              f"{statistics.median(x['wait_ms_per_step'] for x in v):.2f} |")
    sweeps = [r["sweep"] for r in runs["2 ranks, 1 thread each"]]
    print("\nallreduce on 2 ranks (gpuconv.distributed, MPI, polled), median of 50 per run; "
          "bus bandwidth = 2(p-1)/p * bytes / time\n")
    print("| bytes | ms (runs) | bus GB/s |")
    print("|---|---|---|")
    for i, entry in enumerate(sweeps[0]):
        ms = [s[i]["median_ms"] for s in sweeps]
        m = statistics.median(ms)
        each = ", ".join(f"{x:.3f}" for x in ms)
        print(f"| {entry['bytes']} | {m:.3f} ({each}) | "
              f"{entry['bytes'] / (m * 1e-3) / 1e9:.2f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"settings": vars(a), "runs": runs, "load_average": loads}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
