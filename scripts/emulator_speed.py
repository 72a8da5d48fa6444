"""Speed of the CPU emulator: threads per second, launch cost, compile time and warm re-load time.

    python scripts/emulator_speed.py

Runs an element-wise kernel (no barriers) and a shared-memory block reduction (block 256, nine
__syncthreads per thread), measures the cost of launching a one-block kernel (on 64-element
arrays, and on two 16 MiB arrays, which are copied to and from their guarded staging copies),
times a cold compile of one .cu with the runtime already built and a warm re-load in a new
process, which must not recompile.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np

SOURCE = r"""
extern "C" __global__ void axpy(const float* x, float* y, float a, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a * x[i] + y[i];
}

extern "C" __global__ void block_sum(const float* x, float* out, int n) {
  __shared__ float s[256];
  const unsigned t = threadIdx.x;
  const int i = blockIdx.x * blockDim.x + t;
  s[t] = i < n ? x[i] : 0.0f;
  __syncthreads();
  for (unsigned h = blockDim.x / 2; h > 0; h >>= 1) {
    if (t < h) s[t] += s[t + h];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = s[0];
}
"""

LOAD = ("import sys, time; import gpuconv.emulator as e, gpuconv.emulator.build as b; "
        "t = time.perf_counter(); e.RawModule(code=sys.argv[1]); "
        "print(time.perf_counter() - t, b.stats['kernel_compiles'])")


def rates(fn, threads: int, repeats: int = 3) -> tuple:
    """Best (wall-clock, CPU-time) threads per second over ``repeats`` runs."""
    wall = cpu = float("inf")
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall, cpu = min(wall, time.perf_counter() - t), min(cpu, time.process_time() - c)
    return threads / wall, threads / cpu


def main() -> None:
    import gpuconv.emulator as emu
    from gpuconv.emulator import build, cache

    build.runtime()  # the runtime and the precompiled header are built once, outside the timings
    emu.RawModule(code=SOURCE)
    unique = SOURCE + f"\n// {time.time()}\n"  # in no cache yet
    t = time.perf_counter()
    mod = emu.RawModule(code=unique)
    compile_s = time.perf_counter() - t
    out = subprocess.run([sys.executable, "-c", LOAD, unique], capture_output=True, text=True, check=True,
                         env=dict(os.environ)).stdout.split()
    reload_s, recompiles = float(out[0]), int(out[1])
    cache.discard(mod.library_path.parent)
    (cache.root() / f"src-{mod.library_path.parent.name}.cu").unlink(missing_ok=True)

    n = 1 << 21
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    y = np.zeros(n, np.float32)
    axpy = mod.get_function("axpy")
    ew = rates(lambda: axpy((n // 256,), (256,), (x, y, np.float32(2), np.int32(n))), n)
    nb = 1 << 18
    out_sum = np.zeros(nb // 256, np.float32)
    bsum = mod.get_function("block_sum")
    red = rates(lambda: bsum((nb // 256,), (256,), (x[:nb], out_sum, np.int32(nb))), nb)
    assert np.allclose(out_sum, x[:nb].reshape(-1, 256).sum(1), atol=1e-3)

    small, tiny_out = x[:64], np.zeros(64, np.float32)
    launches = 2000
    tiny = rates(lambda: [axpy((1,), (64,), (small, tiny_out, np.float32(2), np.int32(64)))
                          for _ in range(launches)], launches)
    big_in, big_out = x[: 1 << 22].copy(), np.zeros(1 << 22, np.float32)
    big = rates(lambda: axpy((1,), (64,), (big_in, big_out, np.float32(2), np.int32(64))), 1)

    for what, (wall, cpu), target in (("element-wise kernel:        ", ew, 5),
                                      ("block reduction, 9 barriers:", red, 1)):
        print(f"{what} {wall / 1e6:6.2f} M threads/s wall, {cpu / 1e6:6.2f} CPU time (target >= {target})")
    print(f"launch of one 64-thread block: {1e6 / tiny[0]:6.1f} us wall, {1e6 / tiny[1]:6.1f} us CPU time")
    print(f"... with two 16 MiB arrays:   {1e3 / big[0]:6.2f} ms wall, {1e3 / big[1]:6.2f} ms CPU time")
    print(f"cold compile of one .cu:     {compile_s:6.2f} s with the runtime and header built (target <= 3)")
    print(f"warm re-load, new process:   {reload_s:6.3f} s, recompilations: {recompiles} (target 0)")


if __name__ == "__main__":
    main()
