"""Recommendations from a fitted model: scoring, exclusions and top-n selection."""

import numpy as np

from .ratings import lookup

__all__ = ["recommend", "top_n"]


def top_n(scores, n):
    """Indices of the ``n`` largest finite scores, best first (partial selection, then a short sort).

    Ties are broken by the smaller index, so results are deterministic.
    """
    candidates = np.flatnonzero(np.isfinite(scores)) if not np.all(np.isfinite(scores)) else None
    pool = scores if candidates is None else scores[candidates]
    n = min(int(n), pool.shape[0])
    if n <= 0:
        return np.empty(0, dtype=np.int64)
    if n < pool.shape[0]:
        part = np.argpartition(-pool, n - 1)[:n]
    else:
        part = np.arange(pool.shape[0])
    best = part[np.lexsort((part, -pool[part]))]
    return best if candidates is None else candidates[best]


def _check_n(n):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be an integer >= 0, found {n!r}")
    return int(n)


def _candidate_mask(model, items, filter_items):
    n_items = model.item_factors_.shape[0]
    if items is None:
        mask = np.ones(n_items, dtype=bool)
    else:
        index, known = lookup(model.item_ids_, np.atleast_1d(np.asarray(items)))
        mask = np.zeros(n_items, dtype=bool)
        mask[index[known]] = True
    if filter_items is not None:
        index, known = lookup(model.item_ids_, np.atleast_1d(np.asarray(filter_items)))
        mask[index[known]] = False
    return mask


def _user_scores(model, u):
    mu, item_offset, user_offset = model._offsets()
    return model.item_factors_ @ model.user_factors_[u] + (item_offset + (mu + user_offset[u]))


def recommend(model, user, n, exclude_seen, items, filter_items):
    """See `MatrixFactorization.recommend`."""
    n = _check_n(n)
    batch = np.ndim(user) > 0
    users = np.atleast_1d(np.asarray(user))
    index, known = lookup(model.user_ids_, users)
    if not known.all():
        missing = users[np.flatnonzero(~known)[0]]
        raise KeyError(f"unknown user {missing.item()!r}: not in the model's training users")
    mask = _candidate_mask(model, items, filter_items)
    seen_indptr, seen_items = model._seen
    id_rows, score_rows = [], []
    for u in index:
        scores = _user_scores(model, u)
        scores[~mask] = -np.inf
        if exclude_seen:
            scores[seen_items[seen_indptr[u] : seen_indptr[u + 1]]] = -np.inf
        best = top_n(scores, n)
        id_rows.append(model.item_ids_[best])
        score_rows.append(scores[best])
    if not batch:
        return id_rows[0], score_rows[0]
    pad_id = "" if model.item_ids_.dtype.kind == "U" else -1
    ids = np.full((len(index), n), pad_id, dtype=model.item_ids_.dtype)
    out = np.full((len(index), n), -np.inf)
    for row, (i, s) in enumerate(zip(id_rows, score_rows)):
        ids[row, : i.shape[0]] = i
        out[row, : s.shape[0]] = s
    return ids, out
