"""Serving: one user's top-10 beside the bare numpy floor, fold-in, and a batch of users.

Skipped by default; run with

    python3 -m pytest bench/test_bench_serving.py --benchmark-only --benchmark-group-by=group

The models are `bench_serving.synthetic_model` (random fitted attributes, 20k items x 64
factors, 20 seen items per user; no training). ``bench/bench_serving.py`` measures the same
calls as p50 / p99 of interleaved calls and the batch's peak memory.
"""

import numpy as np
import pytest
from bench_serving import synthetic_model
from threadpoolctl import threadpool_limits

N_ITEMS, FACTORS = 20_000, 64


@pytest.fixture(scope="module")
def model():
    return synthetic_model(1_000, N_ITEMS, FACTORS).warm_up()


@pytest.fixture(params=["blas default", "blas 1 thread"])
def blas(request):
    # numpy's multi-threaded gemv can be far slower than one thread on a small shared machine.
    if request.param == "blas default":
        yield
    else:
        with threadpool_limits(limits=1, user_api="blas"):
            yield


@pytest.mark.benchmark(group="single user top-10, 20k items x 64")
def test_recommend_one_user(benchmark, model, blas):
    users = iter(np.random.default_rng(1).integers(0, 1_000, size=1_000_000))
    benchmark(lambda: model.recommend(int(next(users)), n=10))


@pytest.mark.benchmark(group="single user top-10, 20k items x 64")
def test_numpy_floor(benchmark, model, blas):
    """Scores of every item and a partial selection: no offsets, exclusions or final sort."""
    X, Theta = model.item_factors_, model.user_factors_
    users = iter(np.random.default_rng(1).integers(0, 1_000, size=1_000_000))
    benchmark(lambda: np.argpartition(-(X @ Theta[next(users)]), 10)[:10])


@pytest.mark.benchmark(group="fold-in, 50 ratings x 64 factors")
def test_fold_in(benchmark, model):
    rng = np.random.default_rng(2)
    items = rng.choice(N_ITEMS, 50, replace=False)
    values = rng.integers(1, 6, 50).astype(float)
    model.fold_in(items, values)
    benchmark(model.fold_in, items, values)


@pytest.mark.benchmark(group="batch top-10, 10k users x 20k items x 64")
def test_recommend_batch(benchmark):
    batch = synthetic_model(10_000, N_ITEMS, FACTORS).warm_up()
    users = batch.user_ids_
    benchmark.extra_info["users"] = users.shape[0]
    benchmark.pedantic(batch.recommend, args=(users,), kwargs={"n": 10}, rounds=3,
                       warmup_rounds=1)
