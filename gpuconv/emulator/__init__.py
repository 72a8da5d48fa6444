"""Run gpuconv's CUDA kernels on the CPU (see docs/emulator.md).

The same ``cuda/*.cu`` files CuPy compiles for the GPU are compiled by g++ with a force-included
header (``cuda/emu/cuda_emu.h``); every CUDA thread runs as a fiber, and launches use CuPy's call
form::

    from gpuconv.emulator import RawModule
    mod = RawModule(path="cuda/elementwise.cu", options=("-Icuda",))
    mod.get_function("relu_forward")((blocks,), (256,), (x, y, np.int32(n)))
"""
from __future__ import annotations

from .errors import (
                     BarrierError,
                     CompileError,
                     DeadlockError,
                     DivergentBarrierError,
                     EmulatorError,
                     ExitAtBarrierError,
                     IntegerDivisionError,
                     KernelAssertionError,
                     KernelNotFoundError,
                     KernelTrapError,
                     LaunchError,
                     LaunchTimeoutError,
                     LintError,
                     MemoryFaultError,
                     OrderDependenceError,
                     OutOfBoundsError,
                     SharedMemoryOverrunError,
                     StackOverflowError,
                     WarpSyncError,
)
from .module import GlobalMemory, Kernel, RawKernel, RawModule, check_orders
from .profiling import Report, profile

__all__ = ["RawModule", "RawKernel", "Kernel", "GlobalMemory", "check_orders", "profile", "Report",
           "EmulatorError",
           "CompileError", "LintError", "KernelNotFoundError", "LaunchError", "BarrierError",
           "DivergentBarrierError",
           "ExitAtBarrierError", "DeadlockError", "WarpSyncError", "SharedMemoryOverrunError",
           "KernelAssertionError", "KernelTrapError", "StackOverflowError", "MemoryFaultError",
           "OutOfBoundsError", "IntegerDivisionError", "LaunchTimeoutError", "OrderDependenceError"]
