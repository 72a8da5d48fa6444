"""Where the CUDA sources live (``GPUCONV_CUDA_DIR`` overrides)."""
from __future__ import annotations

import os
from pathlib import Path


def cuda_dir() -> Path:
    env = os.environ.get("GPUCONV_CUDA_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "cuda", here / "cuda"):
        if cand.is_dir():
            return cand
    raise FileNotFoundError(
        "cannot find gpuconv's cuda/ sources: install gpuconv in editable mode from a checkout "
        "(pip install -e .) or set GPUCONV_CUDA_DIR")
