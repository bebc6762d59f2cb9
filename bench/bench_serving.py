"""Serving benchmarks: single-user latency against the bare numpy floor, fold-in, batch throughput.

Run as a script (``python bench/bench_serving.py [--quick]``); it prints one table and writes
``bench/results/serving.json`` with the environment.

The models are synthetic: `synthetic_model` builds a fitted-looking `MatrixFactorization` by
setting its fitted attributes directly (random factors and biases, ``normalize="biases"``,
square-root ``reg_weighting``, penalties 1.3 and 0.8 for fold-in, and a random seen-items CSR of
``seen_per_user`` items per user), so no training time is spent. Serving only reads those attributes.

Measurements:

- single user, top-10 over 20k items x 64 factors: ``model.recommend(user, n=10)`` (seen items
  excluded) side by side with the floor ``np.argpartition(-(X @ theta), 10)[:10]`` (scores of every
  item, no offsets, no exclusions, no final sort), p50 / p99 of interleaved calls. The floor is
  timed both with numpy's default BLAS threads and with BLAS capped at one thread (threadpoolctl):
  on small shared machines the multi-threaded gemv can be much slower than one thread.
- fold-in of a user with 50 ratings at 64 factors: median of ``model.fold_in(items, values)``.
- batch: ``model.recommend(all_user_ids, n=10)`` on 100k users x 20k items x 64 factors in chunks
  of users, users per second, and the process's peak RSS (``resource.getrusage``).
"""

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
from harness import RESULTS, environment, output_path

from fastcofi import MatrixFactorization


def synthetic_model(n_users, n_items, n_factors, *, seen_per_user=20, seed=0):
    """A `MatrixFactorization` whose fitted attributes are random (no training)."""
    rng = np.random.default_rng(seed)
    model = MatrixFactorization(n_factors, normalize="biases")
    model.item_factors_ = rng.normal(0.0, 0.3, size=(n_items, n_factors))
    model.user_factors_ = rng.normal(0.0, 0.3, size=(n_users, n_factors))
    model.item_ids_ = np.arange(n_items, dtype=np.int64)
    model.user_ids_ = np.arange(n_users, dtype=np.int64)
    model.global_mean_ = 3.5
    model.item_means_ = None
    model.item_bias_ = rng.normal(0.0, 0.3, size=n_items)
    model.user_bias_ = rng.normal(0.0, 0.3, size=n_users)
    model.rating_range_ = (1.0, 5.0)
    # The penalties fold-in uses: ML-100K's resolved default (1.15 x the ratings' std).
    model.reg_ = 1.3
    model.reg_bias_ = 0.8
    model.solver_, model.reg_weighting_ = "cg", "sqrt"
    model.n_iter_ = 0
    model.best_iteration_ = 0
    model.result_ = None
    model.history_ = {}
    m = min(seen_per_user, n_items)
    indptr = np.arange(n_users + 1, dtype=np.int64) * m
    items = rng.integers(0, n_items, size=(n_users, m), dtype=np.int32)
    items.sort(axis=1)
    model.seen_indptr_, model.seen_indices_ = indptr, items.reshape(-1)
    return model


def percentiles(times):
    t = np.asarray(times) * 1e6
    return float(np.percentile(t, 50)), float(np.percentile(t, 99))


def bench_single(n_items=20_000, k=64, repeats=2000):
    from threadpoolctl import threadpool_limits

    model = synthetic_model(1000, n_items, k).warm_up()
    X = model.item_factors_
    rng = np.random.default_rng(1)
    users = rng.integers(0, 1000, size=repeats)

    def floor(u):
        s = X @ model.user_factors_[u]
        return np.argpartition(-s, 10)[:10]

    def ours(u):
        return model.recommend(u, n=10)

    out = {}
    for label, limit in (("blas_default", None), ("blas_1_thread", 1)):
        t_ours, t_floor = [], []
        with threadpool_limits(limit, user_api="blas") if limit else _null():
            for u in users[:50]:
                floor(u), ours(u)
            for u in users:
                t0 = time.perf_counter()
                floor(u)
                t1 = time.perf_counter()
                ours(u)
                t2 = time.perf_counter()
                t_floor.append(t1 - t0)
                t_ours.append(t2 - t1)
        f50, f99 = percentiles(t_floor)
        o50, o99 = percentiles(t_ours)
        out[label] = {"floor_p50_us": f50, "floor_p99_us": f99, "ours_p50_us": o50,
                      "ours_p99_us": o99, "ratio_p50": o50 / f50}
    return out


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def bench_fold_in(n_items=20_000, k=64, n_ratings=50, repeats=5000):
    model = synthetic_model(10, n_items, k).warm_up()
    rng = np.random.default_rng(2)
    cases = [
        (rng.choice(n_items, n_ratings, replace=False), rng.integers(1, 6, n_ratings).astype(float))
        for _ in range(20)
    ]
    for items, values in cases:
        model.fold_in(items, values)
    # Each call takes the next case: inputs are picked outside the timed span.
    times = []
    for r in range(repeats):
        items, values = cases[r % len(cases)]
        t0 = time.perf_counter()
        model.fold_in(items, values)
        times.append(time.perf_counter() - t0)
    p50, p99 = percentiles(times)
    return {"median_us": p50, "p99_us": p99}


def bench_batch(n_users=100_000, n_items=20_000, k=64, chunk=10_000):
    model = synthetic_model(n_users, n_items, k)
    model.warm_up()
    t0 = time.perf_counter()
    for start in range(0, n_users, chunk):
        model.recommend(model.user_ids_[start : start + chunk], n=10)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    factors_mib = (model.item_factors_.nbytes + model.user_factors_.nbytes) / 2**20
    return {"users": n_users, "seconds": seconds, "users_per_s": n_users / seconds,
            "peak_rss_mib": peak, "factor_arrays_mib": factors_mib}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="10k users in the batch, fewer repeats")
    parser.add_argument("--out", type=output_path, default=str(RESULTS / "serving.json"))
    args = parser.parse_args(argv)
    single = bench_single(repeats=500 if args.quick else 2000)
    fold = bench_fold_in(repeats=1000 if args.quick else 5000)
    batch = bench_batch(n_users=10_000 if args.quick else 100_000)
    results = {"env": environment(), "single_user_top10_20k_x64": single,
               "fold_in_50_ratings_64": fold, "batch_20k_items_64": batch}
    for label, row in single.items():
        print(f"single user top-10, 20k items x 64 ({label}): ours p50 {row['ours_p50_us']:.0f} us "
              f"p99 {row['ours_p99_us']:.0f} us | floor p50 {row['floor_p50_us']:.0f} us "
              f"p99 {row['floor_p99_us']:.0f} us | ratio {row['ratio_p50']:.2f}")
    print(f"fold-in, 50 ratings x 64 factors: median {fold['median_us']:.1f} us, "
          f"p99 {fold['p99_us']:.1f} us")
    print(f"batch top-10, {batch['users']} users x 20k items x 64: "
          f"{batch['users_per_s']:.0f} users/s "
          f"({batch['seconds']:.1f} s), peak RSS {batch['peak_rss_mib']:.0f} MiB "
          f"(factor arrays {batch['factor_arrays_mib']:.0f} MiB)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
