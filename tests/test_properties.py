"""Property-based tests of the functional API (Hypothesis): random shapes, dtypes, hyper-parameters
(valid and not) and array layouts never crash or hang the process; every call either raises
ValueError/TypeError or returns a result that does not depend on the inputs' memory layout and
equals, on the emulator (the CUDA kernels compiled for the CPU), the NumPy reference's.

Examples are derandomised (the same every run, see conftest.py) and bounded in number and time.
"""
from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from gpuconv import functional as F  # noqa: E402
from gpuconv import use_backend  # noqa: E402
from gpuconv.tolerances import passes, scaled_error, tolerance  # noqa: E402

REFUSALS = (ValueError, TypeError)
SETTINGS = settings(max_examples=150, deadline=5000)


# ---- values and layouts ---------------------------------------------------------------------------

FLOATS = (np.float32, np.float64)
BAD_DTYPES = (np.float16, np.int32, np.int64, np.bool_, np.complex64)


@st.composite
def dtypes(draw, allow_bad: bool = True):
    """float32/float64, sometimes one the API must refuse."""
    if allow_bad and draw(st.integers(0, 15)) == 7:
        return np.dtype(draw(st.sampled_from(BAD_DTYPES)))
    return np.dtype(draw(st.sampled_from(FLOATS)))


def _values(seed: int, shape, dtype, special: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = np.asarray(rng.standard_normal(shape))
    if special and v.size:
        v = np.asarray(np.round(v * 2) / 2)  # ties
        picks = np.asarray(rng.random(shape))
        v[picks < 0.05] = np.nan
        v[(picks >= 0.05) & (picks < 0.1)] = -np.inf
        v[(picks >= 0.1) & (picks < 0.13)] = np.inf
    if np.dtype(dtype).kind == "b":
        return np.asarray(v > 0)
    if np.dtype(dtype).kind in "iu":
        return np.asarray(np.clip(np.nan_to_num(v * 3), -100, 100).astype(dtype))
    return np.asarray(v.astype(dtype))


LAYOUTS = ("c", "fortran", "strided", "reversed", "broadcast", "readonly")


def _layout(a: np.ndarray, layout: str) -> np.ndarray:
    """The same values as ``a`` in another memory layout."""
    if a.ndim == 0:
        return np.array(a)
    if layout == "fortran":
        return np.asfortranarray(a)
    if layout == "strided":  # every other element of a larger buffer
        big = np.zeros(tuple(2 * s for s in a.shape), dtype=a.dtype)
        view = big[tuple(slice(None, None, 2) for _ in a.shape)]
        view[...] = a
        return view
    if layout == "reversed":  # negative strides on every axis
        return np.ascontiguousarray(a[tuple(slice(None, None, -1) for _ in a.shape)])[
            tuple(slice(None, None, -1) for _ in a.shape)]
    if layout == "broadcast" and a.ndim and a.shape[0] > 1:  # zero stride on axis 0 (read-only)
        return np.broadcast_to(a[:1], a.shape)
    if layout == "readonly":
        b = a.copy()
        b.setflags(write=False)
        return b
    return a.copy(order="C")


@st.composite
def arrays(draw, shape, dtype=None, special: bool = False):
    dt = draw(dtypes()) if dtype is None else np.dtype(dtype)
    a = _values(draw(st.integers(0, 2**32 - 1)), shape, dt, special)
    layout = draw(st.sampled_from(LAYOUTS))
    b = _layout(a, layout)
    return b


def _run(fn, *args, **kwargs):
    """(result, None) or (None, exception) for ValueError/TypeError; anything else propagates."""
    try:
        return fn(*args, **kwargs), None
    except REFUSALS as exc:
        return None, exc


def _host(r):
    if isinstance(r, tuple):
        return tuple(_host(x) for x in r)
    return None if r is None else np.array(r)


def _same(a, b, exact: bool, what: str) -> None:
    """Outputs equal: exactly (``exact``) or within the dtype's tolerance, NaN and inf in the same
    places."""
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b), what
        for x, y in zip(a, b):
            _same(x, y, exact, what)
        return
    if a is None or b is None:
        assert a is None and b is None, what
        return
    assert a.shape == b.shape and a.dtype == b.dtype, f"{what}: {a.shape} {a.dtype} vs {b.shape} {b.dtype}"
    if a.dtype.kind != "f" or exact:
        np.testing.assert_array_equal(a, b, err_msg=what)
        return
    special = ~np.isfinite(b)
    np.testing.assert_array_equal(a[special], b[special], err_msg=what)
    fa, fb = np.where(special, 0, a), np.where(special, 0, b)
    _, rel = scaled_error(fa, fb)
    assert passes(rel, tolerance(a.dtype)), f"{what}: relative error {rel}"


def _check_everywhere(call, *args, exact_emulator: bool = False):
    """Run ``call(*args)`` on numpy with the arrays as drawn and as contiguous copies (results
    must be identical) and on the emulator (results equal within tolerance, or the same kind of
    refusal)."""
    contiguous = tuple(a.copy(order="C") if isinstance(a, np.ndarray) else a for a in args)
    with use_backend("numpy"):
        ref, err = _run(call, *args)
        ref_c, err_c = _run(call, *contiguous)
    assert type(err) is type(err_c), f"layout changed the outcome: {err!r} vs {err_c!r}"
    event("refused" if err is not None else "computed")  # --hypothesis-show-statistics
    if err is not None:
        with use_backend("emulator"):
            _, emu_err = _run(call, *args)
        assert type(emu_err) is type(err), f"numpy refused with {err!r}, emulator gave {emu_err!r}"
        return None
    ref, ref_c = _host(ref), _host(ref_c)
    _same(ref, ref_c, True, "numpy, layout")
    with use_backend("emulator"):
        out, emu_err = _run(call, *args)
    assert emu_err is None, f"emulator refused what numpy accepted: {emu_err!r}"
    _same(_host(out), ref, exact_emulator, "emulator vs numpy")
    return ref


# ---- hyper-parameters -------------------------------------------------------------------------------

BAD_HYPER = [-1, 0, 2**31, 2**40, 1.5, True, "2", None, (1, 2, 3), ()]


@st.composite
def _hyper(draw, lo: int, hi: int, pairs: bool = True):
    """An int in [lo, hi] or a pair of them; one time in twelve a value the API must refuse."""
    if draw(st.integers(0, 11)) == 7:  # not 0 or 11: Hypothesis favours the bounds
        return draw(st.sampled_from(BAD_HYPER + [lo - 1]))
    if pairs and draw(st.booleans()):
        return (draw(st.integers(lo, hi)), draw(st.integers(lo, hi)))
    return draw(st.integers(lo, hi))


def _int_or_bad(lo: int, hi: int):
    return _hyper(lo, hi, pairs=False)


def _pair_or_int(lo: int, hi: int):
    return _hyper(lo, hi)


SHAPES = st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9))


# ---- pooling ----------------------------------------------------------------------------------------

@SETTINGS
@given(data=st.data(), shape=SHAPES, kind=st.sampled_from(["max", "avg", "l2"]))
def test_pooling_properties(data, shape, kind):
    x = data.draw(arrays(shape, special=kind == "max"))
    k = data.draw(_pair_or_int(1, 4))
    stride = data.draw(st.one_of(st.none(), _pair_or_int(1, 4)))
    ks = k if isinstance(k, tuple) else (k, k)
    valid = len(ks) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in ks)
    half = min(v // 2 for v in ks) if valid else 1
    padding = data.draw(_pair_or_int(0, max(half, 0)))
    ceil_mode = data.draw(st.sampled_from([False, True] * 6 + [1, "yes"]))
    if kind == "max":
        dilation = data.draw(_pair_or_int(1, 3))
        fwd = _check_everywhere(lambda a: F.max_pool2d(a, k, stride, padding, dilation, ceil_mode), x,
                                exact_emulator=True)
        if fwd is not None:
            y, idx = fwd
            dy = data.draw(arrays(y.shape, dtype=x.dtype))
            _check_everywhere(lambda g, i: F.max_pool2d_backward(g, i, x.shape, k, stride, padding, dilation,
                                                                 ceil_mode), dy, idx)
    elif kind == "avg":
        cip = data.draw(st.sampled_from([False, True] * 6 + [1]))
        div = data.draw(st.one_of(st.none(), _int_or_bad(1, 5)))
        y = _check_everywhere(lambda a: F.avg_pool2d(a, k, stride, padding, ceil_mode, cip, div), x)
        if y is not None:
            dy = data.draw(arrays(y.shape, dtype=x.dtype))
            _check_everywhere(lambda g: F.avg_pool2d_backward(g, x.shape, k, stride, padding, ceil_mode, cip,
                                                              div), dy)
    else:
        y = _check_everywhere(lambda a: F.l2_pool2d(a, k, stride, padding, ceil_mode), x)
        if y is not None:
            dy = data.draw(arrays(y.shape, dtype=x.dtype))
            _check_everywhere(lambda g, a, b: F.l2_pool2d_backward(g, a, b, k, stride, padding, ceil_mode),
                              dy, x.copy(order="C"), y)


# ---- convolution ------------------------------------------------------------------------------------

@SETTINGS
@given(data=st.data(), shape=SHAPES, k_out=st.integers(1, 4), groups=_int_or_bad(1, 2),
       r=st.integers(1, 4), s=st.integers(1, 4), bias=st.booleans())
def test_conv2d_properties(data, shape, k_out, groups, r, s, bias):
    g = groups if isinstance(groups, int) and not isinstance(groups, bool) and 1 <= groups <= 2 else 1
    if data.draw(st.integers(0, 7)) != 7:  # mostly channel counts that the groups divide
        shape = (shape[0], shape[1] * g) + shape[2:]
    x = data.draw(arrays(shape))
    w = data.draw(arrays((k_out * g, max(1, shape[1] // g), r, s),
                         dtype=data.draw(st.sampled_from([x.dtype] * 6 + [np.float64]))))
    b = data.draw(arrays((w.shape[0],), dtype=w.dtype)) if bias else None
    stride = data.draw(_pair_or_int(1, 3))
    padding = data.draw(st.one_of(_pair_or_int(0, 3), st.sampled_from(["same", "valid", "full"])))
    dilation = data.draw(_pair_or_int(1, 3))
    y = _check_everywhere(lambda a, ww, bb: F.conv2d(a, ww, bb, stride, padding, dilation, groups), x, w, b)
    if y is not None:
        dy = data.draw(arrays(y.shape, dtype=x.dtype))
        _check_everywhere(lambda g, a, ww: F.conv2d_backward(g, a, ww, stride, padding, dilation, groups),
                          dy, x, w)


# ---- element-wise, dense, loss ------------------------------------------------------------------------

ANY_SHAPE = st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple)


@SETTINGS
@given(data=st.data(), shape=ANY_SHAPE, op=st.sampled_from(["relu", "sigmoid", "tanh", "add", "mul",
                                                            "dropout"]))
def test_elementwise_properties(data, shape, op):
    x = data.draw(arrays(shape, special=True))
    if op in ("relu", "sigmoid", "tanh"):
        y = _check_everywhere(getattr(F, op), x)
        if y is not None:
            dy = data.draw(arrays(data.draw(st.sampled_from([shape, shape, shape + (1,)])), dtype=x.dtype))
            _check_everywhere(getattr(F, f"{op}_backward"), dy, y)
    elif op in ("add", "mul"):
        other = data.draw(arrays(data.draw(st.sampled_from([shape, shape, shape[::-1]]))))
        _check_everywhere(getattr(F, op), x, other)
    else:
        p = data.draw(st.one_of(st.floats(0, 1), st.sampled_from([-0.1, 1.5, float("nan"), "0.5"])))
        seed = data.draw(st.one_of(st.integers(0, 2**70), st.sampled_from([-1, 1.0, None])))
        _check_everywhere(lambda a: F.dropout(a, p, seed), x, exact_emulator=True)


@SETTINGS
@given(data=st.data(), n=st.integers(0, 5), i=st.integers(0, 6), o=st.integers(1, 6), bias=st.booleans())
def test_linear_and_loss_properties(data, n, i, o, bias):
    x = data.draw(arrays((n, i)))
    w = data.draw(arrays(data.draw(st.sampled_from([(o, i)] * 6 + [(i, o), (o, i, 1)]))))
    b = data.draw(arrays((o,), dtype=w.dtype)) if bias else None
    y = _check_everywhere(F.linear, x, w, b)
    if y is not None:
        dy = data.draw(arrays(y.shape, dtype=x.dtype))
        _check_everywhere(F.linear_backward, dy, x, w)
        labels = data.draw(st.sampled_from([np.arange(n) % o] * 4 + [
            np.full(n, o), np.full(n, -1), np.zeros(n, np.float32), np.zeros(n + 1, int)]))
        _check_everywhere(F.softmax_cross_entropy, y, labels)
