"""gpuconv.emulator.profile counts sectors and wavefronts as the textbook (and Nsight Compute) does."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

import gpuconv.emulator as emu
from gpuconv.emulator import build
from gpuconv.emulator.profiling import SUMMARY_KEYS

PATTERNS = Path(__file__).parent / "emu_kernels" / "access_patterns.cu"


def line_of(tag: str) -> int:
    for n, text in enumerate(PATTERNS.read_text().splitlines(), 1):
        if text.rstrip().endswith(f"// @{tag}"):
            return n
    raise AssertionError(f"no // @{tag} in {PATTERNS}")


def site(report, tag: str, space: str, kind: str) -> dict:
    found = [s for s in report.sites if (s["line"], s["space"], s["kind"]) == (line_of(tag), space, kind)
             and Path(s["file"]).name == PATTERNS.name]
    assert len(found) == 1, (tag, space, kind, report.sites)
    return found[0]


@pytest.fixture(scope="module")
def mod():
    return emu.RawModule(path=str(PATTERNS), name_expressions=("column_read<32>", "column_read<33>"))


def strided(mod, stride: int, offset: int, threads: int = 32, blocks=None, grid: int = 1):
    x = np.zeros(32 * 32 * 4 + 64, np.float32)
    y = np.zeros(threads * grid, np.float32)
    args = (x, y, np.int32(stride), np.int32(offset))
    return emu.profile(mod.get_function("strided_load"), grid, threads, args, blocks=blocks)


@pytest.mark.parametrize("stride,offset,sectors", [(1, 0, 4), (2, 0, 8), (32, 0, 32), (1, 1, 5)])
def test_global_load_sectors_of_a_warp(mod, stride, offset, sectors):
    r = strided(mod, stride, offset)
    s = site(r, "strided", "global", "load")
    assert (s["requests"], s["sectors"], s["lanes"], s["bytes_requested"]) == (1, sectors, 32, 128)
    assert s["ideal_sectors"] == 4
    assert r.summary["global_load_sectors"] == sectors and r.summary["global_load_requests"] == 1
    assert r.summary["global_store_sectors"] == 4 and r.summary["global_store_requests"] == 1


def test_summary_has_exactly_the_documented_integer_keys(mod):
    r = strided(mod, 1, 0)
    assert tuple(r.summary) == SUMMARY_KEYS
    assert all(type(v) is int for v in r.summary.values())


def test_sixteen_byte_loads_are_sixteen_sectors(mod):
    x = np.zeros(4 * 32, np.float32)
    y = np.zeros(4 * 32, np.float32)
    r = emu.profile(mod.get_function("vec4_copy"), 1, 32, (x, y))
    assert (site(r, "vec4", "global", "load")["sectors"], r.summary["global_load_requests"]) == (16, 1)
    assert r.summary["global_load_bytes_requested"] == 512
    assert (r.summary["global_store_sectors"], r.summary["global_store_requests"]) == (16, 1)


def test_bases_count_as_256_byte_aligned(mod):
    """A host array's address is arbitrary: a view starting 4 bytes in still gives 4 sectors."""
    raw = np.zeros(4096 + 1, np.float32)
    x = raw[1:]
    assert x.ctypes.data % 256 != 0
    y = np.zeros(32, np.float32)
    r = emu.profile(mod.get_function("strided_load"), 1, 32, (x, y, np.int32(1), np.int32(0)))
    assert r.summary["global_load_sectors"] == 4


def test_partial_warp_counts_its_active_lanes(mod):
    r = strided(mod, 1, 0, threads=48)
    s = site(r, "strided", "global", "load")
    assert (s["requests"], s["sectors"], s["lanes"]) == (2, 4 + 2, 48)


def test_divergent_branch_counts_only_lanes_that_take_it(mod):
    x, y = np.zeros(64, np.float32), np.zeros(64, np.float32)
    r = emu.profile(mod.get_function("divergent_load"), 1, 64, (x, y))
    s = site(r, "divergent", "global", "load")
    assert (s["requests"], s["lanes"], s["bytes_requested"], s["sectors"]) == (2, 32, 128, 8)


def test_broadcast_is_one_sector_and_one_wavefront(mod):
    x, y = np.zeros(32, np.float32), np.zeros(32, np.float32)
    r = emu.profile(mod.get_function("broadcast"), 1, 32, (x, y))
    g = site(r, "broadcast", "global", "load")
    s = site(r, "broadcast", "shared", "load")
    assert (g["requests"], g["sectors"]) == (1, 1)
    assert (s["requests"], s["wavefronts"], s["ideal_wavefronts"]) == (1, 1, 1)


@pytest.mark.parametrize("ld,per_request", [(32, 32), (33, 1)])
def test_column_read_of_a_shared_tile(mod, ld, per_request):
    x, y = np.zeros(32 * 32, np.float32), np.zeros(32, np.float32)
    r = emu.profile(mod.get_function(f"column_read<{ld}>"), 1, 32, (x, y))
    col = site(r, "column_read", "shared", "load")
    row = site(r, "row_write", "shared", "store")
    assert (col["requests"], col["wavefronts"], col["ideal_wavefronts"]) == (32, 32 * per_request, 32)
    assert (row["requests"], row["wavefronts"], row["ideal_wavefronts"]) == (32, 32, 32)
    assert r.summary["shared_load_wavefronts"] == 32 * per_request


def test_wide_shared_accesses_go_in_phases(mod):
    x, y = np.zeros(64, np.float64), np.zeros(64, np.float64)
    r = emu.profile(mod.get_function("wide_shared"), 1, 64, (x, y))
    w8 = site(r, "wide8", "shared", "store")
    w16 = site(r, "wide16", "shared", "load")
    assert (w8["requests"], w8["wavefronts"], w8["ideal_wavefronts"]) == (2, 4, 4)
    assert (w16["requests"], w16["wavefronts"], w16["ideal_wavefronts"]) == (2, 8, 8)


def test_half_warps_are_separate_phases_and_wide_broadcasts_are_free(mod):
    """Lanes 0 and 1 share banks 0-1, lanes 16 and 17 banks 2-3: one 2-way conflict in each
    half-warp, so 2 + 2 wavefronts, although the warp as a whole has at most 2 words per bank. A
    16-byte word read by every lane costs one wavefront: the later quarter-warps read nothing new."""
    idx = np.array([0, 16] + list(range(2, 16)) + [1, 17] + list(range(18, 32)), np.int32)
    x, y = np.zeros(64, np.float64), np.zeros(32, np.float64)
    r = emu.profile(mod.get_function("shared_gather8"), 1, 32, (idx, x, y))
    g = site(r, "gather8", "shared", "load")
    b = site(r, "broadcast16", "shared", "load")
    assert (g["requests"], g["wavefronts"], g["ideal_wavefronts"]) == (1, 4, 2)
    assert (b["requests"], b["wavefronts"], b["ideal_wavefronts"]) == (1, 1, 4)  # 32 lanes x 16 bytes / 128


def test_listed_blocks_only(mod):
    r = strided(mod, 1, 0, grid=4, blocks=[1, (3, 0, 0)])
    assert (r.blocks_run, r.blocks_total) == (2, 4)
    assert r.summary["global_load_requests"] == 2
    with pytest.raises(ValueError, match="blocks"):
        strided(mod, 1, 0, grid=4, blocks=[4])
    with pytest.raises(ValueError, match="blocks"):
        strided(mod, 1, 0, grid=4, blocks=[])
    with pytest.raises(TypeError, match="blocks"):
        strided(mod, 1, 0, grid=4, blocks=["0"])


def test_bad_arguments_are_named(mod):
    with pytest.raises(TypeError, match="kernel"):
        emu.profile(lambda *a: None, 1, 32, ())
    with pytest.raises(TypeError, match="arguments"):
        emu.profile(mod.get_function("strided_load"), 1, 32, (np.zeros(4, np.float32),))


def test_touched_sectors_and_l2_sectors(mod):
    r = strided(mod, 2, 0, grid=2)
    x_region = [b for b in r.buffers if 0 in b["arguments"]][0]
    assert x_region["touched_sectors"] == 16  # two warps, each 8 sectors, disjoint
    assert r.l2_load_sectors == 16


def undefined_symbols(path) -> str:
    return subprocess.run(["nm", "-D", "--undefined-only", str(path)], capture_output=True, text=True).stdout


def test_normal_builds_are_not_instrumented(mod):
    for path in (mod.library_path, build.runtime()._name):
        assert "__tsan_" not in undefined_symbols(path), path
    prof = emu.RawModule(path=str(PATTERNS), profile=True)
    assert "__tsan_read4" in undefined_symbols(prof.library_path)
    assert prof.library_path != emu.RawModule(path=str(PATTERNS)).library_path


def test_profile_mode_refuses_asan(monkeypatch):
    monkeypatch.setenv("GPUCONV_EMU_ASAN", "1")
    with pytest.raises(emu.CompileError, match="GPUCONV_EMU_ASAN"):
        emu.RawModule(path=str(PATTERNS), profile=True)
