"""Batch-norm kernels against the NumPy reference, on the CPU emulator (and, marked ``gpu``,
through CuPy): training and evaluation, with and without the fused ReLU, float32 and float64,
odd sizes, several chunks per channel, more channels than grid.y, every kernel version. Outputs are
NaN-poisoned.

float32 results are compared with the float64 reference by max|out - ref| / max|ref| <= 1e-5,
float64 by <= 1e-12. The reduction kernels (warp shuffles, shared memory) run in several thread
orders; every result must give the same bits when run again in another thread and block order.
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close, assert_deterministic, recording_launches

from gpuconv.backends.launch import batchnorm
from gpuconv.backends.numpy_backend import NumpyBackend
from gpuconv.emulator import check_orders
from gpuconv.geometry import batch_norm_geometry
from gpuconv.tolerances import scaled_error

DTYPES = (np.float32, np.float64)
REF = NumpyBackend()
# Odd sizes, every rank, one to several chunks per channel (stat_chunks: chunks of >= 2048 values).
SHAPES = [(3, 5, 7, 6), (3, 6), (5, 4), (7, 3, 9), (1, 2, 3, 5), (3, 2, 37, 41), (16, 3, 9, 11)]
VERSIONS = batchnorm.VERSIONS["batch_norm_forward"]
assert VERSIONS == batchnorm.VERSIONS["batch_norm_backward"]


def _in_version(be, v):
    return be.use_versions({"batch_norm_forward": v, "batch_norm_backward": v})


@pytest.fixture(autouse=True, params=VERSIONS, ids=lambda v: f"v{v}")
def version(request):
    """Every test runs on every batch-norm version, forward and backward, of its backend."""
    names = [n for n in ("be", "emu") if n in request.fixturenames]
    if not names:
        yield request.param
        return
    with _in_version(request.getfixturevalue(names[0]), request.param):
        yield request.param



def _inputs(rng, shape):
    C = shape[1]
    x = rng.standard_normal(shape) * rng.uniform(0.5, 3.0, (1, C) + (1,) * (len(shape) - 2)) + rng.uniform(
        -2, 2, (1, C) + (1,) * (len(shape) - 2))
    return dict(x=x, weight=rng.standard_normal(C), bias=rng.standard_normal(C),
                running_mean=rng.standard_normal(C), running_var=rng.uniform(0.5, 2.0, C),
                dy=rng.standard_normal(shape))


def _run(backend, to_backend, d, training, relu, affine, track, momentum=0.3, eps=1e-3):
    """Forward and backward of one configuration; returns host arrays."""
    g = batch_norm_geometry(d["x"].shape, training)
    x = to_backend(d["x"])
    w = to_backend(d["weight"]) if affine else None
    b = to_backend(d["bias"]) if affine else None
    rm = to_backend(d["running_mean"]) if track else None
    rv = to_backend(d["running_var"]) if track else None
    y, mean, invstd = backend.batch_norm(x, rm, rv, w, b, g, training, momentum, eps, relu)
    dx, dw, db = backend.batch_norm_backward(to_backend(d["dy"]), x, y if relu else None, w, mean, invstd,
                                             g, training)
    out = dict(y=y, mean=mean, invstd=invstd, dx=dx, dweight=dw, dbias=db)
    if track:
        out.update(running_mean=rm, running_var=rv)
    return {k: np.array(backend.to_numpy(v)) for k, v in out.items()}


CONFIGS = [(True, False, True, True), (True, True, True, True), (True, False, False, False),
           (True, True, False, True), (False, False, True, True), (False, True, False, True)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training,relu,affine,track", CONFIGS)
def test_batch_norm_matches_reference(be, dtype, training, relu, affine, track):
    rng = np.random.default_rng(17)
    for shape in SHAPES:
        d = _inputs(rng, shape)
        ref = _run(REF, lambda a: np.array(a, np.float64), d, training, relu, affine, track)
        out = _run(be, lambda a: be.asarray(np.asarray(a, dtype)), d, training, relu, affine, track)
        for k in ref:
            assert out[k].dtype == dtype, k
            assert_close(out[k], ref[k], dtype,
                         what=f"{k} {shape} training={training} relu={relu} affine={affine}")


def test_eval_mode_leaves_running_statistics_alone_and_returns_them(be):
    rng = np.random.default_rng(3)
    d = _inputs(rng, (4, 3, 5, 5))
    out = _run(be, lambda a: be.asarray(np.asarray(a, np.float32)), d, False, False, True, True)
    np.testing.assert_array_equal(out["running_mean"], d["running_mean"].astype(np.float32))
    np.testing.assert_array_equal(out["running_var"], d["running_var"].astype(np.float32))
    np.testing.assert_array_equal(out["mean"], d["running_mean"].astype(np.float32))


def test_large_mean_small_spread_is_accurate_in_float32(be):
    """A channel with mean 1e3 and standard deviation 1e-1: E[x^2] - E[x]^2 loses every digit in
    float32; Welford/Chan keep the float32 statistics within 2e-3 of a float64 computation on the
    same float32 inputs."""
    rng = np.random.default_rng(5)
    shape = (64, 2, 13, 11)  # 9152 values per channel: several chunks
    x32 = (1e3 + 1e-1 * rng.standard_normal(shape)).astype(np.float32)
    x32[:, 1] = (-3e2 + 2e-2 * rng.standard_normal((64, 13, 11))).astype(np.float32)
    x64 = x32.astype(np.float64)
    g = batch_norm_geometry(shape, True)
    rm64, rv64 = np.zeros(2), np.ones(2)
    y64, mean64, inv64 = REF.batch_norm(x64, rm64, rv64, None, None, g, True, 0.1, 1e-5, False)
    rm, rv = be.asarray(np.zeros(2, np.float32)), be.asarray(np.ones(2, np.float32))
    y, mean, inv = be.batch_norm(be.asarray(x32), rm, rv, None, None, g, True, 0.1, 1e-5, False)
    for name, got, want in (("y", y, y64), ("mean", mean, mean64), ("invstd", inv, inv64),
                            ("running_var", rv, rv64)):
        _, rel = scaled_error(be.to_numpy(got), want)
        assert rel <= 2e-3, (name, rel)


def test_results_are_bitwise_reproducible(be):
    rng = np.random.default_rng(8)
    d = _inputs(rng, (16, 3, 9, 11))

    def run(b, training):
        return tuple(_run(b, lambda a: b.asarray(np.asarray(a, np.float32)), d, training, True, True,
                          True).values())

    for training in (True, False):
        assert_deterministic(be, run, training, what=f"batch norm training={training}")


def test_channels_beyond_grid_y_are_looped_over(be, monkeypatch):
    """More channels than grid.y: the reduction blocks loop over channels (shrunk limit)."""
    monkeypatch.setattr(batchnorm, "MAX_GRID_Y", 2)
    rng = np.random.default_rng(4)
    d = _inputs(rng, (3, 5, 4, 3))
    ref = _run(REF, lambda a: np.array(a, np.float64), d, True, True, True, True)
    out = _run(be, lambda a: be.asarray(np.asarray(a, np.float64)), d, True, True, True, True)
    for k in ref:
        assert_close(out[k], ref[k], np.float64, what=k)


def test_chunking_depends_on_sizes_only_and_covers_every_value():
    for shape in [(1, 1, 2), (2, 3, 1000, 1), (128, 16, 32, 32), (128, 64, 8, 8), (3, 70000), (1, 1, 2**20)]:
        g = batch_norm_geometry(shape, True)
        chunks, chunk = batchnorm.stat_chunks(g)
        assert 1 <= chunks and (chunks - 1) * chunk < g.count <= chunks * chunk, shape
        assert chunks <= max(1, -(-batchnorm.TARGET_BLOCKS // g.C)), shape


@pytest.mark.parametrize("dtype", DTYPES)
def test_reduction_kernels_agree_in_every_thread_order(emu, dtype):
    rng = np.random.default_rng(9)
    d = _inputs(rng, (3, 2, 37, 41))  # 4551 values per channel: 3 chunks (v1), 5 (v2)
    with recording_launches(emu) as launches:
        _run(emu, lambda a: emu.asarray(np.asarray(a, dtype)), d, True, True, True, True)
    names = [fn.name for fn, *_ in launches]
    assert any("batch_norm_stats" in n for n in names) and any("backward_reduce" in n for n in names)
    for fn, grid, block, args, shared_mem in launches:
        check_orders(fn, grid, block, args, shared_mem=shared_mem)


def test_empty_batch_in_evaluation(be):
    g = batch_norm_geometry((0, 3, 4, 4), False)
    x = be.asarray(np.zeros((0, 3, 4, 4), np.float32))
    rm, rv = be.asarray(np.zeros(3, np.float32)), be.asarray(np.ones(3, np.float32))
    y, _, _ = be.batch_norm(x, rm, rv, None, None, g, False, 0.1, 1e-5, False)
    assert y.shape == (0, 3, 4, 4)
    dx, dw, db = be.batch_norm_backward(x, x, None, None, rm, rv, g, False)
    assert dx.shape == (0, 3, 4, 4)
    np.testing.assert_array_equal(be.to_numpy(dw), np.zeros(3, np.float32))
    np.testing.assert_array_equal(be.to_numpy(db), np.zeros(3, np.float32))
