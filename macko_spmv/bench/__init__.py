"""The project's tools, apart from the library: the benchmarks and the demo
(``python -m macko_spmv bench|e2e|demo``) and what they share.

- timing: every timer (flushed CUDA events, back to back in a CUDA graph, CPU);
- matrices: random pruned matrices, vectors and the float64 reference check,
  for the tests too;
- records: the machine, versions and command of a run (meta.json);
- tables: the results CSVs, their text and markdown tables (summary.md);
- plots: the figures drawn from the CSVs (needs matplotlib);
- spmv, e2e, demo: the commands.

Nothing in the library imports this package. Its modules import only torch
and the library at import time; transformers and matplotlib are imported
when a command needs them (``pip install macko-spmv[bench]``).
"""
