"""Exceptions raised by the CPU emulator."""
from __future__ import annotations


class EmulatorError(RuntimeError):
    """Base class: a kernel bug the emulator detected, or a module it could not build."""


class CompileError(EmulatorError):
    """g++ rejected the kernel source (the message holds the compiler's output)."""


class LintError(EmulatorError, ValueError):
    """The source uses CUDA the emulator cannot run outside ``#ifndef GPUCONV_EMU`` (file:line given)."""


class KernelNotFoundError(EmulatorError, LookupError):
    """``get_function``/``get_global`` was asked for a name the module does not define."""


class LaunchError(EmulatorError, ValueError):
    """Invalid launch configuration (grid, block, shared memory)."""


class BarrierError(EmulatorError):
    """Threads of a block disagree at ``__syncthreads``."""


class DivergentBarrierError(BarrierError):
    """Threads of one block wait at different ``__syncthreads`` call sites."""


class ExitAtBarrierError(BarrierError):
    """A thread returned while other threads of its block wait at a barrier."""


class DeadlockError(EmulatorError):
    """No thread of the block can make progress."""


class WarpSyncError(EmulatorError):
    """A warp collective (shuffle, vote, ``__syncwarp``) with a bad mask, width, lane or call site."""


class SharedMemoryOverrunError(EmulatorError):
    """A thread wrote past the dynamic shared memory requested by the launch."""


class KernelAssertionError(EmulatorError, AssertionError):
    """``assert`` failed inside a kernel."""


class KernelTrapError(EmulatorError):
    """``__trap()`` was called."""


class StackOverflowError(EmulatorError):
    """A thread exhausted its fiber stack (large local arrays or deep recursion)."""


class MemoryFaultError(EmulatorError):
    """A thread touched invalid memory (segmentation fault caught by the emulator)."""


class OutOfBoundsError(MemoryFaultError, IndexError):
    """A thread read or wrote outside an array: past the end or before the start of an array
    argument, or at an index outside a fixed-size (``__shared__`` or local) array."""


class IntegerDivisionError(EmulatorError, ArithmeticError):
    """Integer division (or remainder) by zero, or ``INT_MIN / -1``, in a kernel."""


class LaunchTimeoutError(EmulatorError, TimeoutError):
    """A launch ran longer than ``GPUCONV_EMU_TIMEOUT`` seconds (an endless loop, a huge grid)."""


class OrderDependenceError(EmulatorError):
    """``check_orders``: results differ between thread orders (missing barrier, race)."""


# Codes of emu_runtime.h's gpuconv_emu_error -> the exception raised.
BY_CODE = {
    1: LaunchError,
    2: DivergentBarrierError,
    3: ExitAtBarrierError,
    4: DeadlockError,
    5: WarpSyncError,
    6: SharedMemoryOverrunError,
    7: KernelAssertionError,
    8: KernelTrapError,
    9: StackOverflowError,
    10: MemoryFaultError,
    11: OutOfBoundsError,
    12: IntegerDivisionError,
    13: LaunchTimeoutError,
    14: KeyboardInterrupt,  # SIGINT stopped the launch
    15: ValueError,  # GPUCONV_EMU_STACK_KB or GPUCONV_EMU_TIMEOUT is malformed
}
