"""The tutorial's objective over sparse ratings, for tests, benchmarks and the solvers."""

from contextlib import contextmanager

import numba
import numpy as np

from . import _kernels
from .ratings import Ratings

__all__ = ["cost_and_grad", "FlatObjective"]


@contextmanager
def threads(n_threads):
    """Run numba's parallel kernels on ``n_threads`` threads inside the block (None: numba's default).

    numba's thread count is per calling thread, so this does not affect other threads.
    """
    if n_threads is None:
        yield
        return
    available = numba.config.NUMBA_NUM_THREADS
    if isinstance(n_threads, bool) or not isinstance(n_threads, (int, np.integer)) or n_threads < 1:
        raise ValueError(f"n_threads must be a positive integer or None, found {n_threads!r}")
    previous = numba.get_num_threads()
    numba.set_num_threads(min(int(n_threads), available))
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def _check_factors(item_factors, user_factors, ratings):
    if not isinstance(ratings, Ratings):
        raise TypeError(f"ratings must be a fastcofi.Ratings, found {type(ratings).__name__}")
    X = np.ascontiguousarray(item_factors, dtype=np.float64)
    Theta = np.ascontiguousarray(user_factors, dtype=np.float64)
    if X.ndim != 2 or Theta.ndim != 2:
        raise ValueError(
            f"item_factors and user_factors must be 2-dimensional, found shapes {X.shape} and "
            f"{Theta.shape}"
        )
    if X.shape[0] != ratings.n_items or Theta.shape[0] != ratings.n_users:
        raise ValueError(
            f"expected item_factors with {ratings.n_items} rows and user_factors with "
            f"{ratings.n_users} rows, found shapes {X.shape} and {Theta.shape}"
        )
    if X.shape[1] != Theta.shape[1]:
        raise ValueError(
            f"item_factors and user_factors must have the same number of columns, found "
            f"{X.shape[1]} and {Theta.shape[1]}"
        )
    return X, Theta


def _evaluate(X, Theta, item_offset, ratings, reg, X_grad, Theta_grad):
    return _kernels.cost_and_grad(
        X,
        Theta,
        item_offset,
        *ratings.by_item,
        ratings._item_chunks,
        *ratings.by_user,
        ratings._user_chunks,
        float(reg),
        X_grad,
        Theta_grad,
    )


def cost_and_grad(item_factors, user_factors, ratings, reg, *, n_threads=None):
    """The tutorial's cost and both gradients over the observed ratings only.

    ``1/2 sum_observed (x_i . theta_j - y_ij)^2 + reg/2 (|X|^2 + |Theta|^2)`` on ``ratings.values``
    as stored (no normalization).

    Parameters
    ----------
    item_factors : ndarray of shape (n_items, n_factors)
        Rows ordered as ``ratings.item_ids``.
    user_factors : ndarray of shape (n_users, n_factors)
        Rows ordered as ``ratings.user_ids``.
    ratings : Ratings
    reg : float
    n_threads : int, optional
        Threads for the parallel kernel; the result does not depend on it.

    Returns
    -------
    cost : float
    item_grad : ndarray of shape (n_items, n_factors), float64
    user_grad : ndarray of shape (n_users, n_factors), float64
    """
    X, Theta = _check_factors(item_factors, user_factors, ratings)
    X_grad = np.empty_like(X)
    Theta_grad = np.empty_like(Theta)
    offset = np.zeros(ratings.n_items)
    with threads(n_threads):
        cost = _evaluate(X, Theta, offset, ratings, reg, X_grad, Theta_grad)
    return float(cost), X_grad, Theta_grad


class FlatObjective:
    """``fun(params) -> (cost, gradient)`` over the flat vector ``[X.ravel(), Theta.ravel()]``.

    The gradient is a fresh array on every call: scipy's CG keeps the previous gradient by
    reference and subtracts it from the new one.

    Parameters
    ----------
    ratings : Ratings
    n_factors : int
    reg : float
    item_offset : ndarray of shape (n_items,), optional
        Added to every prediction of the item (the item mean under mean normalization).
    n_threads : int, optional
    """

    def __init__(self, ratings, n_factors, reg, item_offset=None, n_threads=None):
        self.ratings = ratings
        self.n_factors = int(n_factors)
        self.reg = float(reg)
        if item_offset is None:
            item_offset = np.zeros(ratings.n_items)
        self.item_offset = np.ascontiguousarray(item_offset, dtype=np.float64)
        self.n_threads = n_threads
        self.n_evaluations = 0

    @property
    def size(self):
        return (self.ratings.n_items + self.ratings.n_users) * self.n_factors

    def pack(self, item_factors, user_factors):
        return np.concatenate([np.ravel(item_factors), np.ravel(user_factors)]).astype(np.float64)

    def unpack(self, params):
        """Views of ``params`` as (item_factors, user_factors)."""
        split = self.ratings.n_items * self.n_factors
        X = params[:split].reshape(self.ratings.n_items, self.n_factors)
        Theta = params[split:].reshape(self.ratings.n_users, self.n_factors)
        return X, Theta

    def __call__(self, params):
        params = np.ascontiguousarray(params, dtype=np.float64)
        grad = np.empty_like(params)
        X, Theta = self.unpack(params)
        X_grad, Theta_grad = self.unpack(grad)
        with threads(self.n_threads):
            cost = _evaluate(X, Theta, self.item_offset, self.ratings, self.reg, X_grad, Theta_grad)
        self.n_evaluations += 1
        return float(cost), grad
