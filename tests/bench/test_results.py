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
# The runs of python -m macko_spmv bench (spmv, batch) and e2e; compress-*
# folders come from benchmarks/compress.py, which draws no plots.
RUNS = sorted(path.parent for path in RESULTS.glob("*/*/results.csv") if path.parent.name in ("spmv", "batch", "e2e"))
# The oldest run of each kind: its plots are drawn.
DRAWN = {min((run for run in RUNS if run.name == kind), key=lambda run: run.parent.name)
         for kind in {run.name for run in RUNS}}  # fmt: skip
# A kind of run: (read the rows, write summary.md, draw the plots, PNGs that must be drawn).
KINDS = {
    "spmv": (tables.read_spmv_results, tables.write_spmv_summary, plots.plot_spmv, {"speedup.png", "bandwidth.png"}),
    "e2e": (tables.read_e2e_results, tables.write_e2e_summary, plots.plot_e2e,
            {"e2e_tokens_per_s.png", "e2e_memory.png"}),
}


@pytest.mark.skipif(not RUNS, reason="no benchmarks/results folder beside the tests")
@pytest.mark.parametrize("run", RUNS, ids=lambda run: f"{run.parent.name}/{run.name}")
def test_results_redraw_from_their_csv(run, tmp_path):
    read, summarize, draw, expected = KINDS["e2e" if run.name == "e2e" else "spmv"]
    target = tmp_path / run.parent.name / run.name
    target.mkdir(parents=True)
    for name in ("results.csv", "meta.json"):
        if (run / name).exists():
            shutil.copy(run / name, target / name)
    drawing = run in DRAWN and plots.figure_tools() is not None
    written = {os.path.basename(path) for path in draw(target)} if drawing else set()
    written.add(os.path.basename(summarize(target)))
    results = read(target)
    assert results and "summary.md" in written
    if run.name == "e2e":
        dense = [row for row in results if row["variant"] == "dense"]
        assert dense and all(row["speedup_tokens"] == pytest.approx(1.0) for row in dense)
    else:
        assert tables.spmv_report(results).count("\n") >= len(results) + 1
    if drawing:
        committed = {path.name for path in run.glob("*.png")}
        assert expected <= written and committed <= written, "a committed plot that --plot-only no longer draws"
