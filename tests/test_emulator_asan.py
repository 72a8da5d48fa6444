"""AddressSanitizer tier of the CPU emulator: an out-of-bounds kernel read is reported at its .cu line.

Run on its own: ``pytest -m asan tests/test_emulator_asan.py`` (setup.cfg deselects ``asan`` by
default). The kernels run in a subprocess with libasan preloaded into Python, because ASan must be
the first library loaded; NumPy buffers then get red zones around them.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BUGS = Path(__file__).parent / "emu_kernels" / "bugs.cu"

pytestmark = pytest.mark.asan

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
        pytest.skip("g++ not available")
    if not os.path.isabs(out) or not os.path.exists(out):
        pytest.skip("libasan is not installed")
    return out


def test_out_of_bounds_read_is_reported_at_its_cu_line():
    line = next(n for n, t in enumerate(BUGS.read_text().splitlines(), 1) if t.rstrip().endswith("// @oob"))
    env = dict(os.environ, LD_PRELOAD=_libasan(), ASAN_OPTIONS="detect_leaks=0", GPUCONV_EMU_ASAN="1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(path=str(BUGS))], capture_output=True,
                          text=True, env=env, timeout=600)
    assert "barrier check works under ASan" in proc.stdout, proc.stderr[-3000:]
    assert "out-of-bounds read not detected" not in proc.stdout
    assert proc.returncode != 0
    assert "AddressSanitizer: heap-buffer-overflow" in proc.stderr, proc.stderr[-3000:]
    assert f"in read_past_end {BUGS}:{line}" in proc.stderr, proc.stderr[-3000:]
