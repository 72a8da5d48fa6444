"""Hypothesis profiles: "ci" (default) draws the same examples on every run, so the suite never
fails at random; GPUCONV_HYPOTHESIS_PROFILE=explore draws new ones, more of them."""
from __future__ import annotations

import os

try:
    from hypothesis import settings
except ImportError:  # the property tests skip themselves
    settings = None

if settings is not None:
    settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
    settings.register_profile("explore", max_examples=1000, database=None, print_blob=True)
    settings.load_profile(os.environ.get("GPUCONV_HYPOTHESIS_PROFILE", "ci"))
