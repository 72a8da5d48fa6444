"""The communicator interface, the single-process communicator and collective timeouts.

A communicator joins the ``size`` processes ("ranks") of one job. Its collectives act **in place**
on a contiguous array and every rank must call the same collectives in the same order:

  ``allreduce(array, op="sum" | "mean")``  every rank ends with the element-wise sum (or mean)
  ``iallreduce(array)``                     the same sum, started now; returns a :class:`Work`
  ``broadcast(array, root=0)``              every rank ends with root's values
  ``barrier()``                             returns once every rank has entered it
  ``abort(code)``                           ends every rank of the job (does not return)

Nothing here waits forever: a rank waits at most ``timeout`` seconds (``GPUCONV_DIST_TIMEOUT``,
default 600) for a collective to complete, then raises :class:`CollectiveTimeout` naming the
collective and the rank; ``abort_on_error`` (in ``gpuconv.distributed.world``) turns that into
the end of the whole job.
"""
from __future__ import annotations

import math
import os
import sys
import time
from typing import Callable, Mapping, NoReturn, Optional

import numpy as np

__all__ = ["Communicator", "SingleProcess", "Work", "CollectiveTimeout", "TIMEOUT_ENV",
           "DEFAULT_TIMEOUT", "timeout_from_env", "REDUCE_OPS", "DTYPES"]

TIMEOUT_ENV = "GPUCONV_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 600.0
REDUCE_OPS = ("sum", "mean")
DTYPES = tuple(np.dtype(t) for t in (np.float32, np.float64, np.int32, np.int64))

# Polling a collective. MPI libraries advance a non-blocking collective only inside MPI calls
# (Open MPI's libnbc runs one round of the algorithm per call), so every pause between two tests
# delays each round: test without pause for _SPIN seconds (the all-reduce of a gradient bucket
# completes well within it), then yield the CPU between tests until _YIELD seconds, then sleep,
# doubling up to _MAX_SLEEP: by then the rank waits for a straggler (or a dead rank) and a few
# milliseconds more do not matter, the CPU left to other processes does.
_SPIN, _YIELD = 0.02, 1.0
_FIRST_SLEEP, _MAX_SLEEP = 1e-3, 1e-2


class CollectiveTimeout(RuntimeError):
    """A collective did not complete within the communicator's timeout: another rank died, hung, or
    called a different collective. The communicator cannot be used afterwards; call ``abort``."""


def timeout_from_env(environ: Optional[Mapping[str, str]] = None) -> float:
    """Seconds from ``GPUCONV_DIST_TIMEOUT`` (default 600); ValueError naming it when not a
    positive finite number."""
    environ = os.environ if environ is None else environ
    raw = environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return value


def check_timeout(timeout) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
            math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


class Work:
    """A collective in flight. ``test()`` says whether it has completed (and lets it progress: MPI
    libraries advance non-blocking collectives inside such calls); ``wait()`` returns once it has,
    or raises :class:`CollectiveTimeout` after the communicator's timeout."""

    __slots__ = ("_test", "_what", "_comm", "_on_timeout", "_keep", "done")

    def __init__(self, test: Callable[[], bool], what: str, comm: Communicator,
                 on_timeout: Optional[Callable[[], None]] = None, keep=None) -> None:
        self._test, self._what, self._comm = test, what, comm
        self._on_timeout = on_timeout
        self._keep = keep  # the buffer stays alive while the collective uses it
        self.done = False

    def test(self) -> bool:
        if not self.done and self._test():
            self.done = True
            self._keep = None
        return self.done

    def wait(self) -> None:
        if self.test():
            return
        start = time.monotonic()
        deadline = start + self._comm.timeout
        sleep = _FIRST_SLEEP
        while not self.test():
            now = time.monotonic()
            if now >= deadline:
                if self._on_timeout is not None:
                    self._on_timeout()
                c = self._comm
                raise CollectiveTimeout(
                    f"{self._what} timed out on rank {c.rank} of {c.size} after {c.timeout:g} s "
                    f"({TIMEOUT_ENV}): another rank died, hung or did not reach this collective")
            if now - start >= _YIELD:
                time.sleep(sleep)
                sleep = min(2 * sleep, _MAX_SLEEP)
            elif now - start >= _SPIN:
                time.sleep(0)


def completed(what: str, comm: Communicator) -> Work:
    w = Work(lambda: True, what, comm)
    w.done = True
    return w


def describe_array(array) -> str:
    return f"{array.nbytes} bytes ({np.dtype(array.dtype).name}[{array.size}])"


class Communicator:
    """The interface (see the module docstring). ``kind`` names the implementation: "single",
    "mpi" or "nccl"."""

    kind = "abstract"

    def __init__(self, rank: int, size: int, timeout: Optional[float] = None) -> None:
        self.rank, self.size = int(rank), int(size)
        self.timeout = timeout_from_env() if timeout is None else check_timeout(timeout)

    # ---- argument checks ----------------------------------------------------------------
    def check_array(self, array, name: str = "array") -> None:
        """TypeError/ValueError naming ``name`` unless ``array`` is a contiguous array of a dtype the
        collectives carry (float32/64, int32/64)."""
        if not (hasattr(array, "dtype") and hasattr(array, "flags") and hasattr(array, "nbytes")):
            raise TypeError(f"{name} must be a NumPy or CuPy array, got {type(array).__name__}")
        if np.dtype(array.dtype) not in DTYPES:
            raise TypeError(f"{name} must have dtype float32, float64, int32 or int64, got {array.dtype}")
        if not array.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous (collectives act in place on its memory)")

    def check_root(self, root) -> int:
        if isinstance(root, bool) or not isinstance(root, (int, np.integer)) or not 0 <= root < self.size:
            raise ValueError(f"root must be a rank in [0, {self.size}), got {root!r}")
        return int(root)

    # ---- collectives --------------------------------------------------------------------
    def allreduce(self, array, op: str = "sum"):
        """Sum (or average, ``op="mean"``, floating arrays only) ``array`` over all ranks, in place;
        returns ``array``."""
        if op not in REDUCE_OPS:
            raise ValueError(f"op must be one of {', '.join(REDUCE_OPS)}, got {op!r}")
        self.check_array(array)
        if op == "mean" and np.dtype(array.dtype).kind != "f":
            raise TypeError(f"op='mean' needs a floating array, got dtype {array.dtype}")
        self.iallreduce(array).wait()
        if op == "mean" and self.size > 1:
            array /= self.size
        return array

    def iallreduce(self, array) -> Work:
        """Start summing ``array`` over all ranks in place; the result is there after ``wait()``.
        Do not touch ``array`` before then."""
        raise NotImplementedError

    def broadcast(self, array, root: int = 0):
        """Overwrite ``array`` on every rank with root's values, in place; returns ``array``."""
        raise NotImplementedError

    def barrier(self) -> None:
        raise NotImplementedError

    def abort(self, code: int = 1) -> NoReturn:
        """End every rank of the job with exit status ``code``."""
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.kind}, rank {self.rank} of {self.size}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


class SingleProcess(Communicator):
    """One rank: every collective leaves its array as it is (the sum over one rank)."""

    kind = "single"

    def __init__(self, timeout: Optional[float] = None) -> None:
        super().__init__(0, 1, timeout)

    def iallreduce(self, array) -> Work:
        self.check_array(array)
        return completed("allreduce", self)

    def broadcast(self, array, root: int = 0):
        self.check_array(array)
        self.check_root(root)
        return array

    def barrier(self) -> None:
        pass

    def abort(self, code: int = 1) -> NoReturn:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
