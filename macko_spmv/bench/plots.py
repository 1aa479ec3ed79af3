"""The benchmarks' figures, each drawn from a results CSV alone (through
tables.read_*_results), so that ``--plot-only DIR`` redraws them from saved
data. Needs matplotlib (``pip install macko-spmv[bench]``); without it the
plots are skipped with a note and only summary.md is written."""

import math
import os
import statistics
import sys
import textwrap

from . import records, tables
from .tables import TIMING_TAGS, timed_column, unique


def figure_tools():
    """(Figure, FigureCanvasAgg, colormaps) from matplotlib, or None (with a
    note on stderr) where matplotlib is not installed."""
    try:
        from matplotlib import colormaps
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print("matplotlib is not installed (pip install macko-spmv[bench]); skipping the plots", file=sys.stderr)
        return None
    return Figure, FigureCanvasAgg, colormaps


def new_figure(tools, count, panel_width=6, panel_height=4.5, max_columns=3):
    """A figure with ``count`` panels in a grid; returns (figure, axes)."""
    Figure, FigureCanvasAgg, _ = tools
    columns = min(max(count, 1), max_columns)
    figure_rows = math.ceil(max(count, 1) / columns)
    figure = Figure(figsize=(panel_width * columns, panel_height * figure_rows), layout="constrained")
    FigureCanvasAgg(figure)  # renders to PNG without a display or pyplot's global state
    axes = figure.subplots(figure_rows, columns, squeeze=False).flatten()
    for unused in axes[count:]:
        unused.set_visible(False)
    return figure, axes


def set_caption(figure, text, fontsize):
    """The figure's title line of run facts, wrapped to the figure's width
    (a character is about 0.55 of the font size wide)."""
    width_chars = max(20, int(figure.get_figwidth() * 72 / (0.55 * fontsize)))
    figure.suptitle(textwrap.fill(text, width_chars), fontsize=fontsize)


def save(figure, results_dir, name, written):
    path = os.path.join(results_dir, name)
    figure.savefig(path, dpi=120)
    written.append(path)


def finish_axis(axis, xlabel, ylabel, title, legend_columns=1):
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(True, alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=7, ncol=legend_columns)


def log2_axis(axis, values):
    """A base-2 log x axis with a tick at each measured value, labelled plainly."""
    values = sorted(unique(values))
    axis.set_xscale("log", base=2)
    axis.set_xticks(values, [f"{value:g}" for value in values])
    axis.minorticks_off()


def finite_points(points):
    return [point for point in points if all(math.isfinite(value) for value in point)]


# --------------------------------------------------------------------------
# The SpMV benchmark


def plot_spmv(results_dir):
    """Writes DIR/summary.md and draws, from DIR/results.csv, for each timing
    measured (flushed: no suffix; back to back: "-graph"): speedup*.png
    (speedup over cuBLAS and cuSPARSE against density), bandwidth*.png
    (MACKO's effective bandwidth against density, with the measured peak)
    and, with several batch sizes, batch*.png (time against batch, cuBLAS
    beside MACKO). Returns the paths written."""
    written = [tables.write_spmv_summary(results_dir)]
    tools = figure_tools()
    results = tables.read_spmv_results(results_dir)
    if tools is None or not results:
        return written
    shapes = unique(row["shape"] for row in results)
    colors = {shape: f"C{index % 10}" for index, shape in enumerate(shapes)}
    panels = unique((row["dtype"], row["batch"]) for row in results)
    first = results[0]

    for timing in tables.measured_timings(results):
        suffix = "" if timing == "flushed" else "-" + timing
        on_cpu = first["gpu"].startswith("CPU ")
        method = (f"L2 flush: {first['l2_flush']}" if timing == "flushed"
                  else "back to back, a loop" if on_cpu else "back to back in a CUDA graph")  # fmt: skip

        def caption(figure, method=method):
            set_caption(figure, f"{first['gpu']}, torch {first['torch']}, CUDA {first['cuda']}, {first['date']}; "
                                f"{timing} timing ({method})", fontsize=9)  # fmt: skip

        figure, axes = new_figure(tools, len(panels))
        for axis, (dtype_name, batch) in zip(axes, panels):
            for shape in shapes:
                rows = [row for row in results
                        if row["shape"] == shape and row["dtype"] == dtype_name and row["batch"] == batch]  # fmt: skip
                for baseline, style, alpha in (("cublas", "o-", 1.0), ("cusparse", "s--", 0.6)):
                    column = timed_column(f"speedup_{baseline}", timing)
                    points = finite_points(sorted((row["density"], row[column]) for row in rows))
                    if points:
                        axis.plot(*zip(*points), style, color=colors[shape], alpha=alpha,
                                  label=f"{shape} vs {'cuBLAS' if baseline == 'cublas' else 'cuSPARSE'}")
            axis.axhline(1.0, color="black", linewidth=1)
            finish_axis(axis, "density", "speedup (baseline time / MACKO time)",
                        f"MACKO speedup ({timing}), {dtype_name}, batch {batch}")
        caption(figure)
        save(figure, results_dir, f"speedup{suffix}.png", written)

        figure, axes = new_figure(tools, len(panels))
        peak_read = first["peak_read_GBps"]
        column = timed_column("macko_GBps", timing)
        for axis, (dtype_name, batch) in zip(axes, panels):
            for shape in shapes:
                points = finite_points(sorted(
                    (row["density"], row[column]) for row in results
                    if row["shape"] == shape and row["dtype"] == dtype_name and row["batch"] == batch))
                if points:
                    axis.plot(*zip(*points), "o-", color=colors[shape], label=shape)
            if math.isfinite(peak_read):
                axis.axhline(peak_read, color="black", linestyle=":", label=f"peak read {peak_read:.0f} GB/s")
            axis.set_ylim(bottom=0)
            finish_axis(axis, "density", "MACKO effective bandwidth (GB/s)",
                        f"MACKO bandwidth ({timing}), {dtype_name}, batch {batch}")
        caption(figure)
        save(figure, results_dir, f"bandwidth{suffix}.png", written)

        # Time against batch size: a panel per shape and dtype, a line per
        # density; cuBLAS reads the whole matrix whatever its density, so
        # it is drawn once (the median over the densities measured).
        batches = unique(row["batch"] for row in results)
        if len(batches) > 1:
            shape_panels = unique((row["shape"], row["dtype"]) for row in results)
            densities = sorted(unique(row["density"] for row in results), reverse=True)
            figure, axes = new_figure(tools, len(shape_panels))
            density_colors = tools[2]["viridis"]
            macko, cublas = timed_column("macko_us", timing), timed_column("cublas_us", timing)
            for axis, (shape, dtype_name) in zip(axes, shape_panels):
                panel_rows = [row for row in results if row["shape"] == shape and row["dtype"] == dtype_name]
                for index, density in enumerate(densities):
                    points = finite_points(sorted((row["batch"], row[macko]) for row in panel_rows
                                                  if row["density"] == density))  # fmt: skip
                    if points:
                        color = density_colors(index / max(len(densities) - 1, 1))
                        axis.plot(*zip(*points), "o-", color=color, label=f"MACKO d={density:g}")
                cublas_points = []
                for batch in sorted(unique(row["batch"] for row in panel_rows)):
                    times = [row[cublas] for row in panel_rows if row["batch"] == batch and math.isfinite(row[cublas])]
                    if times:
                        cublas_points.append((batch, statistics.median(times)))
                if cublas_points:
                    axis.plot(*zip(*cublas_points), "k--", linewidth=2, label="cuBLAS (dense)")
                log2_axis(axis, [row["batch"] for row in panel_rows])
                axis.set_yscale("log")
                finish_axis(axis, "batch (vectors per call)", f"time ({TIMING_TAGS[timing]}: {timing}, us, median)",
                            f"{shape}, {dtype_name}", legend_columns=2)
            caption(figure)
            save(figure, results_dir, f"batch{suffix}.png", written)
    return written


# --------------------------------------------------------------------------
# The end-to-end benchmark


def plot_e2e(results_dir):
    """Writes DIR/summary.md and draws, from DIR/results.csv:
    e2e_tokens_per_s.png (decode tokens/s against density, a line per batch
    and prompt and MACKO variant (a marker per value type), dense as dashed
    lines), e2e_prefill.png (time to first token against prompt length, a
    line per variant), e2e_total.png (prompt + new tokens against prompt
    length) and e2e_memory.png (peak memory and weights against density, a
    line per MACKO variant). Returns the paths written."""
    written = [tables.write_e2e_summary(results_dir)]
    tools = figure_tools()
    results = tables.read_e2e_results(results_dir)
    if tools is None or not results:
        return written
    first = results[0]
    settings = unique((row["config"], row["dtype"], row["compile"]) for row in results)
    # The MACKO variants (macko, macko-int8, ...), each with a marker of its own.
    macko_variants = unique(row["variant"] for row in results if row["variant"] != "dense")
    markers = {variant: "os^vD"[index % 5] for index, variant in enumerate(macko_variants)}

    def setting_of(row):
        return (row["config"], row["dtype"], row["compile"])

    def setting_label(setting):
        config, dtype, compile_mode = setting
        return f"{config} {dtype}, compile: {compile_mode}" if len(settings) > 1 else ""

    def macko_label(variant, setting):
        """A MACKO variant by what its layers store: "MACKO float16", "MACKO int8", ..."""
        values = tables.e2e_variant_values(variant)
        return f"MACKO {setting[1] if values == 'same' else values}"

    def caption(figure):
        set_caption(figure, f"{first['gpu']}, torch {first['torch']}, CUDA {first['cuda']}, transformers "
                            f"{first['transformers']}, {first['date']}; {first['config']} {first['dtype']}, "
                            f"static KV cache, {first['new_tokens']:.0f} new tokens", fontsize=8)  # fmt: skip

    # Decode throughput against density, a line per scenario.
    scenarios = unique((setting_of(row), row["batch"], row["prompt_len"]) for row in results)
    figure, axes = new_figure(tools, 1, panel_width=7, panel_height=5)
    axis = axes[0]
    for index, (setting, batch, prompt_len) in enumerate(scenarios):
        color = f"C{index % 10}"
        rows = [row for row in results if setting_of(row) == setting and row["batch"] == batch
                and row["prompt_len"] == prompt_len]  # fmt: skip
        name = f"batch {batch:.0f}, prompt {prompt_len:.0f} {setting_label(setting)}".rstrip()
        for variant in macko_variants:
            sparse = finite_points(sorted((row["density"], row["tokens_per_s"], row["speedup_tokens"])
                                          for row in rows if row["variant"] == variant))  # fmt: skip
            if sparse:
                axis.plot([p[0] for p in sparse], [p[1] for p in sparse], "-", marker=markers[variant], color=color,
                          label=f"{macko_label(variant, setting)}, {name}")  # fmt: skip
                for density, rate, speedup in sparse:
                    axis.annotate(f"{speedup:.2f}x", (density, rate), textcoords="offset points", xytext=(4, 6),
                                  fontsize=7, color=color)  # fmt: skip
        for row in rows:
            if row["variant"] == "dense" and math.isfinite(row["tokens_per_s"]):
                axis.axhline(row["tokens_per_s"], color=color, linestyle="--", label=f"dense, {name}")
    axis.set_xlim(0, 1.02)
    axis.set_ylim(bottom=0)
    finish_axis(axis, "density (fraction of decoder linear weights kept)",
                "decode tokens/s (whole batch, median run)", "Decode throughput against density")
    caption(figure)
    save(figure, results_dir, "e2e_tokens_per_s.png", written)

    # Time to first token and total time against the prompt length (batch 1
    # when measured, else the smallest batch), a line per variant.
    for column, name, title in (("prefill_ms", "e2e_prefill.png", "Time to first token (prefill)"),
                                ("total_ms", "e2e_total.png", "Prompt + new tokens, total")):
        figure, axes = new_figure(tools, 1, panel_width=7, panel_height=5)
        axis = axes[0]
        drawn = False
        for setting in settings:
            rows = [row for row in results if setting_of(row) == setting]
            batch = min(row["batch"] for row in rows)
            variants = unique((row["variant"], row["density"]) for row in rows)
            for index, (variant, density) in enumerate(variants):
                points = finite_points(sorted(
                    (row["prompt_len"], row[column]) for row in rows
                    if row["batch"] == batch and row["variant"] == variant and row["density"] == density))
                if points:
                    label = "dense" if variant == "dense" else f"{macko_label(variant, setting)} d={density:g}"
                    style = ("ko--",) if variant == "dense" else (f"{markers[variant]}-",)
                    color = {} if variant == "dense" else {"color": f"C{index % 10}"}
                    axis.plot(*zip(*points), *style, label=f"{label} {setting_label(setting)}".rstrip(), **color)
                    drawn = True
        if not drawn:
            continue
        log2_axis(axis, [row["prompt_len"] for row in results if math.isfinite(row["prompt_len"])])
        axis.set_ylim(bottom=0)
        finish_axis(axis, "prompt tokens", "ms (median run)", f"{title}, batch {batch:.0f}")
        caption(figure)
        save(figure, results_dir, name, written)

    # Memory against density (the first scenario of each variant: memory
    # is the variant's, whatever the scenario).
    figure, axes = new_figure(tools, 1, panel_width=7, panel_height=5)
    axis = axes[0]
    for index, setting in enumerate(settings):
        color = f"C{index % 10}"
        rows = [row for row in results if setting_of(row) == setting]
        by_variant = {}
        for row in rows:
            by_variant.setdefault((row["variant"], row["density"]), row)
        for column, linestyle, what in (("peak_decode_bytes", "-", "peak"), ("weight_bytes", ":", "weights")):
            for macko_variant in macko_variants:
                sparse = finite_points(sorted((density, tables.gib(row[column]))
                                              for (variant, density), row in by_variant.items()
                                              if variant == macko_variant))  # fmt: skip
                if sparse:
                    axis.plot(*zip(*sparse), linestyle=linestyle, marker=markers[macko_variant], color=color,
                              label=f"{macko_label(macko_variant, setting)} {what} {setting_label(setting)}".rstrip())
            for (variant, _), row in by_variant.items():
                if variant == "dense" and math.isfinite(row[column]):
                    axis.axhline(tables.gib(row[column]), color=color, linestyle="--" if what == "peak" else ":",
                                 alpha=0.7, label=f"dense {what} {setting_label(setting)}".rstrip())  # fmt: skip
    axis.set_xlim(0, 1.02)
    axis.set_ylim(bottom=0)
    finish_axis(axis, "density (fraction of decoder linear weights kept)", "GiB",
                "Peak GPU memory while decoding, and model weights")
    caption(figure)
    save(figure, results_dir, "e2e_memory.png", written)
    return written


# --------------------------------------------------------------------------
# The end of a run


def finish_run(results_dir, meta, tool, draw=True):
    """What every benchmark does when its rows are written: meta.json gets
    the finishing time, the table is printed from the saved CSV, and the
    plots (``draw``) and summary.md are made from it. ``tool``: "spmv" or
    "e2e"."""
    meta["finished_utc"] = records.utc_now().isoformat(timespec="seconds")
    records.write_json(os.path.join(results_dir, "meta.json"), meta)
    read, report, summary, plot = {
        "spmv": (tables.read_spmv_results, tables.spmv_report, tables.write_spmv_summary, plot_spmv),
        "e2e": (tables.read_e2e_results, tables.e2e_report, tables.write_e2e_summary, plot_e2e),
    }[tool]
    print(report(read(results_dir)))
    plot(results_dir) if draw else summary(results_dir)
    print(f"results in {results_dir}", file=sys.stderr)
