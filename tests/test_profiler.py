"""gpuconv.profiler: occupancy rules, SASS parsing, the time model and ``gpuconv profile``."""

from __future__ import annotations

from pathlib import Path

import pytest
from documents import load_valid

from gpuconv.profiler import sass
from gpuconv.profiler.model import LAUNCH_LATENCY_S, Work, instruction_estimate, predict
from gpuconv.profiler.occupancy import occupancy
from gpuconv.tools import suites
from gpuconv.tools.cli import main
from gpuconv.tools.profile import PROFILE_SCHEMA, ROW_KEYS, sample_blocks

H100 = suites.HARDWARE["H100"]


# ---- occupancy ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch,threads,regs,smem,blocks,warps,limiter",
    [
        # 128 regs * 32 lanes = 4096 per warp; a 16 K quarter holds 4 warps; 16 warps = 2 blocks of 8
        ("sm_90", 256, 128, 0, 2, 16, "registers"),
        # 107 regs -> 3424 -> 3584 (units of 256): still 4 warps per quarter
        ("sm_90", 256, 107, 0, 2, 16, "registers"),
        # 72 regs -> 2304 per warp: 7 warps per quarter, 28 warps, 3 whole blocks
        ("sm_80", 256, 72, 0, 3, 24, "registers"),
        # 32 regs: 64 warps fit; the 64-warp limit gives 8 blocks
        ("sm_90", 256, 32, 0, 8, 64, "warps"),
        # 48 KiB + 1 KiB reserved per block; 164 KiB per SM holds 3
        ("sm_80", 128, 64, 48 * 1024, 3, 12, "shared memory"),
        # 1024 threads on a 48-warp SM: one block
        ("sm_89", 1024, 32, 0, 1, 32, "warps"),
        # 33 regs -> 1056 -> 1280 per warp: 12 warps per quarter, 48 warps, 6 blocks (7 without the units)
        ("sm_90", 256, 33, 0, 6, 48, "registers"),
        # 96 regs -> 3072: 5 warps per 16 K quarter, 20 in all (21 if the file were one pool)
        ("sm_90", 32, 96, 0, 20, 20, "registers"),
        # 57 KiB + the 1 KiB reserved = 58 KiB: 3 blocks in 228 KiB (4 without the reserve)
        ("sm_90", 128, 32, 57 * 1024, 3, 12, "shared memory"),
        # 32-thread blocks of few registers: the 32-blocks-per-SM limit
        ("sm_90", 32, 16, 0, 32, 32, "blocks"),
    ],
)
def test_occupancy_by_the_cuda_rules(arch, threads, regs, smem, blocks, warps, limiter):
    occ = occupancy(arch, threads, regs, smem)
    assert (occ.blocks_per_sm, occ.warps_per_sm, occ.limiter) == (blocks, warps, limiter)
    assert occ.fraction == warps / (48 if arch == "sm_89" else 64)


def test_occupancy_refuses_bad_input():
    with pytest.raises(ValueError, match="arch"):
        occupancy("sm_70", 256, 32, 0)
    with pytest.raises(ValueError, match="threads_per_block"):
        occupancy("sm_90", 2048, 32, 0)
    with pytest.raises(ValueError, match="registers"):
        occupancy("sm_90", 256, 300, 0)
    assert occupancy("sm_90", 256, 32, 300 * 1024).blocks_per_sm == 0


# ---- SASS -------------------------------------------------------------------------------------------


def _sass(body: str) -> str:
    lines = ["\tcode for sm_90", "\t\tFunction : _Z1kPKfPf", '\t.headerflags\t@"EF_CUDA_SM90"']
    for k, text in enumerate(body.strip().splitlines()):
        lines.append(f"        /*{16 * k:04x}*/                   {text.strip()} ;   /* 0x000000 */")
    return "\n".join(lines) + "\n"


# A loop [0x20, 0x70] whose global loads come after its multiply-adds, inside an outer loop [0x10, 0x80].
LATE = """
MOV R1, c[0x0][0x28]
LDS.128 R8, [R2]
LDS R9, [R3]
FFMA R4, R8, R9, R4
FFMA R5, R8, R9, R5
LDG.E.128.CONSTANT R12, desc[UR4][R6.64]
STS.64 [R2], R12
@P0 BRA 0x20
@P1 BRA 0x10
EXIT
"""


def test_sass_mix_loop_and_late_loads():
    code = sass.parse(_sass(LATE))
    instrs = code["_Z1kPKfPf"]
    m = sass.mix(instrs)
    assert (m.instructions, m.fma, m.by_op["FFMA"]) == (10, 2, 2)
    assert m.memory == {
        "global_loads": {128: 1},
        "global_stores": {},
        "shared_loads": {128: 1, 32: 1},
        "shared_stores": {64: 1},
    }
    loop = sass.hot_loop(instrs)
    assert [i.addr for i in loop] == [0x20, 0x30, 0x40, 0x50, 0x60, 0x70]  # the inner loop, not the outer
    assert sass.load_placement(loop) == 0.0


EARLY = """
MOV R1, c[0x0][0x28]
LDG.E.128.CONSTANT R12, desc[UR4][R6.64]
LDS.128 R8, [R2]
FFMA R4, R8, R9, R4
FFMA R5, R8, R9, R5
FFMA R6, R8, R9, R6
STS.64 [R2], R12
@P0 BRA 0x10
EXIT
"""


def test_sass_loads_before_the_multiply():
    loop = sass.hot_loop(sass.parse(_sass(EARLY))["_Z1kPKfPf"])
    assert loop[0].addr == 0x10 and sass.load_placement(loop) == 1.0
    # half of the multiply-adds after the last load is the threshold of loads_before_multiply
    mid = EARLY.replace(
        "LDG.E.128.CONSTANT R12, desc[UR4][R6.64]\nLDS.128 R8, [R2]\nFFMA R4, R8, R9, R4",
        "LDS.128 R8, [R2]\nFFMA R4, R8, R9, R4\nLDG.E.128.CONSTANT R12, desc[UR4][R6.64]",
    )
    assert sass.load_placement(sass.hot_loop(sass.parse(_sass(mid))["_Z1kPKfPf"])) == pytest.approx(2 / 3)


def test_sass_load_use_across_the_back_edge():
    """The load at the bottom feeds the store at the top of the next iteration: the two FFMAs
    before that store hide it, the one after does not."""
    body = """
MOV R1, c[0x0][0x28]
FFMA R4, R8, R9, R4
FFMA R5, R8, R9, R5
STS [R2], R12
FFMA R6, R8, R9, R6
LDG.E R12, desc[UR4][R6.64]
@P0 BRA 0x10
EXIT
"""
    loop = sass.hot_loop(sass.parse(_sass(body))["_Z1kPKfPf"])
    assert sass.load_placement(loop) == pytest.approx(2 / 3)


def test_sass_straight_line_code_has_no_loop():
    code = sass.parse(_sass("LDG.E R2, desc[UR4][R2.64]\nFFMA R4, R2, R2, R4\nEXIT"))
    assert sass.hot_loop(code["_Z1kPKfPf"]) is None


# ---- the time model ----------------------------------------------------------------------------------


def test_model_terms_by_hand():
    """264 blocks of 256 threads, 2 resident per SM: every SM runs 2 blocks at once (16 warps, full
    rate for SM-local terms); 2112 warps over 132 SMs is half the 32 per SM the memory terms want."""
    occ = occupancy("sm_90", 256, 128, 0)
    w = Work(
        blocks=264,
        threads_per_block=256,
        dram_bytes_touched=1e6,
        l2_sectors=1e5,
        shared_wavefronts=2e6,
        instructions=1e6,
        fma_ops={"FFMA": 1e5},
    )
    p = predict(w, H100, occ)
    share = 2 / 264
    assert p.terms["dram"] == pytest.approx(1e6 / (3.35e12 * 0.5))
    assert p.terms["l2"] == pytest.approx(32e5 / (5120 * 1.98e9 * 0.5))
    assert p.terms["shared"] == pytest.approx(share * 2e6 / 1.98e9)
    assert p.terms["issue"] == pytest.approx(share * 1e6 / (4 * 1.98e9))
    assert p.terms["compute"] == pytest.approx(share * 64e5 / (66.9e12 / 132))
    assert p.bound == "shared" and p.seconds == pytest.approx(share * 2e6 / 1.98e9 + LAUNCH_LATENCY_S)


def test_model_last_wave():
    """133 blocks, 2 resident per SM: one SM runs 2 blocks, so the SM-local terms take 2/133 of the work."""
    occ = occupancy("sm_90", 256, 128, 0)
    w = Work(
        blocks=133,
        threads_per_block=256,
        dram_bytes_touched=0,
        l2_sectors=0,
        shared_wavefronts=0,
        instructions=1e6,
        fma_ops={},
    )
    assert predict(w, H100, occ).terms["issue"] == pytest.approx(2 / 133 * 1e6 / (4 * 1.98e9))


def test_model_small_grid_and_dram_beyond_l2():
    """One block: the busiest SM does everything, with 8 warps; DRAM traffic past L2's size re-reads."""
    occ = occupancy("sm_90", 256, 32, 0)
    big = 4 * H100.l2_bytes
    w = Work(
        blocks=1,
        threads_per_block=256,
        dram_bytes_touched=big,
        l2_sectors=2 * big / 32,
        shared_wavefronts=0,
        instructions=1e6,
        fma_ops={},
    )
    p = predict(w, H100, occ)
    assert p.terms["issue"] == pytest.approx(1e6 / (4 * 1.98e9))
    memory = 8 / (32 * 132)
    assert p.terms["dram"] == pytest.approx((big + big * 0.75) / (3.35e12 * memory))
    with pytest.raises(ValueError, match="no block fits"):
        predict(w, H100, occupancy("sm_90", 256, 32, 300 * 1024))


def test_instruction_estimate_scales_the_hot_loop():
    mix = {
        "instructions": 100,
        "ffma": 10,
        "global_loads": {"32": 1},
        "global_stores": {},
        "shared_loads": {},
        "shared_stores": {},
    }
    loop = {
        "instructions": 40,
        "ffma": 16,
        "global_loads": {"32": 2},
        "global_stores": {},
        "shared_loads": {"128": 2},
        "shared_stores": {},
    }
    est = instruction_estimate(requests=400, warps=8, mix=mix, loop=loop)
    assert est["instructions"] == 400 / 4 * 40 and est["FFMA"] == 400 / 4 * 16 and est["HMMA"] == 0
    assert instruction_estimate(400, 8, mix, None)["instructions"] == 8 * 100


def test_sample_blocks():
    assert sample_blocks(3, 4) is None
    assert sample_blocks(100, 4) == [0, 33, 66, 99]
    assert sample_blocks(100, 1) == [0]


# ---- static facts of the real kernels and the command ------------------------------------------------


def _needs_sass():
    from gpuconv.profiler.resources import available_compiler
    from gpuconv.profiler.toolchain import find_tool

    if available_compiler() is None or find_tool("cuobjdump") is None or find_tool("nvdisasm") is None:
        pytest.skip("needs NVRTC or nvcc, cuobjdump and nvdisasm (pip install '.[profile]')")


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_load_placement_of_real_ptxas_output(arch):
    """late_loads' next address depends on the multiply's result, so its load must follow the
    FFMAs; early_loads' load is free to go first, and ptxas puts it there."""
    _needs_sass()
    from gpuconv.profiler.resources import compile_file
    from gpuconv.profiler.static import facts_of

    kernels = Path(__file__).parent / "emu_kernels"
    facts = facts_of(
        compile_file("load_placement.cu", ["late_loads", "early_loads"], arch, directory=kernels)
    )
    late, early = facts["late_loads"], facts["early_loads"]
    assert late["loads_before_multiply"] is False and late["fma_before_use"] == 0.0
    assert early["loads_before_multiply"] is True and early["fma_before_use"] == 1.0
    assert late["loop"]["ffma"] >= 16 and early["loop"]["ffma"] >= 16


@pytest.fixture(scope="module")
def conv_facts():
    _needs_sass()
    from gpuconv.profiler.static import kernel_facts

    return {arch: kernel_facts("conv2d.cu", arch) for arch in ("sm_80", "sm_90")}


@pytest.mark.parametrize("kernel", ["forward", "backward_filter"])
@pytest.mark.parametrize("bn", [16, 32, 64])
def test_conv_gemm_issues_the_next_tiles_loads_before_the_multiply(conv_facts, kernel, bn):
    """The implicit-GEMM step loop of conv2d.cu: the next tile's global loads go out before the
    current tile's 256 FFMAs (ptxas used to put them after, which this check reported as False)."""
    for arch, facts in conv_facts.items():
        f = facts[f"conv2d_{kernel}_v2<float, {bn}" + (", 4>" if kernel == "forward" else ">")]
        assert f["loop"]["ffma"] == 256, arch
        assert f["loads_before_multiply"] is True and f["fma_before_use"] >= 0.5, arch
        assert f["spill_stores"] == 0 and 0 < f["registers"] <= 128, arch


def test_conv_forward_wide_tile_loads_before_the_multiply_without_spills(conv_facts):
    """Forward v2's 8 x 8 thread tile (256 x 64 block tile): 512 FFMAs per step (BK = 8), the next
    tile's loads still issued before them, and no spills under its __launch_bounds__ (one block
    per SM: up to 255 registers)."""
    for arch, facts in conv_facts.items():
        f = facts["conv2d_forward_v2<float, 64, 8>"]
        assert f["loop"]["ffma"] == 512, arch
        assert f["loads_before_multiply"] is True and f["fma_before_use"] >= 0.5, arch
        assert f["spill_stores"] == 0 and f["spill_loads"] == 0 and f["stack_frame"] == 0, arch
        narrow = facts["conv2d_forward_v2<float, 64, 4>"]
        assert f["loop"]["fma_fraction"] > narrow["loop"]["fma_fraction"], arch


def test_profile_command_rows_and_json(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert (
        main(
            [
                "profile",
                "--layers",
                "C5",
                "--ops",
                "conv2d_forward,conv2d_backward_bias",
                "--blocks",
                "2",
                "--compiler",
                "none",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    doc = load_valid(out, PROFILE_SCHEMA)
    rows = doc["rows"]
    assert [(r["layer"], r["op"], r["kernel"]) for r in rows] == [
        ("C5", "conv2d_forward", "conv2d_forward_v2<float, 64, 4>"),
        ("C5", "conv2d_backward_bias", "conv2d_backward_bias_v2<float>"),
        ("C5", "conv2d_backward_bias", "conv2d_sum_splits<float>"),
    ]
    for r in rows:
        assert set(ROW_KEYS) <= set(r)
        assert r["blocks_sampled"] <= 2 and r["predicted_us"] is None  # no compiler: no estimate
    fwd = rows[0]
    s = fwd["summary_sampled"]
    assert fwd["global_store_efficiency"] == round(
        s["global_store_bytes_requested"] / (32 * s["global_store_sectors"]), 4
    )
    assert fwd["global_load_sectors_per_request"] == round(
        s["global_load_sectors"] / s["global_load_requests"], 4
    )
    assert fwd["floor_us"] == pytest.approx(
        suites.floor_seconds(suites.conv_cost(suites.SUITES["small-cnn"][6].geometry(128), "forward"), H100)
        * 1e6,
        rel=1e-3,
    )
    assert "C5" in capsys.readouterr().out


# (version, pass) -> the kernels the batch-norm op launches in training, in order
BN_KERNELS = {
    (1, "forward"): ["batch_norm_stats_v1<float>", "batch_norm_finalize_v1<float>",
                     "batch_norm_apply_v1<float>"],
    (1, "backward"): ["batch_norm_backward_reduce_v1<float>", "batch_norm_backward_finalize_v1<float>",
                      "batch_norm_backward_dx_v1<float>"],
    (2, "forward"): ["batch_norm_stats_v2<float>", "batch_norm_apply_v2<float>"],
    (2, "backward"): ["batch_norm_backward_reduce_v1<float>", "batch_norm_backward_dx_v2<float>"],
}


def test_profile_batch_norm_rows_with_their_floor(tmp_path, capsys):
    """--ops norm profiles every kernel of the four batch-norm entries, every version, each beside
    the floor of ``suites.norm_cost``; small batch and two blocks per launch keep it quick."""
    from gpuconv.backends import launch

    out = tmp_path / "p.json"
    argv = ["profile", "--layers", "B2", "--ops", "norm", "--versions", "all", "--batch", "2",
            "--blocks", "2", "--compiler", "none", "--json", str(out)]
    assert main(argv) == 0
    rows = load_valid(out, PROFILE_SCHEMA)["rows"]
    g = suites.SUITES["small-cnn"][-1].geometry(2)
    expected = []
    for kind in suites.NORM_KINDS:
        for p in suites.NORM_PASSES:
            floor = round(suites.floor_seconds(suites.norm_cost(g, kind, p), H100) * 1e6, 3)
            for v in launch.VERSIONS[f"batch_norm_{p}"]:
                expected += [("B2", f"{kind}_{p}", v, k, floor) for k in BN_KERNELS[v, p]]
    assert [(r["layer"], r["op"], r["version"], r["kernel"], r["floor_us"]) for r in rows] == expected
    assert all(r["blocks_sampled"] <= 2 for r in rows)
    assert "batch_norm_relu_backward" in capsys.readouterr().out


def test_profile_batch_norm_predicts_a_time_and_writes_valid_json(tmp_path, capsys):
    """With the compiler: a predicted time for every batch-norm kernel of the default version, and
    rows that follow the schema (loads_before_multiply is a yes/no fact)."""
    from gpuconv.backends import launch

    _needs_sass()
    out = tmp_path / "p.json"
    assert main(["profile", "--layers", "B2", "--ops", "batch_norm_relu_backward", "--batch", "2",
                 "--blocks", "1", "--json", str(out)]) == 0
    rows = load_valid(out, PROFILE_SCHEMA)["rows"]
    default = launch.DEFAULT_VERSIONS["batch_norm_backward"]
    assert [r["kernel"] for r in rows] == BN_KERNELS[default, "backward"]
    assert all(r["predicted_us"] >= LAUNCH_LATENCY_S * 1e6 for r in rows)
    assert any(isinstance(r["loads_before_multiply"], bool) for r in rows)
    capsys.readouterr()


@pytest.mark.parametrize(
    "argv,word",
    [
        (["--layers", "Z9"], "layers"),
        (["--gpu", "v100"], "gpu"),
        (["--ops", "convolve"], "ops"),
        (["--batch", "0"], "batch"),
        (["--blocks", "0"], "blocks"),
        # layers none of whose ops is asked for: an empty table would pass for a profile
        (["--ops", "norm", "--layers", "C1"], "layers C1: none of the ops norm runs on them"),
        (["--ops", "max_pool2d_forward", "--layers", "P1,P4"], "layers P4: none of the ops"),
    ],
)
def test_profile_command_refuses_bad_input(argv, word, capsys):
    assert main(["profile", "--compiler", "none"] + argv) == 2
    assert word in capsys.readouterr().err


def test_the_ops_each_layer_runs_are_known_without_building_them():
    import numpy as np

    from gpuconv.tools import profile
    for case in suites.get_suite("small-cnn"):
        assert profile._case_ops(case) == tuple(profile._runs(case, 2, np.random.default_rng(0))), case.id


def test_predicted_beside_measured():
    from gpuconv.tools.profile import compare_with_bench, format_comparison

    prof = [
        {"layer": "C2", "op": "conv2d_backward_filter", "version": 2, "predicted_us": 30.0},
        {"layer": "C2", "op": "conv2d_backward_filter", "version": 2, "predicted_us": 10.0},
        {"layer": "C3", "op": "conv2d_forward", "version": 2, "predicted_us": None},
    ]
    bench = [
        {"layer": "C2", "op": "conv2d_backward_filter", "version": "v2", "kind": "gpuconv", "us": 20.0},
        {"layer": "C2", "op": "conv2d_backward_filter", "version": "torch", "kind": "baseline", "us": 5.0},
        {"layer": "C3", "op": "conv2d_forward", "version": "v2", "kind": "gpuconv", "us": 7.0},
    ]
    rows = compare_with_bench(prof, bench)
    assert rows == [
        {
            "layer": "C2",
            "op": "conv2d_backward_filter",
            "version": "v2",
            "predicted_us": 40.0,
            "measured_us": 20.0,
            "ratio": 2.0,
        }
    ]
    assert "median 2.00, worst 2.00 over 1 entries" in format_comparison(rows)
