"""Hypothesis strategies that make only valid sparse rating problems."""

import numpy as np
from hypothesis import strategies as st

from fastcofi import Ratings


@st.composite
def sparse_problems(draw, max_items=40, max_users=40, max_factors=8):
    """A small problem with unique coordinates, empty rows and columns allowed, zeros as ratings.

    Returns (ratings, dense, mask, X, Theta, reg): ``dense`` and ``mask`` are items x users and
    ``X`` / ``Theta`` follow ``ratings.item_ids`` / ``ratings.user_ids`` (here 0..n-1).
    """
    n_items = draw(st.integers(1, max_items))
    n_users = draw(st.integers(1, max_users))
    k = draw(st.integers(1, max_factors))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    density = draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]))
    mask = rng.random((n_items, n_users)) < density
    if not mask.any():
        # At least one rating: a single rating is also a case worth covering.
        mask[rng.integers(n_items), rng.integers(n_users)] = True
    values = rng.integers(0, 6, size=(n_items, n_users)).astype(np.float64)
    if draw(st.booleans()):
        values = values + rng.normal(size=values.shape)
    dense = np.where(mask, values, 0.0)
    item_idx, user_idx = np.nonzero(mask)
    order = rng.permutation(item_idx.shape[0])  # input order must not matter
    ratings = Ratings.from_arrays(
        user_idx[order],
        item_idx[order],
        dense[item_idx[order], user_idx[order]],
        all_users=np.arange(n_users),
        all_items=np.arange(n_items),
    )
    scale = draw(st.sampled_from([0.1, 1.0, 3.0]))
    X = rng.normal(scale=scale, size=(n_items, k))
    Theta = rng.normal(scale=scale, size=(n_users, k))
    reg = draw(st.sampled_from([0.0, 0.5, 10.0]))
    return ratings, dense, mask, X, Theta, reg


def relative_error(a, b):
    """The API sheet's equality measure: max|a - b| / (1 + max|b|)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / (1.0 + np.max(np.abs(b))))
