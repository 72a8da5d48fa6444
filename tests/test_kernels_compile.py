"""Every cuda/*.cu compiles under NVRTC (what CuPy uses) and nvcc, with no spills in default kernels.

NVRTC comes from the pip package ``nvidia-cuda-nvrtc`` (no GPU needed); nvcc from a CUDA toolkit.
Each test skips with the reason when its compiler is missing. ``pytest -s`` prints the
``nvcc --resource-usage`` tables (also: ``python scripts/resource_usage.py``).
"""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gpuconv._paths import cuda_dir
from gpuconv.backends import launch
from gpuconv.backends.executors import source_hash
from gpuconv.backends.kernel_backend import compile_options
from gpuconv.profiler import resources

ARCHS = ("sm_80", "sm_90")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def nvrtc():
    binding = resources.nvrtc()
    if binding is None:
        pytest.skip("libnvrtc not found: pip install nvidia-cuda-nvrtc")
    return binding


def _files():
    return sorted(resources.expressions_by_file().items())


def test_every_family_module_is_present_and_consistent():
    for mod in launch.FAMILIES:
        name, filename = mod.__name__, mod.FILE
        assert (cuda_dir() / filename).is_file(), f"{name}: {filename} missing"
        assert set(mod.DEFAULT_VERSIONS) == set(mod.VERSIONS), name
        for op, v in mod.DEFAULT_VERSIONS.items():
            assert v in mod.VERSIONS[op], (name, op, v)
        assert len(set(mod.NAME_EXPRESSIONS)) == len(mod.NAME_EXPRESSIONS), f"{name}: duplicate expressions"


def test_sources_include_no_host_headers():
    """NVRTC has no host headers: <cstdint>, <cmath>, ... would fail to compile under CuPy."""
    for path in sorted(cuda_dir().glob("*.cu*")):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            assert not re.match(r"\s*#\s*include\s*<", line), f"{path.name}:{lineno}: {line.strip()}"


@pytest.mark.parametrize("arch", ARCHS)
def test_nvrtc_compiles_every_file_and_name_expression(nvrtc, arch):
    """Exactly the options the CuPy executor passes, plus what CuPy itself appends (the
    architecture and ``-ftz=true``, added unconditionally by ``cupy.cuda.compiler``)."""
    def one(item):
        filename, exprs = item
        path = cuda_dir() / filename
        # PTX for the virtual architecture: the front end is what differs from nvcc; ptxas runs
        # in the nvcc resource-usage test below.
        options = compile_options() + (f"-DGPUCONV_SRC_HASH=0x{source_hash(path)}",
                                       f"--gpu-architecture=compute_{arch[3:]}", "-ftz=true")
        return filename, nvrtc.compile(path.read_text(), filename, options, exprs)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(one, _files()))
    failures = []
    for filename, res in results:
        if not res.ok:
            failures.append(f"{filename} ({arch}):\n{res.log}")
            continue
        assert res.binary, filename
        assert all(res.lowered.values()), filename
    assert not failures, "\n".join(failures)


def test_nvrtc_reports_host_header_errors(nvrtc):
    """The compile check is able to fail: a host header is refused by NVRTC."""
    res = nvrtc.compile('#include <cstdint>\n__global__ void k() {}\n', "bad.cu",
                        compile_options() + ("--gpu-architecture=compute_90",), ())
    assert not res.ok and "cstdint" in res.log


@pytest.fixture(scope="module")
def usage():
    mod = resources
    if mod.find_nvcc() is None:
        pytest.skip("nvcc not found")
    return mod, mod.resource_usage(ARCHS)


def test_nvcc_resource_usage_default_kernels_do_not_spill(usage):
    mod, rows = usage
    for arch, r in rows.items():
        print()
        print(mod.format_table(arch, r))
    bad = [f"{arch}: {k.name} ({k.file}) stack {k.stack_frame} B, spill stores {k.spill_stores} B, "
           f"spill loads {k.spill_loads} B" for arch, r in rows.items() for k in mod.offenders(r)]
    assert not bad, "default-version kernels with local memory:\n" + "\n".join(bad)


def test_resource_usage_covers_every_name_expression(usage):
    mod, rows = usage
    expected = sorted(e for _, exprs in _files() for e in exprs)
    for arch, r in rows.items():
        assert sorted(k.name for k in r) == expected, arch
