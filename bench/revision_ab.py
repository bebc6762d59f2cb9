"""The objective's one-pass kernel of another git revision against the installed one, alternated.

    python3 bench/revision_ab.py --rev REV [--sizes 1e8] [--factors 32] [--threads 1,2]
                                 [--repeats 6] [--float64]

REV's ``fastcofi`` package (``git archive``) is unpacked into a temporary folder and imported
beside the installed one under another name, with numba caches of its own, so that both
evaluate the same objective at the same factors in one process, calls alternated: on a shared
machine only such ratios compare. Prints, for each size and thread count, the median seconds of
each, the median of the per-call ratios (installed / REV) and the largest relative difference
between their costs and gradients. The evaluation goes through ``train.objective._evaluate``
with its default plan and float32 reads (``--float64``: float64 ones), so REV must have that
function with today's arguments (2026-12-05 and later do).
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
from problems import factors_for, ratings_for
from threadpoolctl import threadpool_limits

import fastcofi
from fastcofi._parallel import threads
from fastcofi.train import objective as installed

REPO = Path(__file__).resolve().parent.parent


def import_revision(rev, folder):
    """REV's ``fastcofi`` unpacked into ``folder`` and imported as ``fastcofi_rev``; returns its
    ``train.objective`` module. The package imports its own modules relatively only."""
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
    return importlib.import_module("fastcofi_rev.train.objective")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", required=True, help="the git revision to compare with")
    parser.add_argument("--sizes", default="1e8", help="bench/problems.py sizes, comma-separated")
    parser.add_argument("--factors", type=int, default=32)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--float64", action="store_true", help="float64 reads, not float32")
    args = parser.parse_args()
    single = not args.float64
    print(f"installed {Path(fastcofi.__file__).parent} against {args.rev}, "
          f"{'float32' if single else 'float64'} reads", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        kernels = {"installed": installed, args.rev: import_revision(args.rev, folder)}
        for size in args.sizes.split(","):
            ratings = ratings_for(size)
            X, Theta = factors_for(ratings, args.factors)
            rng = np.random.default_rng(1)
            biases = (rng.normal(scale=0.1, size=ratings.n_items),
                      rng.normal(scale=0.1, size=ratings.n_users))
            weights = (np.ones(ratings.n_items), np.ones(ratings.n_users))
            for n_threads in (int(v) for v in args.threads.split(",")):
                times = {name: [] for name in kernels}
                results = {}
                with threadpool_limits(limits=1, user_api="blas"), threads(n_threads):
                    for call in range(args.repeats + 1):  # the first call compiles
                        for name, module in kernels.items():
                            grads = (np.empty_like(X), np.empty_like(Theta),
                                     *(np.empty_like(b) for b in biases))
                            t = time.perf_counter()
                            cost = module._evaluate(X, Theta, *biases, 3.6, ratings, 0.05, 0.05,
                                                    weights, grads, single=single)
                            if call:
                                times[name].append(time.perf_counter() - t)
                            results[name] = (cost, grads)
                (cost, grads), (cost_rev, grads_rev) = results.values()
                difference = max([abs(cost - cost_rev) / abs(cost_rev)] + [
                    float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(grads, grads_rev)])
                new, old = (np.array(v) for v in times.values())
                print(f"{size} k={args.factors}, {n_threads} thread(s): installed "
                      f"{np.median(new) * 1e3:.1f} ms, {args.rev} {np.median(old) * 1e3:.1f} ms, "
                      f"ratio {np.median(new / old):.3f}; largest relative difference "
                      f"{difference:.1e}", flush=True)


if __name__ == "__main__":
    main()
