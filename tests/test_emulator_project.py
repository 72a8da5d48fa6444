"""The project's own kernels load and run through the CPU emulator (skipped while a file is absent)."""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv.emulator as emu
from gpuconv._paths import cuda_dir

CUDA = cuda_dir()


def _module(name: str, exprs):
    path = CUDA / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return emu.RawModule(path=str(path), options=(f"-I{CUDA}", "--use_fast_math", "-std=c++17"),
                         name_expressions=exprs)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_elementwise_relu_and_add_kernels(version):
    names = (f"relu_forward_{version}<float>", f"add_{version}<double>")
    mod = _module("elementwise.cu", names)
    rng = np.random.default_rng(0)
    n = 1027  # a tail after any vector width
    x = rng.standard_normal(n).astype(np.float32)
    y = np.full(n, np.nan, np.float32)
    mod.get_function(names[0])(5, 64, (x, y, np.int32(n)), order="reverse")
    assert np.array_equal(y, np.maximum(x, 0))
    a, b = rng.standard_normal(n), rng.standard_normal(n)
    out = emu.check_orders(mod.get_function(names[1]), 3, 128, (a, b, np.full(n, np.nan), np.int32(n)))
    assert np.array_equal(out[2], a + b)
