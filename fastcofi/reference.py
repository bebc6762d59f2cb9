"""The tutorial's formulas in plain dense numpy: the oracle for tests and the demo's explanation.

Orientation follows the tutorial: ``ratings`` and ``did_rate`` are items x users, ``X`` holds one
row of features per item and ``Theta`` one row of preferences per user. Everything here builds
dense items x users arrays, so it is only for small problems; the training path is
:mod:`fastcofi.objective`.
"""

import numpy as np

__all__ = ["normalize_ratings", "cost", "gradient", "cost_and_gradient"]


def normalize_ratings(ratings, did_rate):
    """Subtract each item's mean over its rated entries.

    Parameters
    ----------
    ratings : ndarray of shape (n_items, n_users)
        Ratings; entries where ``did_rate`` is 0 are ignored.
    did_rate : ndarray of shape (n_items, n_users)
        1 (or True) where the user rated the item.

    Returns
    -------
    ratings_norm : ndarray of shape (n_items, n_users), float64
        ``ratings - mean`` on rated entries, 0 elsewhere.
    ratings_mean : ndarray of shape (n_items, 1), float64
        Each item's mean rating; 0 for an item nobody rated (the tutorial divides by zero there).
    """
    ratings = np.asarray(ratings, dtype=np.float64)
    mask = np.asarray(did_rate, dtype=bool)
    counts = mask.sum(axis=1, keepdims=True)
    sums = np.where(mask, ratings, 0.0).sum(axis=1, keepdims=True)
    ratings_mean = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    ratings_norm = np.where(mask, ratings - ratings_mean, 0.0)
    return ratings_norm, ratings_mean


def _residual(X, Theta, ratings, did_rate):
    X = np.asarray(X, dtype=np.float64)
    Theta = np.asarray(Theta, dtype=np.float64)
    mask = np.asarray(did_rate, dtype=bool)
    return np.where(mask, X @ Theta.T - np.asarray(ratings, dtype=np.float64), 0.0)


def cost(X, Theta, ratings, did_rate, reg):
    """``1/2 sum_rated (X Theta^T - ratings)^2 + reg/2 (|X|^2 + |Theta|^2)``.

    Parameters
    ----------
    X : ndarray of shape (n_items, n_factors)
    Theta : ndarray of shape (n_users, n_factors)
    ratings, did_rate : ndarray of shape (n_items, n_users)
    reg : float

    Returns
    -------
    float
    """
    return _cost(_residual(X, Theta, ratings, did_rate), X, Theta, reg)


def _cost(residual, X, Theta, reg):
    return 0.5 * np.sum(residual**2) + 0.5 * reg * (np.sum(np.square(X)) + np.sum(np.square(Theta)))


def _gradient(residual, X, Theta, reg):
    X = np.asarray(X, dtype=np.float64)
    Theta = np.asarray(Theta, dtype=np.float64)
    return residual @ Theta + reg * X, residual.T @ X + reg * Theta


def gradient(X, Theta, ratings, did_rate, reg):
    """Gradient of :func:`cost`.

    Returns
    -------
    X_grad : ndarray of shape (n_items, n_factors), float64
    Theta_grad : ndarray of shape (n_users, n_factors), float64
    """
    return _gradient(_residual(X, Theta, ratings, did_rate), X, Theta, reg)


def cost_and_gradient(X, Theta, ratings, did_rate, reg):
    """:func:`cost` and :func:`gradient` from one residual, as the tutorial's cost function
    returns them (the dense baseline the engine's benchmarks time).

    Returns
    -------
    cost : float
    X_grad : ndarray of shape (n_items, n_factors), float64
    Theta_grad : ndarray of shape (n_users, n_factors), float64
    """
    residual = _residual(X, Theta, ratings, did_rate)
    return (_cost(residual, X, Theta, reg), *_gradient(residual, X, Theta, reg))
