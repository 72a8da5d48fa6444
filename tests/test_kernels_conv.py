"""Every conv2d kernel version (forward, backward-data, backward-filter, bias) against the NumPy
reference, on the CPU emulator and (marked ``gpu``) through CuPy.

float32 kernels are compared with a float64 reference by max|out - ref| / max|ref| <= 1e-5,
float64 kernels by <= 1e-12, TF32 tensor-core versions (launch.conv.PRECISION) by <= 1e-3; outputs
are NaN-poisoned before each launch, so an element a kernel forgets to write fails. Geometries are
tiny (the emulator runs about a million CUDA threads per second) but cover odd sizes, stride 1-3,
dilation 1-2, groups 1/2/3/depthwise, 'same' and asymmetric padding, 1x1 kernels, tails smaller
than a tile and more channels than one tile. The TF32 MMA instruction, which only a GPU has, runs
on the emulator as a shuffle twin; TestTf32Twin checks its fragment layout and rounding.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, NamedTuple

import numpy as np
import pytest
from conftest import assert_close, assert_deterministic, recording_launches, sample

from gpuconv import emulator, tolerances
from gpuconv.backends import launch
from gpuconv.backends.launch import conv
from gpuconv.backends.numpy_backend import NumpyBackend
from gpuconv.geometry import ConvGeometry, conv2d_geometry

N_RANDOM = 56


class Case(NamedTuple):
    g: ConvGeometry
    x: np.ndarray   # float64
    w: np.ndarray
    b: np.ndarray
    dy: np.ndarray
    y_ref: np.ndarray
    dx_ref: np.ndarray
    dw_ref: np.ndarray
    db_ref: np.ndarray

    def __str__(self) -> str:
        return str(self.g)


def _random_geometry(rng: np.random.Generator) -> ConvGeometry:
    while True:
        groups = int(rng.choice([1, 1, 1, 2, 3, 0]))  # 0: depthwise
        if groups == 0:
            cg, groups = 1, int(rng.integers(2, 6))
            kg = int(rng.choice([1, 2]))
        else:
            cg = int(rng.integers(1, 6))
            kg = int(rng.choice([1, 2, 3, 5, 7, 17, 19, 33]))
        C, K = cg * groups, kg * groups
        R, S = (int(rng.choice([1, 1, 2, 3, 3, 5])) for _ in range(2))
        if rng.random() < 0.15:
            R = S = 1
        stride = (int(rng.integers(1, 4)), int(rng.integers(1, 4))) if rng.random() < 0.5 \
            else int(rng.integers(1, 3))
        dilation = (int(rng.integers(1, 3)), int(rng.integers(1, 3))) if rng.random() < 0.5 \
            else int(rng.integers(1, 3))
        u = rng.random()
        if u < 0.25:
            padding = "same"
        elif u < 0.35:
            padding = "valid"
        elif u < 0.6:
            padding = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
        else:
            padding = int(rng.integers(0, 3))
        N = int(rng.integers(1, 3))
        H, W = int(rng.integers(1, 12)), int(rng.integers(1, 12))
        try:
            g = conv2d_geometry((N, C, H, W), (K, cg, R, S), stride, padding, dilation, groups)
        except ValueError:
            continue
        if g.P >= 1 and g.Q >= 1 and g.N * g.K * g.P * g.Q <= 3000 and g.N * g.C * g.H * g.W <= 3000:
            return g


# Hand-picked geometries: tile boundaries and the split/chunk paths.
_FIXED = [
    # (x shape, w shape, stride, padding, dilation, groups)
    ((2, 3, 13, 12), (70, 3, 3, 3), 1, 1, 1, 1),        # K > 64: two column tiles; M > 64 rows
    ((2, 17, 12, 11), (4, 17, 1, 1), 1, 0, 1, 1),       # 1x1, reduction of 17 (> one step)
    ((1, 40, 5, 5), (6, 40, 3, 3), 1, "same", 1, 1),    # reduction 360: many steps
    ((2, 6, 8, 8), (6, 1, 3, 3), 2, "same", 1, 6),      # depthwise, stride 2, asymmetric 'same'
    ((1, 4, 7, 9), (6, 2, 2, 4), (2, 3), "same", (2, 1), 2),   # even kernel 'same': extra bottom/right
    ((2, 2, 17, 17), (3, 2, 3, 3), 1, 1, 1, 1),         # N*P*Q = 578 > 256: several filter splits
    ((1, 70, 3, 3), (2, 70, 1, 1), 1, 0, 1, 1),         # Cg = 70 > 64: backward-data column tiles
    ((2, 1, 16, 16), (5, 1, 5, 5), 1, 2, 1, 1),         # LeNet-style stem
    ((2, 9, 6, 6), (40, 9, 2, 2), 1, 0, 1, 1),          # filter v3: a 64 x 64 tile of one slice
]


def _make_case(g: ConvGeometry, rng: np.random.Generator) -> Case:
    ref = NumpyBackend()
    x = rng.standard_normal(g.x_shape)
    w = rng.standard_normal(g.w_shape)
    b = rng.standard_normal((g.K,))
    dy = rng.standard_normal(g.y_shape)
    y = ref.conv2d(x, w, b, g)
    dx, dw, db = ref.conv2d_backward(dy, x, w, g)
    return Case(g, x, w, b, dy, y, dx, dw, db)


def _cases() -> List[Case]:
    rng = np.random.default_rng(20240611)
    out = [_make_case(conv2d_geometry(xs, ws, st, pd, dl, gr), rng) for xs, ws, st, pd, dl, gr in _FIXED]
    out += sample([_make_case(_random_geometry(rng), rng) for _ in range(N_RANDOM)], 4)
    return out


CASES = _cases()


# ---- the comparisons, shared by the emulator and the GPU tests -----------------------------------

def _dev(be, a: np.ndarray, dtype):
    return be.asarray(np.ascontiguousarray(a, dtype=dtype))


def run_forward(be, version: int, dtype, cases=CASES) -> float:
    """Checks every case; returns the largest relative error seen."""
    precision = launch.precision("conv2d_forward", version)
    worst = 0.0
    for case in cases:
        x, w, b = (_dev(be, a, dtype) for a in (case.x, case.w, case.b))
        y = be.to_numpy(conv.forward(be, x, w, b, case.g, version=version))
        worst = max(worst, assert_close(y, case.y_ref, dtype, precision=precision,
                                        what=f"forward v{version} {case}"))
    case = cases[0]  # no bias
    y = be.to_numpy(conv.forward(be, _dev(be, case.x, dtype), _dev(be, case.w, dtype), None, case.g,
                                 version=version))
    ref = case.y_ref - case.b[None, :, None, None]
    return max(worst, assert_close(y, ref, dtype, precision=precision,
                                   what=f"forward v{version} without bias {case}"))


def _tf32_backward(op: str, case: Case):
    """(reference from the TF32-rounded float32 operands, the error bound of TF32 operands) of a TF32
    backward version on ``case``, both in float64. The kernel must match the first to FP32's
    tolerance (its products are exact, its sums fp32). Against the exact reference each product
    carries at most 2 * 2^-11 relative error, so an output errs by at most 2^-10 * sum |a| |b| over its
    terms: the bound, scaled by max|exact reference| as scaled_error is. It exceeds TF32_RTOL where a
    short reduction cancels (3 terms of mixed sign: measured 1.0045e-3 on a case of CASES, within its
    bound 2.8e-3), which TF32_RTOL's model of long reductions does not cover."""
    ref = NumpyBackend()
    need = (op == "conv2d_backward_data", op == "conv2d_backward_filter", False)
    i = need.index(True)
    f32 = [np.asarray(a, np.float32) for a in (case.dy, case.x, case.w)]
    rounded = ref.conv2d_backward(*(_tf32(a).astype(np.float64) for a in f32), case.g, *need)[i]
    magnitude = ref.conv2d_backward(*(np.abs(a).astype(np.float64) for a in f32), case.g, *need)[i]
    scale = np.abs((case.dx_ref, case.dw_ref)[i]).max()  # 0 where no input cell gets a gradient
    return rounded, (2.0 ** -10 * magnitude.max() / scale if scale > 0 else 0.0) + tolerances.FLOAT32_RTOL


def run_backward(be, op: str, version: int, dtype, cases=CASES) -> float:
    """Checks every case; returns the largest relative error seen against the exact reference. A
    TF32 version is held to the TF32-operand reference at FP32's tolerance and to its error bound
    against the exact reference (``_tf32_backward``)."""
    precision, worst = launch.precision(op, version), 0.0
    for case in cases:
        dy = _dev(be, case.dy, dtype)
        with be.use_versions({op: version}):
            if op == "conv2d_backward_data":
                out, ref = conv.backward_data(be, dy, _dev(be, case.w, dtype), case.g), case.dx_ref
            elif op == "conv2d_backward_filter":
                x = _dev(be, case.x, dtype)
                out, ref = conv.backward_filter(be, dy, x, case.g), case.dw_ref
                # With the bias gradient: one launch computes both in version 3.
                dw, db = conv.backward_filter(be, dy, x, case.g, bias=True)
                what = f"{op} v{version} with bias"
                dw_ref = _tf32_backward(op, case)[0] if precision == "tf32" else ref  # TF32 operands
                assert_close(be.to_numpy(dw), dw_ref, dtype, what=f"{what}, dw {case}")
                assert_close(be.to_numpy(db), case.db_ref, dtype, what=f"{what}, db {case}")
            else:
                out, ref = conv.backward_bias(be, dy, case.g), case.db_ref
        what = f"{op} v{version} {case}"
        if precision == "tf32":
            rounded, bound = _tf32_backward(op, case)
            assert_close(be.to_numpy(out), rounded, np.float32, what=f"{what} against TF32 operands")
            worst = max(worst, assert_close(be.to_numpy(out), ref, rtol=bound, what=f"{what}, TF32 bound"))
        else:
            worst = max(worst, assert_close(be.to_numpy(out), ref, dtype, what=what))
    return worst


def run_determinism(be, dtype, cases) -> None:
    """Every backward version gives the same bits twice (the second time in another thread order)."""
    for case in cases:
        dy, x, w = (_dev(be, a, dtype) for a in (case.dy, case.x, case.w))
        for op, versions in conv.VERSIONS.items():
            if op == "conv2d_forward":
                continue
            needs = tuple(op == o for o in ("conv2d_backward_data", "conv2d_backward_filter",
                                            "conv2d_backward_bias"))
            for v in versions:
                with be.use_versions({op: v}):
                    assert_deterministic(be, conv.backward, dy, x, w, case.g, *needs,
                                         what=f"{op} v{v} {case}")
                    if op == "conv2d_backward_filter":  # dw and db together
                        assert_deterministic(be, conv.backward, dy, x, w, case.g, False, True, True,
                                             what=f"{op} v{v} with bias {case}")


DTYPES = [np.float32, np.float64]
# (op, version, dtype) of every backward kernel: float32-only versions (TF32) skip float64.
BACKWARD = [pytest.param(op, v, dt, id=f"{op}-v{v}-{'f32' if dt == np.float32 else 'f64'}")
            for op in ("conv2d_backward_data", "conv2d_backward_filter", "conv2d_backward_bias")
            for v in conv.VERSIONS[op] for dt in DTYPES
            if dt == np.float32 or (op, v) not in conv.FLOAT32_ONLY]
TF32_BACKWARD = [(op, v) for op, v in conv.TF32_VERSIONS if op != "conv2d_forward"]
# (version, dtype) of every forward kernel: float32-only versions (TF32) skip float64.
FORWARD = [pytest.param(v, dt, id=f"v{v}-{'f32' if dt == np.float32 else 'f64'}")
           for v in conv.VERSIONS["conv2d_forward"] for dt in DTYPES
           if dt == np.float32 or ("conv2d_forward", v) not in conv.FLOAT32_ONLY]
TF32_FORWARD = [v for v in conv.VERSIONS["conv2d_forward"]
                if launch.precision("conv2d_forward", v) == "tf32"]


# ---- emulator ----------------------------------------------------------------------------------

class TestEmulator:
    @pytest.mark.parametrize("version,dtype", FORWARD)
    def test_forward_matches_reference(self, emu, version, dtype):
        # The emulator's TF32 twin spends 32 warp shuffles on each MMA: in the AddressSanitizer tier
        # (where a shuffle costs far more) it runs on the first hand-picked case only.
        worst = run_forward(emu, version, dtype, cases=sample(CASES, 1) if version in TF32_FORWARD else CASES)
        if launch.precision("conv2d_forward", version) == "tf32":
            # The emulated TF32 rounding must show: an FP32 kernel stays below 1e-5 on these cases.
            assert worst > tolerances.FLOAT32_RTOL, f"v{version}: TF32 error {worst:.3g} not above FP32's"

    @pytest.mark.parametrize("version", TF32_FORWARD)
    def test_tf32_forward_refuses_float64(self, emu, version):
        case = CASES[1]
        with pytest.raises(ValueError, match="float32"):
            conv.forward(emu, _dev(emu, case.x, np.float64), _dev(emu, case.w, np.float64),
                         _dev(emu, case.b, np.float64), case.g, version=version)

    @pytest.mark.parametrize("op,version,dtype", BACKWARD)
    def test_backward_matches_reference(self, emu, op, version, dtype):
        tf32 = launch.precision(op, version) == "tf32"
        worst = run_backward(emu, op, version, dtype, cases=sample(CASES, 1) if tf32 else CASES)
        if tf32:  # the emulated TF32 rounding must show
            assert worst > tolerances.FLOAT32_RTOL, f"{op} v{version}: TF32 error {worst:.3g} not above 1e-5"

    @pytest.mark.parametrize("op,version", TF32_BACKWARD)
    def test_tf32_backward_within_the_tf32_tolerance_on_a_layer(self, emu, op, version):
        """On a layer with reductions of hundreds of terms (as every real layer has), the TF32
        versions are held to gpuconv.tolerances.TF32_RTOL against the float64 reference."""
        rng = np.random.default_rng(5)
        case = _make_case(conv2d_geometry((2, 16, 8, 8), (32, 16, 3, 3), 1, 1), rng)
        worst = run_backward(emu, op, version, np.float32, [case])
        assert tolerances.FLOAT32_RTOL < worst <= tolerances.TF32_RTOL, f"{op} v{version}: {worst:.3g}"

    @pytest.mark.parametrize("op,version", TF32_BACKWARD)
    def test_tf32_backward_refuses_float64(self, emu, op, version):
        case = CASES[1]
        dy, x, w = (_dev(emu, a, np.float64) for a in (case.dy, case.x, case.w))
        with pytest.raises(ValueError, match=f"{op} v{version} .*needs float32"):
            if op == "conv2d_backward_data":
                conv.backward_data(emu, dy, w, case.g, version=version)
            else:
                conv.backward_filter(emu, dy, x, case.g, version=version)

    def test_backward_is_bitwise_deterministic(self, emu):
        # CASES[4]: strides (2, 3), six phases of backward-data v3.
        run_determinism(emu, np.float32, [CASES[0], CASES[4], CASES[5]])

    @pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
    def test_backward_data_v3_tap_mask_and_window_variants(self, emu, dtype):
        """v3 tests a phase's taps against a 32-bit mask per row when no phase has more than 32 taps,
        and against the window bounds otherwise; CASES never exceed 25 taps, these reach 36 and 49
        (stride 1, and stride 2 with dilation 2: every tap in one phase) or stay at 32."""
        rng = np.random.default_rng(17)
        for xs, ws, st, pd, dl, mask in (((2, 3, 9, 8), (4, 3, 6, 6), 1, 2, 1, "false"),
                                         ((1, 2, 19, 18), (3, 2, 7, 7), 2, 5, 2, "false"),
                                         ((1, 2, 12, 13), (5, 2, 4, 8), 1, (1, 3), 1, "true")):
            case = _make_case(conv2d_geometry(xs, ws, st, pd, dl), rng)
            name, _, _ = conv._backward_data_plan(case.g, 3, "float")
            assert name.endswith(f", {mask}>"), (name, case.g)
            dy, w = _dev(emu, case.dy, dtype), _dev(emu, case.w, dtype)
            dx = conv.backward_data(emu, dy, w, case.g, version=3)
            assert_close(emu.to_numpy(dx), case.dx_ref, dtype, what=f"v3 {name} {case}")

    @pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
    def test_backward_data_phases_folded_into_a_smaller_grid_z(self, emu, monkeypatch, dtype):
        """v3 walks the stride phases over blockIdx.z; with fewer z blocks than phases (a grid
        limit, 65535, reached only by strides whose product exceeds it) each block takes several."""
        monkeypatch.setattr(conv, "MAX_GRID_Z", 2)
        conv._backward_data_plan.cache_clear()
        try:
            for case in (CASES[3], CASES[4]):  # 4 and 6 phases
                _, grid, _ = conv._backward_data_plan(case.g, 3, "float")
                assert grid[2] == 2
                dx = conv.backward_data(emu, _dev(emu, case.dy, dtype), _dev(emu, case.w, dtype), case.g,
                                        version=3)
                assert_close(emu.to_numpy(dx), case.dx_ref, dtype, what=f"v3, grid z 2, {case}")
        finally:
            conv._backward_data_plan.cache_clear()

    def test_default_versions_are_the_tiled_kernels(self, emu):
        assert conv.DEFAULT_VERSIONS == {"conv2d_forward": 2, "conv2d_backward_data": 3,
                                         "conv2d_backward_filter": 3, "conv2d_backward_bias": 2}
        case = CASES[1]
        y = emu.conv2d(_dev(emu, case.x, np.float32), _dev(emu, case.w, np.float32),
                       _dev(emu, case.b, np.float32), case.g)
        assert_close(emu.to_numpy(y), case.y_ref, np.float32, what=f"conv2d {case}")
        grads = emu.conv2d_backward(*(_dev(emu, a, np.float32) for a in (case.dy, case.x, case.w)), case.g)
        for out, ref, what in zip(grads, (case.dx_ref, case.dw_ref, case.db_ref), ("dx", "dw", "db")):
            assert_close(emu.to_numpy(out), ref, np.float32, what=f"{what} {case}")

    def test_split_paths_are_exercised(self):
        g = CASES[5].g
        assert conv.filter_splits(g, np.float32)[1] > 1
        # Filter v3: split (second-stage sum) and unsplit (straight to dw, db), in both dtypes; tiles
        # of one slice (64 x 64), of several (16 x 16: 16 slices) and a tile row tail (K = 70).
        for dtype in DTYPES:
            assert conv.filter_v3_plan(g, dtype, True)[2] > 1
            assert conv.filter_v3_plan(CASES[2].g, dtype, True)[2] == 1
        plans = {conv.filter_v3_plan(c.g, np.float32, True)[:2] for c in CASES}
        assert {(16, 16), (64, 64), (16, 32)} <= plans, plans

        big = conv2d_geometry((2, 1, 50, 50), (3, 1, 1, 1))
        assert conv.bias_chunks(big)[0] > 1

    def test_backward_filter_v3_gives_db_without_the_bias_kernels(self, emu):
        case = CASES[5]
        dy, x, w = (_dev(emu, a, np.float32) for a in (case.dy, case.x, case.w))
        with emu.use_versions({"conv2d_backward_filter": 3}), recording_launches(emu) as launches:
            _, dw, db = conv.backward(emu, dy, x, w, case.g, need_dx=False)
        assert [fn.name.split("<")[0] for fn, *_ in launches] == [
            "conv2d_backward_filter_v3", "conv2d_backward_filter_v3_sum"]
        assert_close(emu.to_numpy(dw), case.dw_ref, np.float32, what=f"dw {case}")
        assert_close(emu.to_numpy(db), case.db_ref, np.float32, what=f"db {case}")

    @pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
    def test_bias_chunked_reduction(self, emu, dtype):
        rng = np.random.default_rng(7)
        g = conv2d_geometry((2, 1, 50, 50), (3, 1, 1, 1))
        dy = rng.standard_normal(g.y_shape)
        for v in (1, 2):
            with emu.use_versions({"conv2d_backward_bias": v}):
                db = emu.to_numpy(conv.backward_bias(emu, _dev(emu, dy, dtype), g))
            assert_close(db, dy.sum(axis=(0, 2, 3)), dtype, what=f"bias v{v} chunked {g}")


class TestThreadOrders:
    """Kernels with shared memory or shuffles give the same result in every thread order."""

    @pytest.mark.parametrize("op,version", [("conv2d_forward", 2), ("conv2d_forward", 3),
                                            ("conv2d_forward", 4), ("conv2d_backward_data", 2),
                                            ("conv2d_backward_data", 3), ("conv2d_backward_data", 4),
                                            ("conv2d_backward_filter", 2), ("conv2d_backward_filter", 3),
                                            ("conv2d_backward_filter", 4),
                                            ("conv2d_backward_bias", 2)])
    def test_orders_agree(self, emu, op, version):
        case = CASES[5]
        dy, x, w, b = (_dev(emu, a, np.float32) for a in (case.dy, case.x, case.w, case.b))
        calls = {
            "conv2d_forward": lambda: conv.forward(emu, x, w, b, case.g, version=version),
            "conv2d_backward_data": lambda: conv.backward_data(emu, dy, w, case.g, version=version),
            "conv2d_backward_filter": lambda: conv.backward_filter(emu, dy, x, case.g, version=version,
                                                                   bias=True),
            "conv2d_backward_bias": lambda: conv.backward_bias(emu, dy, case.g, version=version),
        }
        with recording_launches(emu) as launches:
            calls[op]()
        assert launches
        for fn, grid, block, args, shared_mem in launches:
            emulator.check_orders(fn, grid, block, args, shared_mem=shared_mem)

    def test_backward_data_phases_orders_agree(self, emu):
        """v3 on strides (2, 3): six phases over blockIdx.z, taps of unequal counts per phase."""
        case = CASES[4]
        dy, w = (_dev(emu, a, np.float32) for a in (case.dy, case.w))
        with recording_launches(emu) as launches:
            conv.backward_data(emu, dy, w, case.g, version=3)
        (fn, grid, block, args, shared_mem), = launches
        assert grid[2] == case.g.stride_h * case.g.stride_w
        emulator.check_orders(fn, grid, block, args, shared_mem=shared_mem)


# ---- forward v2's wide tile (8 x 8 outputs per thread, 256 x 64 block tile) ---------------------

WIDE_NAME = f"conv2d_forward_v2<float, {conv.WIDE_TILE[0]}, {conv.WIDE_TILE[1]}>"


def _wide_cases() -> List[Case]:
    """Layers with more than 32 output channels per group (BN = 64): the wide tile's row halves,
    column halves, tails of both, a second column tile, groups, strides, dilation, and image
    sizes with P*Q % 4 != 0 (the scalar epilogue) and == 0 (the vector one)."""
    rng = np.random.default_rng(20261130)
    shapes = [
        ((2, 2, 20, 20), (64, 2, 1, 1), 1, 0, 1, 1),        # M = 800: three full 256-row tiles + tail
        ((1, 5, 7, 9), (40, 5, 3, 3), 1, 1, 1, 1),          # 40 columns (a column tail), P*Q = 63
        ((2, 4, 9, 9), (70, 2, 3, 3), 2, "same", 2, 2),     # groups 2, 35 per group, stride 2, dil 2
        ((1, 3, 12, 11), (129, 3, 2, 3), (1, 2), 1, 1, 1),  # three column tiles, the last of 1
    ]
    return [CASES[0]] + [_make_case(conv2d_geometry(*a), rng) for a in shapes]


WIDE_CASES = _wide_cases()


class TestWideTile:
    """The wide tile is taken for large float layers only; forcing it (no minimum block count)
    runs it on small ones."""

    @pytest.fixture
    def force_wide(self, monkeypatch):
        monkeypatch.setattr(conv, "WIDE_TILE_MIN_BLOCKS", 0)

    def test_plan_takes_it_for_large_wide_float_layers_only(self):
        def name(x_shape, w_shape, t="float"):
            return conv._forward_plan(conv2d_geometry(x_shape, w_shape, 1, 1), 2, t)[0]
        assert name((128, 32, 32, 32), (64, 32, 3, 3)) == WIDE_NAME      # 512 blocks of 256 rows
        assert name((128, 64, 8, 8), (64, 64, 3, 3)) != WIDE_NAME        # 32 blocks: too few
        assert name((128, 16, 32, 32), (32, 16, 3, 3)) != WIDE_NAME      # 32 columns: BN 32
        assert name((128, 32, 32, 32), (64, 32, 3, 3), "double") != WIDE_NAME

    def test_forward_matches_reference(self, emu, force_wide):
        with recording_launches(emu) as launches:
            run_forward(emu, 2, np.float32, WIDE_CASES)
        assert {fn.name for fn, *_ in launches} == {WIDE_NAME}

    def test_orders_agree(self, emu, force_wide):
        case = WIDE_CASES[1]
        with recording_launches(emu) as launches:
            x, w, b = (_dev(emu, a, np.float32) for a in (case.x, case.w, case.b))
            conv.forward(emu, x, w, b, case.g, version=2)
        (fn, grid, block, args, shared_mem), = launches
        assert fn.name == WIDE_NAME
        emulator.check_orders(fn, grid, block, args, shared_mem=shared_mem)


# ---- the TF32 MMA twin (GPU-only instruction, portable version on the emulator) -------------------

MMA_KERNELS = Path(__file__).parent / "emu_kernels" / "mma_tf32.cu"


def _tf32(x: np.ndarray) -> np.ndarray:
    """float32 ``x`` rounded to TF32 as cvt.rna.tf32.f32 does (nearest, ties away from zero, 10
    explicit mantissa bits), computed from the definition in float64; NaN and infinity pass through."""
    with np.errstate(invalid="ignore"):            # signalling NaN bit patterns
        x64 = np.asarray(x, np.float32).astype(np.float64)
    out = x64.copy()
    finite = np.isfinite(x64) & (x64 != 0)
    mag = np.abs(x64[finite])
    _, e = np.frexp(mag)                            # mag = m * 2^e, m in [0.5, 1)
    ulp = np.ldexp(1.0, np.maximum(e - 1, -126) - 10)
    rounded = np.floor(mag / ulp + 0.5) * ulp       # exact in float64; halfway goes up in magnitude
    out[finite] = np.sign(x64[finite]) * rounded
    with np.errstate(over="ignore"):
        return out.astype(np.float32)               # past the largest TF32 number: infinity


def _tf32_truncated(x: np.ndarray) -> np.ndarray:
    """float32 ``x`` with its low 13 mantissa bits cleared: how the tensor core reads an operand
    that was not rounded to TF32 first (NaN kept a NaN)."""
    x = np.asarray(x, np.float32)
    out = (x.view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)
    return np.where(np.isnan(x), x, out)


def _mma_operands(seed: int):
    rng = np.random.default_rng(seed)
    scale = np.ldexp(1.0, rng.integers(-12, 12, size=(3,)))  # different exponents per operand
    a, b, c = (rng.standard_normal(shape) * s for shape, s in zip(((16, 8), (8, 8), (16, 8)), scale))
    return a.astype(np.float32), b.astype(np.float32), c.astype(np.float32)


def _mma_twin_reference(a: np.ndarray, b: np.ndarray, c: np.ndarray, operand=_tf32) -> np.ndarray:
    """D = TF32(A) TF32(B) + C summed in float32 in k order (each product of TF32 numbers is exact);
    ``operand`` turns an fp32 operand into TF32 (rounded, or truncated for unconverted input)."""
    A, B = operand(a), operand(b)
    d = c.astype(np.float32).copy()
    for k in range(8):
        d = d + np.outer(A[:, k], B[k, :]).astype(np.float32)
    return d


@pytest.fixture(scope="module")
def mma_module():
    from gpuconv.backends.kernel_backend import compile_options
    return emulator.RawModule(path=str(MMA_KERNELS), options=compile_options())


class TestTf32Twin:
    def test_reference_rounding_by_hand(self):
        u = 2.0 ** -10                               # one TF32 ulp at 1
        x = np.array([1 + u / 2, -(1 + u / 2), 1 + u / 2 - 2.0 ** -23, 1 + 1.5 * u, 3.0,
                      np.finfo(np.float32).max, np.inf, -np.inf], np.float32)
        want = np.array([1 + u, -(1 + u), 1, 1 + 2 * u, 3.0, np.inf, np.inf, -np.inf], np.float32)
        assert np.array_equal(_tf32(x), want)
        assert np.isnan(_tf32(np.array([np.nan], np.float32)))[0]

    def test_rounding_matches_cvt_rna(self, mma_module):
        rng = np.random.default_rng(5)
        bits = rng.integers(0, 2**32, size=4096, dtype=np.uint64).astype(np.uint32)
        u = 2.0 ** -10
        x = np.concatenate([bits.view(np.float32),
                            np.array([1 + u / 2, -(1 + u / 2), 1 + 1.5 * u, np.finfo(np.float32).max,
                                      np.inf, -np.inf, np.nan, 0.0, -0.0, 1e-40, -3e-39], np.float32)])
        out = np.full_like(x, 7.0)
        mma_module.get_function("tf32_round")((math.ceil(x.size / 256),), (256,), (x, out, np.int32(x.size)))
        want = _tf32(x)
        nan = np.isnan(want)
        assert np.array_equal(np.isnan(out), nan)
        assert np.array_equal(out[~nan].view(np.uint32), want[~nan].view(np.uint32))
        assert not np.array_equal(out[~nan], x[~nan])  # rounding did happen

    @pytest.mark.parametrize("seed", range(6))
    def test_fragment_layout(self, mma_module, seed):
        a, b, c = _mma_operands(seed)
        d = np.full((16, 8), np.nan, np.float32)
        mma_module.get_function("mma_tf32_tile")((1,), (32,), (a, b, c, d))
        want = _mma_twin_reference(a, b, c)
        assert np.array_equal(d.view(np.uint32), want.view(np.uint32)), \
            f"max |d - ref| = {np.max(np.abs(d - want)):.3g}"
        # The TF32 product differs from the FP32 one: the operands really were rounded.
        fp32 = (a.astype(np.float64) @ b.astype(np.float64) + c).astype(np.float32)
        assert not np.array_equal(d, fp32)

    @pytest.mark.parametrize("seed", range(3))
    def test_unconverted_operands_are_truncated_as_on_the_tensor_core(self, mma_module, seed):
        """fp32 bits handed to the MMA without cvt.rna lose their low 13 mantissa bits: the twin
        must not round them, or a kernel that forgets the conversion passes here and fails on a GPU."""
        a, b, c = _mma_operands(seed)
        d = np.full((16, 8), np.nan, np.float32)
        mma_module.get_function("mma_tf32_tile_raw")((1,), (32,), (a, b, c, d))
        want = _mma_twin_reference(a, b, c, operand=_tf32_truncated)
        assert np.array_equal(d.view(np.uint32), want.view(np.uint32))
        assert not np.array_equal(d, _mma_twin_reference(a, b, c))


# ---- GPU ---------------------------------------------------------------------------------------

@pytest.mark.gpu
class TestCuda:
    @pytest.mark.parametrize("version,dtype", FORWARD)
    def test_forward_matches_reference(self, gpu, version, dtype):
        run_forward(gpu, version, dtype)

    def test_tf32_mma_tile(self, gpu):
        from gpuconv.backends.kernel_backend import compile_options
        mod = gpu.executor.load(MMA_KERNELS, compile_options() + (f"-I{MMA_KERNELS.parent}",), ())
        for seed in range(4):
            a, b, c = _mma_operands(seed)
            d = np.full((16, 8), np.nan, np.float32)
            dev = [gpu.asarray(v) for v in (a, b, c, d)]
            gpu.launch(mod.get_function("mma_tf32_tile"), (1, 1, 1), (32, 1, 1), tuple(dev))
            ref = _tf32(a).astype(np.float64) @ _tf32(b).astype(np.float64) + c
            # The tensor core may add the products in another order than the twin: fp32 roundings only.
            assert_close(gpu.to_numpy(dev[3]), ref, rtol=1e-6, what=f"mma_tf32_tile seed {seed}")
            # Unconverted operands: the hardware ignores their low 13 bits, as the twin does.
            gpu.launch(mod.get_function("mma_tf32_tile_raw"), (1, 1, 1), (32, 1, 1), tuple(dev))
            ref = _tf32_truncated(a).astype(np.float64) @ _tf32_truncated(b).astype(np.float64) + c
            assert_close(gpu.to_numpy(dev[3]), ref, rtol=1e-6, what=f"mma_tf32_tile_raw seed {seed}")

    @pytest.mark.parametrize("op,version,dtype", BACKWARD)
    def test_backward_matches_reference(self, gpu, op, version, dtype):
        run_backward(gpu, op, version, dtype)

    def test_backward_is_bitwise_deterministic(self, gpu):
        rng = np.random.default_rng(3)
        big = _make_case(conv2d_geometry((32, 16, 32, 32), (32, 16, 3, 3), 1, 1), rng)
        run_determinism(gpu, np.float32, [big, CASES[0], CASES[5]])

    @pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
    def test_suite_sized_layers(self, gpu, dtype):
        rng = np.random.default_rng(11)
        cases = [_make_case(conv2d_geometry(xs, ws, 1, pd), rng) for xs, ws, pd in (
            ((8, 1, 28, 28), (6, 1, 5, 5), 2), ((8, 16, 32, 32), (32, 16, 3, 3), 1),
            ((8, 64, 8, 8), (64, 64, 3, 3), 1))]
        for v in conv.VERSIONS["conv2d_forward"]:
            if dtype == np.float32 or ("conv2d_forward", v) not in conv.FLOAT32_ONLY:
                run_forward(gpu, v, dtype, cases)
        for op, vs in conv.VERSIONS.items():
            for v in vs:
                if op != "conv2d_forward" and (dtype == np.float32 or (op, v) not in conv.FLOAT32_ONLY):
                    worst = run_backward(gpu, op, v, dtype, cases)
                    if launch.precision(op, v) == "tf32":
                        assert worst <= tolerances.TF32_RTOL, f"{op} v{v}: {worst:.3g} on the suite's layers"
