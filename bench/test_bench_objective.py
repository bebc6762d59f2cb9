"""One objective evaluation (cost + both gradients): our kernel, the dense reference and a
hand-vectorized numpy/scipy.sparse version. Skipped by default; run with

    python3 -m pytest bench/test_bench_objective.py --benchmark-only --benchmark-group-by=param:size

(or every suite at once: ``python3 -m pytest bench --benchmark-only``).
"""

import pytest
from problems import (
    DEFAULT_SIZES,
    MEMORY_LIMIT,
    SIZES,
    Vectorized,
    dense_bytes,
    dense_cost_and_grad,
    dense_inputs,
    factors_for,
    ratings_for,
    vectorized_bytes,
)

from fastcofi.objective import cost_and_grad

SIZE_NAMES = list(DEFAULT_SIZES)
FACTORS = [10, 50, 100]


@pytest.mark.parametrize("k", FACTORS)
@pytest.mark.parametrize("size", SIZE_NAMES)
@pytest.mark.parametrize("threads", [1, 2])
def test_kernel(benchmark, size, k, threads):
    ratings = ratings_for(size)
    X, Theta = factors_for(ratings, k)
    cost_and_grad(X, Theta, ratings, 1.0, n_threads=threads)  # compiled before timing
    benchmark.extra_info["nnz"] = ratings.nnz
    benchmark(cost_and_grad, X, Theta, ratings, 1.0, n_threads=threads)


@pytest.mark.parametrize("k", FACTORS)
@pytest.mark.parametrize("size", SIZE_NAMES)
def test_vectorized(benchmark, size, k):
    if vectorized_bytes(size, k) > MEMORY_LIMIT:
        pytest.skip(f"vectorized at {size} x k={k} needs > {MEMORY_LIMIT / 1e9:.0f} GB")
    ratings = ratings_for(size)
    X, Theta = factors_for(ratings, k)
    benchmark(Vectorized(ratings), X, Theta, 1.0)


@pytest.mark.parametrize("k", FACTORS)
@pytest.mark.parametrize("size", SIZE_NAMES)
def test_dense_reference(benchmark, size, k):
    if dense_bytes(size, k) > MEMORY_LIMIT or SIZES[size][0] * SIZES[size][1] > 5000 * 5000:
        pytest.skip(f"dense reference at {size} needs > 5k x 5k or {MEMORY_LIMIT / 1e9:.0f} GB")
    ratings = ratings_for(size)
    X, Theta = factors_for(ratings, k)
    dense, mask = dense_inputs(size)
    benchmark(dense_cost_and_grad, X, Theta, dense, mask, 1.0)
