"""The SpMV benchmark, smoke-tested on the CPU with tiny shapes.

What runs only on a GPU (CUDA events, the L2 flush, cuBLAS/cuSPARSE) is not
exercised here; these tests cover the sweep, the correctness check, the CSV,
the derived columns and the plots drawn from the CSV.
"""

import csv
import json
import math
import os
import runpy
import shutil

import pytest
import torch

import macko_spmv
from macko_spmv import bench

TINY_RUN = [
    "--device", "cpu",
    "--shapes", "64x96",
    "--densities", "0.5,0.1",
    "--dtypes", "float16,float32",
    "--batch", "1,2",
    "--repeats", "3",
    "--warmup", "1",
    "--bandwidth-bytes", str(1 << 20),
]  # fmt: skip


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert bench.main([*TINY_RUN, "--out", str(out)]) == 0
    return out


def read_csv(results_dir):
    with open(results_dir / "results.csv", newline="") as csv_file:
        reader = csv.DictReader(csv_file)
        return reader.fieldnames, list(reader)


def test_csv_has_one_row_per_case_and_every_column(results_dir):
    columns, rows = read_csv(results_dir)
    assert tuple(columns) == bench.CSV_COLUMNS
    cases = {(row["shape"], float(row["density"]), row["dtype"], int(row["batch"])) for row in rows}
    assert len(rows) == len(cases) == 2 * 2 * 2
    assert {row["shape"] for row in rows} == {"64x96"}
    assert all(row["l2_flush"] == "none (cpu)" for row in rows)
    assert all(row["torch"] == torch.__version__ for row in rows)


def test_derived_columns_are_finite_and_consistent(results_dir):
    for row in bench.read_results(results_dir):
        element_size = torch.finfo(bench.DTYPES[row["dtype"]]).bits // 8
        vector_bytes = row["batch"] * (row["rows"] + row["cols"]) * element_size
        dense_bytes = row["rows"] * row["cols"] * element_size
        for column in ("macko_us", "cublas_us", "macko_GBps", "cublas_GBps", "roofline_fraction",
                       "speedup_cublas", "peak_read_GBps", "peak_copy_GBps", "stored_fraction"):  # fmt: skip
            assert math.isfinite(row[column]) and row[column] > 0, (column, row)
        assert row["speedup_cublas"] == pytest.approx(row["cublas_us"] / row["macko_us"], rel=1e-3)
        expected_GBps = (row["macko_bytes"] + vector_bytes) / row["macko_us"] / 1e3
        assert row["macko_GBps"] == pytest.approx(expected_GBps, rel=1e-3)
        expected_cublas_GBps = (dense_bytes + vector_bytes) / row["cublas_us"] / 1e3
        assert row["cublas_GBps"] == pytest.approx(expected_cublas_GBps, rel=1e-3)
        assert row["roofline_fraction"] == pytest.approx(row["macko_GBps"] / row["peak_read_GBps"], rel=1e-3)
        # cuSPARSE may be missing for a dtype (fp16 CSR matmul on the CPU), and then so is its speedup.
        if math.isfinite(row["cusparse_us"]):
            assert row["speedup_cusparse"] == pytest.approx(row["cusparse_us"] / row["macko_us"], rel=1e-3)
        else:
            assert math.isnan(row["speedup_cusparse"])
        # The stored fraction is the compressed matrix's, about the density at these densities.
        assert row["stored_fraction"] >= 0.5 * row["density"]
        assert row["macko_bytes"] > 0


def test_meta_records_how_the_numbers_were_made(results_dir):
    meta = json.loads((results_dir / "meta.json").read_text())
    for key in ("gpu", "torch", "cuda", "date", "command", "method", "l2_flush", "peak_read_GBps"):
        assert meta[key] not in (None, "", []), key
    assert meta["command"].startswith("python -m macko_spmv bench --device cpu")
    assert meta["torch"] == torch.__version__


def test_plots_and_summary_are_drawn_from_the_csv_alone(results_dir, tmp_path):
    # Only the CSV is kept: the plots must not need anything else.
    only_csv = tmp_path / "only_csv"
    only_csv.mkdir()
    shutil.copy(results_dir / "results.csv", only_csv / "results.csv")
    assert bench.main(["--plot-only", str(only_csv)]) == 0
    for name in ("speedup.png", "bandwidth.png", "batch.png", "summary.md"):
        path = only_csv / name
        assert path.exists() and path.stat().st_size > 0, name
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (only_csv / "summary.md").read_text()
    assert summary.count("| 64x96 |") == 8
    # The full run also wrote them, with the command line from meta.json.
    assert "python -m macko_spmv bench" in (results_dir / "summary.md").read_text()
    assert (results_dir / "speedup.png").exists()


def test_single_batch_draws_no_batch_plot(tmp_path):
    run = [*TINY_RUN, "--dtypes", "float32", "--batch", "1", "--densities", "0.3", "--out", str(tmp_path)]
    assert bench.main(run) == 0
    assert (tmp_path / "speedup.png").exists() and (tmp_path / "bandwidth.png").exists()
    assert not (tmp_path / "batch.png").exists()


def test_a_wrong_product_aborts_the_run(tmp_path, monkeypatch):
    def wrong_multiply(A, x):
        return torch.zeros(*x.shape[:-1], A.rows, dtype=x.dtype, device=x.device)

    monkeypatch.setattr(macko_spmv, "multiply", wrong_multiply)
    with pytest.raises(bench.ResultMismatchError, match="MACKO multiply is wrong"):
        bench.main([*TINY_RUN, "--out", str(tmp_path)])


def test_one_wrong_entry_is_caught():
    W = bench.random_sparse_matrix(64, 96, 0.5, torch.float16, torch.device("cpu"), seed=1)
    x = bench.random_vectors(1, 96, torch.float16, torch.device("cpu"), seed=2)
    y_ref, magnitude = bench.reference_product(W, x)
    y = macko_spmv.multiply(macko_spmv.compress(W), x)
    bench.check_product(y, y_ref, magnitude, torch.float16, "exact")  # the real product passes
    nonzero = W[5].nonzero()[0, 0]
    wrong = y.clone()
    wrong[5] += W[5, nonzero] * x[nonzero]  # as if one entry were counted twice
    with pytest.raises(bench.ResultMismatchError):
        bench.check_product(wrong, y_ref, magnitude, torch.float16, "one entry twice")


def test_inputs_are_seeded_random_and_never_zero():
    device = torch.device("cpu")
    W = bench.random_sparse_matrix(200, 300, 0.3, torch.float16, device, seed=7)
    assert torch.equal(W, bench.random_sparse_matrix(200, 300, 0.3, torch.float16, device, seed=7))
    assert abs(float((W != 0).float().mean()) - 0.3) < 0.02
    dense = bench.random_sparse_matrix(20, 30, 1.0, torch.float16, device, seed=7)
    assert bool((dense != 0).all())
    x = bench.random_vectors(3, 30, torch.float16, device, seed=7)
    assert x.shape == (3, 30) and bool((x != 0).any())
    assert bench.random_vectors(1, 30, torch.float16, device, seed=7).shape == (30,)


def test_baselines_compute_the_same_product():
    W = bench.random_sparse_matrix(32, 48, 0.4, torch.float32, torch.device("cpu"), seed=3)
    for batch in (1, 3):
        x = bench.random_vectors(batch, 48, torch.float32, torch.device("cpu"), seed=4)
        y_ref, _ = bench.reference_product(W, x)
        csr_op, failure = bench.sparse_csr_op(W, x)
        assert failure is None
        y_csr = csr_op()
        y_csr = y_csr if batch == 1 else y_csr.T  # CSR @ x^T gives [rows, batch]
        torch.testing.assert_close(y_csr.double(), y_ref, rtol=1e-5, atol=1e-5)


def test_cli_rejects_bad_arguments():
    for bad in (["--shapes", "64by96"], ["--densities", "0"], ["--dtypes", "float64"], ["--batch", "0"]):
        with pytest.raises(SystemExit):
            bench.main([*bad, "--device", "cpu"])


def test_python_dash_m_dispatches_to_bench(tmp_path, monkeypatch):
    from macko_spmv import __main__ as cli

    seen = []
    monkeypatch.setattr(bench, "main", lambda argv: seen.append(argv) or 0)
    assert cli.main(["bench", "--device", "cpu"]) == 0
    assert seen == [["--device", "cpu"]]
    assert cli.main(["no-such-subcommand"]) == 2


def test_script_in_benchmarks_calls_the_same_main():
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "spmv.py")
    namespace = runpy.run_path(script, run_name="imported_by_the_test")  # not "__main__": defines, runs nothing
    assert namespace["main"] is bench.main
