"""The CPU emulator runs CUDA kernels exactly, and catches the kernel bugs a GPU hides."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpuconv.emulator as emu
from gpuconv.emulator import build

KERNELS = Path(__file__).parent / "emu_kernels"
FEATURES = KERNELS / "features.cu"
BUGS = KERNELS / "bugs.cu"
TEMPLATES = ("reverse_block<float>", "reverse_block<double>", "feat::scale<float, 2>",
             "feat::scale<double, 3>")


def line_of(path: Path, tag: str) -> int:
    """Line number of the source line marked ``// @tag``."""
    for n, text in enumerate(path.read_text().splitlines(), 1):
        if text.rstrip().endswith(f"// @{tag}"):
            return n
    raise AssertionError(f"no // @{tag} in {path}")


@pytest.fixture(scope="module")
def feat():
    return emu.RawModule(path=str(FEATURES), name_expressions=TEMPLATES)


@pytest.fixture(scope="module")
def bugs():
    return emu.RawModule(path=str(BUGS))


ORDERS = [("forward", 0), ("reverse", 0), ("random", 7)]


# ---- features -----------------------------------------------------------------------------------

@pytest.mark.parametrize("order,seed", ORDERS)
def test_vec_add_with_tail_matches_numpy(feat, order, seed):
    n = 1000  # not a multiple of the block
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    c = np.full(n + 3, np.nan, np.float32)
    feat.get_function("vec_add")(((n + 127) // 128,), (128,), (a, b, c, np.int32(n)), order=order, seed=seed)
    assert np.array_equal(c[:n], a + b)
    assert np.isnan(c[n:]).all()  # nothing written past n


def test_block_reduction_is_order_independent(feat):
    rng = np.random.default_rng(1)
    n = 5 * 256 - 17
    x = rng.standard_normal(n).astype(np.float32)
    out = np.full(5, np.nan, np.float32)
    res = emu.check_orders(feat.get_function("block_sum"), 5, 256, (x, out, np.int32(n)))
    ref = np.zeros(5 * 256)
    ref[:n] = x
    got = res[1]
    assert np.abs(got - ref.reshape(5, 256).sum(1)).max() <= 1e-5 * np.abs(x).sum()
    assert np.isnan(out).all()  # check_orders leaves the caller's arrays alone


def test_missing_barrier_passes_forward_but_check_orders_catches_it(feat):
    k = feat.get_function("block_sum_missing_barrier")
    x = np.random.default_rng(2).standard_normal(512).astype(np.float32)
    out = np.full(2, np.nan, np.float32)
    k(2, 256, (x, out, np.int32(512)))
    assert np.abs(out - x.reshape(2, 256).astype(np.float64).sum(1)).max() < 1e-4
    with pytest.raises(emu.OrderDependenceError, match="block_sum_missing_barrier.*argument 1.*'reverse'"):
        emu.check_orders(k, 2, 256, (x, out, np.int32(512)))


def test_warp_shuffle_down_reduction_is_exact(feat):
    x = np.random.default_rng(3).integers(-1000, 1000, 4 * 128).astype(np.int32)
    out = np.zeros(16, np.int32)
    emu.check_orders(feat.get_function("warp_sum_down"), 4, 128, (x, out))
    feat.get_function("warp_sum_down")(4, 128, (x, out), order="random", seed=5)
    assert np.array_equal(out, x.reshape(16, 32).sum(1))


def test_butterfly_all_reduce_gives_every_lane_the_sum(feat):
    x = np.random.default_rng(4).integers(-99, 99, 96).astype(np.float64)
    out = np.zeros(96)
    feat.get_function("warp_allreduce_xor")(1, 96, (x, out), order="reverse")
    assert np.array_equal(out, np.repeat(x.reshape(3, 32).sum(1), 32))


def _shuffle_model(v, src, delta, width):
    """CUDA Programming Guide rules for __shfl*_sync within segments of ``width`` lanes."""
    n = len(v)
    idx, up, down, xor = (np.empty(n, v.dtype) for _ in range(4))
    for lane in range(n):
        seg = (lane // width) * width
        idx[lane] = v[seg + src % width]
        up[lane] = v[lane - delta] if lane - seg >= delta else v[lane]
        down[lane] = v[lane + delta] if lane - seg + delta < width else v[lane]
        j = lane ^ delta
        xor[lane] = v[j] if j < seg + width else v[lane]
    return np.concatenate([idx, up, down, xor])


@pytest.mark.parametrize("width,src,delta", [(32, 5, 1), (32, 31, 16), (16, 3, 4), (8, 9, 3), (4, 2, 2),
                                             (2, 1, 1), (8, 0, 12)])
def test_shuffle_lane_rules_match_cuda(feat, width, src, delta):
    v = np.arange(64, dtype=np.float32) * 1.5 + 1
    out = np.full(4 * 64, np.nan, np.float32)
    feat.get_function("shuffles")(1, 64, (v, out, np.int32(src), np.int32(delta), np.int32(width)))
    expected = np.concatenate([_shuffle_model(v[w * 32:(w + 1) * 32], src, delta, width).reshape(4, 32)
                               for w in range(2)], axis=1).reshape(-1)
    assert np.array_equal(out, expected)


def test_shuffle_with_bad_width_is_refused(feat):
    v = np.zeros(32, np.float32)
    with pytest.raises(emu.WarpSyncError, match="width 12"):
        feat.get_function("shuffles")(1, 32, (v, np.zeros(128, np.float32), np.int32(0), np.int32(1),
                                              np.int32(12)))


def test_votes_and_counting_barriers(feat):
    pred = (np.arange(64) % 3 == 0).astype(np.int32)
    pred[32:] = 1
    out = np.zeros((64, 7), np.uint32)
    feat.get_function("votes")(1, 64, (pred, out), order="random", seed=3)
    w0 = sum(1 << i for i in range(32) if pred[i])
    assert (out[:32, 0] == w0).all() and (out[32:, 0] == 0xFFFFFFFF).all()
    assert (out[:, 1] == 1).all()
    assert (out[:32, 2] == 0).all() and (out[32:, 2] == 1).all()
    assert (out[:, 3] == pred.sum()).all()
    assert (out[:, 4] == 0).all() and (out[:, 5] == 1).all()
    assert (out[:, 6] == 0xFFFFFFFF).all()


def test_dynamic_shared_arrays_of_two_types_alias_one_buffer(feat):
    x = np.random.default_rng(5).standard_normal(64).astype(np.float32)
    bits, back = np.zeros(64, np.int32), np.zeros(64, np.float32)
    feat.get_function("dyn_shared_two_types")(1, 64, (x, bits, back), shared_mem=64 * 4)
    assert np.array_equal(bits, x[::-1].view(np.int32))
    assert np.array_equal(back, 2 * x)


@pytest.mark.parametrize("dtype,name", [(np.float32, "reverse_block<float>"),
                                        (np.float64, "reverse_block<double>")])
def test_template_kernels_through_name_expressions(feat, dtype, name):
    x = np.arange(3 * 32, dtype=dtype)
    y = np.zeros_like(x)
    feat.get_function(name)(3, 32, (x, y), shared_mem=32 * x.itemsize, order="reverse")
    assert np.array_equal(y, x.reshape(3, 32)[:, ::-1].reshape(-1))


def test_namespaced_template_with_value_parameter(feat):
    x = np.arange(10, dtype=np.float64)
    y = np.zeros(10)
    feat.get_function("feat::scale<double, 3>")(1, 16, (y, x, np.float64(0.5), np.int32(10)))
    assert np.array_equal(y, 1.5 * x)
    with pytest.raises(TypeError, match="argument 2 .*double.*np.float64.*float32"):
        feat.get_function("feat::scale<double, 3>")(1, 16, (y, x, np.float32(0.5), np.int32(10)))


def test_atomics(feat):
    n = 3 * 64
    ints = np.array([0, 0, -(10 ** 9), 10 ** 9, 0, -1, 0, 0, 0], np.int32)
    uints = np.zeros(2, np.uint32)
    ull, f, d = np.zeros(1, np.uint64), np.zeros(1, np.float32), np.zeros(1, np.float64)
    feat.get_function("atomics")(3, 64, (ints, uints, ull, f, d), order="random", seed=11)
    i = np.arange(n)
    assert ints[0] == i.sum() and ints[1] == -n and ints[2] == n - 1 and ints[3] == -(n - 1)
    assert ints[4] == np.bitwise_or.reduce(1 << (i % 31)) and ints[5] == ~np.bitwise_or.reduce(1 << (i % 31))
    assert ints[6] == np.bitwise_xor.reduce(i) and 1 <= ints[7] <= n and ints[8] == 7
    assert uints[0] == n % 8  # atomicInc wraps to 0 past 7
    # atomicDec from 0 wraps to 5, then counts down 5,4,..,0 and wraps again: period 6.
    assert uints[1] == (-n) % 6
    assert ull[0] == i.sum() and f[0] == n and d[0] == n * 0.5


def test_3d_grids_and_blocks(feat):
    grid, block = (3, 2, 2), (4, 2, 3)
    shape = (grid[2] * block[2], grid[1] * block[1], grid[0] * block[0])
    out = np.full(shape, -1, np.int32)
    dims = np.zeros(6, np.uint32)
    feat.get_function("index3d")(grid, block, (out, dims), order="random", seed=2)
    z, y, x = np.indices(shape)
    bid = ((z // block[2]) * grid[1] + y // block[1]) * grid[0] + x // block[0]
    tid = ((z % block[2]) * block[1] + y % block[1]) * block[0] + x % block[0]
    assert np.array_equal(out, bid * 1000 + tid)
    assert list(dims) == [*grid, *block]


def test_float4_pointers_and_misalignment(feat):
    x = np.arange(16, dtype=np.float32)
    y = np.zeros(16, np.float32)
    k = feat.get_function("copy_float4")
    k(1, 8, (x, y, np.int32(4)))
    assert np.array_equal(y, x.reshape(4, 4)[:, ::-1].reshape(-1))
    raw = np.zeros(20, np.float32)
    misaligned = raw[1:17] if raw[1:].ctypes.data % 16 else raw[2:18]
    with pytest.raises(ValueError, match=r"argument 0 \(const float4\*\).*16-byte aligned"):
        k(1, 8, (misaligned, y, np.int32(4)))


@pytest.mark.parametrize("bad,pattern", [
    (lambda a: (a.astype(np.float64),) + a_rest(), r"argument 0 \(float\*\).*dtype float32.*float64"),
    (lambda a: (a, 1) + a_rest()[1:], r"argument 1 \(int\).*Python int 1"),
    (lambda a: (a, np.int64(1)) + a_rest()[1:], r"argument 1 \(int\).*np.int32.*int64"),
    (lambda a: (a, np.int32(1), np.uint32(2), np.int64(3), np.uint64(4), 5.0, np.float64(6), np.uint64(7)),
     r"argument 5 \(float\).*Python float 5.0"),
    (lambda a: (a, np.int32(1)), r"takes 8 arguments"),
    (lambda a: (a[::2],) + a_rest(), r"C-contiguous"),
    (lambda a: ([1.0],) + a_rest(), r"argument 0 .*expected a NumPy array"),
])
def test_wrong_argument_types_are_refused(feat, bad, pattern):
    a = np.zeros(8, np.float32)
    with pytest.raises((TypeError, ValueError), match=pattern):
        feat.get_function("scalars")(1, 1, bad(a))


def a_rest():
    return (np.int32(1), np.uint32(2), np.int64(3), np.uint64(4), np.float32(5), np.float64(6), np.uint64(7))


def test_scalars_of_every_type_arrive_intact(feat):
    out = np.zeros(7, np.float32)
    feat.get_function("scalars")(1, 1, (out, np.int32(-1), np.uint32(2), np.int64(-3), np.uint64(4),
                                        np.float32(5.5), np.float64(6.25), np.uint64(7)))
    assert list(out) == [-1, 2, -3, 4, 5.5, 6.25, 7]


def test_printf_goes_to_stdout(feat, capfd):
    feat.get_function("hello")(2, 2, (np.int32(42),))
    lines = capfd.readouterr().out.splitlines()
    expected = [f"hello from block {b} thread {t} tag 42" for b in range(2) for t in range(2)]
    assert sorted(lines) == sorted(expected)


def test_constant_and_device_globals_through_get_global(feat):
    g = feat.get_global("c_coeffs")
    assert g.nbytes == 16 and g.dtype == np.float32
    g.copy_from(np.array([1, 2, 3, 4], np.float32))
    counter = feat.get_global("d_counter")
    counter.view(np.int32)[0] = 10
    x = np.ones(8, np.float32)
    y = np.zeros(8, np.float32)
    feat.get_function("apply_coeffs")(1, 8, (x, y, np.int32(8)))
    assert list(y) == [1, 2, 3, 4, 1, 2, 3, 4]
    assert counter.copy_to_host()[0] == 11
    with pytest.raises(ValueError, match="16 bytes"):
        g.copy_from(np.zeros(3, np.float32))
    with pytest.raises(emu.KernelNotFoundError):
        feat.get_global("no_such_global")


def test_math_functions_and_intrinsics(feat):
    x = np.array([-2.5, -1.0, -0.0, 0.25, 0.5, 1.0, 3.0, np.inf, -np.inf, np.nan], np.float32)
    n = len(x)
    out = np.zeros((n, 16), np.float32)
    with np.errstate(all="ignore"):
        feat.get_function("math_funcs")(1, 32, (x, out, np.int32(n)))
        xd = x.astype(np.float64)
        ref = np.stack([np.exp(xd), np.exp(xd), np.log(np.abs(xd) + 1), np.sqrt(np.abs(xd)),
                        1 / np.sqrt(np.abs(xd) + 1), np.fmax(xd, 0.5), np.fmin(xd, 0.5), xd * 2 + 1, xd / 3,
                        np.copysign(1, xd), np.isnan(xd), np.isinf(xd), np.fmax(xd, -1.0),
                        np.minimum(np.arange(n), 3), np.tanh(xd), np.where(xd > 0, np.inf, -np.inf)], axis=1)
    finite = np.isfinite(ref)
    assert np.array_equal(np.isnan(out), np.isnan(ref))
    assert np.array_equal(out[np.isinf(ref)], ref[np.isinf(ref)])
    assert np.allclose(out[finite], ref[finite], rtol=2e-6, atol=1e-30)


def test_integer_intrinsics(feat):
    x = np.array([0, 1, 0x80000000, 0xF0F0, 0xFFFFFFFF, 12345678], np.uint32)
    out = np.zeros((len(x), 6), np.int32)
    feat.get_function("int_funcs")(1, 8, (x, out, np.int32(len(x))))
    for v, o in zip(x.tolist(), out):
        s = v - (1 << 32) if v >= 1 << 31 else v
        assert o[0] == bin(v).count("1")
        assert o[1] == (32 - v.bit_length())
        assert o[2] == ((v & -v).bit_length() if v else 0)
        assert (int(o[3]) & 0xFFFFFFFF) == int(f"{v:032b}"[::-1], 2)
        assert o[4] == 1 and o[5] == max(s, -5)


def test_random_order_is_reproducible_per_seed(feat):
    k = feat.get_function("block_sum_missing_barrier")
    x = np.random.default_rng(6).standard_normal(256).astype(np.float32)
    outs = []
    for seed in (9, 9):
        o = np.zeros(1, np.float32)
        k(1, 256, (x, o, np.int32(256)), order="random", seed=seed)
        outs.append(o.tobytes())
    assert outs[0] == outs[1]


@pytest.mark.parametrize("grid,block,smem,pattern", [
    (1, (64, 32), 0, "2048 threads"), (1, 1025, 0, r"block\[0\] = 1025"),
    (1, (1, 1, 65), 0, r"block\[2\] = 65"), ((1, 65536), 1, 0, r"grid\[1\]"),
    (1, 32, 227 * 1024 + 1, "shared_mem"), ((1, 2, 3, 4), 1, 0, "1 to 3"), (0, 1, 0, r"grid\[0\] = 0"),
    (1.0, 1, 0, "grid"),
])
def test_launch_limits(feat, grid, block, smem, pattern):
    with pytest.raises(emu.LaunchError, match=pattern):
        feat.get_function("hello")(grid, block, (np.int32(0),), shared_mem=smem)


def test_unknown_kernel_names(feat):
    with pytest.raises(emu.KernelNotFoundError, match="name_expressions"):
        feat.get_function("reverse_block<int>")
    with pytest.raises(emu.KernelNotFoundError, match="variable"):
        feat.get_function("c_coeffs")


# ---- bugs the emulator catches ------------------------------------------------------------------

def test_divergent_barrier_names_both_lines(bugs):
    with pytest.raises(emu.DivergentBarrierError) as e:
        bugs.get_function("divergent_barrier")(1, 32, (np.zeros(32, np.float32),))
    msg = str(e.value)
    assert f"bugs.cu:{line_of(BUGS, 'div_a')}" in msg and f"bugs.cu:{line_of(BUGS, 'div_b')}" in msg
    assert "kernel 'divergent_barrier' block (0,0,0) thread (16,0,0)" in msg


def test_thread_exit_while_others_wait_at_barrier(bugs):
    k = bugs.get_function("exit_at_barrier")
    x, y = np.zeros(64, np.float32), np.zeros(64, np.float32)
    k(1, 64, (x, y, np.int32(64)))  # every thread reaches the barrier: fine
    with pytest.raises(emu.ExitAtBarrierError, match=rf"thread \(40,0,0\): this thread exited.*bugs.cu:"
                                                      rf"{line_of(BUGS, 'exit_bar')}"):
        k(1, 64, (x, y, np.int32(40)))


def test_deadlock_between_shuffle_and_barrier(bugs):
    pattern = (rf"__shfl_sync .*bugs.cu:{line_of(BUGS, 'dead_shfl')}.*lane 16.*"
               rf"__syncthreads at .*bugs.cu:{line_of(BUGS, 'dead_bar')}")
    with pytest.raises(emu.DeadlockError, match=pattern):
        bugs.get_function("shuffle_then_barrier")(1, 32, (np.zeros(32, np.int32),))


@pytest.mark.parametrize("kernel,pattern", [
    ("shuffle_sites_differ",
     lambda: rf"bugs.cu:{line_of(BUGS, 'site_b')}.*bugs.cu:{line_of(BUGS, 'site_a')}"),
    ("shuffle_mask_without_caller", lambda: r"mask 0x0000ffff that does not name the calling lane 16"),
    ("shuffle_reads_inactive_lane",
     lambda: rf"bugs.cu:{line_of(BUGS, 'inactive')} reads lane 16.*not in the mask"),
])
def test_shuffle_mask_and_site_mismatches(bugs, kernel, pattern):
    with pytest.raises(emu.WarpSyncError, match=pattern()):
        bugs.get_function(kernel)(1, 32, (np.zeros(32, np.int32),))


def test_partial_warp_mask_naming_missing_lanes(feat):
    with pytest.raises(emu.WarpSyncError, match="names lane 16, but this warp has only 16 threads"):
        feat.get_function("warp_sum_down")(1, 16, (np.zeros(16, np.int32), np.zeros(1, np.int32)))


def test_shared_memory_overrun_hits_the_canary(bugs):
    k = bugs.get_function("smem_overrun")
    out = np.zeros(64, np.float32)
    k(1, 64, (out,), shared_mem=256)
    with pytest.raises(emu.SharedMemoryOverrunError, match=r"thread \(32,0,0\).*128 bytes"):
        k(1, 64, (out,), shared_mem=128)


def test_assert_and_trap_report_thread_and_line(bugs):
    x = np.ones(64, np.float32)
    x[37] = -1
    pattern = rf"thread \(37,0,0\): assertion 'x\[i\] >= 0.0f' failed at .*bugs.cu:{line_of(BUGS, 'assert')}"
    with pytest.raises(emu.KernelAssertionError, match=pattern):
        bugs.get_function("assert_positive")(1, 64, (x, np.int32(64)))
    pattern = rf"block \(1,0,0\) thread \(5,0,0\).*bugs.cu:{line_of(BUGS, 'trap')}"
    with pytest.raises(emu.KernelTrapError, match=pattern):
        bugs.get_function("trap_on_negative")(2, 32, (x, np.int32(64)))


def test_stack_overflow_and_bad_pointer_are_reported_not_fatal(bugs):
    x = np.zeros(4, np.float32)
    bugs.get_function("stack_overflow")(1, 4, (x, np.int32(10)))
    with pytest.raises(emu.StackOverflowError, match=r"thread \(0,0,0\): stack overflow"):
        bugs.get_function("stack_overflow")(1, 4, (x, np.int32(100000)))
    with pytest.raises(emu.MemoryFaultError, match=r"thread \(3,0,0\): segmentation fault"):
        bugs.get_function("null_write")(1, 8, (np.zeros(8, np.float32),))
    bugs.get_function("stack_overflow")(1, 4, (x, np.int32(10)))  # the emulator recovers


# ---- lint, options, cache -----------------------------------------------------------------------

LINT_CASES = [
    ('asm volatile("trap;");', "inline asm"),
    ("nvcuda::wmma::fragment<int> f;", "wmma/mma"),
    ("auto g = cooperative_groups::this_thread_block();", "cooperative groups"),
    ("float v = tex1Dfetch<float>(t, 0);", "textures"),
    ("__half h;", "__half"),
    ("other<<<1, 1>>>(x);", "dynamic parallelism"),
    ("float v = __shfl(x[0], 0);", "legacy warp"),
]


@pytest.mark.parametrize("stmt,what", LINT_CASES)
def test_lint_refuses_gpu_only_code_with_file_and_line(stmt, what):
    code = f'extern "C" __global__ void k(float* x) {{\n  int a = 0;\n  {stmt}\n}}\n'
    with pytest.raises(emu.LintError, match=rf"\.cu:3: .*{re.escape(what)}.*#ifndef GPUCONV_EMU"):
        emu.RawModule(code=code)


def test_lint_refuses_gpu_only_headers():
    with pytest.raises(emu.LintError, match=r"\.cu:2: #include <cuda_fp16.h> is GPU-only"):
        emu.RawModule(code='// half\n#include <cuda_fp16.h>\nextern "C" __global__ void k() {}\n')


def test_gpu_only_code_behind_ifndef_is_accepted_and_options_honoured():
    body = "\n".join(f"#ifndef GPUCONV_EMU\n{stmt}\n#endif" for stmt, _ in LINT_CASES)
    code = (f'extern "C" __global__ void k(float* x) {{\n{body}\n#ifdef GPUCONV_EMU\n  x[0] = VALUE;\n#else\n'
            f'  asm("exit;");\n#endif\n}}\n')
    mod = emu.RawModule(code=code, options=("-DVALUE=2.5f", "--use_fast_math", "-arch=sm_90", "-lineinfo",
                                            "--fmad=true", "-std=c++17"))
    x = np.zeros(1, np.float32)
    mod.get_function("k")(1, 1, (x,))
    assert x[0] == 2.5
    with pytest.raises(ValueError, match="-fopenmp"):
        emu.RawModule(code=code, options=("-fopenmp",))


def test_compile_errors_are_reported():
    with pytest.raises(emu.CompileError, match="undeclared|not declared"):
        emu.RawModule(code='extern "C" __global__ void k(float* x) { x[0] = undefined_name; }\n')


def test_second_load_hits_the_cache_in_this_and_another_process(feat):
    before = build.stats["kernel_compiles"]
    again = emu.RawModule(path=str(FEATURES), name_expressions=TEMPLATES)
    assert build.stats["kernel_compiles"] == before and not again.compiled
    probe = ("import gpuconv.emulator as e, gpuconv.emulator.build as b; "
             f"m = e.RawModule(path={str(FEATURES)!r}, name_expressions={TEMPLATES!r}); "
             "print(b.stats['kernel_compiles'], b.stats['runtime_compiles'], m.compiled)")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    out = proc.stdout.split()
    assert out == ["0", "0", "False"]
