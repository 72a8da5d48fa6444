"""Agreement tolerances between backends: the one place they are defined.

Errors are measured as max|out - ref| / max|ref| (relative to the reference's scale), so a
tolerance does not depend on the magnitude of a layer's values. NaN never passes.

* float32 against float32 on another backend (or against a float64 reference): 1e-5. The two
  sides sum the same products in different orders; each rounding is 2^-24 ≈ 6e-8 relative, and
  the reductions of the test-size networks (at most a few thousand terms, then a few layers of
  back-propagation) stay two orders of magnitude below 1e-5.
* float64 against float64: 1e-12 (2^-53 ≈ 1.1e-16 per rounding, same argument).
* TF32 paths (10-bit mantissa) against the float64 reference: 1e-3. Each operand is rounded to
  nearest with a unit roundoff of 2^-11 ≈ 4.9e-4, so a product carries at most ≈ 9.8e-4 relative
  error (two roundings) and the fp32 accumulation adds only ~1e-7; errors of many products of
  random sign partly cancel, as the products themselves do. Used for the torch-tf32 baseline and
  for kernel versions listed in a launch module's PRECISION table (v4 of conv2d forward,
  backward-data and backward-filter); they are reported, never held to the FP32 number. The
  model presumes a reduction long enough to average: an output of a few terms that cancel errs by
  up to 2^-10 * sum |a| |b|, which can pass 1e-3 of max|ref| (measured 1.0045e-3 on a 3-term
  backward-data case of the kernel tests, within that bound); those tests hold TF32 kernels to
  the TF32-rounded operands at the float32 tolerance and to that bound, and to 1e-3 on layers.

``gpuconv check`` prints the measured error of every layer next to the tolerance, so growth of
the error with depth is visible rather than hidden behind a larger number. Measured growth on the
deepest model (ResNet-20, NumPy vs the emulator, float32, batch 2, every parameter non-zero):
conv outputs go from 1.4e-7 at the stem to at most 1.1e-6 in the last stage, input gradients stay
between 6e-7 and 1.0e-6 all the way back; so 1e-5 holds for every model with a tenfold margin and
no model gets a number of its own.
"""
from __future__ import annotations

import math

import numpy as np

FLOAT32_RTOL = 1e-5
FLOAT64_RTOL = 1e-12
TF32_RTOL = 1e-3

PRECISIONS = ("fp32", "tf32")

__all__ = ["FLOAT32_RTOL", "FLOAT64_RTOL", "TF32_RTOL", "PRECISIONS", "tolerance", "tolerance_for",
           "scaled_error", "passes"]


def tolerance(dtype) -> float:
    """The relative tolerance for results computed in ``dtype`` (float32 or float64)."""
    dt = np.dtype(dtype)
    if dt == np.float32:
        return FLOAT32_RTOL
    if dt == np.float64:
        return FLOAT64_RTOL
    raise TypeError(f"dtype must be float32 or float64, got {dt}")


def tolerance_for(precision: str, dtype=np.float32) -> float:
    """The tolerance of a result computed at ``precision`` in ``dtype``: "tf32" for operands rounded
    to TF32 (kernel versions a launch module lists in its PRECISION table, the torch-tf32
    baseline), "fp32" for the dtype's own precision (``tolerance(dtype)``)."""
    if precision == "tf32":
        return TF32_RTOL
    if precision == "fp32":
        return tolerance(dtype)
    raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def scaled_error(out: np.ndarray, ref: np.ndarray) -> tuple:
    """(max|out - ref|, max|out - ref| / max|ref|) computed in float64; NaN if either has a NaN.

    Shapes must match. When ref is all zeros the relative error is the absolute one (0 if equal).
    """
    out = np.asarray(out)
    ref = np.asarray(ref)
    if out.shape != ref.shape:
        raise ValueError(f"out has shape {out.shape} but ref has shape {ref.shape}: expected equal shapes")
    if out.size == 0:
        return 0.0, 0.0
    a = out.astype(np.float64)
    b = ref.astype(np.float64)
    if np.isnan(a).any() or np.isnan(b).any():
        return math.nan, math.nan
    abs_err = float(np.max(np.abs(a - b)))
    scale = float(np.max(np.abs(b)))
    return abs_err, (abs_err / scale if scale > 0 else abs_err)


def passes(rel_err: float, tol: float) -> bool:
    """True when ``rel_err`` is a number no larger than ``tol`` (NaN and inf never pass)."""
    return math.isfinite(rel_err) and rel_err <= tol
