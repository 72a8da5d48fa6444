"""The shared test harness: backends, the one agreement check, launch recording, determinism.

Backends
    ``be`` runs a test on each backend that launches the ``.cu`` kernels (emulator, cuda);
    ``any_backend`` on numpy, the emulator and cuda. ``emu`` and ``gpu`` are single backends. Every
    kernel backend poisons fresh outputs (NaN, -7), so an element a kernel forgets to write shows.
    cuda cases carry the ``gpu`` marker and are skipped, saying why, without CuPy or a device.
    ``numpy_default`` makes numpy the default backend of ``gpuconv.functional`` for a test.
    Module-scoped backends are shared by one test file; ``make_backend`` gives a fresh one (for a
    test that patches it, or needs another thread order).

Agreement
    ``assert_close`` is the only comparison of a result with its reference: the scaled error
    max|out - ref| / max|ref| of ``gpuconv.tolerances`` against the tolerance documented there.

Determinism
    ``assert_deterministic`` runs a call twice and compares the bits. On a GPU the hardware
    schedules the second run differently; the emulator runs threads and blocks in the same order
    every time, so there the second run goes through a fresh backend in a seeded random order.

The AddressSanitizer tier
    tests/test_emulator_asan.py runs the kernel tests again in a process with libasan preloaded
    and ``GPUCONV_EMU_ASAN=1``, where every launch is several times slower; there ``sample`` keeps
    the first few of each list of random cases (the hand-picked ones are kept by every test).
    With ``GPUCONV_TESTS_LAUNCH_LOG=<file>`` the names of the kernels launched on the emulator are
    written to that file at the end of the session, so the tier can show that it ran every kernel.

The PyTorch tier
    Tests that compare with PyTorch skip when it is absent. ``GPUCONV_TESTS_NO_TORCH=1`` hides an
    installed torch from the test process (``import torch`` fails as if it were not installed), so
    the suite can be run as a machine without it runs it: scripts/mutants.py measures the kill rate
    both ways. ``GPUCONV_TESTS_REQUIRE_TORCH=1`` (set by .ci/run) makes a torch that cannot be
    imported a usage error instead of a tier that silently skips.

Hypothesis
    Profile "ci" (the default) draws the same examples on every run, so property tests and
    fuzzing never fail at random; ``GPUCONV_HYPOTHESIS_PROFILE=explore`` draws new ones, more of
    them. Without Hypothesis installed those tests skip themselves.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tracemalloc
from typing import Any, Callable, Iterator, List, Optional, Tuple, Union

import numpy as np
import pytest

from gpuconv import tolerances, use_backend
from gpuconv.backends import cuda_unavailable_reason


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip() not in ("", "0")


if _flag("GPUCONV_TESTS_NO_TORCH"):
    sys.modules["torch"] = None  # type: ignore[assignment]  # import torch raises ImportError

ASAN = _flag("GPUCONV_EMU_ASAN")

BACKENDS = ("numpy", "emulator", "cuda")
KERNEL_BACKENDS = ("emulator", "cuda")
OTHER_ORDER_SEED = 1  # the emulator's thread and block order for the second run of a determinism check


def make_backend(name: str, order: str = "forward", seed: int = 0, poison: bool = True,
                 versions: Optional[dict] = None):
    """A fresh backend ``name``; ``order`` and ``seed`` choose the emulator's thread order.
    Skips the test when ``name`` is cuda and CuPy or a device is missing."""
    if name == "numpy":
        from gpuconv.backends.numpy_backend import NumpyBackend
        return NumpyBackend()
    from gpuconv.backends.executors import CupyExecutor, EmulatorExecutor
    from gpuconv.backends.kernel_backend import KernelBackend
    if name == "emulator":
        return KernelBackend(EmulatorExecutor(order=order, seed=seed), versions=versions, poison=poison)
    if name == "cuda":
        reason = cuda_unavailable_reason()
        if reason:
            pytest.skip(reason)
        return KernelBackend(CupyExecutor(), versions=versions, poison=poison)
    raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")


def backend_params(names) -> list:
    """pytest parameters for backends ``names``; cuda carries the ``gpu`` marker."""
    return [pytest.param(n, marks=pytest.mark.gpu) if n == "cuda" else n for n in names]


@pytest.fixture(scope="module", params=backend_params(KERNEL_BACKENDS))
def be(request):
    return make_backend(request.param)


@pytest.fixture(scope="module", params=backend_params(BACKENDS))
def any_backend(request):
    return make_backend(request.param)


@pytest.fixture(scope="module")
def emu():
    return make_backend("emulator")


@pytest.fixture(scope="module")
def gpu():
    return make_backend("cuda")


@pytest.fixture
def numpy_default():
    with use_backend("numpy") as be:
        yield be


def sample(cases: list, n: int) -> list:
    """``cases`` (random test cases), or only the first ``n`` of them in the AddressSanitizer tier."""
    return list(cases)[:n] if ASAN else list(cases)


def pytest_configure(config):
    if _flag("GPUCONV_TESTS_REQUIRE_TORCH"):
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            raise pytest.UsageError(f"GPUCONV_TESTS_REQUIRE_TORCH=1 but torch cannot be imported ({exc}): "
                                    "the PyTorch tier would be skipped") from None
    log = os.environ.get("GPUCONV_TESTS_LAUNCH_LOG")
    if not log:
        return
    from gpuconv.backends.executors import EmulatorExecutor
    launched: set = set()
    real = EmulatorExecutor.launch

    def logged(self, fn, grid, block, args, shared_mem=0):
        launched.add(fn.name)
        return real(self, fn, grid, block, args, shared_mem=shared_mem)

    EmulatorExecutor.launch = logged
    config.add_cleanup(lambda: open(log, "w").write("".join(f"{n}\n" for n in sorted(launched))))


# ---- agreement ----------------------------------------------------------------------------------

def _host(a) -> np.ndarray:
    if hasattr(a, "detach"):      # a torch tensor
        a = a.detach().cpu().numpy()
    elif not isinstance(a, np.ndarray) and hasattr(a, "get"):  # a CuPy array
        a = a.get()
    return np.asarray(a)


def assert_close(out, ref, dtype=None, rtol: Optional[float] = None, precision: str = "fp32",
                 what: str = "") -> float:
    """Assert that ``out`` agrees with the reference ``ref``; return the scaled error.

    The error is ``tolerances.scaled_error``: max|out - ref| / max|ref|. The tolerance is ``rtol``
    when given, else ``tolerances.tolerance_for(precision, dtype)``
    (``dtype`` defaults to out's). NaN never passes; equal infinities (an empty max-pool window)
    count as agreement.
    """
    out, ref = _host(out), _host(ref)
    dt = np.dtype(dtype if dtype is not None else out.dtype)
    tol = rtol if rtol is not None else tolerances.tolerance_for(precision, dt)
    label = f"{what} ({dt.name}{', tf32' if precision == 'tf32' else ''})"
    assert out.shape == ref.shape, f"{label}: shape {out.shape} != reference shape {ref.shape}"
    same_inf = np.isinf(ref) & (out == ref)
    if same_inf.any():
        out, ref = np.where(same_inf, 0.0, out), np.where(same_inf, 0.0, ref)
    abs_err, rel = tolerances.scaled_error(out, ref)
    assert tolerances.passes(rel, tol), (
        f"{label}: scaled error {rel:.3g} (max|out - ref| = {abs_err:.3g}) exceeds the "
        f"tolerance {tol:g}")
    return rel


# ---- launches -----------------------------------------------------------------------------------

Launch = Tuple[Any, tuple, tuple, tuple, int]


@contextlib.contextmanager
def recording_launches(be, run: bool = True) -> Iterator[List[Launch]]:
    """Record every kernel launch on ``be`` as (fn, grid, block, args, shared_mem); ``run=False``
    records without launching. ``KernelBackend.launch`` is an instance attribute (the executor's
    bound ``launch``), so the recorder replaces it on ``be`` only, and puts it back afterwards."""
    launches: List[Launch] = []
    real = be.launch

    def record(fn, grid, block, args, shared_mem=0):
        launches.append((fn, grid, block, args, shared_mem))
        if run:
            real(fn, grid, block, args, shared_mem=shared_mem)

    be.launch = record
    try:
        yield launches
    finally:
        be.launch = real


# ---- determinism --------------------------------------------------------------------------------

def in_another_order(be):
    """The backend for the second run of a determinism check: on the emulator a fresh one running
    threads and blocks in a seeded random order, with ``be``'s overrides in force (and, as every
    emulator backend, its selector's choices); else ``be``."""
    if be.name != "emulator":
        return be
    return make_backend("emulator", order="random", seed=OTHER_ORDER_SEED, poison=be.poison,
                        versions=be.overrides())


def _outputs(result) -> list:
    items = result if isinstance(result, (tuple, list)) else (result,)
    return [None if r is None else _host(r) for r in items]


def assert_deterministic(be, call: Union[str, Callable[..., Any]], *args, what: str = "") -> None:
    """Assert that a call gives the same bits on ``be`` and on ``in_another_order(be)``. ``call`` is
    the name of a backend method, called with ``args``, or a function called as call(backend, *args);
    it returns an array or a tuple of arrays (None entries allowed)."""
    def run(b):
        return getattr(b, call)(*args) if isinstance(call, str) else call(b, *args)

    first, second = _outputs(run(be)), _outputs(run(in_another_order(be)))
    assert len(first) == len(second), what
    for i, (a, b) in enumerate(zip(first, second)):
        assert (a is None) == (b is None), f"{what}: output {i} is None on one run only"
        if a is not None:
            assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), \
                f"{what}: output {i} differs between two runs in different thread orders"


try:
    from hypothesis import settings as _hypothesis_settings
except ImportError:
    _hypothesis_settings = None
if _hypothesis_settings is not None:
    _hypothesis_settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
    _hypothesis_settings.register_profile("explore", max_examples=1000, database=None, print_blob=True)
    _hypothesis_settings.load_profile(os.environ.get("GPUCONV_HYPOTHESIS_PROFILE", "ci"))


# ---- memory -------------------------------------------------------------------------------------

def peak_memory(fn: Callable[[], Any]) -> Tuple[Any, int]:
    """(fn's result, the peak bytes Python and NumPy allocated while it ran, by tracemalloc)."""
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
