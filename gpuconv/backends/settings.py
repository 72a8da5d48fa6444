"""The values of ``gpuconv.backends.allow_tf32`` and ``gpuconv.backends.benchmark`` (documented,
checked and set there), kept in a module of their own that the version selector reads at every
convolution call."""
from __future__ import annotations

import os

__all__ = ["env_flag", "allow_tf32", "benchmark"]


def env_flag(name: str) -> bool:
    """The boolean environment variable ``name``: unset, empty, 0, false, no or off is False; 1,
    true, yes or on is True; anything else is a ValueError naming the variable."""
    raw = os.environ.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{name} must be 1 or 0 (or true/false, yes/no, on/off), got {os.environ[name]!r}")


allow_tf32: bool = env_flag("GPUCONV_ALLOW_TF32")
benchmark: bool = env_flag("GPUCONV_BENCHMARK")
