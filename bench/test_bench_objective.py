"""One objective evaluation (cost + both gradients): our kernel, the dense reference and a
hand-vectorized numpy/scipy.sparse version. Each timed function's result is checked against
another formulation after timing. Skipped by default; run with

    python3 -m pytest bench/test_bench_objective.py --benchmark-only --benchmark-group-by=param:size

(or every suite at once: ``python3 -m pytest bench --benchmark-only``).
``test_formulations_agree`` is not a benchmark: it runs in every test run, on the smallest size.
"""

import numpy as np
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


def assert_agree(got, expected, tol=1e-9):
    """Cost and both gradients equal to ``tol`` relative (max|a - b| / (1 + max|b|))."""
    for a, b in zip(got, expected):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        assert a.shape == b.shape
        assert np.max(np.abs(a - b), initial=0.0) <= tol * (1.0 + np.max(np.abs(b), initial=0.0))


def kernel_result(ratings, X, Theta):
    return cost_and_grad(X, Theta, ratings, 1.0, n_threads=1)


def test_formulations_agree():
    """The three timed formulations give the same cost and gradients (smallest size, k = 10)."""
    ratings = ratings_for(SIZE_NAMES[0])
    X, Theta = factors_for(ratings, 10)
    kernel = kernel_result(ratings, X, Theta)
    assert_agree(cost_and_grad(X, Theta, ratings, 1.0, n_threads=2), kernel, tol=0.0)
    assert_agree(Vectorized(ratings)(X, Theta, 1.0), kernel)
    assert_agree(dense_cost_and_grad(X, Theta, *dense_inputs(SIZE_NAMES[0]), 1.0), kernel)


@pytest.mark.parametrize("k", FACTORS)
@pytest.mark.parametrize("size", SIZE_NAMES)
@pytest.mark.parametrize("threads", [1, 2])
def test_kernel(benchmark, size, k, threads):
    ratings = ratings_for(size)
    X, Theta = factors_for(ratings, k)
    cost_and_grad(X, Theta, ratings, 1.0, n_threads=threads)  # compiled before timing
    benchmark.extra_info["nnz"] = ratings.nnz
    got = benchmark(cost_and_grad, X, Theta, ratings, 1.0, n_threads=threads)
    if vectorized_bytes(size, k) <= MEMORY_LIMIT:
        assert_agree(got, Vectorized(ratings)(X, Theta, 1.0))
    else:  # results do not depend on the thread count: the one-thread run is bit-identical
        assert_agree(got, kernel_result(ratings, X, Theta), tol=0.0)


@pytest.mark.parametrize("k", FACTORS)
@pytest.mark.parametrize("size", SIZE_NAMES)
def test_vectorized(benchmark, size, k):
    if vectorized_bytes(size, k) > MEMORY_LIMIT:
        pytest.skip(f"vectorized at {size} x k={k} needs > {MEMORY_LIMIT / 1e9:.0f} GB")
    ratings = ratings_for(size)
    X, Theta = factors_for(ratings, k)
    got = benchmark(Vectorized(ratings), X, Theta, 1.0)
    assert_agree(got, kernel_result(ratings, X, Theta))


@pytest.mark.parametrize("k", FACTORS)
@pytest.mark.parametrize("size", SIZE_NAMES)
def test_dense_reference(benchmark, size, k):
    if dense_bytes(size, k) > MEMORY_LIMIT or SIZES[size][0] * SIZES[size][1] > 5000 * 5000:
        pytest.skip(f"dense reference at {size} needs > 5k x 5k or {MEMORY_LIMIT / 1e9:.0f} GB")
    ratings = ratings_for(size)
    X, Theta = factors_for(ratings, k)
    dense, mask = dense_inputs(size)
    got = benchmark(dense_cost_and_grad, X, Theta, dense, mask, 1.0)
    assert_agree(got, kernel_result(ratings, X, Theta))
