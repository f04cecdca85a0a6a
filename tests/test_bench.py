"""The prepared GPU benchmark must stay runnable: checked here on the CPU at a tiny size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_gpu_benchmark_runs_on_the_cpu_at_a_tiny_size():
    command = [sys.executable, str(BENCH / "gpu.py"), "--device", "cpu", "--smoke"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "| 32² | L-BFGS |" in result.stdout and "| 32² | Adam |" in result.stdout
    assert "Whole default job at 48 px" in result.stdout
    # The full-size jobs, shrunk: in forced tiles, then the largest in the tiles a small budget makes.
    rows = [line.split(" | ")[:3] for line in result.stdout.splitlines() if line.startswith("| 64×32 |")]
    assert [row[2] for row in rows] == ["2×32", "8×16"], result.stdout
    assert "| 48×32 | " in result.stdout and "out of memory" not in result.stdout


def test_eta_benchmark_runs_at_a_tiny_size():
    command = [sys.executable, str(BENCH / "eta.py"), "--quick", "--precision", "fp32"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "| 24 px × 6 it |" in result.stdout and "| 40 px × 6 it |" in result.stdout
    assert "Goal (eta at 10 % within ±25% on all three):" in result.stdout
    assert "(fresh engine)" in result.stdout and "(learned)" in result.stdout
