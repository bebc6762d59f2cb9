"""Evaluation metrics: rating errors (RMSE, MAE) and top-k ranking quality on held-out ratings.

Ranking metrics follow one protocol, computed for all test users at once:

1. The *test users* are the users with at least one rating in ``test``. Those the model does not
   know (absent from ``model.user_ids_``) cannot be ranked for; they are counted in
   ``n_users_unknown`` and left out of every ranking metric.
2. Each remaining test user gets one top-``k`` list from a single batched
   ``model.recommend(users, n=k, exclude_seen=exclude_seen)`` call: with ``exclude_seen=True`` the
   model leaves out the items the user rated in its training set. With ``train`` given, the user's
   items in ``train`` are left out as well (the list is then the first ``k`` items the model ranks
   that are not in ``train``). The order the model returns is the ranking: ties in score keep the
   model's order (fastcofi's breaks them by the smaller item index).
3. A test rating is *relevant* when its value is ``>= relevance_threshold`` (every test rating when
   the threshold is None). A recommended item is a hit when it is one of the user's relevant test
   items. Relevance is binary; a relevant item the model does not know still counts in the
   user's number of relevant items ``R`` (it can never be hit).
4. Users with no relevant test item (``R = 0``) have no defined precision, recall, NDCG or AP: they
   are *skipped*, counted in ``n_users_skipped``, and the metric is the mean over the other
   ``n_users_evaluated`` users. With no user left every ranking metric is NaN.

Per evaluated user, with ``hit_r`` in {0, 1} for ranks ``r = 1..k`` (padding and missing entries
are misses):

- precision@k = ``sum_r hit_r / k`` (the denominator is ``k`` even when fewer than ``k`` items
  could be recommended),
- recall@k = ``sum_r hit_r / R``,
- NDCG@k = ``sum_r hit_r / log2(r + 1)`` divided by its best value ``sum_{r <= min(R, k)}
  1 / log2(r + 1)``,
- AP@k = ``sum_r hit_r * precision@r / min(R, k)``; MAP@k is its mean,
- hit rate = 1 if any ``hit_r`` else 0.

Catalogue coverage is the number of distinct items in the top-``k`` lists of all ranked test users
(skipped ones included: coverage needs no relevance) divided by the number of items the model
knows (``len(model.item_ids_)``).
"""

import numpy as np

from ..data.ids import lookup
from ..data.ratings import Ratings

__all__ = [
    "rmse",
    "mae",
    "precision_at_k",
    "recall_at_k",
    "ndcg_at_k",
    "map_at_k",
    "hit_rate",
    "coverage",
    "ranking_metrics",
    "rating_metrics",
    "evaluate",
]

RANKING_METRICS = ("precision_at_k", "recall_at_k", "ndcg_at_k", "map_at_k", "hit_rate", "coverage")
# A batch of users asks the model for at most this many (user, item) cells at once, which bounds
# memory when excluding ``train`` items makes the lists long.
_CELLS_PER_BATCH = 1 << 22


# -- rating errors ------------------------------------------------------------------------------
def _errors(y_true, y_pred):
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"y_true and y_pred must have the same shape, found {y_true.shape} and {y_pred.shape}"
        )
    if y_true.size == 0:
        raise ValueError("y_true and y_pred are empty; expected at least one rating")
    for name, arr in (("y_true", y_true), ("y_pred", y_pred)):
        if not np.all(np.isfinite(arr)):
            bad = int(np.flatnonzero(~np.isfinite(arr.reshape(-1)))[0])
            raise ValueError(f"{name} must be finite, found {arr.reshape(-1)[bad]!r} at {bad}")
    return (y_pred - y_true).reshape(-1)


def rmse(y_true, y_pred):
    """Root mean squared error.

    Parameters
    ----------
    y_true, y_pred : array-like of the same shape, finite numbers, not empty

    Returns
    -------
    float
    """
    err = _errors(y_true, y_pred)
    return float(np.sqrt(np.mean(err * err)))


def mae(y_true, y_pred):
    """Mean absolute error.

    Parameters
    ----------
    y_true, y_pred : array-like of the same shape, finite numbers, not empty

    Returns
    -------
    float
    """
    return float(np.mean(np.abs(_errors(y_true, y_pred))))


# -- ranking ------------------------------------------------------------------------------------
def _check_k(k):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, found {k!r}")
    return int(k)


def _check_threshold(relevance_threshold):
    if relevance_threshold is None:
        return None
    if isinstance(relevance_threshold, bool) or not isinstance(
        relevance_threshold, (int, float, np.number)
    ) or np.isnan(relevance_threshold):
        raise ValueError(
            f"relevance_threshold must be a number or None, found {relevance_threshold!r}"
        )
    return float(relevance_threshold)


def _check_ratings(value, name):
    if not isinstance(value, Ratings):
        raise TypeError(f"{name} must be a fastcofi.Ratings, found {type(value).__name__}")


def _top_k_lists(model, user_ids, k, exclude_seen, train):
    """Top-k item ids per user and a mask of real entries; ``train`` items left out if given.

    Returns
    -------
    ids : ndarray of shape (n_users, k), the model's item id dtype
    valid : ndarray of shape (n_users, k), bool
    """
    n_users = user_ids.shape[0]
    n_catalogue = len(model.item_ids_) if hasattr(model, "item_ids_") else None
    extra = np.zeros(n_users, dtype=np.int64)
    if train is not None:
        t_index, t_known = lookup(train.user_ids, user_ids)
        counts = np.diff(train.by_user[0])
        extra[t_known] = counts[t_index[t_known]]
    n_ask = k + int(extra.max(initial=0))
    if n_catalogue is not None:
        n_ask = min(n_ask, max(n_catalogue, 1))
    batch = max(1, _CELLS_PER_BATCH // max(n_ask, 1))
    id_parts, valid_parts = [], []
    for start in range(0, n_users, batch):
        users = user_ids[start : start + batch]
        ids, scores = model.recommend(users, n=n_ask, exclude_seen=exclude_seen)
        ids, scores = np.asarray(ids), np.asarray(scores, dtype=np.float64)
        if ids.ndim != 2 or ids.shape[0] != users.shape[0] or scores.shape != ids.shape:
            raise ValueError(
                f"model.recommend returned ids of shape {ids.shape} and scores of shape "
                f"{scores.shape} for {users.shape[0]} users; expected two arrays of shape "
                f"({users.shape[0]}, n)"
            )
        # Padding of short lists is marked by a score of -inf (its id may be a real id, like -1).
        valid = scores > -np.inf
        if train is not None:
            valid &= ~_in_train(train, users, ids)
        ids, valid = _first_k(ids, valid, k)
        id_parts.append(ids)
        valid_parts.append(valid)
    if not id_parts:
        return np.empty((0, k), dtype=np.int64), np.zeros((0, k), dtype=bool)
    return np.concatenate(id_parts), np.concatenate(valid_parts)


def _in_train(train, users, ids):
    """Mask of (user, item) cells rated in ``train``; ``ids`` has shape (len(users), m)."""
    u_index, u_known = lookup(train.user_ids, users)
    i_index, i_known = lookup(train.item_ids, ids)
    # by_user lists items ascending within each user, so these keys are already sorted.
    indptr, items, _ = train.by_user
    owners = np.repeat(np.arange(train.n_users, dtype=np.int64), np.diff(indptr))
    keys = owners * train.n_items + items
    query = u_index[:, None] * train.n_items + i_index
    pos = np.minimum(np.searchsorted(keys, query), max(keys.shape[0] - 1, 0))
    found = keys[pos] == query if keys.shape[0] else np.zeros(query.shape, dtype=bool)
    return found & u_known[:, None] & i_known


def _first_k(ids, valid, k):
    """The first ``k`` valid entries of each row, shifted left; shorter rows padded as invalid."""
    n_rows, m = ids.shape
    if not valid.all():
        # A stable sort of "not valid" moves the valid cells to the front in their order.
        order = np.argsort(~valid, axis=1, kind="stable")
        ids, valid = np.take_along_axis(ids, order, 1), np.take_along_axis(valid, order, 1)
    ids, valid = ids[:, :k], valid[:, :k]
    if m < k:
        ids = np.concatenate([ids, np.zeros((n_rows, k - m), dtype=ids.dtype)], axis=1)
        valid = np.concatenate([valid, np.zeros((n_rows, k - m), dtype=bool)], axis=1)
    return ids, valid


class _RankingData:
    """Hit matrix of the evaluated users and the lists of all ranked users (see module notes)."""

    def __init__(self, model, test, k, relevance_threshold, train, exclude_seen):
        _check_ratings(test, "test")
        if train is not None:
            _check_ratings(train, "train")
        if not callable(getattr(model, "recommend", None)):
            raise TypeError(f"model must have a recommend method, found {type(model).__name__}")
        self.k = _check_k(k)
        threshold = _check_threshold(relevance_threshold)
        t_users, t_items, t_values = test.coo()
        t_users = t_users.astype(np.int64)
        t_items = t_items.astype(np.int64)
        has_rating = np.diff(test.by_user[0]) > 0
        if hasattr(model, "user_ids_"):
            known = lookup(model.user_ids_, test.user_ids)[1]
        else:
            known = np.ones(test.n_users, dtype=bool)
        ranked = np.flatnonzero(has_rating & known)
        self.n_users_unknown = int(np.count_nonzero(has_rating & ~known))
        self.n_catalogue = len(model.item_ids_) if hasattr(model, "item_ids_") else None

        ids, valid = _top_k_lists(model, test.user_ids[ranked], self.k, exclude_seen, train)
        self.ids, self.valid = ids, valid

        relevant = np.ones(t_values.shape[0], dtype=bool) if threshold is None else (
            t_values >= threshold
        )
        n_relevant = np.bincount(t_users[relevant], minlength=test.n_users)[ranked]
        # Hits: look each recommended (user, item) pair up among the sorted relevant pairs.
        rel_keys = np.sort(t_users[relevant] * test.n_items + t_items[relevant])
        i_index, i_known = lookup(test.item_ids, ids)
        query = ranked[:, None] * test.n_items + i_index
        if rel_keys.shape[0]:
            pos = np.minimum(np.searchsorted(rel_keys, query), rel_keys.shape[0] - 1)
            hits = (rel_keys[pos] == query) & i_known & valid
        else:
            hits = np.zeros(ids.shape, dtype=bool)
        evaluated = n_relevant > 0
        self.hits = hits[evaluated]
        self.n_relevant = n_relevant[evaluated]
        self.n_users_evaluated = int(np.count_nonzero(evaluated))
        self.n_users_skipped = int(ranked.shape[0] - self.n_users_evaluated)

    def _mean(self, per_user):
        return float(per_user.mean()) if per_user.shape[0] else float("nan")

    def precision(self):
        return self._mean(self.hits.sum(axis=1) / self.k)

    def recall(self):
        return self._mean(self.hits.sum(axis=1) / self.n_relevant)

    def ndcg(self):
        discount = 1.0 / np.log2(np.arange(2, self.k + 2, dtype=np.float64))
        ideal = np.cumsum(discount)[np.minimum(self.n_relevant, self.k) - 1]
        return self._mean((self.hits @ discount) / ideal)

    def map(self):
        precision_at_r = np.cumsum(self.hits, axis=1) / np.arange(1, self.k + 1)
        ap = (self.hits * precision_at_r).sum(axis=1) / np.minimum(self.n_relevant, self.k)
        return self._mean(ap)

    def hit_rate(self):
        return self._mean(self.hits.any(axis=1).astype(np.float64))

    def coverage(self):
        if self.n_catalogue is None:
            raise TypeError("coverage needs the model's catalogue: model.item_ids_ is missing")
        if self.n_catalogue == 0:
            return float("nan")
        return float(np.unique(self.ids[self.valid]).shape[0] / self.n_catalogue)


def precision_at_k(model, test, k=10, *, relevance_threshold=4.0, train=None, exclude_seen=True):
    """Precision@k: the share of the ``k`` slots holding a relevant test item, averaged over users.

    Parameters
    ----------
    model : fitted model
        With ``recommend(users, n, exclude_seen=...)`` returning 2-D ``(item_ids, scores)``
        (``MatrixFactorization``'s contract), and ``user_ids_`` / ``item_ids_``.
    test : Ratings
        Held-out ratings.
    k : int >= 1, default 10
    relevance_threshold : float or None, default 4.0
        Test ratings ``>= relevance_threshold`` are relevant; None makes every test rating relevant.
    train : Ratings, optional
        Items each user rated here are never counted as recommendations (on top of the model's
        own ``exclude_seen``); needed only when the model was not fitted on exactly this set.
    exclude_seen : bool, default True
        Passed to ``model.recommend``.

    Returns
    -------
    float
        Mean over the test users with at least one relevant test rating; NaN when there is none.
        The module notes give the exact definition and the users that are skipped.
    """
    return _RankingData(model, test, k, relevance_threshold, train, exclude_seen).precision()


def recall_at_k(model, test, k=10, *, relevance_threshold=4.0, train=None, exclude_seen=True):
    """Recall@k: the share of the user's relevant test items found in the top ``k``, averaged.

    Parameters and return value as for :func:`precision_at_k`.
    """
    return _RankingData(model, test, k, relevance_threshold, train, exclude_seen).recall()


def ndcg_at_k(model, test, k=10, *, relevance_threshold=4.0, train=None, exclude_seen=True):
    """NDCG@k with binary relevance and the ``1 / log2(rank + 1)`` discount, averaged over users.

    Parameters and return value as for :func:`precision_at_k`.
    """
    return _RankingData(model, test, k, relevance_threshold, train, exclude_seen).ndcg()


def map_at_k(model, test, k=10, *, relevance_threshold=4.0, train=None, exclude_seen=True):
    """MAP@k: the mean over users of AP@k, normalized by ``min(R, k)``.

    Parameters and return value as for :func:`precision_at_k`.
    """
    return _RankingData(model, test, k, relevance_threshold, train, exclude_seen).map()


def hit_rate(model, test, k=10, *, relevance_threshold=4.0, train=None, exclude_seen=True):
    """Hit rate: the share of users with at least one relevant test item in their top ``k``.

    Parameters and return value as for :func:`precision_at_k`.
    """
    return _RankingData(model, test, k, relevance_threshold, train, exclude_seen).hit_rate()


def coverage(model, test, k=10, *, train=None, exclude_seen=True):
    """Catalogue coverage: distinct items in the test users' top-k lists / items the model knows.

    Every test user the model knows is ranked, whether or not they have relevant test ratings.

    Parameters
    ----------
    model : fitted model
        With ``recommend`` as for :func:`precision_at_k` and ``item_ids_`` (the catalogue).
    test : Ratings
        Held-out ratings; its users are the ones ranked.
    k : int >= 1, default 10
    train : Ratings, optional
        As for :func:`precision_at_k`.
    exclude_seen : bool, default True

    Returns
    -------
    float in [0, 1]
    """
    return _RankingData(model, test, k, None, train, exclude_seen).coverage()


def ranking_metrics(model, test, k=10, *, relevance_threshold=4.0, train=None, exclude_seen=True):
    """All ranking metrics from one batched ``recommend`` call (see the module notes).

    Parameters are those of :func:`precision_at_k`.

    Returns
    -------
    dict
        ``"precision_at_k"``, ``"recall_at_k"``, ``"ndcg_at_k"``, ``"map_at_k"``, ``"hit_rate"``,
        ``"coverage"`` (floats; NaN where undefined), ``"k"``, ``"relevance_threshold"``, and the
        user counts ``"n_users_evaluated"`` (at least one relevant test rating),
        ``"n_users_skipped"`` (ranked but no relevant test rating) and ``"n_users_unknown"`` (test
        users the model does not know).
    """
    data = _RankingData(model, test, k, relevance_threshold, train, exclude_seen)
    return {
        "precision_at_k": data.precision(),
        "recall_at_k": data.recall(),
        "ndcg_at_k": data.ndcg(),
        "map_at_k": data.map(),
        "hit_rate": data.hit_rate(),
        "coverage": data.coverage() if data.n_catalogue is not None else float("nan"),
        "k": data.k,
        "relevance_threshold": relevance_threshold,
        "n_users_evaluated": data.n_users_evaluated,
        "n_users_skipped": data.n_users_skipped,
        "n_users_unknown": data.n_users_unknown,
    }


def rating_metrics(model, test):
    """RMSE and MAE of ``model.predict`` on the test ratings.

    Pairs the model does not know are predicted by its fallback, not dropped.

    Returns
    -------
    dict
        ``"rmse"``, ``"mae"`` (floats) and ``"n"`` (int, the number of test ratings).
    """
    _check_ratings(test, "test")
    users, items, values = test.coo()
    pred = np.asarray(model.predict(test.user_ids[users], test.item_ids[items]), dtype=np.float64)
    return {"rmse": rmse(values, pred), "mae": mae(values, pred), "n": int(test.nnz)}


def evaluate(model, test, k=10, relevance_threshold=4.0, *, train=None, exclude_seen=True):
    """Rating and ranking metrics of a fitted model on held-out ratings.

    Parameters
    ----------
    model : fitted model
        With ``predict(users, items)`` and ``recommend`` (see :func:`precision_at_k`).
    test : Ratings
    k : int >= 1 or None, default 10
        Length of the ranked lists; None skips the ranking metrics.
    relevance_threshold : float or None, default 4.0
    train, exclude_seen
        As for :func:`precision_at_k`.

    Returns
    -------
    dict
        ``"rmse"``, ``"mae"``, ``"n"`` (see :func:`rating_metrics`), then unless ``k`` is None
        the entries of :func:`ranking_metrics`.
    """
    result = rating_metrics(model, test)
    if k is not None:
        result.update(
            ranking_metrics(
                model, test, k, relevance_threshold=relevance_threshold, train=train,
                exclude_seen=exclude_seen,
            )
        )
    return result
