"""The SpMV benchmark (python -m macko_spmv bench), smoke-tested on the CPU
with tiny shapes.

The CPU run goes through the sweep, both timings (back to back as a plain
loop), the route variable, the correctness checks, the CSV, the derived
columns, the report and the plots drawn from the CSV. What runs only on a
GPU (CUDA events, the L2 flush, graph capture) is checked with a stand-in in
test_timing.py and for real by the GPU test at the end.
"""

import csv
import json
import math
import os
import shutil

import pytest
import torch

import macko_spmv
from conftest import requires_cuda
from macko_spmv.bench import plots, spmv, tables

TINY_RUN = [
    "--device", "cpu",
    "--shapes", "64x96",
    "--densities", "0.5,0.1",
    "--dtypes", "float16,float32",
    "--batch", "1,2",
    "--repeats", "3",
    "--warmup", "1",
    "--graph-replays", "2",
    "--graph-cache-bytes", "4096",
    "--bandwidth-bytes", str(1 << 20),
]  # fmt: skip


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert spmv.main([*TINY_RUN, "--out", str(out)]) == 0
    return out


def read_csv(results_dir):
    with open(results_dir / "results.csv", newline="") as csv_file:
        reader = csv.DictReader(csv_file)
        return reader.fieldnames, list(reader)


def test_csv_has_one_row_per_case_and_every_column(results_dir):
    columns, rows = read_csv(results_dir)
    assert tuple(columns) == tables.SPMV_COLUMNS
    cases = {(row["shape"], float(row["density"]), row["dtype"], int(row["batch"])) for row in rows}
    assert len(rows) == len(cases) == 2 * 2 * 2
    assert {row["shape"] for row in rows} == {"64x96"} and {row["route"] for row in rows} == {"auto"}
    assert all(row["l2_flush"].startswith("none (cpu)") for row in rows)
    assert all(row["torch"] == torch.__version__ for row in rows)


def test_derived_columns_are_finite_and_consistent(results_dir):
    for row in tables.read_spmv_results(results_dir):
        element_size = torch.finfo(spmv.DTYPES[row["dtype"]]).bits // 8
        vector_bytes = row["batch"] * (row["rows"] + row["cols"]) * element_size
        dense_bytes = row["rows"] * row["cols"] * element_size
        for timing in ("flushed", "graph"):
            column = lambda name: tables.timed_column(name, timing)  # noqa: E731
            for name in ("macko_us", "cublas_us", "macko_GBps", "cublas_GBps", "roofline_fraction", "speedup_cublas"):
                assert math.isfinite(row[column(name)]) and row[column(name)] > 0, (column(name), row)
            assert row[column("speedup_cublas")] == pytest.approx(row[column("cublas_us")] / row[column("macko_us")],
                                                                  rel=1e-3)  # fmt: skip
            expected = (row["macko_bytes"] + vector_bytes) / row[column("macko_us")] / 1e3
            assert row[column("macko_GBps")] == pytest.approx(expected, rel=1e-3)
            expected = (dense_bytes + vector_bytes) / row[column("cublas_us")] / 1e3
            assert row[column("cublas_GBps")] == pytest.approx(expected, rel=1e-3)
            assert row[column("roofline_fraction")] == pytest.approx(row[column("macko_GBps")] / row["peak_read_GBps"],
                                                                     rel=1e-3)  # fmt: skip
            # cuSPARSE is missing for fp16 on the CPU (no CSR matmul there), and then so is its speedup.
            if row["dtype"] == "float16":
                assert math.isnan(row[column("cusparse_us")]) and math.isnan(row[column("speedup_cusparse")])
            else:
                assert row[column("speedup_cusparse")] == pytest.approx(
                    row[column("cusparse_us")] / row[column("macko_us")], rel=1e-3)
        # Back to back: enough copies to exceed 3x the 4 KiB "cache", at least 2.
        assert row["graph_copies_macko"] * row["macko_bytes"] > 3 * 4096 and row["graph_copies_macko"] >= 2
        assert row["graph_copies_cublas"] * dense_bytes > 3 * 4096 and row["graph_copies_cublas"] >= 2
        assert row["graph_calls_macko"] >= 3 * row["graph_copies_macko"]
        assert row["graph_note"] == ""
        assert row["stored_fraction"] >= 0.5 * row["density"] and row["macko_bytes"] > 0


def test_meta_records_how_the_numbers_were_made(results_dir):
    meta = json.loads((results_dir / "meta.json").read_text())
    for key in ("gpu", "torch", "cuda", "date", "command", "method", "l2_flush", "graph_method", "peak_read_GBps",
                "route", "timings"):
        assert meta[key] not in (None, "", []), key
    assert meta["command"].startswith("python -m macko_spmv bench --device cpu")
    assert meta["timings"] == ["flushed", "graph"] and meta["route"] == "auto"
    assert "back to back" in meta["graph_method"]


def test_report_prints_both_timings_and_the_speedup_by_batch(results_dir):
    report = tables.spmv_report(tables.read_spmv_results(results_dir))
    for heading in ("MACKO f us", "MACKO g us", "vs cuBLAS f", "vs cuBLAS g", "roofline g"):
        assert heading in report
    assert "Speedup over cuBLAS by batch size" in report and "batch 2" in report
    summary = (results_dir / "summary.md").read_text()
    assert "python -m macko_spmv bench" in summary and "g (graph): back to back" in summary
    assert summary.count("| 64x96 |") == 8 + 4  # the table, then the by-batch table


def test_plots_and_summary_are_drawn_from_the_csv_alone(results_dir, tmp_path):
    pytest.importorskip("matplotlib")
    only_csv = tmp_path / "only_csv"
    only_csv.mkdir()
    shutil.copy(results_dir / "results.csv", only_csv / "results.csv")
    assert spmv.main(["--plot-only", str(only_csv)]) == 0
    for name in ("speedup.png", "bandwidth.png", "batch.png", "speedup-graph.png", "bandwidth-graph.png",
                 "batch-graph.png", "summary.md"):
        path = only_csv / name
        assert path.exists() and path.stat().st_size > 0, name
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (results_dir / "speedup-graph.png").exists()


def test_plot_only_reads_csvs_of_older_versions(tmp_path):
    """A CSV without the route and back-to-back columns (as the committed
    results of earlier runs are) still gives its table and plots."""
    old_columns = [column for column in tables.SPMV_COLUMNS
                   if "graph" not in column and column != "route"]  # fmt: skip
    with open(tmp_path / "results.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=old_columns)
        writer.writeheader()
        for batch, macko in ((1, 10.0), (8, 30.0)):
            writer.writerow({**dict.fromkeys(old_columns, "x"), "rows": 64, "cols": 96, "density": 0.5, "batch": batch,
                             "macko_bytes": 100, "stored_fraction": 0.5, "macko_us": macko, "cublas_us": 20.0,
                             "cusparse_us": "nan", "macko_GBps": 1.0, "cublas_GBps": 1.0, "roofline_fraction": 0.1,
                             "speedup_cublas": 20.0 / macko, "speedup_cusparse": "nan", "peak_read_GBps": 10.0,
                             "peak_copy_GBps": 10.0})  # fmt: skip
    written = [os.path.basename(path) for path in plots.plot_spmv(tmp_path)]
    assert "summary.md" in written
    if plots.figure_tools() is not None:
        assert {"speedup.png", "bandwidth.png", "batch.png"} <= set(written)
        assert not any("graph" in name for name in written)
    report = tables.spmv_report(tables.read_spmv_results(tmp_path))
    assert "MACKO f us" in report and "MACKO g us" not in report and "2.00" in report


def test_timing_selection_and_route(tmp_path, monkeypatch):
    seen = []
    real_multiply = macko_spmv.multiply

    def recording_multiply(A, x):
        seen.append(os.environ.get(spmv.ROUTE_VARIABLE))
        return real_multiply(A, x)

    monkeypatch.setattr(macko_spmv, "multiply", recording_multiply)
    monkeypatch.delenv(spmv.ROUTE_VARIABLE, raising=False)
    run = [*TINY_RUN, "--dtypes", "float32", "--batch", "1", "--densities", "0.3", "--timing", "graph",
           "--route", "tiles", "--no-plot", "--out", str(tmp_path)]  # fmt: skip
    assert spmv.main(run) == 0
    assert seen and set(seen) == {"tiles"}  # every MACKO call, checks included, saw the route
    assert spmv.ROUTE_VARIABLE not in os.environ  # and it is gone afterwards
    (row,) = tables.read_spmv_results(tmp_path)
    assert row["route"] == "tiles"
    assert math.isnan(row["macko_us"]) and math.isfinite(row["macko_graph_us"])
    assert not (tmp_path / "speedup.png").exists() and (tmp_path / "summary.md").exists()
    monkeypatch.setenv(spmv.ROUTE_VARIABLE, "stream")
    with spmv.multiply_route("dense"):
        assert os.environ[spmv.ROUTE_VARIABLE] == "dense"
    assert os.environ[spmv.ROUTE_VARIABLE] == "stream"  # restored


def test_single_batch_draws_no_batch_plot(tmp_path):
    pytest.importorskip("matplotlib")
    run = [*TINY_RUN, "--dtypes", "float32", "--batch", "1", "--densities", "0.3", "--timing", "flushed",
           "--out", str(tmp_path)]  # fmt: skip
    assert spmv.main(run) == 0
    assert (tmp_path / "speedup.png").exists() and (tmp_path / "bandwidth.png").exists()
    assert not (tmp_path / "batch.png").exists() and not (tmp_path / "speedup-graph.png").exists()


@pytest.mark.parametrize("timing", ["flushed", "graph"])
def test_a_wrong_product_aborts_the_run(tmp_path, monkeypatch, timing):
    from macko_spmv.bench.matrices import ResultMismatchError

    real_multiply = macko_spmv.multiply
    calls = []

    def wrong_multiply(A, x):  # right eagerly (the first call of a case), wrong back to back
        calls.append(1)
        y = real_multiply(A, x)
        return y if (timing == "graph" and len(calls) == 1) else torch.zeros_like(y)

    monkeypatch.setattr(macko_spmv, "multiply", wrong_multiply)
    match = "back to back" if timing == "graph" else "eager"
    with pytest.raises(ResultMismatchError, match=f"MACKO multiply \\({match}\\) is wrong"):
        spmv.main([*TINY_RUN, "--timing", timing, "--out", str(tmp_path)])


def test_baselines_compute_the_same_product(gen):
    from conftest import random_pruned
    from macko_spmv.bench.matrices import reference_product

    W = random_pruned(32, 48, 0.4, torch.float32, gen)
    for batch in (1, 3):
        x = torch.randn(48, generator=gen) if batch == 1 else torch.randn(batch, 48, generator=gen)
        y_ref, _ = reference_product(W, x)
        W_csr, failure = spmv.to_csr(W, x)
        assert failure is None
        y_csr = spmv.csr_call(W_csr, spmv.csr_operand(x))()
        y_csr = y_csr if batch == 1 else y_csr.T  # CSR @ x^T gives [rows, batch]
        torch.testing.assert_close(y_csr.double(), y_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(spmv.dense_call(W, x)().double(), y_ref, rtol=1e-5, atol=1e-5)
        assert spmv.csr_bytes(W_csr) == 33 * 8 + W_csr.values().numel() * (4 + 8)


def test_cli_rejects_bad_arguments():
    for bad in (["--shapes", "64by96"], ["--densities", "0"], ["--dtypes", "float64"], ["--batch", "0"],
                ["--batch", "4096"], ["--timing", "fast"], ["--route", "Tiles!"]):  # fmt: skip
        with pytest.raises(SystemExit):
            spmv.main([*bad, "--device", "cpu"])
    assert spmv.parse_batches("1,2,4,8,16,32,64,128,512,2048")[-1] == 2048


def test_python_dash_m_dispatches_to_bench(monkeypatch):
    from macko_spmv import __main__ as cli

    seen = []
    monkeypatch.setattr(spmv, "main", lambda argv: seen.append(argv) or 0)
    assert cli.main(["bench", "--device", "cpu"]) == 0
    assert seen == [["--device", "cpu"]]
    assert cli.main(["no-such-subcommand"]) == 2


def test_demo_runs_on_the_cpu(capsys):
    from macko_spmv import __main__ as cli

    assert cli.main(["demo", "--size", "200", "--densities", "0.5,0.1", "--device", "cpu"]) == 0
    assert "all products match float64 dense math" in capsys.readouterr().out


@requires_cuda
def test_tiny_gpu_run_with_both_timings(tmp_path):
    argv = ["--device", "cuda", "--shapes", "512x1024", "--densities", "0.5", "--dtypes", "float16,float32",
            "--batch", "1,8", "--repeats", "10", "--graph-replays", "3", "--no-plot", "--out", str(tmp_path)]
    assert spmv.main(argv) == 0
    for row in tables.read_spmv_results(tmp_path):
        for column in ("macko_us", "cublas_us", "macko_graph_us", "cublas_graph_us"):
            assert math.isfinite(row[column]) and row[column] > 0, (column, row)
        assert row["graph_copies_macko"] * row["macko_bytes"] > 3 * torch.cuda.get_device_properties(0).L2_cache_size
