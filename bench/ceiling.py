"""How fast can one objective evaluation be on this machine? Our kernel against plain C.

    python3 bench/ceiling.py [--sizes ml100k,1e6] [--factors 10] [--rounds 3] [--repeats 31]

The engine issue asks for 300 M ratings/s at k = 10 and 50x the dense reference at ML-100K's
shape. To tell a slow kernel from a slow machine, this compiles the same one-pass loop in C
(``cc -O3 -march=native -ffast-math -fopenmp``; skipped when no compiler is found): per-thread
gradient buffers for the smaller side, summed after the walk, the penalty terms, float64 all
through. It does less than our kernel (no biases, no row weights, no column blocks), so its
speed bounds what a rewrite of ours could gain. It runs twice: with k a runtime argument, as
ours takes it, and with k fixed at compile time (fully unrolled).

Each variant runs in its own process (OpenMP runtimes and BLAS pools in one process disturb
each other), the variants alternating for ``--rounds`` rounds; a cell is the median of its
rounds' medians. The dense reference (numpy, the tutorial's formulas from one residual) is timed
the same way at ML-100K's shape. Writes bench/results/ceiling.json.
"""

import argparse
import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from harness import RESULTS, environment, sample_seconds, write_json
from problems import factors_for, ratings_for

C_SOURCE = r"""
#include <string.h>
#include <omp.h>

/* The tutorial's cost and gradients over one CSR (rows A, columns B) with per-thread buffers of
   B's gradient. bounds: n_parts + 1 row boundaries, one part per thread. Returns the cost. */
static double objective(int k, long nA, long nB, const long *indptr, const int *cols,
                        const double *vals, const double *A, const double *B, double reg,
                        double *A_grad, double *B_grad, double *buffers, const long *bounds,
                        int n_parts) {
    double cost = 0.0;
    #pragma omp parallel for schedule(static, 1) reduction(+:cost)
    for (int t = 0; t < n_parts; t++) {
        double *buf = buffers + (size_t)t * nB * k;
        memset(buf, 0, sizeof(double) * nB * k);
        double a[KMAX], ag[KMAX];
        for (long i = bounds[t]; i < bounds[t + 1]; i++) {
            for (int f = 0; f < k; f++) { a[f] = A[i * k + f]; ag[f] = reg * a[f];
                                          cost += 0.5 * reg * a[f] * a[f]; }
            for (long p = indptr[i]; p < indptr[i + 1]; p++) {
                const double *b = B + (long)cols[p] * k;
                double *u = buf + (long)cols[p] * k;
                double err = -vals[p];
                for (int f = 0; f < k; f++) err += a[f] * b[f];
                cost += 0.5 * err * err;
                for (int f = 0; f < k; f++) { ag[f] += err * b[f]; u[f] += err * a[f]; }
            }
            for (int f = 0; f < k; f++) A_grad[i * k + f] = ag[f];
        }
    }
    #pragma omp parallel for schedule(static) reduction(+:cost)
    for (long j = 0; j < nB; j++) {
        for (int f = 0; f < k; f++) {
            double g = reg * B[j * k + f];
            cost += 0.5 * reg * B[j * k + f] * B[j * k + f];
            for (int t = 0; t < n_parts; t++) g += buffers[((size_t)t * nB + j) * k + f];
            B_grad[j * k + f] = g;
        }
    }
    return cost;
}

void set_threads(int n) { omp_set_num_threads(n); }

double objective_runtime_k(int k, long nA, long nB, const long *indptr, const int *cols,
                           const double *vals, const double *A, const double *B, double reg,
                           double *A_grad, double *B_grad, double *buffers, const long *bounds,
                           int n_parts) {
    return objective(k, nA, nB, indptr, cols, vals, A, B, reg, A_grad, B_grad, buffers, bounds,
                     n_parts);
}

double objective_fixed_k(int k, long nA, long nB, const long *indptr, const int *cols,
                         const double *vals, const double *A, const double *B, double reg,
                         double *A_grad, double *B_grad, double *buffers, const long *bounds,
                         int n_parts) {
    (void)k;
    return objective(FIXED_K, nA, nB, indptr, cols, vals, A, B, reg, A_grad, B_grad, buffers,
                     bounds, n_parts);
}
"""

C_FLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp", "-shared", "-fPIC")
VARIANTS = ("fastcofi", "C, runtime k", "C, k fixed at compile time", "dense reference")
TARGET_RATINGS_PER_S = 300e6
TARGET_VS_DENSE = 50.0


def _compiler():
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def compiler_version():
    compiler = _compiler()
    if compiler is None:
        return None
    done = subprocess.run([compiler, "--version"], capture_output=True, text=True)
    return done.stdout.splitlines()[0] if done.returncode == 0 and done.stdout else compiler


def compile_c(k, folder):
    """Path of the compiled C objective for ``k`` factors, or None (with the reason printed)."""
    compiler = _compiler()
    if compiler is None:
        print("no C compiler found (cc, gcc or $CC): C variants skipped", file=sys.stderr)
        return None
    source = Path(folder) / "ceiling.c"
    source.write_text(C_SOURCE)
    library = Path(folder) / f"ceiling_k{k}.so"
    command = [compiler, *C_FLAGS, f"-DKMAX={max(k, 1)}", f"-DFIXED_K={k}", str(source), "-o",
               str(library)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"compiling the C variants failed, skipped:\n{done.stderr}", file=sys.stderr)
        return None
    return library


def _c_call(library, fixed, ratings, X, Theta, threads):
    """A no-argument callable evaluating the C objective on ``threads`` threads (returns the
    cost), and the item and user gradients it writes."""
    from fastcofi.data.ratings import balanced_bounds

    lib = ctypes.CDLL(str(library))
    fn = lib.objective_fixed_k if fixed else lib.objective_runtime_k
    fn.restype = ctypes.c_double
    # Walk the side with more rows, as our kernel does.
    if ratings.n_items >= ratings.n_users:
        (indptr, cols, vals), A, B = ratings.by_item, X, Theta
    else:
        (indptr, cols, vals), A, B = ratings.by_user, Theta, X
    indptr = np.ascontiguousarray(indptr, dtype=np.int64)
    cols = np.ascontiguousarray(cols, dtype=np.int32)
    vals = np.ascontiguousarray(vals, dtype=np.float64)
    k = A.shape[1]
    A_grad, B_grad = np.empty_like(A), np.empty_like(B)
    buffers = np.empty(threads * B.shape[0] * k)
    bounds = balanced_bounds(indptr, threads)
    lib.set_threads(threads)  # whichever OpenMP runtime the compiler linked
    p = ctypes.c_void_p
    args = (ctypes.c_int(k), ctypes.c_long(A.shape[0]), ctypes.c_long(B.shape[0]),
            *(a.ctypes.data_as(p) for a in (indptr, cols, vals, A, B)), ctypes.c_double(1.0),
            *(a.ctypes.data_as(p) for a in (A_grad, B_grad, buffers, bounds)),
            ctypes.c_int(threads))

    def call():
        return fn(*args)

    return call, ((A_grad, B_grad) if A is X else (B_grad, A_grad))


def worker(variant, folder, size, k, threads, repeats, library):
    """Median seconds of ``repeats`` evaluations of one variant (run in a fresh process)."""
    from problems import dense_cost_and_grad, dense_inputs
    from threadpoolctl import threadpool_limits

    from fastcofi import Ratings
    from fastcofi.objective import cost_and_grad

    ratings = Ratings.load(Path(folder) / size)
    X, Theta = factors_for(ratings, k)
    if variant == "fastcofi":
        def call():
            return cost_and_grad(X, Theta, ratings, 1.0, n_threads=threads)
    elif variant == "dense reference":
        dense, mask = dense_inputs(size)

        def call():
            return dense_cost_and_grad(X, Theta, dense, mask, 1.0)
    else:
        fixed_k = variant.endswith("compile time")
        call, (X_grad, Theta_grad) = _c_call(library, fixed_k, ratings, X, Theta, threads)
        cost = call()
        ours = cost_and_grad(X, Theta, ratings, 1.0)
        scale = max(1.0, float(np.max(np.abs(ours[1]))), float(np.max(np.abs(ours[2]))))
        if not (np.isclose(cost, ours[0], rtol=1e-9)
                and np.allclose(X_grad, ours[1], rtol=0, atol=1e-9 * scale)
                and np.allclose(Theta_grad, ours[2], rtol=0, atol=1e-9 * scale)):
            raise SystemExit(f"{variant} disagrees with fastcofi's objective at {size}, k={k}")
    blas = None if variant == "dense reference" else 1
    with threadpool_limits(limits=blas, user_api="blas"):
        times = sample_seconds(call, repeats)
    return float(np.median(times))


def run_worker(variant, folder, size, k, threads, repeats, library):
    command = [sys.executable, __file__, "--worker", variant, "--folder", str(folder),
               "--sizes", size, "--factors", str(k), "--threads", str(threads),
               "--repeats", str(repeats), "--library", str(library or "")]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"worker {variant} failed:\n{done.stderr}")
    return float(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="ml100k,1e6")
    parser.add_argument("--factors", default="10")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--threads", type=int, default=0, help="0: 1 and 2")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--library", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(worker(args.worker, args.folder, args.sizes, int(args.factors), args.threads,
                     args.repeats, args.library or None))
        return

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes.split(","):
            ratings_for(size).save(Path(folder) / size)
        for k in (int(v) for v in args.factors.split(",")):
            library = compile_c(k, folder)
            for size in args.sizes.split(","):
                nnz = ratings_for(size).nnz
                for threads in ((1, 2) if args.threads == 0 else (args.threads,)):
                    variants = [v for v in VARIANTS
                                if (library or not v.startswith("C"))
                                and (v != "dense reference" or (size == "ml100k" and threads == 2))]
                    rounds = {v: [] for v in variants}
                    for _ in range(args.rounds):
                        for v in variants:
                            rounds[v].append(run_worker(v, folder, size, k, threads,
                                                        args.repeats, library))
                    row = {"size": size, "nnz": nnz, "k": k, "threads": threads,
                           "rounds": rounds,
                           "seconds": {v: float(np.median(t)) for v, t in rounds.items()}}
                    row["ratings_per_s"] = {v: nnz / s for v, s in row["seconds"].items()
                                            if v != "dense reference"}
                    if "dense reference" in row["seconds"]:
                        dense = row["seconds"]["dense reference"]
                        row["speedup_vs_dense"] = {v: dense / s for v, s in row["seconds"].items()
                                                   if v != "dense reference"}
                    rows.append(row)
                    cells = ", ".join(f"{v} {s * 1e3:.3f} ms"
                                      + (f" ({nnz / s / 1e6:.0f} M/s)"
                                         if v != "dense reference" else "")
                                      for v, s in row["seconds"].items())
                    print(f"{size} k={k} {threads} thread(s): {cells}", flush=True)
                    if "speedup_vs_dense" in row:
                        print("  vs dense: " + ", ".join(f"{v} {x:.1f}x" for v, x in
                                                          row["speedup_vs_dense"].items()))
    doc = {"targets": {"ratings_per_s": TARGET_RATINGS_PER_S, "vs_dense": TARGET_VS_DENSE},
           "environment": environment(compiler=compiler_version(), c_flags=list(C_FLAGS)),
           "rows": rows}
    write_json(RESULTS / "ceiling.json", doc)
    print(f"wrote {RESULTS / 'ceiling.json'}")


if __name__ == "__main__":
    main()
