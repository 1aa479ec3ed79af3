"""benchmarks/cpu_multiply.py end to end on a tiny size: every section's
rows reach the CSV with their ratios, and the tables and plots are drawn
from it."""

import csv
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script():
    path = os.path.join(ROOT, "benchmarks", "cpu_multiply.py")
    if not os.path.exists(path):  # the tests of an installed wheel run from a copy of tests/ alone
        pytest.skip("needs the checkout's benchmarks/cpu_multiply.py")
    spec = importlib.util.spec_from_file_location("cpu_multiply", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_multiply_benchmark_small(tmp_path):
    pytest.importorskip("matplotlib")
    script = load_script()
    out = tmp_path / "run"
    args = ["--out", str(out), "--size", "256", "--dtypes", "float16,float32", "--batches", "1,3,70",
            "--runs", "2", "--min-runs", "1", "--vector-repeats", "2", "--budget", "0", "--sections", "vector,batch,layers", "--layer-tokens", "3"]
    assert script.main(args) == 0
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    macko = [r for r in rows if r["impl"].startswith("macko") and r["section"] != "layers"]
    assert all(float(r["vs_dense_same_dtype"]) > 0 for r in rows if r["section"] == "layers" and r["impl"] != "nn.Linear")
    assert {r["section"] for r in rows} == {"vector", "x-values", "batch", "layers"}
    assert {r["impl"] for r in rows if r["section"] == "layers"} == {
        "nn.Linear", "MackoLinear", "macko op, bias fused", "macko op, bias after"}
    assert all(float(r["vs_dense_same_dtype"]) > 0 and float(r["vs_dense_fp32"]) > 0 for r in macko)
    assert {r["impl"] for r in rows if r["section"] == "batch" and r["batch"] == "3"} >= {
        "macko", "macko route=vector", "macko route=sparse", "macko route=dense"}
    assert len([r for r in rows if r["section"] == "vector" and r["impl"] == "macko"]) == 2 * 2 * 2
    for name in ("meta.json", "tables.md", "batch_speedup.png", "vector_speedup.png"):
        assert (out / name).stat().st_size > 0
    assert "One vector" in (out / "tables.md").read_text()
    assert "MiniLM's layer shapes" in (out / "tables.md").read_text()
