"""Host-side cost of one op call on the kernel backend, with a stand-in executor that launches
nothing: what the Python path from ``gpuconv.functional`` to the executor costs per call.

    python scripts/op_overhead.py [--repeat 20000]

Prints microseconds per call (the best of 7 rounds: the machine is shared, and other work only
adds time) for conv2d forward and conv2d_backward on a
small geometry, plus a few other ops. The arrays are NumPy arrays; no kernel runs, so the figure
is the argument checks, geometry, version pick, output allocation and launch configuration.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from gpuconv import functional as F
from gpuconv.backends import use_backend
from gpuconv.backends.executors import CupyExecutor
from gpuconv.backends.kernel_backend import KernelBackend


def _no_kernel(grid, block, args, shared_mem=0):
    """Stands in for a compiled kernel: launching it does nothing."""


class NullExecutor(CupyExecutor):
    """The CuPy executor's launch path (configuration and argument checks) on NumPy arrays,
    with kernels that do nothing: no CuPy, no GPU."""

    name = "null"

    def __init__(self) -> None:  # no cupy import
        self.xp = np

    def load(self, path, options, name_expressions):
        return self

    def get_function(self, name):
        return _no_kernel

    def synchronize(self):
        pass

    def describe(self):
        return "null executor (launches nothing)"


def per_call_us(fn, repeat: int, rounds: int = 7) -> float:
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        times.append((time.perf_counter() - t0) / repeat * 1e6)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20000, help="calls per round (default 20000)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 16, 16, 16), dtype=np.float32)
    w = rng.standard_normal((32, 16, 3, 3), dtype=np.float32)
    b = rng.standard_normal(32, dtype=np.float32)
    dy = rng.standard_normal((8, 32, 16, 16), dtype=np.float32)
    cases = {
        "conv2d": lambda: F.conv2d(x, w, b, padding=1),
        "conv2d_backward": lambda: F.conv2d_backward(dy, x, w, padding=1),
        "max_pool2d": lambda: F.max_pool2d(x, 2),
        "relu": lambda: F.relu(x),
    }
    with use_backend(KernelBackend(NullExecutor())):
        for name, fn in cases.items():
            repeat = args.repeat // 4 if name == "conv2d_backward" else args.repeat
            print(f"{name:16s} {per_call_us(fn, repeat):8.2f} us/call")


if __name__ == "__main__":
    main()
