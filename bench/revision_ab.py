"""The objective's kernel or ALS's row solves of a git revision against the installed ones.

    python3 bench/revision_ab.py --rev REV [--sizes 1e8] [--factors 32] [--threads 1,2]
                                 [--repeats 6] [--float64 | --als]

REV's ``fastcofi`` package (``git archive``) is unpacked into a temporary folder and imported
beside the installed one under another name, with numba caches of its own, so that both
evaluate the same objective at the same factors in one process, calls alternated: on a shared
machine only such ratios compare. Prints, for each size and thread count, the median seconds of
each, the median of the per-call ratios (installed / REV) and the largest relative difference
between their costs and gradients. The evaluation goes through ``train.objective._evaluate``
with its default plan and float32 reads (``--float64``: float64 ones), so REV must have that
function with today's arguments (2026-12-05 and later do).

``--als`` times one ALS sweep's two halves instead, through each revision's
``train.objective.RowSolves`` as `minimize_als` drives it: every user row solved with the
items fixed, then every item row with the users fixed (``train.solvers.CG_STEPS`` steps on
mid-length rows, the fixed side's copy included in the time), from the same random factors,
zero biases and penalties (``problems.als_penalty``) as ``bench/rowsolve_ab.py`` sets them.
It prints each half's medians and ratios and the largest relative difference between the
parameters the two revisions reach.
"""

import argparse
import importlib.util
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import numpy as np
from problems import als_penalty, factors_for, ratings_for
from threadpoolctl import threadpool_limits

import fastcofi
from fastcofi._parallel import threads

REPO = Path(__file__).resolve().parent.parent
# What the timings reach through a package, imported for the installed one and REV's alike.
MODULES = ("train.objective", "train.solvers")


def import_revision(rev, folder):
    """REV's ``fastcofi`` unpacked into ``folder`` and imported as ``fastcofi_rev``; returns the
    package. It imports its own modules relatively only."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "fastcofi"],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    package = Path(folder) / "fastcofi_rev"
    (Path(folder) / "fastcofi").rename(package)
    spec = importlib.util.spec_from_file_location(
        "fastcofi_rev", package / "__init__.py", submodule_search_locations=[str(package)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["fastcofi_rev"] = module
    spec.loader.exec_module(module)
    return module


def time_objective(packages, ratings, args):
    """One objective evaluation per package and call; returns the seconds and the results."""
    X, Theta = factors_for(ratings, args.factors)
    rng = np.random.default_rng(1)
    biases = (rng.normal(scale=0.1, size=ratings.n_items),
              rng.normal(scale=0.1, size=ratings.n_users))
    weights = (np.ones(ratings.n_items), np.ones(ratings.n_users))
    times = {name: [] for name in packages}
    results = {}
    for call in range(args.repeats + 1):  # the first call compiles
        for name, package in packages.items():
            grads = (np.empty_like(X), np.empty_like(Theta), *(np.empty_like(b) for b in biases))
            t = time.perf_counter()
            cost = package.train.objective._evaluate(X, Theta, *biases, 3.6, ratings, 0.05,
                                                     0.05, weights, grads,
                                                     single=not args.float64)
            if call:
                times[name].append([time.perf_counter() - t])
            results[name] = [np.array([cost]), *grads]
    return times, results


def time_als(packages, ratings, args):
    """One ALS sweep's halves per package and call (users, then items), through the package's
    own ``RowSolves`` as `minimize_als` drives it; returns the seconds of each half and the
    parameters after the last call's sweep."""
    X, Theta = factors_for(ratings, args.factors)
    biases = (np.zeros(ratings.n_items), np.zeros(ratings.n_users))
    objectives = {name: package.train.objective.FlatObjective(
        ratings, args.factors, mu=float(ratings.values.mean()), learn_biases=True,
        **als_penalty(ratings))
        for name, package in packages.items()}
    times = {name: [] for name in packages}
    results = {}
    for call in range(args.repeats + 1):  # the first call compiles
        for name, package in packages.items():
            train, objective = package.train, objectives[name]
            # Each call starts from the same factors: the solves write into ``params``.
            params = objective.pack(X, Theta, *biases)
            solves = train.objective.RowSolves(objective, params, half_reads=True)
            halves = []
            for side in ("users", "items"):
                t = time.perf_counter()
                solves.solve(side, train.solvers.CG_STEPS)
                halves.append(time.perf_counter() - t)
            if call:
                times[name].append(halves)
            results[name] = [params]
    return times, results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", required=True, help="the git revision to compare with")
    parser.add_argument("--sizes", default="1e8", help="bench/problems.py sizes, comma-separated")
    parser.add_argument("--factors", type=int, default=32)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--float64", action="store_true", help="float64 reads, not float32")
    parser.add_argument("--als", action="store_true",
                        help="ALS's row solves (one sweep's halves), not the objective")
    args = parser.parse_args()
    if args.als and args.float64:
        parser.error("--float64 applies to the objective only")
    what = ("ALS half-sweeps" if args.als else
            f"the objective, {'float64' if args.float64 else 'float32'} reads")
    print(f"installed {Path(fastcofi.__file__).parent} against {args.rev}: {what}", flush=True)
    parts = ("users", "items") if args.als else ("evaluation",)
    with tempfile.TemporaryDirectory() as folder:
        packages = {"installed": fastcofi, args.rev: import_revision(args.rev, folder)}
        for package in packages.values():
            for name in MODULES:
                importlib.import_module(f"{package.__name__}.{name}")
        for size in args.sizes.split(","):
            ratings = ratings_for(size)
            for n_threads in (int(v) for v in args.threads.split(",")):
                with threadpool_limits(limits=1, user_api="blas"), threads(n_threads):
                    measure = time_als if args.als else time_objective
                    times, results = measure(packages, ratings, args)
                new, old = (np.array(v) for v in times.values())
                difference = max(float(np.abs(a - b).max() / np.abs(b).max())
                                 for a, b in zip(*results.values()))
                for p, part in enumerate(parts):
                    print(f"{size} k={args.factors}, {n_threads} thread(s), {part}: installed "
                          f"{np.median(new[:, p]) * 1e3:.1f} ms, {args.rev} "
                          f"{np.median(old[:, p]) * 1e3:.1f} ms, ratio "
                          f"{np.median(new[:, p] / old[:, p]):.3f}", flush=True)
                if args.als:
                    print(f"{size} k={args.factors}, {n_threads} thread(s), sweep: ratio "
                          f"{np.median(new.sum(axis=1) / old.sum(axis=1)):.3f}", flush=True)
                print(f"largest relative difference {difference:.1e}", flush=True)


if __name__ == "__main__":
    main()
