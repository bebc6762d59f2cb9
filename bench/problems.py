"""Benchmark problems and the two formulations our kernel is compared with.

Sizes follow the engine issue: ML-100K's shape, then synthetic power-law sets of 1e5, 1e6 and
1e7 ratings. Problems are cached per process, so parametrized benchmarks build each one once.
"""

from functools import lru_cache

import numpy as np
import scipy.sparse as sp

from fastcofi import reference
from fastcofi.datasets import synthetic

# name -> (n_items, n_users, n_ratings)
SIZES = {
    "ml100k": (1682, 943, 100_000),
    "1e5": (5_000, 10_000, 100_000),
    "1e6": (20_000, 50_000, 1_000_000),
    "1e7": (30_000, 400_000, 10_000_000),
    # The Netflix prize's shape; about 140 s to generate, so only on request (--sizes).
    "1e8": (17_770, 480_189, 100_000_000),
    # The same shape at a tenth of the ratings (21 per user where 1e8 has 206), on request.
    "1e7-netflix": (17_770, 480_189, 10_000_000),
}
DEFAULT_SIZES = ("ml100k", "1e5", "1e6", "1e7")
# Cells whose inputs alone would pass this many bytes are skipped (and marked so).
MEMORY_LIMIT = 8e9


@lru_cache(maxsize=2)
def ratings_for(name):
    n_items, n_users, n_ratings = SIZES[name]
    return synthetic(n_users, n_items, n_ratings, rank=10, noise=0.5, seed=0)


def als_penalty(ratings):
    """The penalty ALS's row solves are timed with (`rowsolve_ab.py`, `revision_ab.py --als`),
    as `FlatObjective` takes it: 1.15 rating standard deviations on the factors, 0.8 on the
    biases, each row's weighted by the square root of its count."""
    return {"reg": 1.15 * float(ratings.values.std()), "reg_bias": 0.8, "reg_weighting": "sqrt"}


def factors_for(ratings, k, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(scale=0.1, size=(ratings.n_items, k)),
        rng.normal(scale=0.1, size=(ratings.n_users, k)),
    )


def dense_bytes(name, k):
    n_items, n_users, _ = SIZES[name]
    # ratings, mask, prediction and residual (items x users) at 8 bytes, plus the factors
    return 4 * 8 * n_items * n_users + 8 * k * (n_items + n_users)


def vectorized_bytes(name, k):
    _, _, nnz = SIZES[name]
    # gathered item and user rows (nnz x k each) dominate
    return 2 * 8 * nnz * k + 32 * nnz


@lru_cache(maxsize=1)
def dense_inputs(name):
    ratings = ratings_for(name)
    users, items, values = ratings.coo()
    dense = np.zeros((ratings.n_items, ratings.n_users))
    dense[items, users] = values
    mask = np.zeros(dense.shape, dtype=bool)
    mask[items, users] = True
    return dense, mask


def dense_cost_and_grad(X, Theta, dense, mask, reg):
    """The tutorial's dense numpy formulas (the reference), cost and both gradients from one
    residual, as the tutorial's cost function computes them."""
    return reference.cost_and_gradient(X, Theta, dense, mask, reg)


class Vectorized:
    """A hand-vectorized numpy/scipy.sparse evaluation: gather rows, einsum, sparse matmul."""

    def __init__(self, ratings):
        users, items, values = ratings.coo()
        self.users = users.astype(np.intp)
        self.items = items.astype(np.intp)
        self.values = np.asarray(values, dtype=np.float64)
        self.shape = (ratings.n_items, ratings.n_users)

    def __call__(self, X, Theta, reg):
        residual = np.einsum("ij,ij->i", X[self.items], Theta[self.users]) - self.values
        R = sp.csr_matrix((residual, (self.items, self.users)), shape=self.shape)
        cost = 0.5 * residual @ residual + 0.5 * reg * (np.sum(X * X) + np.sum(Theta * Theta))
        return cost, R @ Theta + reg * X, R.T @ X + reg * Theta
