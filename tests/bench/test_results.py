"""The committed results stay readable: every dated run's CSV under
benchmarks/results/ gives its tables and summary.md, and the oldest run's
its plots with --plot-only (only the newest run keeps its PNGs in the
repository, so the others must be drawable again; drawing every run would
take a minute). Skipped where the tests run without the repository's
benchmarks/ folder (the installed-wheel test)."""

import os
import shutil
from pathlib import Path

import pytest

from macko_spmv.bench import plots, tables

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
RUNS = sorted(path.parent for path in RESULTS.glob("*/*/results.csv")) if RESULTS.is_dir() else []
SPMV_RUNS = [run for run in RUNS if run.name in ("spmv", "batch")]
E2E_RUNS = [run for run in RUNS if run.name == "e2e"]
# The oldest run of each kind: its plots are drawn.
DRAWN = {min((run for run in RUNS if run.name == kind), key=lambda run: run.parent.name) for kind in
         {run.name for run in RUNS}}  # fmt: skip


def copy_of(run, tmp_path):
    target = tmp_path / run.parent.name / run.name
    target.mkdir(parents=True)
    for name in ("results.csv", "meta.json"):
        if (run / name).exists():
            shutil.copy(run / name, target / name)
    return target


@pytest.mark.skipif(not SPMV_RUNS, reason="no benchmarks/results folder beside the tests")
@pytest.mark.parametrize("run", SPMV_RUNS, ids=lambda run: f"{run.parent.name}/{run.name}")
def test_spmv_results_redraw_from_their_csv(run, tmp_path):
    target = copy_of(run, tmp_path)
    draw = run in DRAWN and plots.figure_tools() is not None
    written = {os.path.basename(path) for path in plots.plot_spmv(target)} if draw else set()
    written.add(os.path.basename(tables.write_spmv_summary(target)))
    results = tables.read_spmv_results(target)
    assert results and "summary.md" in written
    assert tables.spmv_report(results).count("\n") >= len(results) + 1
    if draw:
        assert {"speedup.png", "bandwidth.png"} <= written
        committed = {path.name for path in run.glob("*.png")}
        assert committed <= written, "a committed plot that --plot-only no longer draws"


@pytest.mark.skipif(not E2E_RUNS, reason="no benchmarks/results folder beside the tests")
@pytest.mark.parametrize("run", E2E_RUNS, ids=lambda run: f"{run.parent.name}/{run.name}")
def test_e2e_results_redraw_from_their_csv(run, tmp_path):
    target = copy_of(run, tmp_path)
    draw = run in DRAWN and plots.figure_tools() is not None
    written = {os.path.basename(path) for path in plots.plot_e2e(target)} if draw else set()
    written.add(os.path.basename(tables.write_e2e_summary(target)))
    results = tables.read_e2e_results(target)
    assert results and "summary.md" in written
    dense = [row for row in results if row["variant"] == "dense"]
    assert dense and all(row["speedup_tokens"] == pytest.approx(1.0) for row in dense)
    if draw:
        committed = {path.name for path in run.glob("*.png")}
        assert {"e2e_tokens_per_s.png", "e2e_memory.png"} <= written and committed <= written
