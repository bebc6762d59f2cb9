"""The one-pass (buffered) kernel against the two-pass kernel, calls alternated in one process.

    python3 bench/kernel_ab.py [--sizes ml100k,1e6,1e7] [--factors 10] [--repeats 15]

Both kernels stay in the package (the two-pass one for when buffers would not fit); this prints
the median seconds of each at 1 and 2 threads and their ratio, BLAS parked at one thread.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.problems import factors_for, ratings_for  # noqa: E402
from fastcofi.objective import _evaluate, threads  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="ml100k,1e6,1e7")
    parser.add_argument("--factors", default="10")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    for size in args.sizes.split(","):
        ratings = ratings_for(size)
        zeros = (np.zeros(ratings.n_items), np.zeros(ratings.n_users))
        ones = (np.ones(ratings.n_items), np.ones(ratings.n_users))
        for k in (int(v) for v in args.factors.split(",")):
            X, Theta = factors_for(ratings, k)
            grads = (np.empty_like(X), np.empty_like(Theta), *(np.empty_like(z) for z in zeros))

            def call(buffered, X=X, Theta=Theta, grads=grads):
                _evaluate(X, Theta, *zeros, 0.0, ratings, 1.0, 0.0, ones, grads, buffered=buffered)

            for n_threads in (1, 2):
                times = {True: [], False: []}
                with threadpool_limits(limits=1, user_api="blas"), threads(n_threads):
                    call(True), call(False)
                    for _ in range(args.repeats):
                        for buffered in (True, False):
                            t = time.perf_counter()
                            call(buffered)
                            times[buffered].append(time.perf_counter() - t)
                one, two = (float(np.median(times[b])) for b in (True, False))
                print(f"{size} k={k} {n_threads} thread(s): one-pass {one * 1e3:.2f} ms, "
                      f"two-pass {two * 1e3:.2f} ms, {two / one:.2f}x", flush=True)


if __name__ == "__main__":
    main()
