"""Planted problems with a known answer, shared by the model tests and bench/vb_starts.py."""

import numpy as np

from fastcofi import Ratings


def planted(seed=0, n_users=300, n_items=200, rank=3, noise=0.3, density=0.25, signal=1.0,
            item_bias=0.4, user_bias=0.3, held_out=0.2):
    """Ratings ``3 + item bias + user bias + interaction + noise`` on a random ``density`` of the
    (item, user) pairs, with a random ``held_out`` fraction of them held out.

    The interaction is a rank-``rank`` product of standard normal factors scaled to standard
    deviation ``signal``; the biases and the noise are normal with the given standard deviations.

    Returns
    -------
    train : Ratings
        Every user and item declared, ids ``0..n-1``.
    test : (users, items, values, truth)
        The held-out pairs, their noisy ratings and their noise-free values.
    """
    rng = np.random.default_rng(seed)
    items, users = np.nonzero(rng.random((n_items, n_users)) < density)
    truth = (3.0 + rng.normal(scale=item_bias, size=n_items)[items]
             + rng.normal(scale=user_bias, size=n_users)[users]
             + signal * np.einsum("ij,ij->i", rng.normal(size=(n_items, rank))[items],
                                  rng.normal(size=(n_users, rank))[users]) / np.sqrt(rank))
    values = truth + noise * rng.normal(size=truth.shape[0])
    test = rng.random(truth.shape[0]) < held_out
    train = Ratings.from_arrays(users[~test], items[~test], values[~test],
                                all_users=range(n_users), all_items=range(n_items))
    return train, (users[test], items[test], values[test], truth[test])
