"""The benchmarks must stay runnable: each is checked here on the CPU at a tiny size."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_gpu_benchmark_runs_on_the_cpu_at_a_tiny_size():
    # fp32: the smoke's memory budgets are sized for it, whichever precision this CPU would pick.
    command = [sys.executable, str(BENCH / "gpu.py"), "--device", "cpu", "--smoke", "--precision", "fp32"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "| 32² | L-BFGS |" in result.stdout and "| 32² | Adam |" in result.stdout
    assert "Whole default job at 48 px" in result.stdout
    # The full-size jobs, shrunk: in forced tiles, then under a budget that makes tiles of at least the
    # smallest worth running (48 px at its 16 px halo), and under one too small for them: refused.
    rows = [line.split(" | ")[:4] for line in result.stdout.splitlines() if line.startswith("| ")]
    summary = {(row[0], row[2]) for row in rows if len(row) > 2}
    assert {("| 48×32", "2×32"), ("| 64×32", "2×32")} <= summary, result.stdout
    budgeted = [row for row in rows if row[0] == "| 128×64"]
    assert [row[1] for row in budgeted] == ["18.0 MiB", "8.0 MiB"], result.stdout
    tiles, side = budgeted[0][2].split("×")
    assert int(tiles) > 1 and int(side) >= 48 and budgeted[1][2] == "refused", result.stdout
    assert re.search(r"allow it at least \d+ MiB", result.stdout), result.stdout
    assert "out of memory" not in result.stdout


def test_eta_benchmark_runs_at_a_tiny_size():
    command = [sys.executable, str(BENCH / "eta.py"), "--quick", "--precision", "fp32"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "| fp32 | default: 400×266 at 48 px × 4 it (fresh engine) |" in result.stdout, result.stdout
    assert "| fp32 | default: 400×266 at 48 px × 4 it (learned) |" in result.stdout, result.stdout
    assert "Goal (eta within ±25% from 10% to 75% of the work on every job):" in result.stdout
    # The full-size job runs its finest scale in tiles, under the memory budget.
    rows = [line.split(" | ") for line in result.stdout.splitlines() if line.startswith("| fp32 | full: ")]
    scales = [cells for cells in rows if len(cells) == 9]  # precision, job, scale, size, tiles, …
    assert scales and int(scales[-1][4]) > 1, result.stdout


def test_pace_benchmark_runs_at_a_tiny_size():
    command = [sys.executable, str(BENCH / "pace.py"), "--jobs", "48x2", "--planned", "64x2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [line.split(" | ")[0] for line in result.stdout.splitlines() if line.startswith("| (")]
    assert rows == ["| (none yet)", "| (a new server)"], result.stdout
    assert "| 48 px, 2 it. | " in result.stdout, result.stdout


def test_openmp_benchmark_runs_at_a_tiny_size():
    settings = ["--settings", "default", "spin=10000"]
    command = [sys.executable, str(BENCH / "openmp.py"), "--sizes", "32", *settings]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [line.split(" | ")[:2] for line in result.stdout.splitlines() if " px × " in line]
    assert rows == [["| default", "32 px × 40 it"], ["| spin=10000", "32 px × 40 it"]], result.stdout
