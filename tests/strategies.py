"""Hypothesis strategies that make only valid sparse rating problems."""

import numpy as np
from hypothesis import strategies as st
from scipy.optimize import check_grad

from fastcofi import Ratings

from .conftest import JIT_DISABLED

# With the JIT on, the default sizes also draw problems this large (a quarter of the examples):
# past the 40 x 40 of the usual draws, where chunking and the kernels' column blocks begin to
# matter. With the JIT off the kernels run as Python, so the nojit pass keeps to small sizes.
LARGE_ITEMS, LARGE_USERS = 300, 200
LARGE_SIZES = not JIT_DISABLED

DUPLICATE_POLICIES = ("error", "last", "mean")
# float32 storage is drawn with the JIT on only: run as Python, a kernel's float32 element minus a
# float64 scalar stays float32 (NumPy 2's promotion), where compiled code computes in float64.
DTYPES = (np.float64,) if JIT_DISABLED else (np.float64, np.float32)


def resolve_duplicates(values, groups, policy, dtype):
    """The value each group of repeated pairs keeps, as the reference for ``duplicates=``.

    ``values`` in input order, ``groups[p]`` the pair of entry ``p``. Each value is stored in
    ``dtype`` first; "last" keeps the last of a group in input order, "mean" averages the stored
    values (in float64) and stores the average in ``dtype``. Returns float64 per group.
    """
    stored = np.asarray(values).astype(dtype).astype(np.float64)
    n_groups = int(groups.max()) + 1
    if policy == "mean":
        sums = np.bincount(groups, weights=stored, minlength=n_groups)
        means = sums / np.bincount(groups, minlength=n_groups)
        return means.astype(dtype).astype(np.float64)
    last = np.empty(n_groups)
    last[groups] = stored  # a later position overwrites an earlier one
    return last


@st.composite
def sparse_problems(draw, max_items=40, max_users=40, max_factors=8, *, duplicates=None,
                    dtype=None, string_ids=None, large=None):
    """A problem with empty rows and columns allowed, zeros as ratings.

    Returns (ratings, dense, mask, X, Theta, reg): ``dense`` and ``mask`` are items x users in the
    order of ``ratings.item_ids`` / ``ratings.user_ids``, as are ``X`` / ``Theta``; ``dense``
    holds the float64 value of each stored rating.

    Parameters left None are drawn: ``duplicates`` ("error": unique pairs; "last" / "mean": some
    pairs repeated with other values and resolved by that policy), ``dtype`` (float64 or, with
    the JIT on, float32 storage), ``string_ids`` (ids such as "u17", whose sorted order is not
    their numeric one) and ``large`` (sizes up to ``LARGE_ITEMS`` x ``LARGE_USERS``; drawn only
    when the default sizes are used and ``LARGE_SIZES`` is on).
    """
    if large is None:
        default_sizes = (max_items, max_users) == (40, 40)
        large = default_sizes and LARGE_SIZES and draw(st.integers(0, 3)) == 0
    if large:
        max_items, max_users = LARGE_ITEMS, LARGE_USERS
    n_items = draw(st.integers(1, max_items))
    n_users = draw(st.integers(1, max_users))
    k = draw(st.integers(1, max_factors))
    policy = draw(st.sampled_from(DUPLICATE_POLICIES)) if duplicates is None else duplicates
    dtype = np.dtype(draw(st.sampled_from(DTYPES)) if dtype is None else dtype)
    strings = draw(st.booleans()) if string_ids is None else string_ids
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
    item_idx, user_idx = np.nonzero(mask)
    raw = values[item_idx, user_idx]
    groups = np.arange(item_idx.shape[0])
    if policy != "error":
        # Repeat up to a third of the pairs once to three times, each copy with another value.
        repeated = rng.choice(groups.shape[0], size=rng.integers(1, groups.shape[0] // 3 + 2))
        groups = np.concatenate([groups, repeated])
        raw = np.concatenate([raw, rng.integers(0, 6, repeated.shape[0]) + 0.25])
    order = rng.permutation(groups.shape[0])  # input order must not matter (but for "last")
    groups, raw = groups[order], raw[order]
    dense = np.zeros((n_items, n_users))
    dense[item_idx, user_idx] = resolve_duplicates(raw, groups, policy, dtype)
    item_names, user_names = np.arange(n_items), np.arange(n_users)
    if strings:
        item_names = np.array([f"i{j}" for j in rng.permutation(n_items)])
        user_names = np.array([f"u{j}" for j in rng.permutation(n_users)])
    ratings = Ratings.from_arrays(
        user_names[user_idx[groups]],
        item_names[item_idx[groups]],
        raw,
        all_users=user_names,
        all_items=item_names,
        duplicates=policy,
        dtype=dtype,
    )
    # Rows and columns in the order of the ratings' ids.
    item_rows = np.argsort(item_names, kind="stable")
    user_cols = np.argsort(user_names, kind="stable")
    assert np.array_equal(item_names[item_rows], ratings.item_ids)
    assert np.array_equal(user_names[user_cols], ratings.user_ids)
    dense, mask = dense[item_rows][:, user_cols], mask[item_rows][:, user_cols]
    scale = draw(st.sampled_from([0.1, 1.0, 3.0]))
    X = rng.normal(scale=scale, size=(n_items, k))
    Theta = rng.normal(scale=scale, size=(n_users, k))
    reg = draw(st.sampled_from([0.0, 0.5, 10.0]))
    return ratings, dense, mask, X, Theta, reg


def finite_difference_error(fun, x0):
    """`scipy.optimize.check_grad`'s error for ``fun`` (``v -> (cost, gradient)``) at ``x0``, its
    forward-difference step sized to the cost, ``sqrt(eps * max(1, |cost|))``: with the default
    step (1.5e-8) the cost's rounding alone leaves about ``1e-16 |cost| / 1.5e-8`` in each
    component: 2.5e-5 to 5.1e-5 in all, by the order of its sums, for one hypothesis example
    (cost 659, 23 parameters) against its bound of 5.1e-5. The sized step balances that rounding
    against the truncation (9.9e-6 there)."""
    step = np.sqrt(np.finfo(np.float64).eps * max(1.0, abs(fun(x0)[0])))
    return check_grad(lambda v: fun(v)[0], lambda v: fun(v)[1], x0, epsilon=step)


def relative_error(a, b):
    """The API sheet's equality measure: max|a - b| / (1 + max|b|)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / (1.0 + np.max(np.abs(b))))
