"""scripts/memory_soak.py keeps working: a short numpy soak reports flat resident memory (the full
2,000-step and 200-step emulator runs are measured by the script itself; see docs/reliability.md)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "memory_soak.py"


def test_short_numpy_soak_holds_resident_memory_flat(tmp_path, capsys):
    if not Path("/proc/self/statm").exists():
        pytest.skip("needs /proc/self/statm (Linux)")
    spec = importlib.util.spec_from_file_location("memory_soak", SCRIPT)
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    out = tmp_path / "soak.json"
    assert soak.main(["--steps", "50", "--warmup", "25", "--every", "5", "--json", str(out)]) == 0
    assert "PASS" in capsys.readouterr().out and out.is_file()
