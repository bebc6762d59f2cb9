"""The objective's kernels against each other, calls alternated in one process.

    python3 bench/kernel_ab.py [--sizes ml100k,1e6,1e7] [--factors 10] [--repeats 15]
                               [--block-mib 4,16]

Three ways to evaluate the same objective: the one-pass (buffered) kernel with its default
column blocks, the same kernel walking each row once (a single block: how it ran before the
blocks), and the two-pass kernel (kept for when buffers would not fit); the one-pass kernel
both reading the other side's float64 factors and through a float32 copy (what the projected
CG and L-BFGS read far from the minimum); with ``--block-mib``, blocks of those sizes too.
Prints the median seconds of each at 1 and 2 threads and the ratios to the default, BLAS parked
at one thread.
"""

import argparse
import time

import numpy as np
from problems import factors_for, ratings_for
from threadpoolctl import threadpool_limits

# The kernel's variants are chosen through the private evaluation seam: this compares them.
from fastcofi._parallel import threads
from fastcofi.train.objective import _evaluate, column_blocks

VARIANTS = {
    "one-pass, blocks": {"buffered": True},
    "one-pass, one block": {"buffered": True, "block_bytes": 1 << 62},
    "float32 reads, blocks": {"buffered": True, "single": True},
    "float32 reads, one block": {"buffered": True, "block_bytes": 1 << 62, "single": True},
    "two-pass": {"buffered": False},
}


def block_variants(mib):
    """The one-pass kernel with blocks of each size in ``mib`` (MiB), both reads."""
    out = {}
    for size in mib:
        out[f"{size} MiB blocks"] = {"buffered": True, "block_bytes": int(size * 2**20)}
        out[f"float32 reads, {size} MiB blocks"] = {
            "buffered": True, "block_bytes": int(size * 2**20), "single": True}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="ml100k,1e6,1e7")
    parser.add_argument("--factors", default="10")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--block-mib", default="",
                        help="also these block sizes, comma-separated MiB (e.g. 4,16)")
    args = parser.parse_args()
    variants = {**VARIANTS, **block_variants(
        float(v) for v in args.block_mib.split(",") if v)}
    for size in args.sizes.split(","):
        ratings = ratings_for(size)
        zeros = (np.zeros(ratings.n_items), np.zeros(ratings.n_users))
        ones = (np.ones(ratings.n_items), np.ones(ratings.n_users))
        for k in (int(v) for v in args.factors.split(",")):
            X, Theta = factors_for(ratings, k)
            grads = (np.empty_like(X), np.empty_like(Theta), *(np.empty_like(z) for z in zeros))

            def call(variant, X=X, Theta=Theta, grads=grads):
                _evaluate(X, Theta, *zeros, 0.0, ratings, 1.0, 0.0, ones, grads, **variant)

            smaller = min(ratings.n_items, ratings.n_users)
            n_blocks = "/".join(str(column_blocks(smaller, k, itemsize=size).shape[0] - 1)
                                for size in (8, 4))
            for n_threads in (1, 2):
                times = {name: [] for name in variants}
                with threadpool_limits(limits=1, user_api="blas"), threads(n_threads):
                    for variant in variants.values():
                        call(variant)
                    for _ in range(args.repeats):
                        for name, variant in variants.items():
                            t = time.perf_counter()
                            call(variant)
                            times[name].append(time.perf_counter() - t)
                medians = {name: float(np.median(v)) for name, v in times.items()}
                base = medians["one-pass, blocks"]
                cells = ", ".join(f"{name} {m * 1e3:.2f} ms ({m / base:.2f}x)"
                                  for name, m in medians.items())
                print(f"{size} k={k} {n_blocks} block(s) (float64/float32 reads), "
                      f"{n_threads} thread(s): {cells}", flush=True)


if __name__ == "__main__":
    main()
