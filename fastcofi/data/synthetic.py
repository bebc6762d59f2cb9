"""Synthetic ratings with a planted low-rank truth: any size for scaling benchmarks, and small
planted problems with a known answer for the tests."""

import numpy as np

from .ratings import Ratings


# -- synthetic ratings -----------------------------------------------------------------------
def synthetic(n_users, n_items, n_ratings, *, rank=10, noise=0.5, seed=None, rating_scale=(1, 5),
              step=1.0, signal=1.0, bias_scale=(0.3, 0.5), popularity=1.0, activity=1.0,
              chunk_size=1 << 20, dtype=np.float64, return_truth=False):
    """Ratings from planted low-rank factors plus biases, with power-law popularity and activity.

    A rating of item ``i`` by user ``u`` is
    ``clip(round_to_step(mu + b_u + b_i + x_i . theta_u + e))`` with ``e ~ N(0, noise**2)``
    and ``mu`` the middle of the scale. Which pairs are rated:

    - user ``u`` rates ``c_u`` items, ``(c_u)`` multinomial with ``n_ratings`` trials and
      probabilities proportional to ``rank(u) ** -activity`` (ranks in a random order), each
      capped at half the items (``ceil(n_items / 2)``; a capped user's surplus is redrawn
      among the others, so the counts sum to exactly ``n_ratings``);
    - a user's items are distinct, drawn with probability proportional to
      ``rank(i) ** -popularity``: repeated draws are dropped and more are drawn until the user
      has at least ``c_u``, then a random ``c_u`` of them are kept.

    Users are generated in chunks of about ``chunk_size`` ratings, written straight into the
    by-user CSR; the by-item CSR is its transpose. Memory is the two CSRs (``2 * (4 + 8)``
    bytes per rating in float64, ``2 * (4 + 4)`` in float32), plus one chunk's work: 1e8
    ratings fit in bounded memory. The result is fixed by ``seed`` and ``chunk_size``.

    Parameters
    ----------
    n_users, n_items, n_ratings : int
        ``n_ratings`` must not exceed half of ``n_users * n_items``.
    rank : int
        Rank of the planted factors.
    noise : float
        Standard deviation of the Gaussian noise added before quantization.
    seed : int or numpy.random.Generator, optional
    rating_scale : (float, float)
        Lowest and highest rating.
    step : float or None
        Quantization step from the lowest rating (1.0 whole stars, 0.5 half stars); None keeps
        continuous ratings (still clipped).
    signal : float
        Standard deviation of the interaction ``x_i . theta_u``.
    bias_scale : (float, float)
        Standard deviations of the user and item biases.
    popularity, activity : float
        Power-law exponents of item popularity and user activity (0: uniform).
    chunk_size : int
        Ratings generated at a time.
    dtype : {numpy.float64, numpy.float32}
        Storage type of the ratings.
    return_truth : bool
        Also return the planted truth.

    Returns
    -------
    ratings : Ratings
        User ids ``0..n_users-1`` and item ids ``0..n_items-1``, all declared (indices equal ids).
    truth : dict, only with ``return_truth``
        ``item_factors`` (n_items, rank), ``user_factors`` (n_users, rank), ``item_bias``
        (n_items,), ``user_bias`` (n_users,), ``global_mean``, ``noise``, and ``clean``: the
        noiseless, unquantized value of each rating (float64, shape (nnz,)), aligned with
        ``ratings.values``.

    Raises
    ------
    ValueError
        Arguments out of range, or a popularity so steep that a user's distinct items cannot
        be drawn.
    """
    from ..kernels.sparse import transpose_csr
    from .ids import _index_dtype
    from .ratings import Ratings

    n_users, n_items, n_ratings, rank = (int(v) for v in (n_users, n_items, n_ratings, rank))
    if n_users < 1 or n_items < 1 or n_ratings < 1 or rank < 1:
        raise ValueError(
            "n_users, n_items, n_ratings and rank must be positive; found "
            f"{n_users}, {n_items}, {n_ratings}, {rank}"
        )
    if n_ratings > n_users * n_items // 2:
        raise ValueError(
            f"n_ratings must be at most half of n_users * n_items = {n_users * n_items} "
            f"(distinct pairs), found {n_ratings}"
        )
    lo, hi = (float(v) for v in rating_scale)
    if not lo < hi:
        raise ValueError(f"rating_scale must be (low, high) with low < high, found {rating_scale}")
    if noise < 0 or signal < 0:
        raise ValueError(f"noise and signal must be >= 0, found {noise} and {signal}")
    if step is not None and not step > 0:
        raise ValueError(f"step must be positive or None, found {step}")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be positive, found {chunk_size}")
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise ValueError(f"dtype must be float64 or float32, found {dtype}")
    rng = np.random.default_rng(seed)
    scale = np.sqrt(signal / np.sqrt(rank))
    item_factors = rng.normal(0.0, scale, size=(n_items, rank))
    user_factors = rng.normal(0.0, scale, size=(n_users, rank))
    user_bias = rng.normal(0.0, bias_scale[0], size=n_users)
    item_bias = rng.normal(0.0, bias_scale[1], size=n_items)
    global_mean = (lo + hi) / 2
    item_cdf = np.cumsum(_power_law(n_items, popularity, rng))
    counts = _user_counts(n_ratings, _power_law(n_users, activity, rng), -(-n_items // 2), rng)

    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    user_items = np.empty(n_ratings, dtype=_index_dtype(n_items))
    values = np.empty(n_ratings, dtype=dtype)
    clean = np.empty(n_ratings, dtype=np.float64) if return_truth else None
    for first, last in _user_ranges(indptr, int(chunk_size)):
        start, stop = indptr[first], indptr[last]
        items = _distinct_items(counts[first:last], item_cdf, rng)
        users = np.repeat(np.arange(first, last), counts[first:last])
        user_items[start:stop] = items
        signal_part = np.einsum("ij,ij->i", item_factors[items], user_factors[users])
        exact = global_mean + user_bias[users] + item_bias[items] + signal_part
        if clean is not None:
            clean[start:stop] = exact
        r = exact + rng.normal(0.0, noise, size=stop - start) if noise else exact
        if step is not None:
            r = lo + np.round((r - lo) / step) * step
        values[start:stop] = np.clip(r, lo, hi)
    user_ids = np.arange(n_users, dtype=np.int64)
    item_ids = np.arange(n_items, dtype=np.int64)
    ratings = Ratings._from_user_csr(user_ids, item_ids, indptr, user_items, values)
    if not return_truth:
        return ratings
    # clean is in by-user order; Ratings.values in by-item order: the same transpose moves it.
    clean_by_item = np.empty_like(clean)
    transpose_csr(indptr, user_items, clean, n_items,
                           np.empty(n_ratings, dtype=ratings.by_item[1].dtype), clean_by_item)
    truth = {
        "item_factors": item_factors,
        "user_factors": user_factors,
        "item_bias": item_bias,
        "user_bias": user_bias,
        "global_mean": global_mean,
        "noise": float(noise),
        "clean": clean_by_item,
    }
    return ratings, truth


def _power_law(n, exponent, rng):
    weights = np.arange(1, n + 1, dtype=np.float64) ** -float(exponent)
    weights = weights[rng.permutation(n)]
    return weights / weights.sum()


def _user_counts(n_ratings, user_p, cap, rng):
    """Ratings per user (int64, shape (n_users,)): multinomial, each at most ``cap``, sum exact."""
    counts = rng.multinomial(n_ratings, user_p)
    while True:
        over = counts > cap
        surplus = int((counts[over] - cap).sum())
        if surplus == 0:
            return counts
        counts[over] = cap
        # The surplus goes to users below the cap; n_users * cap >= n_ratings leaves room.
        p = np.where(counts < cap, user_p, 0.0)
        counts += rng.multinomial(surplus, p / p.sum())


def _user_ranges(indptr, chunk_size):
    """(first, last) user ranges holding about ``chunk_size`` ratings each (a heavy user alone)."""
    n_users = indptr.shape[0] - 1
    first = 0
    while first < n_users:
        last = int(np.searchsorted(indptr, indptr[first] + chunk_size, side="right")) - 1
        last = min(max(last, first + 1), n_users)
        yield first, last
        first = last


_MAX_DRAW_ROUNDS = 40


def _sorted_unique(keys):
    """Sorted distinct values of an int64 array, sorting it in place.

    ``np.unique`` hashes integers first in numpy 2.x, several times slower here than one sort.
    """
    keys.sort()
    if keys.shape[0] < 2:
        return keys
    return keys[np.concatenate([[True], keys[1:] != keys[:-1]])]


def _distinct_items(counts, item_cdf, rng):
    """Items for consecutive users: ``counts[u]`` distinct ones each, ascending within a user.

    Returns an int64 array of shape (counts.sum(),), users in order. Each round draws, for every
    user still short, twice as many items as in the round before (relative to what is missing),
    so users near the cap of a steep popularity curve need few rounds.
    """
    n_items = item_cdf.shape[0]
    m = counts.shape[0]
    done = []
    pending = np.empty(0, dtype=np.int64)  # distinct keys local_user * n_items + item
    active = np.flatnonzero(counts > 0)
    got = np.zeros(m, dtype=np.int64)  # distinct items so far of each user
    factor = 1.0
    limit = 16 * int(counts.sum()) + (1 << 20)
    for _ in range(_MAX_DRAW_ROUNDS):
        if active.shape[0] == 0:
            break
        draws = np.ceil((counts[active] - got[active]) * factor).astype(np.int64)
        if draws.sum() > limit:
            break
        items = np.searchsorted(
            item_cdf, rng.random(int(draws.sum())) * item_cdf[-1], side="right"
        )
        np.minimum(items, n_items - 1, out=items)
        pending = _sorted_unique(
            np.concatenate([pending, np.repeat(active, draws) * n_items + items])
        )
        owner = pending // n_items
        got = np.bincount(owner, minlength=m)
        full = got >= counts
        finished = full[owner]
        done.append(pending[finished])
        pending = pending[~finished]
        active = active[~full[active]]
        factor *= 2.0
    if active.shape[0]:
        raise ValueError(
            f"could not draw {int(counts[active[0]])} distinct items for a user (of "
            f"{item_cdf.shape[0]}): popularity concentrates the draws on too few items; lower "
            "popularity or n_ratings"
        )
    keys = np.concatenate(done) if done else pending
    users = keys // n_items
    got = np.bincount(users, minlength=m)
    if got.sum() > counts.sum():
        # Keep a random counts[u] of each user's distinct items.
        order = np.lexsort((rng.random(keys.shape[0]), users))
        starts = np.concatenate([[0], np.cumsum(got)[:-1]])
        rank_in_user = np.arange(keys.shape[0]) - np.repeat(starts, got)
        keys = np.sort(keys[order[rank_in_user < np.repeat(counts, got)]])
    else:
        keys.sort()
    return keys % n_items


# -- small planted problems with a known answer --------------------------------------------------
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
