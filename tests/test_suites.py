"""FLOP and byte counts, floors and ratios of the benchmark suite, against hand-computed cases."""
import pytest

from gpuconv.tools import suites
from gpuconv.tools.suites import (
    Cost,
    conv_cost,
    floor_seconds,
    hardware_for,
    multiple_of_floor,
    norm_cost,
    pool_cost,
)

H100 = suites.HARDWARE["H100"]
H200 = suites.HARDWARE["H200"]


def case(case_id):
    return {c.id: c for c in suites.get_suite("small-cnn")}[case_id]


def test_suite_lists_every_perf_entry_in_order():
    ids = [c.id for c in suites.get_suite("small-cnn")]
    assert ids == ["L1", "L2", "C1", "C2", "C3", "C4", "C5", "C6", "P1", "P2", "P3", "P4", "B1", "B2"]


def test_l1_forward_counts_by_hand():
    g = case("L1").geometry(128)
    assert (g.P, g.Q) == (28, 28)
    cost = conv_cost(g, "forward")
    assert cost.flops == 2 * 128 * 6 * 1 * 25 * 28 * 28 == 30_105_600
    # x 128*1*28*28, w 6*1*5*5, bias 6, y 128*6*28*28, four bytes each
    assert cost.bytes == (100_352 + 150 + 6 + 602_112) * 4 == 2_810_480
    # bandwidth-bound: 2_810_480 B / 3.0e12 B/s
    assert floor_seconds(cost, H100) == pytest.approx(9.3682667e-7, rel=1e-7)
    assert floor_seconds(cost, H100, "tf32") == pytest.approx(9.3682667e-7, rel=1e-7)
    assert floor_seconds(cost, H200) == pytest.approx(2_810_480 / 4.3e12, rel=1e-12)


def test_backward_passes_cost_the_same_flops_and_count_their_own_tensors():
    g = case("L1").geometry(128)
    bd, bf = conv_cost(g, "backward_data"), conv_cost(g, "backward_filter")
    assert bd.flops == bf.flops == 30_105_600
    assert bd.bytes == (602_112 + 150 + 100_352) * 4   # dy + w + dx
    assert bf.bytes == (602_112 + 100_352 + 150) * 4   # dy + x + dw


def test_c2_is_compute_bound_in_fp32_and_bandwidth_bound_in_tf32():
    cost = conv_cost(case("C2").geometry(128), "forward")
    flops = 2 * 128 * 16 * 16 * 9 * 32 * 32
    assert cost.flops == flops == 603_979_776
    elems = 128 * 16 * 1024 * 2 + 16 * 16 * 9 + 16
    assert cost.bytes == elems * 4
    assert floor_seconds(cost, H100) == pytest.approx(flops / 66.9e12, rel=1e-12)
    assert floor_seconds(cost, H100, "tf32") == pytest.approx(elems * 4 / 3.0e12, rel=1e-12)


def test_strided_layer_c3_output_size_and_flops():
    g = case("C3").geometry(128)
    assert (g.P, g.Q) == (16, 16)
    assert conv_cost(g, "forward").flops == 2 * 128 * 32 * 16 * 9 * 16 * 16


@pytest.mark.parametrize("case_id,fp32_us,tf32_us", [
    ("L1", 0.94, 0.94), ("L2", 0.92, 0.48), ("C1", 3.3, 3.3), ("C2", 9.0, 5.6), ("C3", 4.5, 4.2),
    ("C4", 9.0, 2.8), ("C5", 9.0, 1.5), ("C6", 72, 17)])
def test_conv_floors_match_the_perf_table(case_id, fp32_us, tf32_us):
    cost = conv_cost(case(case_id).geometry(128), "forward")
    # the table rounds to two significant digits
    assert floor_seconds(cost, H100) * 1e6 == pytest.approx(fp32_us, rel=0.04)
    assert floor_seconds(cost, H100, "tf32") * 1e6 == pytest.approx(tf32_us, rel=0.04)


def test_max_pool_p1_counts_by_hand():
    g = case("P1").geometry(128)
    assert (g.P, g.Q) == (14, 14)
    fwd = pool_cost(g, "max", "forward")
    x, y = 128 * 6 * 28 * 28, 128 * 6 * 14 * 14
    assert fwd.flops == y * 4
    assert fwd.bytes == x * 4 + y * 4 + y * 4 == 3_612_672   # x, y and int32 indices
    assert floor_seconds(fwd, H100) * 1e6 == pytest.approx(1.2, rel=0.01)
    bwd = pool_cost(g, "max", "backward")
    assert bwd == Cost(0, y * 4 + y * 4 + x * 4)


def test_avg_and_l2_pool_bytes():
    g = case("P2").geometry(128)
    x, y = 128 * 64 * 32 * 32, 128 * 64 * 16 * 16
    assert pool_cost(g, "avg", "forward") == Cost(y * 4, (x + y) * 4)
    assert pool_cost(g, "avg", "backward") == Cost(y * 4, (x + y) * 4)
    assert pool_cost(g, "l2", "forward") == Cost(y * 8, (x + y) * 4)
    assert pool_cost(g, "l2", "backward") == Cost(y * 8, (2 * x + 2 * y) * 4)


@pytest.mark.parametrize("case_id,kind,us", [("P2", "max", 17), ("P3", "max", 8.4), ("P4", "avg", 0.7)])
def test_pool_floors_match_the_perf_table(case_id, kind, us):
    cost = pool_cost(case(case_id).geometry(128), kind, "forward")
    assert floor_seconds(cost, H100) * 1e6 == pytest.approx(us, rel=0.04)


def test_global_average_pool_p4_has_one_output_per_channel():
    g = case("P4").geometry(128)
    assert (g.P, g.Q) == (1, 1)
    assert pool_cost(g, "avg", "forward") == Cost(128 * 64 * 64, (128 * 64 * 64 + 128 * 64) * 4)


def test_batch_norm_b1_counts_by_hand():
    g = case("B1").geometry(128)
    assert (g.N, g.C, g.S) == (128, 16, 32 * 32)
    x = 128 * 16 * 32 * 32          # 2_097_152 values
    # forward: x read, y written; per channel weight, bias read, running mean and var read and
    # written, saved mean and 1/std written (8 per channel)
    fwd = norm_cost(g, "batch_norm", "forward")
    assert fwd == Cost(6 * x, (2 * x + 8 * 16) * 4) == Cost(12_582_912, 16_777_728)
    assert norm_cost(g, "batch_norm_relu", "forward") == Cost(7 * x, 16_777_728)
    # backward: dy, x read, dx written; weight, saved mean, 1/std read, dweight, dbias written
    assert norm_cost(g, "batch_norm", "backward") == Cost(8 * x, (3 * x + 5 * 16) * 4) == Cost(
        16_777_216, 25_166_144)
    # fused ReLU: the forward's output y is read too, for the mask
    assert norm_cost(g, "batch_norm_relu", "backward") == Cost(8 * x, (4 * x + 5 * 16) * 4)
    # bandwidth-bound: 16_777_728 B / 3.0e12 B/s
    assert floor_seconds(fwd, H100) * 1e6 == pytest.approx(5.592576, rel=1e-6)


def test_batch_norm_b2_counts_by_hand():
    g = case("B2").geometry(128)
    x = 128 * 64 * 8 * 8            # 524_288 values
    assert norm_cost(g, "batch_norm", "forward").bytes == (2 * x + 8 * 64) * 4 == 4_196_352
    assert norm_cost(g, "batch_norm_relu", "backward").bytes == (4 * x + 5 * 64) * 4 == 8_389_888
    assert norm_cost(g, "batch_norm", "forward", itemsize=8).bytes == 2 * 4_196_352


def test_float64_doubles_the_bytes_not_the_flops():
    g = case("C4").geometry(8)
    c32, c64 = conv_cost(g, "forward", itemsize=4), conv_cost(g, "forward", itemsize=8)
    assert c64.flops == c32.flops and c64.bytes == 2 * c32.bytes


def test_hardware_is_picked_by_gpu_name_with_h100_default():
    assert hardware_for("NVIDIA H200") == (H200, True)
    assert hardware_for("NVIDIA H100 80GB HBM3") == (H100, True)
    assert hardware_for("NVIDIA A100-SXM4-40GB") == (H100, False)
    assert hardware_for(None) == (H100, False)


def test_multiple_of_floor():
    assert multiple_of_floor(3e-6, 1.5e-6) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="floor"):
        multiple_of_floor(1e-6, 0.0)


def test_bad_arguments_are_refused_with_their_name():
    g = case("L1").geometry(2)
    with pytest.raises(ValueError, match="pass_name"):
        conv_cost(g, "sideways")
    with pytest.raises(ValueError, match="kind"):
        pool_cost(case("P1").geometry(2), "median", "forward")
    with pytest.raises(ValueError, match="kind"):
        norm_cost(case("B2").geometry(2), "layer_norm", "forward")
    with pytest.raises(ValueError, match="pass_name"):
        norm_cost(case("B2").geometry(2), "batch_norm", "forward_backward")
    with pytest.raises(ValueError, match="math_mode"):
        floor_seconds(Cost(1, 1), H100, "fp16")
    with pytest.raises(ValueError, match="suite"):
        suites.get_suite("large")
