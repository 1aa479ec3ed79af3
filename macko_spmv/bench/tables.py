"""The benchmarks' results files and tables: the CSV schemas, writing and
reading the CSVs, and the text and markdown tables (summary.md) made from
them. Everything that reports reads the saved CSV, never live numbers."""

import csv
import math
import os
from dataclasses import dataclass
from typing import Callable, Union

from .records import read_meta

# --------------------------------------------------------------------------
# Numbers


def rounded(value, digits):
    """value to ``digits`` decimals (NaN stays NaN)."""
    return round(value, digits) if math.isfinite(value) else math.nan


def significant(value, digits=5):
    """value to ``digits`` significant digits (NaN stays NaN): rates and
    ratios span orders of magnitude between a GPU and a CPU run."""
    if not math.isfinite(value) or value == 0:
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def ratio(numerator, denominator):
    """numerator / denominator, NaN unless both are finite and the
    denominator is not zero."""
    if not (math.isfinite(numerator) and math.isfinite(denominator)) or denominator == 0:
        return math.nan
    return numerator / denominator


def gb_per_s(nbytes, time_us):
    """Bytes per microsecond as GB/s (1 GB = 1e9 bytes); NaN for no time."""
    if not (math.isfinite(time_us) and time_us > 0):
        return math.nan
    return nbytes / time_us / 1e3


def gib(nbytes):
    return nbytes / 2**30 if math.isfinite(nbytes) else math.nan


def finite_max(*values):
    """The largest non-NaN value (NaN when all are NaN)."""
    values = [value for value in values if not math.isnan(value)]
    return max(values) if values else math.nan


def unique(items):
    """The distinct items in first-seen order."""
    return list(dict.fromkeys(items))


# --------------------------------------------------------------------------
# CSV files


def csv_cell(value):
    """A value as the CSV holds it: floats to 6 significant digits, NaN as
    "nan", None as empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return value


class ResultsWriter:
    """DIR/results.csv, a row written (and flushed) as soon as it is known,
    so that a run cut short keeps what it measured. With ``append``, rows go
    after those of an earlier run, whose header must be the same."""

    def __init__(self, path, columns, append=False):
        self.columns = tuple(columns)
        appending = append and os.path.exists(path)
        if appending:
            with open(path, newline="") as existing:
                header = next(csv.reader(existing), None)
            if header != list(self.columns):
                raise SystemExit(f"{path} has other columns than this version writes; use another --out")
        self.file = open(path, "a" if appending else "w", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=self.columns)
        if not appending:
            self.writer.writeheader()

    def write(self, row):
        self.writer.writerow({column: csv_cell(row.get(column, "")) for column in self.columns})
        self.file.flush()

    def close(self):
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_rows(path, columns, text_columns, integer_columns=()):
    """The rows of a results CSV as dicts with every one of ``columns``:
    text columns as strings, integer columns as int, the rest as float; a
    column the file lacks (written by an older version) or an empty cell is
    "" for text and NaN for numbers. Columns not in ``columns`` are left out."""
    rows = []
    with open(path, newline="") as csv_file:
        for record in csv.DictReader(csv_file):
            row = {}
            for column in columns:
                text = record.get(column)
                if column in text_columns:
                    row[column] = text or ""
                elif text in (None, ""):
                    row[column] = math.nan
                elif column in integer_columns:
                    row[column] = int(float(text))
                else:
                    row[column] = float(text)
            rows.append(row)
    return rows


# --------------------------------------------------------------------------
# Tables


@dataclass(frozen=True)
class Column:
    """A table column: its heading, the CSV column (or a function of a row)
    it shows, and the format of a number."""

    heading: str
    value: Union[str, Callable]
    spec: str = ""

    def cell(self, row):
        value = self.value(row) if callable(self.value) else row[self.value]
        if isinstance(value, str):
            return value
        return "n/a" if not math.isfinite(value) else format(value, self.spec)

    def has_data(self, rows):
        for row in rows:
            value = self.value(row) if callable(self.value) else row[self.value]
            if isinstance(value, str) or math.isfinite(value):
                return True
        return False


def with_data(columns, rows):
    """The columns that hold a value in at least one row."""
    return [column for column in columns if column.has_data(rows)]


def text_table(columns, rows):
    """An aligned plain-text table."""
    headings = [column.heading for column in columns]
    lines = [[column.cell(row) for column in columns] for row in rows]
    widths = [max(len(cell) for cell in cells) for cells in zip(headings, *lines)]

    def render(cells):
        return "  ".join(cell.rjust(width) for cell, width in zip(cells, widths))

    return "\n".join([render(headings), render(["-" * width for width in widths]), *map(render, lines)])


def markdown_table(columns, rows):
    headings = [column.heading for column in columns]
    lines = ["| " + " | ".join(headings) + " |", "| " + " | ".join("---" for _ in headings) + " |"]
    lines += ["| " + " | ".join(column.cell(row) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def run_header(title, results, meta, versions=("torch", "cuda")):
    """summary.md's first lines: the title, the commands, the device (with
    the driver), versions and date: from meta.json where the run wrote one,
    else from the CSV's first row."""
    first = results[0] if results else {}

    def fact(key):
        return meta.get(key) or first.get(key, "?")

    lines = [f"## {title} on {fact('gpu')}", ""]
    for command in meta.get("commands") or ([meta["command"]] if meta.get("command") else []):
        lines.append(f"- Command: `{command}`")
    driver = f", driver {meta['driver']}" if meta.get("driver") else ""
    version = f", macko-spmv {meta['macko_spmv']}" if meta.get("macko_spmv") else ""
    lines += [
        f"- Device: {fact('gpu')}{driver}",
        "- " + ", ".join(f"{name} {fact(name)}" for name in versions) + version,
        f"- Date: {fact('date')}",
    ]
    return lines


def write_text(path, lines):
    with open(path, "w") as file:
        file.write("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------
# The SpMV benchmark (python -m macko_spmv bench)

# Timings: the suffix of their CSV columns, and their tag in tables.
TIMINGS = {"flushed": "", "graph": "_graph"}
TIMING_TAGS = {"flushed": "f", "graph": "g"}
# The ops timed: MACKO multiply and its baselines.
SPMV_OPS = ("macko", "cublas", "cusparse")
BASELINES = ("cublas", "cusparse")


def timed_column(name, timing):
    """The CSV column of a per-timing quantity, e.g. ("macko_us", "graph")
    -> "macko_graph_us", ("speedup_cublas", "graph") -> "speedup_cublas_graph"."""
    suffix = TIMINGS[timing]
    if name.endswith("_us") or name.endswith("_GBps"):
        stem, _, unit = name.rpartition("_")
        return f"{stem}{suffix}_{unit}"
    return name + suffix


SPMV_COLUMNS = (
    "gpu", "torch", "cuda", "date", "shape", "rows", "cols", "density", "dtype", "batch", "route",
    "stored_fraction", "macko_bytes",
    *(timed_column(name, timing) for timing in TIMINGS for name in (
        "macko_us", "cublas_us", "cusparse_us", "macko_GBps", "cublas_GBps", "roofline_fraction",
        "speedup_cublas", "speedup_cusparse")),
    *(f"graph_{what}_{op}" for what in ("copies", "calls") for op in SPMV_OPS),
    "peak_read_GBps", "peak_copy_GBps", "l2_flush", "graph_note",
)  # fmt: skip
SPMV_TEXT_COLUMNS = {"gpu", "torch", "cuda", "date", "shape", "dtype", "route", "l2_flush", "graph_note"}
SPMV_INTEGER_COLUMNS = {"rows", "cols", "batch", "macko_bytes"}


def read_spmv_results(results_dir):
    """The rows of DIR/results.csv of the SpMV benchmark."""
    return read_rows(os.path.join(results_dir, "results.csv"), SPMV_COLUMNS, SPMV_TEXT_COLUMNS,
                     SPMV_INTEGER_COLUMNS)  # fmt: skip


def measured_timings(results):
    """The timings with at least one MACKO time in the results."""
    return [timing for timing in TIMINGS
            if any(math.isfinite(row[timed_column("macko_us", timing)]) for row in results)]  # fmt: skip


def spmv_columns(timings):
    columns = [Column("shape", "shape"), Column("dtype", "dtype"), Column("batch", "batch", "d"),
               Column("density", "density", "g"), Column("route", "route"),
               Column("stored", "stored_fraction", ".3f")]  # fmt: skip
    for timing in timings:
        tag = TIMING_TAGS[timing]
        columns += [
            Column(f"MACKO {tag} us", timed_column("macko_us", timing), ".1f"),
            Column(f"cuBLAS {tag} us", timed_column("cublas_us", timing), ".1f"),
            Column(f"cuSPARSE {tag} us", timed_column("cusparse_us", timing), ".1f"),
            Column(f"vs cuBLAS {tag}", timed_column("speedup_cublas", timing), ".2f"),
            Column(f"vs cuSPARSE {tag}", timed_column("speedup_cusparse", timing), ".2f"),
            Column(f"roofline {tag}", timed_column("roofline_fraction", timing), ".1%"),
        ]
    return columns


def speedup_by_batch(results, timings):
    """(columns, rows) of a table with one row per matrix (shape, dtype,
    density, route) and one column per batch size: MACKO's speedup over
    cuBLAS, for each timing ("f / g")."""
    batches = sorted(unique(row["batch"] for row in results))
    keys = unique((row["shape"], row["dtype"], row["density"], row["route"]) for row in results)
    by_case = {(row["shape"], row["dtype"], row["density"], row["route"], row["batch"]): row for row in results}
    table_rows = []
    for shape, dtype, density, route in keys:
        table_row = {"shape": shape, "dtype": dtype, "density": density, "route": route}
        for batch in batches:
            row = by_case.get((shape, dtype, density, route, batch))
            cells = []
            for timing in timings:
                value = row[timed_column("speedup_cublas", timing)] if row else math.nan
                cells.append("n/a" if not math.isfinite(value) else f"{value:.2f}")
            table_row[f"batch {batch}"] = " / ".join(cells)
        table_rows.append(table_row)
    columns = [Column("shape", "shape"), Column("dtype", "dtype"), Column("density", "density", "g"),
               Column("route", "route")] + [Column(f"batch {batch}", f"batch {batch}") for batch in batches]
    return columns, table_rows


def spmv_report(results):
    """The printed report: the table of every case and, with several batch
    sizes, the speedup over cuBLAS per batch."""
    timings = measured_timings(results) or ["flushed"]
    parts = [text_table(with_data(spmv_columns(timings), results), results)]
    if len(unique(row["batch"] for row in results)) > 1:
        tags = " / ".join(f"{TIMING_TAGS[timing]} ({timing})" for timing in timings)
        columns, rows = speedup_by_batch(results, timings)
        parts += ["", f"Speedup over cuBLAS by batch size, {tags}:", text_table(columns, rows)]
    return "\n".join(parts)


def write_spmv_summary(results_dir):
    """DIR/summary.md: the CSV's tables with the command, device, versions
    and date that produced them, for pasting into the README."""
    results = read_spmv_results(results_dir)
    meta = read_meta(results_dir)
    timings = measured_timings(results) or ["flushed"]
    lines = run_header("SpMV", results, meta)
    if results:
        first = results[0]
        lines.append(f"- Peak read bandwidth measured in the same run: {first['peak_read_GBps']:.0f} GB/s "
                     f"(`sum`); copy {first['peak_copy_GBps']:.0f} GB/s (read + write)")  # fmt: skip
        repeats = f"median of {meta['repeats']} runs" if meta.get("repeats") else "medians"
        if "flushed" in timings:
            lines.append(f"- f (flushed): {repeats}; L2 flush: {first['l2_flush']}")
        if "graph" in timings:
            lines.append(f"- g (graph): {meta.get('graph_method') or 'back to back in a CUDA graph'}")
    lines += ["", markdown_table(with_data(spmv_columns(timings), results), results)]
    if len(unique(row["batch"] for row in results)) > 1:
        columns, rows = speedup_by_batch(results, timings)
        tags = " / ".join(TIMING_TAGS[timing] for timing in timings)
        lines += ["", f"Speedup over cuBLAS by batch size ({tags}):", "", markdown_table(columns, rows)]
    notes = unique(row["graph_note"] for row in results if row["graph_note"])
    if notes:
        lines += ["", "Notes on the back-to-back timing:", ""] + [f"- {note}" for note in notes]
    return write_text(os.path.join(results_dir, "summary.md"), lines)


# --------------------------------------------------------------------------
# The end-to-end benchmark (python -m macko_spmv e2e)

E2E_COLUMNS = (
    "gpu", "torch", "cuda", "transformers", "date", "config", "dtype", "variant", "density", "pruned",
    "compile", "batch", "prompt_len", "new_tokens", "cache_len", "runs",
    "prefill_ms", "prefill_ms_min", "prefill_ms_max", "decode_ms", "tokens_per_s", "tokens_per_s_min",
    "tokens_per_s_max", "ms_per_token", "total_ms",
    "weight_bytes", "decoder_linear_bytes", "converted_layers", "peak_decode_bytes", "peak_variant_bytes",
    "allocated_at_start_bytes", "build_s", "prune_s", "conversion_s", "compile_s", "warmup_s",
    "check_forward_err", "check_decode_err", "check_tolerance", "check_passed", "profile_macko_frac",
    "profile_macko_decompress_frac", "profile_attention_frac", "profile_dense_mm_frac", "profile_other_frac", "profile_idle_frac",
)  # fmt: skip
E2E_TEXT_COLUMNS = {"gpu", "torch", "cuda", "transformers", "date", "config", "dtype", "variant", "compile"}


def e2e_variant_name(kind, values):
    """The variant column: "dense", "macko" (values in the model's dtype,
    ``values`` "same": what every run before --values wrote), or
    "macko-<values>" for 8-bit values, e.g. "macko-int8"."""
    return kind if values == "same" else f"{kind}-{values}"


def e2e_variant_values(variant):
    """The --values of a variant column's name: "same", "int8", ..."""
    return variant.partition("-")[2] or "same"


def read_e2e_results(results_dir):
    """The rows of DIR/results.csv of the end-to-end benchmark, each with
    its speedups over the dense row of its scenario (see e2e_scenario)."""
    return with_e2e_speedups(read_rows(os.path.join(results_dir, "results.csv"), E2E_COLUMNS, E2E_TEXT_COLUMNS))


def e2e_scenario(row):
    """Rows measured alike (model, dtype, decode settings, batch, prompt)
    share a key; a variant's speedups are over the dense row with its key."""
    return (row["gpu"], row["config"], row["dtype"], row["compile"], row["batch"], row["prompt_len"],
            row["new_tokens"])  # fmt: skip


def with_e2e_speedups(results):
    """The rows with speedup_tokens (tokens/s over dense), speedup_prefill
    and speedup_total (dense time over this time): above 1 is faster."""
    dense = {e2e_scenario(row): row for row in results if row["variant"] == "dense"}
    out = []
    for row in results:
        base = dense.get(e2e_scenario(row))
        out.append({
            **row,
            "speedup_tokens": ratio(row["tokens_per_s"], base["tokens_per_s"]) if base else math.nan,
            "speedup_prefill": ratio(base["prefill_ms"], row["prefill_ms"]) if base else math.nan,
            "speedup_total": ratio(base["total_ms"], row["total_ms"]) if base else math.nan,
        })
    return out


E2E_TABLE = (
    Column("config", "config"),
    Column("dtype", "dtype"),
    Column("variant", "variant"),
    Column("density", "density", "g"),
    Column("batch", "batch", ".0f"),
    Column("prompt", "prompt_len", ".0f"),
    Column("TTFT ms", "prefill_ms", ".1f"),
    Column("vs dense", "speedup_prefill", ".2f"),
    Column("tok/s", "tokens_per_s", ".1f"),
    Column("vs dense", "speedup_tokens", ".2f"),
    Column("total ms", "total_ms", ".0f"),
    Column("vs dense", "speedup_total", ".2f"),
    Column("peak GiB", lambda row: gib(row["peak_decode_bytes"]), ".2f"),
    Column("weights GiB", lambda row: gib(row["weight_bytes"]), ".2f"),
    Column("compile s", "compile_s", ".1f"),
    Column("check err", lambda row: finite_max(row["check_forward_err"], row["check_decode_err"]), ".2e"),
)


def e2e_report(results):
    return text_table(with_data(E2E_TABLE, results), results)


def write_e2e_summary(results_dir):
    """DIR/summary.md: the table with the command, device, versions and date."""
    results = read_e2e_results(results_dir)
    meta = read_meta(results_dir)
    lines = run_header("End-to-end generation", results, meta, versions=("torch", "cuda", "transformers"))
    lines += [
        "- TTFT: time to first token, the eager prefill of the prompt (batch x prompt tokens) and the first "
        "token's argmax; tok/s: new tokens of the whole batch per second of decoding (the median run), one "
        "compiled step per token; total: prefill + decoding of all new tokens; vs dense: the dense row of the "
        "same batch and prompt over this row's time (for tok/s: this row's rate over dense). peak = "
        "torch.cuda.max_memory_allocated during compile, warm-up and timed decoding; dense = the unpruned "
        "model; macko = decoder linear layers pruned per row to the density and converted with sparsify "
        "(lm_head and embeddings dense); macko-int8, macko-float8_e4m3fn = the same with 8-bit values, one "
        "scale per output row (--values).",
        "",
        markdown_table(with_data(E2E_TABLE, results), results),
    ]
    return write_text(os.path.join(results_dir, "summary.md"), lines)
