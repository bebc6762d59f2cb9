"""Scaling table for one objective evaluation: kernel vs vectorized vs dense reference.

    python3 bench/scaling.py [--sizes ml100k,1e5,1e6,1e7] [--factors 10,50,100] [--repeats 7]
    python3 bench/scaling.py --sizes 1e5,1e6,1e7,1e8 --factors 10 \
        --out results/ratings_scaling
    python3 bench/scaling.py --markdown bench/results/objective_scaling.json   # bench/README.md's table

Writes bench/results/objective_scaling.json (medians, ratios, environment) and, when matplotlib
is installed, bench/results/objective_scaling.png (log-log time vs ratings). Cells that would need
more than 8 GB are recorded as skipped with the reason.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numba
import numpy as np
from harness import RESULTS, environment, median_seconds, output_path, write_json
from problems import (
    DEFAULT_SIZES,
    MEMORY_LIMIT,
    SIZES,
    Vectorized,
    dense_bytes,
    dense_cost_and_grad,
    dense_inputs,
    factors_for,
    ratings_for,
    vectorized_bytes,
)
from threadpoolctl import threadpool_limits

from fastcofi.objective import cost_and_grad
from fastcofi.train.objective import _use_buffers

# A cell stops repeating after this many seconds once it has 3 timings.
BUDGET = 20.0


def ratings_bytes(ratings):
    """Bytes held by the two CSRs (indptr, indices, values) that every evaluation reads."""
    return sum(a.nbytes for a in (*ratings.by_item, *ratings.by_user))


def buffer_bytes(ratings, k):
    """Transient bytes of the one-pass kernel's per-group gradient buffers (0: two-pass)."""
    if not _use_buffers(ratings, k):
        return 0
    return numba.config.NUMBA_NUM_THREADS * min(ratings.n_items, ratings.n_users) * (k + 1) * 8


def run(sizes, factors, repeats):
    rows = []
    for size in sizes:
        ratings = ratings_for(size)
        for k in factors:
            X, Theta = factors_for(ratings, k)
            row = {"size": size, "nnz": ratings.nnz, "n_items": ratings.n_items,
                   "n_users": ratings.n_users, "k": k,
                   "ratings_bytes_per_rating": ratings_bytes(ratings) / ratings.nnz,
                   "kernel_buffer_bytes_per_rating": buffer_bytes(ratings, k) / ratings.nnz}
            # OpenBLAS workers busy-wait for a while after each BLAS call (data generation, the
            # other formulations); a kernel thread sharing a core with one is descheduled. Park
            # them first, as fit() does by capping BLAS at one thread.
            with threadpool_limits(limits=1, user_api="blas"):
                time.sleep(0.5)
                for threads in (1, 2):
                    seconds, _ = median_seconds(
                        lambda: cost_and_grad(X, Theta, ratings, 1.0, n_threads=threads), repeats,
                        budget=BUDGET,
                    )
                    row[f"kernel_{threads}t_s"] = seconds
            row["kernel_ratings_per_s"] = ratings.nnz / row["kernel_2t_s"]
            row["thread_speedup"] = row["kernel_1t_s"] / row["kernel_2t_s"]
            if vectorized_bytes(size, k) > MEMORY_LIMIT:
                row["vectorized_s"] = None
                row["vectorized_skipped"] = f"needs > {MEMORY_LIMIT / 1e9:.0f} GB"
            else:
                vec = Vectorized(ratings)
                row["vectorized_s"], _ = median_seconds(lambda: vec(X, Theta, 1.0), repeats,
                                                         budget=BUDGET)
                row["speedup_vs_vectorized"] = row["vectorized_s"] / row["kernel_2t_s"]
            n_items, n_users, _ = SIZES[size]
            if dense_bytes(size, k) > MEMORY_LIMIT or n_items * n_users > 5000 * 5000:
                row["dense_s"] = None
                row["dense_skipped"] = "beyond 5k x 5k items x users (the issue's cut-off)"
            else:
                dense, mask = dense_inputs(size)
                row["dense_s"], _ = median_seconds(
                    lambda: dense_cost_and_grad(X, Theta, dense, mask, 1.0), repeats,
                    budget=BUDGET,
                )
                row["speedup_vs_dense"] = row["dense_s"] / row["kernel_2t_s"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _pyplot():
    """matplotlib's pyplot on the Agg backend, or None (with a message) when not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return None
    return plt


def plot(rows, path):
    plt = _pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for k in sorted({r["k"] for r in rows}):
        cells = sorted((r for r in rows if r["k"] == k), key=lambda r: r["nnz"])
        nnz = [r["nnz"] for r in cells]
        ax.loglog(nnz, [r["kernel_2t_s"] for r in cells], "o-", label=f"kernel, 2 threads, k={k}")
        vec = [(r["nnz"], r["vectorized_s"]) for r in cells if r.get("vectorized_s")]
        if vec:
            ax.loglog(*zip(*vec), "s--", alpha=0.6, label=f"vectorized numpy/scipy, k={k}")
        dense = [(r["nnz"], r["dense_s"]) for r in cells if r.get("dense_s")]
        if dense:
            ax.loglog(*zip(*dense), "^:", alpha=0.6, label=f"dense reference, k={k}")
    _save_log_log(fig, ax, "ratings", path)


def plot_k(rows, path):
    """Time per evaluation against k, one line per problem size, 1 and 2 threads."""
    plt = _pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for size in dict.fromkeys(r["size"] for r in rows):
        cells = sorted((r for r in rows if r["size"] == size), key=lambda r: r["k"])
        for threads, style in ((1, "s--"), (2, "o-")):
            ax.loglog([r["k"] for r in cells], [r[f"kernel_{threads}t_s"] for r in cells], style,
                      label=f"{size} ratings, {threads} thread{'s' if threads > 1 else ''}")
    _save_log_log(fig, ax, "k (factors)", path)


def _save_log_log(fig, ax, xlabel, path):
    ax.set_xlabel(xlabel)
    ax.set_ylabel("seconds per cost + gradient evaluation")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _ms(seconds):
    return "-" if seconds is None else f"{seconds * 1e3:.1f} ms"


def markdown(doc):
    """bench/README.md's table from a results document."""
    lines = [
        (
            "| ratings (items x users) | k | 1 thread | 2 threads | ratings/s, 2 threads "
            "| 1 -> 2 threads | vectorized numpy/scipy | kernel speed-up | dense reference "
            "| kernel speed-up |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        vec = (f"{_ms(r['vectorized_s'])} | {r['speedup_vs_vectorized']:.1f}x"
               if r.get("vectorized_s") else "skipped (> 8 GB) | -")
        dense = (f"{_ms(r['dense_s'])} | {r['speedup_vs_dense']:.1f}x"
                 if r.get("dense_s") else "skipped (> 5k x 5k) | -")
        lines.append(
            f"| {r['nnz']:.0e} ({r['n_items']} x {r['n_users']}) | {r['k']} "
            f"| {_ms(r['kernel_1t_s'])} | {_ms(r['kernel_2t_s'])} "
            f"| {r['kernel_ratings_per_s'] / 1e6:.0f} M | {r['thread_speedup']:.2f}x "
            f"| {vec} | {dense} |"
        )
    slopes = ", ".join(f"k={k}: {v:.2f}" for k, v in doc["loglog_slope_by_k"].items())
    lines.append("")
    lines.append(f"Log-log slope of time against ratings (1e5 and up): {slopes}.")
    return "\n".join(lines)


def main():
    if sys.argv[1:2] == ["--markdown"]:
        print(markdown(json.loads(Path(sys.argv[2]).read_text())))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(DEFAULT_SIZES))
    parser.add_argument("--factors", default="10,50,100")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=output_path,
                        default=str(RESULTS / "objective_scaling"))
    args = parser.parse_args()
    rows = run(args.sizes.split(","), [int(k) for k in args.factors.split(",")], args.repeats)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    slopes = {}
    for k in sorted({r["k"] for r in rows}):
        cells = [r for r in rows if r["k"] == k and r["size"] != "ml100k"]
        if len(cells) >= 2:
            slope = np.polyfit(np.log([r["nnz"] for r in cells]),
                               np.log([r["kernel_2t_s"] for r in cells]), 1)[0]
            slopes[str(k)] = float(slope)
    slopes_k = {}
    for size in dict.fromkeys(r["size"] for r in rows):
        cells = [r for r in rows if r["size"] == size]
        if len(cells) >= 2:
            slopes_k[size] = float(np.polyfit(np.log([r["k"] for r in cells]),
                                              np.log([r["kernel_2t_s"] for r in cells]), 1)[0])
    doc = {"environment": environment(), "rows": rows, "loglog_slope_by_k": slopes,
           "loglog_slope_vs_k_by_size": slopes_k}
    write_json(out.with_suffix(".json"), doc, indent=2)
    # One size and several k: the interesting axis is k.
    single_size = len({r["size"] for r in rows}) == 1
    (plot_k if single_size else plot)(rows, out.with_suffix(".png"))
    print(json.dumps({"loglog_slope_by_k": slopes}))


if __name__ == "__main__":
    main()
