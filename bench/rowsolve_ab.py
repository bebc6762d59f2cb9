"""ALS row solves, this package's kernel against the scalar one it replaced, side by side.

    python3 bench/rowsolve_ab.py [--ratings 1e6] [--factors 32] [--threads 2] [--repeats 5]

Protocol S's Netflix shape (``fastcofi.datasets.synthetic(480_189, 17_770, n, rank=10,
noise=0.5, seed=1)``), learned biases, the penalties of ``problems.als_penalty``. Both kernels
solve the same half-sweeps from the same factors, alternating, in one process (timings on a
shared machine are only comparable as ratios); prints the median seconds of the user half, the
item half and their sum (one ALS sweep), and the largest difference between the kernels' results.
The package's kernel runs five times: exact solves reading float64 factors (fold-in's
solve), exact solves reading a float32 copy of them, the sweep of `CG_STEPS`
conjugate-gradient steps on mid-length rows through float32 copies ("sweep32"), that sweep as
ALS runs it ("sweep": a fixed side beyond `_HALF_READS_BYTES`, the users at this shape, read
through a bfloat16 copy), and that sweep with both sides read through bfloat16 copies
("sweep16", what the threshold rules out for the items); each copy is timed with its run.

The baseline is the earlier row solve: each rating added to the lower triangle of the d x d
normal equations one scalar multiply-add at a time, then a Cholesky factorization, for every
row whatever its length.
"""

import argparse
import time

import numba as nb
import numpy as np
from numba import prange
from problems import als_penalty
from threadpoolctl import threadpool_limits

from fastcofi import datasets
from fastcofi.kernels.cholesky import _cholesky_solve
from fastcofi.kernels.rowsolve import Other, Penalty, Solved, solve_rows
from fastcofi.kernels.sparse import Rows
from fastcofi.train.objective import FlatObjective, _copy_into, _read_copy, threads
from fastcofi.train.solvers import CG_STEPS

_FASTMATH = {"reassoc", "contract"}


@nb.njit(fastmath=_FASTMATH, cache=True, nogil=True)
def _scalar_row(cols, values, F, col_offset, row_offset, reg, reg_bias, fit_bias, A, b, out):
    k = F.shape[1]
    d = k + 1 if fit_bias else k
    for r in range(d):
        b[r] = 0.0
        for c in range(d):
            A[r, c] = 0.0
    for r in range(k):
        A[r, r] = reg
    if fit_bias:
        A[k, k] = reg_bias
    for p in range(cols.shape[0]):
        col = cols[p]
        target = values[p] - col_offset[col] - row_offset
        for r in range(k):
            fr = F[col, r]
            b[r] += fr * target
            for c in range(r + 1):
                A[r, c] += fr * F[col, c]
        if fit_bias:
            b[k] += target
            for c in range(k):
                A[k, c] += F[col, c]
            A[k, k] += 1.0
    if not _cholesky_solve(A, b, d):
        for q in range(k):
            out[q] = 0.0
        return np.nan
    for q in range(k):
        out[q] = b[q]
    return b[k] if fit_bias else 0.0


@nb.njit(parallel=True, fastmath=_FASTMATH, cache=True, nogil=True)
def scalar_solve_rows(indptr, cols, values, chunks, F, col_offset, row_offset, reg, reg_bias,
                      row_weight, fit_bias, out, out_bias):
    k = F.shape[1]
    d = k + 1 if fit_bias else k
    n_chunks = chunks.shape[0] - 1
    failures = np.zeros(n_chunks, dtype=np.int64)
    for c in prange(n_chunks):
        A = np.empty((d, d))
        b = np.empty(d)
        for r in range(chunks[c], chunks[c + 1]):
            start, end = indptr[r], indptr[r + 1]
            beta = _scalar_row(cols[start:end], values[start:end], F, col_offset, row_offset[r],
                               reg * row_weight[r], reg_bias * row_weight[r], fit_bias, A, b,
                               out[r])
            if np.isnan(beta):
                failures[c] += 1
                beta = 0.0
            if fit_bias:
                out_bias[r] = beta
    return failures.sum()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratings", type=float, default=1e6)
    parser.add_argument("--factors", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    r = datasets.synthetic(480_189, 17_770, int(args.ratings), rank=10, noise=0.5, seed=1)
    rng = np.random.default_rng(0)
    k = args.factors
    X = rng.normal(0, 0.1, (r.n_items, k))
    Theta = rng.normal(0, 0.1, (r.n_users, k))
    item_bias, user_bias = np.zeros(r.n_items), np.zeros(r.n_users)
    mu = float(r.values.mean())
    penalty = als_penalty(r)
    reg, reg_bias = penalty["reg"], penalty["reg_bias"]
    item_weight, user_weight = FlatObjective(r, k, mu=mu, learn_biases=True, **penalty).weights

    def tiled(copy, cg_steps):
        def kernel(indptr, cols, values, chunks, F, col_offset, row_offset, reg, reg_bias,
                   row_weight, fit_bias, out, out_bias):
            # Training reads the fixed side through a copy, made once per half-sweep.
            return solve_rows(Rows(indptr, cols, values, chunks), Other(copy(F), col_offset),
                              Penalty(reg, reg_bias, fit_bias), row_offset, row_weight,
                              Solved(out, out_bias), cg_steps).failures
        return kernel

    def halves(kernel, X, Theta, item_bias, user_bias):
        t0 = time.perf_counter()
        kernel(*r.by_user, r._user_chunks, X, mu + item_bias, np.zeros(r.n_users), reg,
               reg_bias, user_weight, True, Theta, user_bias)
        t1 = time.perf_counter()
        kernel(*r.by_item, r._item_chunks, Theta, mu + user_bias, np.zeros(r.n_items), reg,
               reg_bias, item_weight, True, X, item_bias)
        return t1 - t0, time.perf_counter() - t1

    def astype(factor_type):
        return lambda F: F.astype(factor_type)

    def as_als_reads(F):  # what `RowSolves(half_reads=True)` copies
        return _copy_into(_read_copy(F, True, True), F)

    def as_bfloat16(F):
        return _copy_into(np.empty(F.shape, np.uint16), F)

    kernels = {"scalar": scalar_solve_rows, "tiled": tiled(astype(np.float64), 0),
               "tiled32": tiled(astype(np.float32), 0),
               "sweep32": tiled(astype(np.float32), CG_STEPS),
               "sweep": tiled(as_als_reads, CG_STEPS), "sweep16": tiled(as_bfloat16, CG_STEPS)}
    times = {name: [] for name in kernels}
    results = {}
    with threads(args.threads), threadpool_limits(1, user_api="blas"):
        for name, kernel in kernels.items():  # compile, or load from the cache
            halves(kernel, X.copy(), Theta.copy(), item_bias.copy(), user_bias.copy())
        for _ in range(args.repeats):
            for name, kernel in kernels.items():
                state = (X.copy(), Theta.copy(), item_bias.copy(), user_bias.copy())
                times[name].append(halves(kernel, *state))
                results[name] = np.concatenate([a.ravel() for a in state])
    for name, runs in times.items():
        runs = np.array(runs)
        print(f"{name:7s} users {np.median(runs[:, 0]):.3f} s  items {np.median(runs[:, 1]):.3f} s"
              f"  sweep {np.median(runs.sum(axis=1)):.3f} s  (median of {args.repeats})")
    scalar = np.array(times["scalar"])
    for name in ("tiled", "tiled32", "sweep32", "sweep", "sweep16"):
        runs = np.array(times[name])
        ratio = [np.median(scalar[:, h]) / np.median(runs[:, h]) for h in range(2)]
        ratio.append(np.median(scalar.sum(axis=1)) / np.median(runs.sum(axis=1)))
        print(f"scalar / {name}: users {ratio[0]:.2f}x  items {ratio[1]:.2f}x  "
              f"sweep {ratio[2]:.2f}x")
        diff = np.max(np.abs(results[name] - results["scalar"]))
        print(f"largest |{name} - scalar| after one sweep: {diff:.2e} "
              f"(relative {diff / np.max(np.abs(results['scalar'])):.1e})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
