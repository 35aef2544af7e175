"""The benchmark scripts on CPU: bench_throughput.py's smoke run prints every system's row, and fit_8b.py
refuses in one line or runs its tiny smoke search. No speed is asserted; CUDA is hidden from the scripts."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

from conftest import fresh_process_env

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True,
                          timeout=600, env={**fresh_process_env(), "CUDA_VISIBLE_DEVICES": ""})


def table_rows(stdout: str) -> list[list[str]]:
    """The cells of every markdown table row printed, header and separator left out."""
    rows = [line.strip().strip("|").split("|") for line in stdout.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row] for row in rows[1:] if not row[0].startswith("-")]


def assert_finite_and_positive(cells: list[str]) -> None:
    for cell in cells:
        value = float(cell.removesuffix("x"))
        assert math.isfinite(value) and value > 0, cells


def test_throughput_smoke_prints_all_five_systems_and_writes_no_results():
    results = BENCHMARKS / "results"
    before = sorted(results.iterdir()) if results.is_dir() else []

    run = run_script("bench_throughput.py")

    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    rows = table_rows(run.stdout)
    assert [row[2].split(".")[0] for row in rows] == ["1", "2", "3", "4", "5"], run.stdout
    for row in rows:
        assert row[:2] == ["tiny", "short"]
        # tokens/s, s/step, ms/example, peak memory, ratios to systems 1 and 2; MFU is GPU-only.
        assert_finite_and_positive(row[3:9])
        assert row[9] == "-"
    sweep_points = [line for line in run.stdout.splitlines() if "useful tokens per micro-batch:" in line]
    assert len(sweep_points) == 2 and all(line.endswith(": ok") for line in sweep_points), sweep_points
    assert (sorted(results.iterdir()) if results.is_dir() else []) == before


def test_fit_8b_refuses_without_cuda_in_one_line():
    run = run_script("fit_8b.py")

    assert run.returncode == 2
    assert run.stdout.strip().splitlines() == [
        "fit_8b.py measures GPU memory and needs CUDA; --smoke runs the tiny configuration on CPU"]


def test_fit_8b_smoke_searches_both_systems():
    run = run_script("fit_8b.py", "--smoke", "--budgets", "256")

    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    rows = table_rows(run.stdout)
    assert [(row[0].split(".")[0], row[2]) for row in rows] == [("4", "ok"), ("2", "ok")], run.stdout
    for row in rows:
        assert_finite_and_positive([row[1], row[3], row[4], row[6]])
    assert "largest that fit: 224" in run.stdout
