"""Nothing a kernel does ends, hangs or silently corrupts the process: every fault becomes an
``EmulatorError`` naming kernel, block, thread and source line (docs/emulator.md, "What the
default mode catches").

Tests that would hang or end the process if a guard were missing run their kernel in a
subprocess with a time limit.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import gpuconv.emulator as emu
from gpuconv.emulator import build, settings
from gpuconv.emulator.constants import MAX_DYN_SMEM, STACK_KB_MIN

KERNELS = Path(__file__).parent / "emu_kernels"
FAULTS = KERNELS / "faults.cu"
ROOT = Path(__file__).resolve().parents[1]


def line_of(tag: str, path: Path = FAULTS) -> int:
    for n, text in enumerate(path.read_text().splitlines(), 1):
        if text.rstrip().endswith(f"// @{tag}"):
            return n
    raise AssertionError(f"no // @{tag} in {path}")


def at(tag: str) -> str:
    """The ``file:line`` a message names for the line marked ``tag``, as a regex."""
    return re.escape(f"{FAULTS}:{line_of(tag)}")


@pytest.fixture(scope="module")
def faults():
    return emu.RawModule(path=str(FAULTS))


def run_python(code: str, timeout: float = 120, env: dict = None, **kw) -> subprocess.CompletedProcess:
    full = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=full, **kw)


# ---- crashes become exceptions --------------------------------------------------------------------

@pytest.mark.parametrize("kernel,values,d,tag", [
    ("divide", [7, 100, -3, 4], 0, "divide"),
    ("remainder_of", [7, 100, -3, 4], 0, "remainder"),
    ("divide", [7, -2**31, -3, 4], -1, "divide"),  # INT_MIN / -1 traps like x / 0
])
def test_integer_division_faults_raise_naming_thread_and_line(faults, kernel, values, d, tag):
    p = np.array(values, np.int32)
    first = 0 if d == 0 else 1
    pattern = rf"kernel '{kernel}' block \(0,0,0\) thread \({first},0,0\): integer division.*{at(tag)}"
    with pytest.raises(emu.IntegerDivisionError, match=pattern):
        faults.get_function(kernel)(1, 4, (p, np.int32(d)))
    faults.get_function("divide")(1, 4, (p, np.int32(1)))  # the emulator recovers


def test_the_issue_example_division_by_zero_is_an_exception():
    dz = emu.RawKernel('extern "C" __global__ void dz(int* p,int d){p[0]=100/d;}', "dz")
    with pytest.raises(emu.IntegerDivisionError, match="kernel 'dz' block"):
        dz((1,), (1,), (np.zeros(1, np.int32), np.int32(0)))


def test_assert_from_assert_h_and_cassert_is_an_exception_with_its_line(faults):
    p = np.array([1, 2, -3, 4], np.int32)
    pattern = rf"thread \(2,0,0\): assertion 'p\[threadIdx.x\] >= 0' failed at {at('assert_h')}"
    with pytest.raises(emu.KernelAssertionError, match=pattern):
        faults.get_function("checked")(1, 4, (p,))
    faults.get_function("checked")(1, 4, (np.abs(p),))


def test_ndebug_disables_assert_as_in_cuda():
    code = '#include <cassert>\nextern "C" __global__ void k(int* p) { assert(p[0] == 1); p[0] = 2; }\n'
    p = np.zeros(1, np.int32)
    emu.RawModule(code=code, options=("-DNDEBUG",)).get_function("k")(1, 1, (p,))
    assert p[0] == 2
    with pytest.raises(emu.KernelAssertionError):
        emu.RawModule(code=code).get_function("k")(1, 1, (p,))


@pytest.mark.parametrize("what,pattern", [
    (0, rf"exit\(3\) called.*{at('exit')}"),
    (1, rf"abort\(\) called.*{at('abort')}"),
    (2, rf"exit\(4\) called.*{at('std_exit')}"),
    (3, rf"_Exit\(5\) called.*{at('_Exit')}"),
    (4, rf"quick_exit\(6\) called.*{at('quick_exit')}"),
    (5, r"a C\+\+ exception escaped the kernel: device code threw"),
    (6, rf"illegal instruction.*{at('builtin_trap')}"),
])
def test_calls_that_end_the_process_end_the_launch(faults, what, pattern):
    with pytest.raises(emu.KernelTrapError, match=r"kernel 'ends_process' block \(0,0,0\) thread \(1,0,0\): "
                                                  + pattern):
        faults.get_function("ends_process")(1, 4, (np.int32(what),))


def test_memory_fault_names_its_source_line():
    bugs = KERNELS / "bugs.cu"
    line = next(n for n, t in enumerate(bugs.read_text().splitlines(), 1) if t.rstrip().endswith("// @null"))
    pattern = rf"thread \(3,0,0\): segmentation fault.*{re.escape(str(bugs))}:{line}\)"
    with pytest.raises(emu.MemoryFaultError, match=pattern):
        emu.RawModule(path=str(bugs)).get_function("null_write")(1, 8, (np.zeros(8, np.float32),))


@pytest.mark.parametrize("dtype,offset,aligned", [
    (np.float32, 0, True), (np.float32, 4, True), (np.float32, 1, False), (np.float32, 2, False),
    (np.float64, 0, True), (np.float64, 2, True), (np.float64, 1, False), (np.float64, 3, False),
])
def test_a_misaligned_vector_access_faults_as_on_the_gpu(dtype, offset, aligned):
    # x86 loads any address; the GPU ends the kernel on a vector access not aligned to its width
    # (16 bytes at most), and so does the emulator, at the line of the access.
    path = KERNELS / "vectors.cu"
    name = "float" if dtype == np.float32 else "double"
    kernel = emu.RawModule(path=str(path)).get_function(f"copy_vec4_{name}")
    x = np.arange(16, dtype=dtype)
    y = np.zeros(16, dtype)
    assert x.ctypes.data % 16 == 0 and y.ctypes.data % 16 == 0
    args = (x, y, np.int32(offset))
    if aligned:
        kernel(1, 1, args)
        np.testing.assert_array_equal(y[offset:offset + 4], x[offset:offset + 4])
    else:
        where = re.escape(f"{path}:{line_of(f'vec4_{name}', path)}")
        with pytest.raises(emu.MemoryFaultError, match=rf"misaligned vector access at {where}"):
            kernel(1, 1, args)


# ---- the stack setting ------------------------------------------------------------------------------

@pytest.mark.parametrize("kib", [STACK_KB_MIN, 17, 31, 32, 33, 64])
def test_every_accepted_stack_size_runs_a_kernel_that_uses_it(faults, monkeypatch, capfd, kib):
    monkeypatch.setenv("GPUCONV_EMU_STACK_KB", str(kib))
    out = np.zeros(64)
    # kib - 8 KiB of locals (8 KiB left for the frames of the kernel, printf and the runtime)
    faults.get_function("uses_stack")(1, 64, (out, np.int32(kib - 8)))
    top = (kib - 8) * 2 - 1  # what the kernel wrote at its last 512-byte step
    assert np.array_equal(out, top + np.arange(64)) and "stack ok" in capfd.readouterr().out


def test_a_stack_too_small_for_the_kernel_is_a_stack_overflow(faults, monkeypatch):
    monkeypatch.setenv("GPUCONV_EMU_STACK_KB", "32")
    with pytest.raises(emu.StackOverflowError, match=r"thread \(0,0,0\): stack overflow \(the thread's 32 "):
        faults.get_function("uses_stack")(1, 4, (np.zeros(4), np.int32(100)))


@pytest.mark.parametrize("var,value", [
    ("GPUCONV_EMU_STACK_KB", "8"), ("GPUCONV_EMU_STACK_KB", "0"), ("GPUCONV_EMU_STACK_KB", "-4"),
    ("GPUCONV_EMU_STACK_KB", "64k"), ("GPUCONV_EMU_STACK_KB", "1e3"), ("GPUCONV_EMU_STACK_KB", "99999999"),
    ("GPUCONV_EMU_TIMEOUT", "0"), ("GPUCONV_EMU_TIMEOUT", "-1"), ("GPUCONV_EMU_TIMEOUT", "nan"),
    ("GPUCONV_EMU_TIMEOUT", "soon"),
])
def test_malformed_settings_are_refused_naming_the_variable(faults, monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=rf"{var} must be .*{re.escape(repr(value))}"):
        faults.get_function("touch")(1, 4, (np.zeros(4, np.int32),))


# ---- the build cache ---------------------------------------------------------------------------------

LOAD = """
    import numpy as np, gpuconv.emulator as emu, gpuconv.emulator.build as b
    m = emu.RawModule(path={path!r})
    p = np.zeros(4, np.int32)
    m.get_function("touch")(1, 4, (p,))
    assert list(p) == [1, 1, 1, 1]
    print(b.stats["kernel_compiles"], b.stats["runtime_compiles"], m.library_path)
"""


@pytest.mark.parametrize("damage", ["module", "runtime"])
def test_a_damaged_library_in_the_cache_is_rebuilt(tmp_path, damage):
    env = {"GPUCONV_CACHE_DIR": str(tmp_path)}
    first = run_python(LOAD.format(path=str(FAULTS)), env=env)
    assert first.returncode == 0, first.stderr
    compiles, runtimes, library = first.stdout.split()
    assert (compiles, runtimes) == ("1", "1")
    victim = Path(library) if damage == "module" else next((tmp_path / "emu").glob("runtime-*/runtime.so"))
    size = victim.stat().st_size
    with open(victim, "r+b") as f:  # as a full disk or a crash would leave it
        f.truncate(size // 3)
    again = run_python(LOAD.format(path=str(FAULTS)), env=env)
    assert again.returncode == 0, f"rc {again.returncode}: {again.stderr[-2000:]}"
    assert again.stdout.split()[:2] == (["1", "0"] if damage == "module" else ["0", "1"])
    assert victim.stat().st_size == size
    third = run_python(LOAD.format(path=str(FAULTS)), env=env)
    assert third.returncode == 0 and third.stdout.split()[:2] == ["0", "0"]  # the rebuilt entry is used


# ---- hangs: time limit and SIGINT ----------------------------------------------------------------

SPIN = """
    import os, sys, time, numpy as np, gpuconv.emulator as emu
    m = emu.RawModule(path={path!r})
    def attempt(grid, how):
        t = time.monotonic()
        try:
            m.get_function("spin")(grid, 4, (np.zeros(4, np.int32), np.int32(how)))
        except BaseException as e:
            print(type(e).__name__, e, flush=True)
        print("seconds", time.monotonic() - t, flush=True)
"""


@pytest.mark.parametrize("grid,how,progress", [
    (3, 0, "after 0 of 3 blocks"),                       # an endless loop in the kernel's own code
    (3, 1, "after 0 of 3 blocks"),                       # ... that spends its time in printf
    (3, 2, "after 0 of 3 blocks"),                       # ... around a barrier
    ((65535, 65535, 65535), 2, r"after \d+ of 281462092005375 blocks"),  # a grid that never ends
])
def test_a_launch_stops_at_the_time_limit(grid, how, progress):
    if isinstance(grid, tuple):  # every block returns at once: p[0] is set for this case
        code = SPIN.format(path=str(FAULTS)).replace("np.zeros(4, np.int32)", "np.ones(4, np.int32)")
    else:
        code = SPIN.format(path=str(FAULTS))
    proc = run_python(textwrap.dedent(code) + f"attempt({grid!r}, {how})\n", timeout=120,
                      env={"GPUCONV_EMU_TIMEOUT": "0.5"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    pattern = (rf"LaunchTimeoutError kernel 'spin' block \(\d+,\d+,\d+\)( thread \(\d,0,0\))?: "
               rf"did not finish within GPUCONV_EMU_TIMEOUT = 0.5 s; stopped {progress}")
    assert re.search(pattern, proc.stdout), proc.stdout
    if how == 0:
        assert f"{FAULTS}:{line_of('spin')}" in proc.stdout
    assert float(proc.stdout.split("seconds")[1]) < 10


def test_a_launch_stops_on_sigint_with_keyboard_interrupt_and_the_next_one_runs():
    code = textwrap.dedent(SPIN.format(path=str(FAULTS))) + textwrap.dedent("""
        print("launching", flush=True)
        attempt(3, 0)
        p = np.zeros(4, np.int32)
        m.get_function("touch")(1, 4, (p,))
        print("after", p.tolist(), flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert proc.stdout.readline().strip() == "launching"
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-2000:]
    pattern = (rf"KeyboardInterrupt kernel 'spin' block \(0,0,0\) thread \(0,0,0\): interrupted \(SIGINT\) "
               rf"after 0 of 3 blocks \(at {at('spin')}\)")
    assert re.search(pattern, out), out
    assert "after [1, 1, 1, 1]" in out


def test_keyboard_interrupt_in_process(faults, monkeypatch):
    """signal.pthread_kill from a timer thread, as Ctrl-C would arrive, inside this test process."""
    import threading
    monkeypatch.setenv("GPUCONV_EMU_TIMEOUT", "20")  # were SIGINT ignored, the launch would still end
    main = threading.main_thread().ident
    timer = threading.Timer(0.3, lambda: signal.pthread_kill(main, signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt, match="kernel 'spin'.*interrupted"):
            faults.get_function("spin")(2, 4, (np.zeros(4, np.int32), np.int32(0)))
    finally:
        timer.cancel()


# ---- shared memory -----------------------------------------------------------------------------

@pytest.mark.parametrize("offset,index", [(64, 64), (4096, 4096)])  # just past the end, and 16 KiB past it
def test_static_shared_array_overrun_is_reported_before_it_happens(faults, offset, index):
    with pytest.raises(emu.OutOfBoundsError, match=rf"thread \(0,0,0\): index {index} out of bounds for type "
                                                   rf"'float \[64\]' at {at('static_smem')}"):
        faults.get_function("static_shared_overrun")(1, 64, (np.zeros(64, np.float32), np.int32(offset)))


def test_local_array_overrun_is_reported(faults):
    faults.get_function("local_array_overrun")(1, 4, (np.zeros(4, np.float32), np.int32(7)))
    with pytest.raises(emu.OutOfBoundsError, match=rf"index -1 out of bounds for type 'float \[8\]' at "
                                                   rf"{at('local_array')}"):
        faults.get_function("local_array_overrun")(1, 4, (np.zeros(4, np.float32), np.int32(-1)))


def test_a_shared_memory_write_in_the_canary_names_the_block(faults):
    pattern = r"block \(0,0,0\): a thread wrote past the end of the 256 bytes .* at byte offset 656"
    with pytest.raises(emu.SharedMemoryOverrunError, match=pattern):
        faults.get_function("dynamic_shared_access")(1, 1, (np.zeros(1, np.float32), np.int32(164),
                                                            np.int32(1)), shared_mem=256)


@pytest.mark.parametrize("smem,index,write,tag", [
    (256, 64 + 4096, 1, "dyn_write"),   # 16 KiB past the request: beyond any canary
    (4096, 1024, 1, "dyn_write"),       # the first byte past a page-sized request
    (4096, 1024, 0, "dyn_read"),        # ... read
    (0, 0, 0, "dyn_read"),              # any access without a request
])
def test_dynamic_shared_overrun_beyond_the_canary_faults_at_its_line(faults, smem, index, write, tag):
    access = "write" if write else "read"
    pattern = (rf"thread \(0,0,0\): {access} past the end of the {smem} bytes of dynamic shared memory "
               rf"requested \(shared_mem={smem}\), at byte offset {4 * index}.*{at(tag)}")
    with pytest.raises(emu.SharedMemoryOverrunError, match=pattern):
        faults.get_function("dynamic_shared_access")(1, 1, (np.zeros(1, np.float32), np.int32(index),
                                                            np.int32(write)), shared_mem=smem)


def test_the_largest_dynamic_shared_request_is_usable_to_its_last_byte(faults):
    k = faults.get_function("dynamic_shared_access")
    last = MAX_DYN_SMEM // 4 - 1
    k(1, 1, (np.zeros(1, np.float32), np.int32(last), np.int32(1)), shared_mem=MAX_DYN_SMEM)
    with pytest.raises(emu.SharedMemoryOverrunError, match=f"at byte offset {MAX_DYN_SMEM}"):
        k(1, 1, (np.zeros(1, np.float32), np.int32(last + 1), np.int32(1)), shared_mem=MAX_DYN_SMEM)


# ---- array arguments ---------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [64, 1000, 4096])  # sizes a multiple of 16 bytes: the guard is at the last byte
def test_reading_one_element_past_an_argument_is_reported_with_thread_and_line(faults, n):
    x, y = np.arange(n, dtype=np.float32), np.zeros(n, np.float32)
    block = 64
    grid = (n + block - 1) // block
    last = n - 1
    pattern = (rf"block \({last // block},0,0\) thread \({last % block},0,0\): read past the end of "
               rf"argument 0 \({4 * n} bytes, {n} elements\), at byte offset {4 * n} \(element {n}\) "
               rf"\(at {at('copy_read')}\)")
    with pytest.raises(emu.OutOfBoundsError, match=pattern):
        faults.get_function("copy_offset")(grid, block, (x, y, np.int32(n), np.int32(1)))
    assert np.array_equal(y[:n - 1], x[1:])  # what the threads before it wrote reached the caller


def test_reading_far_before_the_start_is_reported(faults):
    x, y = np.arange(256, dtype=np.float32), np.zeros(256, np.float32)
    pattern = (rf"block \(0,0,0\) thread \(0,0,0\): read before the start of argument 0 \(1024 bytes\), "
               rf"at byte offset -12000 \(element -3000\) \(at {at('copy_read')}\)")
    with pytest.raises(emu.OutOfBoundsError, match=pattern):
        faults.get_function("copy_offset")(4, 64, (x, y, np.int32(256), np.int32(-3000)))


def test_a_write_into_the_alignment_gap_names_the_block(faults):
    buf = np.zeros(1027 + 4, np.float32)
    first = (-buf.ctypes.data % 16) // 4
    y = buf[first:first + 1027]  # 16-byte aligned, 4108 bytes: 4 bytes of gap up to the next 16
    gap = r"block \(16,0,0\): a thread wrote past the end of argument 0 \(4108 bytes\), at byte offset 4108"
    with pytest.raises(emu.OutOfBoundsError, match=gap):
        faults.get_function("store_offset")(17, 64, (y, np.int32(1027), np.int32(1)))


def test_writing_past_the_end_and_before_the_start_are_reported(faults):
    y = np.zeros(256, np.float32)
    k = faults.get_function("store_offset")
    past = rf"block \(3,0,0\) thread \(63,0,0\): write past the end of argument 0 .*element 256\) " \
           rf"\(at {at('store')}\)"
    with pytest.raises(emu.OutOfBoundsError, match=past):
        k(4, 64, (y, np.int32(256), np.int32(1)))
    before = rf"thread \(0,0,0\): write before the start of argument 0 .*element -5000\) \(at {at('store')}\)"
    with pytest.raises(emu.OutOfBoundsError, match=before):
        k(4, 64, (y, np.int32(256), np.int32(-5000)))
    # a write into the slack before the start misses the guard page: the canary names the block
    slack = r"block \(0,0,0\): a thread wrote before the start of argument 0 \(1024 bytes\), at byte " \
            r"offset -4 "
    with pytest.raises(emu.OutOfBoundsError, match=slack):
        k(4, 64, (y, np.int32(256), np.int32(-1)))


def test_results_land_in_the_callers_arrays_including_views(faults):
    base = np.zeros(300, np.float32)
    view = base[10:266]  # not at the start of its allocation
    faults.get_function("fill")(4, 64, (view, np.float32(2.5), np.int32(256)))
    assert (base[10:266] == 2.5).all() and (base[:10] == 0).all() and (base[266:] == 0).all()


def test_overlapping_arguments_share_one_copy(faults):
    buf = np.zeros(257, np.float32)
    buf[0] = 10
    # out = buf[1:], in = buf[:-1]: thread i reads what thread i - 1 wrote (threads run in order)
    faults.get_function("chain")(4, 64, (buf[:-1], buf[1:], np.int32(256)))
    assert np.array_equal(buf, 10 + np.arange(257, dtype=np.float32))


def test_a_write_through_a_const_pointer_is_reported_and_does_not_reach_the_caller(faults):
    x = np.ones(64, np.float32)
    with pytest.raises(emu.MemoryFaultError, match="wrote into argument 0, a pointer to const, at element 0"):
        faults.get_function("writes_through_const")(1, 64, (x, np.int32(64)))
    assert (x == 1).all()


def test_read_only_arrays_are_refused_for_pointers_the_kernel_may_write(faults):
    data = bytes(np.arange(64, dtype=np.float32).tobytes())
    ro = np.frombuffer(data, np.float32)
    with pytest.raises(ValueError, match=r"kernel 'fill' argument 0 \(float\*\): the array is read-only"):
        faults.get_function("fill")(1, 64, (ro, np.float32(0), np.int32(64)))
    out = np.zeros(64, np.float32)
    faults.get_function("copy_offset")(1, 64, (ro, out, np.int32(64), np.int32(0)))  # const float*: fine
    assert np.array_equal(out, np.arange(64)) and data == np.arange(64, dtype=np.float32).tobytes()


# ---- names and build ---------------------------------------------------------------------------------

def test_kernels_may_have_any_name_the_emulators_glue_uses(faults):
    p = np.zeros(6, np.int32)
    for name in ("s", "e", "a", "entry", "describe", "manifest"):
        faults.get_function(name)(1, 1, (p,))
    assert list(p) == [1, 2, 3, 4, 5, 6]


def test_the_runtime_header_takes_its_sizes_from_the_python_constants_only():
    header = build.emu_dir() / "emu_runtime.h"
    proc = subprocess.run([settings.compiler(), "-fsyntax-only", "-x", "c++", str(header)],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "GPUCONV_EMU_MAX_DYN_SMEM" in proc.stderr
    from gpuconv.emulator.constants import defines
    ok = subprocess.run([settings.compiler(), "-fsyntax-only", "-x", "c++", *defines(), str(header)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
