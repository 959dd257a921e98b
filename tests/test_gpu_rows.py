"""benchmark/gpu_rows.sh in its CPU smoke mode (DEVICE=cpu ARCH=tiny): every Python entry point the device run uses,
end to end, without the pip step (no WHEELS); every table it promises is written and printed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_rows_cpu_smoke(tmp_path):
    env = {**os.environ, "DEVICE": "cpu", "ARCH": "tiny", "OUT": str(tmp_path), "PYTHON": sys.executable}
    env.pop("WHEELS", None)
    proc = subprocess.run(["bash", str(ROOT / "benchmark" / "gpu_rows.sh")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = (tmp_path / "gpu_rows.log").read_text()
    for stage in ("latency", "overhead", "step_cost"):
        assert f"[{stage}] exit 0" in log, log[-3000:]
    for table in ("latency/latency.md", "latency/vram.md", "overhead/summary.md", "step_cost/step_cost.md"):
        assert (tmp_path / table).is_file(), table
        assert f"==== {tmp_path}/{table}" in proc.stdout
    vram = (tmp_path / "latency" / "vram.md").read_text()
    assert "n/a" in vram and "InstantID" in vram
