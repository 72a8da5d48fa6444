"""AddressSanitizer tier of the CPU emulator: out-of-bounds accesses of the project's own kernels,
and of a planted bug, are reported at their .cu line.

Run on its own: ``make test-asan`` (``pytest -m asan tests/test_emulator_asan.py``; setup.cfg
deselects ``asan`` by default). The kernels run in a subprocess with libasan preloaded into Python,
because ASan must be the first library loaded; NumPy buffers then get red zones around them, and
a kernel that reads or writes one element past an array aborts with the .cu line. A read past
the end that does not change the result (a tail predicate off by one, whose value is multiplied
by zero) passes every comparison with the reference: the emulator's guard pages catch most such
accesses in the normal suite, and this tier the rest (a read in the up to 15 bytes after an
array, just before its start, or farther away than the guards reach; docs/emulator.md).

The tier needs libasan (GCC's): selecting it without libasan is a failure, not a skip.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpuconv.backends import launch

TESTS = Path(__file__).parent
BUGS = TESTS / "emu_kernels" / "bugs.cu"

pytestmark = pytest.mark.asan

# The kernel tests, on the emulator only, with conftest.sample's few random cases per list. Thread
# orders and determinism are the normal suite's business (and costly here): deselected.
KERNEL_TESTS = ("tests/test_kernels_conv.py", "tests/test_kernels_pool.py",
                "tests/test_kernels_elementwise.py", "tests/test_kernels_batchnorm.py",
                "tests/test_augment.py", "tests/test_kernel_backend.py::test_training_steps_match_numpy",
                "tests/test_graphs.py::test_device_constant_updates_equal_by_value_updates")
DESELECT = "not order and not deterministic"
TIMEOUT_S = 1800

SCRIPT = """
import numpy as np
import gpuconv.emulator as emu
m = emu.RawModule(path={path!r})
x = np.arange(64, dtype=np.float32)
y = np.zeros(64, np.float32)
k = m.get_function("read_past_end")
k(2, 32, (x, y, np.int32(63)), order="reverse")
assert np.array_equal(y[:63], x[1:])
try:
    m.get_function("divergent_barrier")(1, 32, (np.zeros(32, np.float32),))
except emu.DivergentBarrierError:
    print("barrier check works under ASan", flush=True)
k(2, 32, (x, y, np.int32(64)))
print("out-of-bounds read not detected", flush=True)
"""


def _libasan() -> str:
    try:
        out = subprocess.run(["g++", "-print-file-name=libasan.so"], capture_output=True, text=True,
                             check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pytest.fail("the ASan tier needs g++ (and its libasan); none found")
    if not os.path.isabs(out) or not os.path.exists(out):
        pytest.fail("the ASan tier needs libasan (GCC's AddressSanitizer runtime), which is not installed")
    return out


def _asan_env(**extra) -> dict:
    return dict(os.environ, LD_PRELOAD=_libasan(), ASAN_OPTIONS="detect_leaks=0", GPUCONV_EMU_ASAN="1",
                **extra)


def test_out_of_bounds_read_is_reported_at_its_cu_line():
    line = next(n for n, t in enumerate(BUGS.read_text().splitlines(), 1) if t.rstrip().endswith("// @oob"))
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(path=str(BUGS))], capture_output=True,
                          text=True, env=_asan_env(), timeout=600)
    assert "barrier check works under ASan" in proc.stdout, proc.stderr[-3000:]
    assert "out-of-bounds read not detected" not in proc.stdout
    assert proc.returncode != 0
    assert "AddressSanitizer: heap-buffer-overflow" in proc.stderr, proc.stderr[-3000:]
    assert f"in read_past_end {BUGS}:{line}" in proc.stderr, proc.stderr[-3000:]


def _kernel_family(name: str) -> str:
    """A launched name without the tile-width template argument: 'conv2d_backward_data_v2<float, 16>'
    -> 'conv2d_backward_data_v2<float>' (the tier samples geometries, not every tile width)."""
    base, _, args = name.partition("<")
    return f"{base}<{args.split(',')[0].rstrip('>').strip()}>"


def test_the_project_kernels_run_clean_under_asan(tmp_path):
    """Every kernel of cuda/ (each version, float and double), on a sample of each kernel test's
    geometries, compared with the NumPy reference as in the normal suite, with AddressSanitizer
    watching every access."""
    log = tmp_path / "launched.txt"
    root = TESTS.parent
    proc = subprocess.run(
        # --capture=sys: ASan writes its report to file descriptor 2 and aborts, so pytest's fd-level
        # capture would swallow it
        [sys.executable, "-m", "pytest", "-q", "-x", "--capture=sys", "-p", "no:cacheprovider",
         "-m", "not gpu and not asan",
         "-k", DESELECT, *KERNEL_TESTS],
        cwd=root, capture_output=True, text=True, timeout=TIMEOUT_S,
        env=_asan_env(GPUCONV_TESTS_LAUNCH_LOG=str(log), PYTHONPATH=str(root)))
    asan = proc.stderr.find("ERROR: AddressSanitizer")
    assert asan < 0, proc.stderr[asan:asan + 4000]
    report = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, report
    launched = {_kernel_family(n) for n in log.read_text().split()}
    every = {_kernel_family(n) for f in {m.FILE for m in launch.FAMILIES} for n in launch.name_expressions(f)}
    assert every <= launched, f"never launched under ASan: {sorted(every - launched)}"
