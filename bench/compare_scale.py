"""Time to quality at scale (BENCHMARKS.md protocol S): LIBMF against each fastcofi solver.

    python3 bench/compare_scale.py [--sizes 1e6,1e7] [--factors 32] [--threads 2] \
        [--libmf-python /path/to/venv/bin/python] [--lambdas 0.02,0.05,0.1] [--only als,cg]

Netflix shape: ``fastcofi.datasets.synthetic(480_189, 17_770, n, rank=10, noise=0.5, seed=1)``,
the probe a random 1 % of the ratings (``np.random.default_rng(1).random(n) < 0.01``), k = 32,
2 threads. The arrays are made once per size and saved; then every fit runs in a fresh process
that loads them, so that each wall time and peak RSS is its own:

- fastcofi: wall time from the arrays (``Ratings.from_arrays``, included) through each
  iteration, with the probe RMSE after each iteration (``fit(validation=probe)``, whose
  predictions are a small part of the time); the iteration budget is fixed per solver and early
  stopping is off, so every curve runs its whole budget. Solvers: ALS, CG and L-BFGS with
  defaults, and ALS with LIBMF's own objective (``reg_weighting="count"``, ``reg=0.05``).
  VB is left out: it keeps a 33 x 33 covariance per user (4 GB at 480k users). The runs of
  ``UNWATCHED`` fit without the probe and score it once, after the fit (one point): their
  seconds per iteration are the sweeps alone, as LIBMF's epochs are (its fits score the probe
  once, at their end).
- LIBMF (the pip package ``libmf``, in its own virtualenv, never a fastcofi dependency):
  ``MF(k, lambda_p2 = lambda_q2 = l, lambda_p1 = lambda_q1 = 0, eta = 0.05, nr_threads)`` on
  ``rating - global mean``, one fresh fit per (lambda, epoch count), since its bindings do not
  report per-epoch progress; wall time includes its copy of the arrays. Predictions are made
  from its factors (``p_factors``, ``q_factors``): the bindings' ``predict`` returned one
  constant for every pair here. Rows it never saw (NaN factors) predict 0, the global mean.

Writes bench/results/compare_scale.json (every curve, seconds per sweep or epoch, peak RSS,
environment) and compare_scale.png (probe RMSE against seconds, one panel per size). With
``--rounds N`` every fit runs N times in turn (all of round 1, then all of round 2, ...), and the
JSON adds each round's seconds per iteration and, per round, the ratio of each fastcofi row's
seconds per iteration to each LIBMF row's seconds per epoch, with their median printed: on a
shared host whose speed drifts, the two sides of a ratio are measured within one round.
"""

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from harness import RESULTS, environment, output_path, write_json

SHAPE = (480_189, 17_770)

# label: (MatrixFactorization parameters besides n_factors, iterations). Budgets sized so each
# curve passes its plateau at 1e6-1e7 ratings; None: the library's defaults run as a user gets
# them (stopping on their own, early stopping on the probe included). The "grid" runs are the
# penalties the defaults are measured against.
FASTCOFI_RUNS = {
    "defaults": ({}, None),
    "als": ({"solver": "als"}, 12),
    "als-sqrt": ({"solver": "als", "reg_weighting": "sqrt"}, 12),
    "cg": ({"solver": "cg"}, 80),
    "lbfgs": ({"solver": "lbfgs"}, 80),
    **{f"grid-count-{reg:g}": ({"solver": "als", "reg_weighting": "count", "reg": reg,
                                "reg_bias": reg}, 12) for reg in (0.02, 0.03, 0.05, 0.08)},
    "grid-sqrt-0.3": ({"solver": "als", "reg_weighting": "sqrt", "reg": 0.3}, 12),
    "grid-none-5": ({"solver": "als", "reg_weighting": "none", "reg": 5.0, "reg_bias": 1.0}, 12),
    # LIBMF's own objective solved exactly: the global mean and no biases (pinned at 0 by a huge
    # penalty), count-weighted penalties: what its SGD would converge to.
    **{f"libmf-objective-{reg:g}": ({"solver": "als", "reg_weighting": "count", "reg": reg,
                                     "reg_bias": 1e4}, 12) for reg in (0.02, 0.03)},
    "item-mean-0.03": ({"solver": "als", "reg_weighting": "count", "reg": 0.03,
                        "normalize": "item_mean"}, 12),
    "als-unwatched": ({"solver": "als"}, 12),
}
# Fitted without the probe: after each iteration a watched fit scores it and copies the best
# parameters so far, which LIBMF's epochs do not do.
UNWATCHED = frozenset({"als-unwatched"})
LIBMF_EPOCHS = (5, 10, 20, 40)

LIBMF_SCRIPT = r"""
import json, resource, sys, time
import numpy as np
from libmf import mf
spec = json.load(open(sys.argv[1]))
users = np.load(spec["train_users"]); items = np.load(spec["train_items"])
values = np.load(spec["train_values"])
pu = np.load(spec["probe_users"]); pi = np.load(spec["probe_items"])
pv = np.load(spec["probe_values"]).astype(np.float64)
start = time.perf_counter()
mean = float(values.mean(dtype=np.float64))
data = np.column_stack([users.astype(np.float32), items.astype(np.float32),
                        (values - mean).astype(np.float32)])
engine = mf.MF(k=spec["k"], nr_threads=spec["threads"], nr_iters=spec["epochs"],
               lambda_p2=spec["lambda"], lambda_q2=spec["lambda"], lambda_p1=0.0,
               lambda_q1=0.0, eta=spec["eta"])
engine.fit(data)
seconds = time.perf_counter() - start
# From the factors: the bindings' predict returned a constant here (libmf 0.9.1).
P = engine.p_factors().astype(np.float64); Q = engine.q_factors().astype(np.float64)
known = (pu < P.shape[0]) & (pi < Q.shape[0])
pred = np.zeros(pu.shape[0])
pred[known] = np.einsum("ij,ij->i", P[pu[known]], Q[pi[known]])
pred = np.clip(np.nan_to_num(pred, nan=0.0) + mean, spec["low"], spec["high"])
rmse = float(np.sqrt(np.mean((pred - pv) ** 2)))
json.dump({"seconds": seconds, "probe_rmse": rmse,
           "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024},
          open(sys.argv[2], "w"))
"""


def prepare(n, folder):
    """Train and probe arrays of protocol S at ``n`` ratings, saved as .npy in ``folder`` (kept
    from an earlier run when all six are there)."""
    from fastcofi import datasets

    paths = {f"{part}_{name}": str(Path(folder) / f"{part}_{name}.npy")
             for part in ("train", "probe") for name in ("users", "items", "values")}
    if all(Path(path).exists() for path in paths.values()):
        return paths

    dtype = np.float32 if n >= 50_000_000 else np.float64
    ratings = datasets.synthetic(*SHAPE, n, rank=10, noise=0.5, seed=1, dtype=dtype)
    users, items, values = ratings.coo()
    probe = np.random.default_rng(1).random(values.shape[0]) < 0.01
    paths = {}
    for part, mask in (("train", ~probe), ("probe", probe)):
        for name, array in (("users", users), ("items", items), ("values", values)):
            path = Path(folder) / f"{part}_{name}.npy"
            np.save(path, np.ascontiguousarray(array[mask]))
            paths[f"{part}_{name}"] = str(path)
    del ratings, users, items, values
    return paths


def fastcofi_worker(spec_path, out_path):
    """One fastcofi fit (run in a fresh process): writes its curve to ``out_path``."""
    from fastcofi import ConvergenceWarning, MatrixFactorization, Ratings
    from fastcofi.evaluate.metrics import rating_metrics

    spec = json.loads(Path(spec_path).read_text())
    arrays = {key: np.load(path) for key, path in spec["arrays"].items()}
    params, budget = spec["params"], spec["iterations"]
    watched = spec.get("watched", True)
    start = time.perf_counter()
    train = Ratings.from_arrays(arrays["train_users"], arrays["train_items"],
                                arrays["train_values"], all_users=range(SHAPE[0]),
                                all_items=range(SHAPE[1]))
    probe = Ratings.from_arrays(arrays["probe_users"], arrays["probe_items"],
                                arrays["probe_values"])
    del arrays  # the two Ratings hold their own copies: what a user would keep in memory
    build = time.perf_counter() - start
    fixed = {} if budget is None else {"max_iter": budget, "tol": 0, "patience": budget + 1}
    model = MatrixFactorization(n_factors=spec["k"], n_threads=spec["threads"], random_state=0,
                                **fixed, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(train, validation=probe if watched else None)
    trained = time.perf_counter() - start
    iterations = [build + s for s in model.history_["seconds"]]
    steps = np.diff([build] + iterations)
    if watched:
        seconds, probe_rmse = iterations, model.history_["val_rmse"]
    else:
        # Its training's end, as LIBMF's point is taken before it scores the probe.
        seconds, probe_rmse = [trained], [rating_metrics(model, probe)["rmse"]]
    total = time.perf_counter() - start
    Path(out_path).write_text(json.dumps({
        "build_seconds": build, "seconds": seconds, "probe_rmse": probe_rmse,
        "cost": model.history_["cost"], "wall_seconds": total,
        "seconds_per_iteration": float(np.median(steps)) if steps.size else None,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "reg_used": model.reg_, "reg_bias_used": model.reg_bias_, "solver_used": model.solver_,
        "reg_weighting_used": model.reg_weighting_, "n_iter": model.n_iter_,
    }))


def run_fresh(command, spec, timeout):
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec))
        env = {**os.environ, "NUMBA_NUM_THREADS": str(spec["threads"]),
               "OMP_NUM_THREADS": str(spec["threads"])}
        done = subprocess.run([*command, str(spec_path), str(out_path)], env=env,
                              timeout=timeout, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            return {"error": done.stderr.strip().splitlines()[-1:]}
        return json.loads(out_path.read_text())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e6", help="comma-separated numbers of ratings")
    parser.add_argument("--factors", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--libmf-python", default=None,
                        help="python of a virtualenv with the libmf package (LIBMF rows "
                             "are left out without it)")
    parser.add_argument("--lambdas", default="0.02,0.05,0.1")
    parser.add_argument("--libmf-epochs", default=",".join(map(str, LIBMF_EPOCHS)),
                        help="epoch counts LIBMF is fitted for, one fresh fit each")
    parser.add_argument("--data", default=None,
                        help="folder keeping each size's arrays between runs (default: made "
                             "afresh in a temporary folder)")
    parser.add_argument("--only", default=",".join(FASTCOFI_RUNS),
                        help="fastcofi runs to do, of " + ",".join(FASTCOFI_RUNS) + " (empty: "
                             "none)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every fit this many times, in turn; the JSON keeps the first "
                             "round's curves, each round's seconds per iteration and, for each "
                             "fastcofi row against each LIBMF row, their ratio in each round")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per fit")
    parser.add_argument("--out", type=output_path,
                        default=str(RESULTS / "compare_scale.json"))
    parser.add_argument("--merge", action="store_true",
                        help="add these rows to those already at --out instead of replacing it")
    parser.add_argument("--replot", action="store_true",
                        help="only redraw the PNG from the JSON at --out")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, found {args.rounds}")
    if args.worker:
        fastcofi_worker(*args.worker)
        return 0
    if args.replot:
        plot(json.loads(Path(args.out).read_text()), Path(args.out).with_suffix(".png"))
        return 0

    doc = {"protocol": "BENCHMARKS.md protocol S", "k": args.factors, "threads": args.threads,
           "environment": environment(load_average_at_start=os.getloadavg()),
           "sizes": {}}
    for size in [int(float(s)) for s in args.sizes.split(",")]:
        with contextlib.ExitStack() as stack:
            if args.data is None:
                folder = stack.enter_context(tempfile.TemporaryDirectory())
            else:
                folder = Path(args.data) / f"{size:.0e}"
                folder.mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            arrays = prepare(size, folder)
            print(f"{size:.0e}: arrays in {time.perf_counter() - t:.1f}s", flush=True)
            rounds = []
            for number in range(1, args.rounds + 1):
                if args.rounds > 1:
                    print(f" round {number} of {args.rounds}", flush=True)
                rounds.append(run_round(arrays, args))
            doc["sizes"][str(size)] = merged_rounds(rounds)
            if args.rounds > 1:
                doc.setdefault("paired_ratios", {})[str(size)] = paired_ratios(rounds)
                for pair, ratios in doc["paired_ratios"][str(size)].items():
                    median = f"median {np.median(ratios):.2f}" if ratios else "no round"
                    print(f"  {pair}, per round: {', '.join(f'{r:.2f}' for r in ratios)}; "
                          f"{median}", flush=True)
    if args.merge and Path(args.out).exists():
        old = json.loads(Path(args.out).read_text())
        for size, rows in doc["sizes"].items():
            old["sizes"].setdefault(size, {}).update(rows)
        for size, pairs in doc.get("paired_ratios", {}).items():
            old.setdefault("paired_ratios", {}).setdefault(size, {}).update(pairs)
        old.setdefault("merged_runs", []).append(doc["environment"])
        doc = old
    write_json(Path(args.out), doc)
    plot(doc, Path(args.out).with_suffix(".png"))
    return 0


def run_round(arrays, args):
    """Every fastcofi run of ``--only``, then LIBMF at each lambda, each fit in a fresh process
    in that order; returns their rows by label."""
    low, high = 1.0, 5.0
    rows = {}
    for label in filter(None, args.only.split(",")):
        params, budget = FASTCOFI_RUNS[label]
        spec = {"arrays": arrays, "params": params, "iterations": budget,
                "k": args.factors, "threads": args.threads, "watched": label not in UNWATCHED}
        rows[f"fastcofi {label}"] = {
            "params": params,
            **run_fresh([sys.executable, __file__, "--worker"], spec, args.timeout),
        }
        print(f"  fastcofi {label}: {summary(rows[f'fastcofi {label}'])}", flush=True)
    if args.libmf_python:
        with tempfile.TemporaryDirectory() as tmp:
            script = Path(tmp) / "libmf_fit.py"
            script.write_text(LIBMF_SCRIPT)
            for lam in [float(v) for v in args.lambdas.split(",")]:
                curve = []
                for epochs in [int(e) for e in args.libmf_epochs.split(",")]:
                    spec = {**arrays, "k": args.factors, "threads": args.threads,
                            "epochs": epochs, "lambda": lam, "eta": 0.05, "low": low,
                            "high": high}
                    curve.append({"epochs": epochs, **run_fresh(
                        [args.libmf_python, str(script)], spec, args.timeout)})
                rows[f"LIBMF lambda {lam:g}"] = libmf_row(curve, lam)
                print(f"  LIBMF lambda {lam:g}: {summary(rows[f'LIBMF lambda {lam:g}'])}",
                      flush=True)
    return rows


def _positive(value):
    """``value`` when it is a positive number, else None: a failed fit has none, and LIBMF's
    epoch, a difference of two wall times, can come out at 0 or below on a drifting host."""
    return value if value is not None and value > 0 else None


def merged_rounds(rounds):
    """One row per label from the rows of every round: the curve of the first round whose fit
    of it has one (else the first round's row), with ``seconds_per_iteration`` the median over
    the rounds with a positive one, each round's value in ``rounds_seconds_per_iteration``
    (None where it has none)."""
    if len(rounds) == 1:
        return rounds[0]
    merged = {}
    for label in rounds[0]:
        rows = [round_rows.get(label, {}) for round_rows in rounds]
        shown = next((row for row in rows if row.get("probe_rmse")), rows[0])
        per_round = [_positive(row.get("seconds_per_iteration")) for row in rows]
        known = [v for v in per_round if v is not None]
        merged[label] = {**shown, "rounds_seconds_per_iteration": per_round,
                         "seconds_per_iteration": float(np.median(known)) if known else None}
    return merged


def paired_ratios(rounds):
    """For each fastcofi row and each LIBMF row: its seconds per iteration over LIBMF's seconds
    per epoch within each round (a sweep's cost in epochs, both measured within one round, so a
    host that slows down between rounds moves both); rounds where either has no positive value
    are left out."""
    labels = list(rounds[0])
    ours = [label for label in labels if label.startswith("fastcofi")]
    theirs = [label for label in labels if label.startswith("LIBMF")]
    out = {}
    for mine in ours:
        for peer in theirs:
            ratios = []
            for rows in rounds:
                a = _positive(rows.get(mine, {}).get("seconds_per_iteration"))
                b = _positive(rows.get(peer, {}).get("seconds_per_iteration"))
                if a is not None and b is not None:
                    ratios.append(a / b)
            out[f"{mine} s/iteration / {peer} s/epoch"] = ratios
    return out


def libmf_row(curve, lam):
    ok = [point for point in curve if "error" not in point]
    row = {"params": {"lambda": lam, "eta": 0.05}, "epochs": [p["epochs"] for p in ok],
           "seconds": [p["seconds"] for p in ok], "probe_rmse": [p["probe_rmse"] for p in ok],
           "peak_rss_bytes": max((p["peak_rss_bytes"] for p in ok), default=None),
           "errors": [p["error"] for p in curve if "error" in p]}
    if len(ok) >= 2:
        row["seconds_per_iteration"] = float(np.median(
            np.diff(row["seconds"]) / np.diff(row["epochs"])))
    return row


def summary(row):
    if row.get("error") or not row.get("probe_rmse"):
        return f"failed: {row.get('error') or row.get('errors')}"
    best = int(np.argmin(row["probe_rmse"]))
    return (f"best probe RMSE {row['probe_rmse'][best]:.4f} at {row['seconds'][best]:.1f}s, "
            f"{row.get('seconds_per_iteration') or float('nan'):.2f} s/iteration, peak RSS "
            f"{(row['peak_rss_bytes'] or 0) / 2**30:.2f} GiB")


def plot(doc, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(doc["sizes"])
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4.5), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        for label, row in doc["sizes"][size].items():
            if row.get("probe_rmse"):
                style = "o--" if label.startswith("LIBMF") else ".-"
                ax.plot(row["seconds"], row["probe_rmse"], style, label=label, markersize=4)
        ax.set_title(f"{float(size):.0e} ratings, k = {doc['k']}, {doc['threads']} threads")
        ax.set_xlabel("wall seconds from arrays")
        ax.set_ylabel("probe RMSE")
        ax.set_xscale("log")
        bests = [min(row["probe_rmse"]) for row in doc["sizes"][size].values()
                 if row.get("probe_rmse")]
        if bests:
            # Every curve's best point in view, the early iterations' large errors cut off.
            ax.set_ylim(min(bests) - 0.01, max(bests) + 0.04)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
