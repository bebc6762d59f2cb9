"""The objective on a Dask cluster: time per evaluation and bytes per evaluation.

Run as a script (``python bench/bench_distributed.py [--quick]``); it prints one table and writes
``bench/results/distributed.json`` with the environment.

On ~1e6 synthetic ratings (`fastcofi.datasets.synthetic`, learned biases, the estimator's
default regularization) at k = 10 and 32, the median wall time of one
``objective(params) -> (cost, gradient)`` call:

- single process: `FlatObjective` with numba on 1 thread and on 2 threads;
- Dask, 1 worker process with 2 threads (one shard, numba on 2 threads);
- Dask, 2 worker processes with 1 thread each (two shards, numba on 1 thread each), the ratings
  cut into item blocks and, separately, into user blocks.

Every Dask configuration runs on the same machine (loopback TCP), so the workers share the
machine's cores with each other and with the driver: on a 2-core machine no configuration can
use more than 2 cores, and the Dask figures measure the overhead of distribution (serializing
the factors, the scheduler round trip, summing the partial gradients), not a speed-up. Other
processes may share the cores: the figures are indicative.

Bytes per evaluation are the float64 payload (`ShardedRatings.bytes_per_evaluation`): each shard
receives its items' rows and the rows of the users it has ratings of (factors and both biases)
and sends back gradients of the same shapes.
"""

import argparse
import json
import os
import time

import numpy as np
from harness import RESULTS, environment, median_seconds

from fastcofi import MatrixFactorization
from fastcofi.data.ratings import value_moments
from fastcofi.datasets import synthetic
from fastcofi.train.objective import FlatObjective

OUT = RESULTS / "distributed.json"


def median_time(fun, params, repeat):
    """Median seconds of ``fun(params)`` after one untimed call (compiles, warms the workers)."""
    return median_seconds(lambda: fun(params), repeat)[0]


DEFAULTS = MatrixFactorization().get_params()


def objective_kwargs(ratings):
    return {"mu": float(ratings.values.mean()), "learn_biases": True,
            "reg_bias": DEFAULTS["reg_bias"], "reg_weighting": DEFAULTS["reg_weighting"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1e5 ratings, fewer repeats")
    args = parser.parse_args(argv)

    import distributed

    from fastcofi import distributed as fd

    n_ratings = 100_000 if args.quick else 1_000_000
    n_users, n_items = (2_000, 1_000) if args.quick else (20_000, 5_000)
    repeat = 3 if args.quick else 10
    ratings = synthetic(n_users, n_items, n_ratings, seed=0)
    kwargs = objective_kwargs(ratings)
    # the penalty the estimator's default (reg=None) resolves to on these ratings
    reg, _ = MatrixFactorization()._penalties(value_moments(ratings.values)[1])
    ks = (10, 32)
    rows = {}
    rng = np.random.default_rng(0)
    params = {}
    for k in ks:
        local = FlatObjective(ratings, k, reg, **kwargs)
        params[k] = rng.normal(0.0, 0.1, size=local.size)
        rows[k] = {}
        for threads in (1, 2):
            local.n_threads = threads
            rows[k][f"single_process_{threads}_thread"] = median_time(local, params[k], repeat)

    configs = {
        "dask_1_worker_2_threads": (1, 2, ("items",)),
        "dask_2_workers_1_thread": (2, 1, ("items", "users")),
    }
    payload = {}
    for name, (n_workers, threads, sides) in configs.items():
        with distributed.LocalCluster(
            n_workers=n_workers, threads_per_worker=threads, processes=True, host="127.0.0.1",
            dashboard_address=None,
        ) as cluster, distributed.Client(cluster) as client:
            for by in sides:
                label = f"{name}_by_{by}"
                start = time.perf_counter()
                sharded = fd.scatter(ratings, client, by=by)
                scatter_seconds = time.perf_counter() - start
                for k in ks:
                    remote = fd.DistributedObjective(sharded, k, reg, **kwargs)
                    rows[k][label] = median_time(remote, params[k], repeat)
                    rows[k][f"{label}_scatter_s"] = scatter_seconds
                    payload[(k, sharded.n_shards, by)] = sharded.bytes_per_evaluation(k)
                sharded.close()

    result = {
        "env": environment(
            dask=distributed.__version__,
            note="all workers on one machine over loopback TCP; with 2 cores no configuration "
                 "uses more than 2 cores; other processes shared the cores (indicative)",
        ),
        "data": {"n_users": ratings.n_users, "n_items": ratings.n_items, "nnz": ratings.nnz,
                 "objective": "learned biases, the estimator's default regularization"},
        "seconds_per_evaluation": {str(k): rows[k] for k in ks},
        "bytes_per_evaluation": {
            f"k{k}_{n}_shards_by_{by}": v for (k, n, by), v in sorted(payload.items())
        },
    }
    print(f"{ratings.nnz} ratings, {ratings.n_users} users, {ratings.n_items} items; "
          f"{os.cpu_count()} cores (indicative: shared machine)")
    print(f"{'k':>3}  {'config':<42} {'s/eval':>9}")
    for k in ks:
        for name, seconds in rows[k].items():
            if not name.endswith("_scatter_s"):
                print(f"{k:>3}  {name:<42} {seconds:9.4f}")
    for (k, n, by), v in sorted(payload.items()):
        print(f"k={k} {n} shard(s) by {by}: sent {v['sent'] / 1e6:.2f} MB, received "
              f"{v['received'] / 1e6:.2f} MB per evaluation ({v['item_rows']} item rows, "
              f"{v['user_rows']} user rows)")
    if not args.quick:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {OUT}")
    return result


if __name__ == "__main__":
    main()
