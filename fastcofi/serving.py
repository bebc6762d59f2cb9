"""Serving a fitted model: recommend (one user or a batch), fold-in, similar items, clusters.

Everything here only reads the model, so a fitted model can serve many threads at once. Scoring
and top-n selection run in Numba kernels (`fastcofi._kernels`) that release the GIL:

- one user (`recommend` with a scalar, `recommend_new_user`, cluster recommendations): BLAS
  computes ``X @ theta``, then a serial kernel adds the offsets, masks the excluded items and
  keeps the best ``n`` in a heap, in one pass; nothing is sorted but the ``n`` kept;
- many users (`recommend` with an array): chunks of users (a score buffer of about 32 MiB,
  whatever the number of users), each scored by one BLAS product and finished by a kernel
  parallel over the chunk's users;
- similar items / users: a serial kernel of cosine similarities and the same heap selection;
- a new user (`fold_in`): the training row solve, `kernels.rowsolve.solve_row`, with the items
  fixed and the same offsets, biases and regularization as ALS training.

Thread safety: the serial kernels share nothing. Numba's parallel kernels may only be entered
from several threads at once under the ``tbb`` or ``omp`` threading layers; under ``workqueue``
(or before numba has chosen a layer) calls into parallel kernels are serialized by a lock.

Ties: items with equal scores are ranked by their position in ``item_ids_`` (smaller first).
"""


import numpy as np

from ._parallel import parallel_kernels
from .data.ids import lookup
from .data.ratings import Ratings
from .kernels.foldin import fold_in_ids, fold_in_row
from .kernels.rowsolve import Other, Penalty, Solved, solve_rows
from .kernels.sparse import Rows
from .kernels.topn import Offsets, Seen, TopN, cosine_top_n, pair_dots, top_n_batch
from .train.objective import WEIGHT_POWERS, row_weights

__all__ = ["FittedState", "UserClusters", "fold_in", "recommend", "similar", "state_of"]

_NO_MASK = np.ones(0, dtype=np.bool_)
# Scores held at once by the batch path (users per chunk x items): 32 MiB of float64, whatever
# the number of users.
_BATCH_CELLS = 1 << 22
# Chunks of the parallel row solves of add_users.
_MAX_CHUNKS = 256


# The fitted attributes a state is derived from: a new state is made when any was replaced.
_FITTED = ("item_factors_", "user_factors_", "item_bias_", "user_bias_", "item_means_",
           "global_mean_", "seen_indptr_", "seen_indices_", "rating_range_", "reg_", "reg_bias_",
           "noise_variance_")


class FittedState:
    """What serving needs, derived once from a fitted model's public attributes.

    The score of user ``u`` and item ``i`` is ``mu + item_off[i] + user_off[u] + X[i] . Theta[u]``;
    `predict` is the one place where it is completed with the fallbacks and clipped.
    """

    def __init__(self, model):
        self.key = tuple(model.__dict__.get(name) for name in _FITTED)
        self.X = np.ascontiguousarray(model.item_factors_, dtype=np.float64)
        self.Theta = np.ascontiguousarray(model.user_factors_, dtype=np.float64)
        self.item_ids, self.user_ids = model.item_ids_, model.user_ids_
        self.global_mean = float(model.global_mean_)
        self.normalize = model.normalize
        self.biases = model.item_bias_ is not None
        n_items, n_users = self.X.shape[0], self.Theta.shape[0]
        if self.biases:
            mu, item_off, user_off = self.global_mean, model.item_bias_, model.user_bias_
        elif model.item_means_ is not None:
            mu, item_off, user_off = 0.0, model.item_means_, np.zeros(n_users)
        else:
            mu, item_off, user_off = 0.0, np.zeros(n_items), np.zeros(n_users)
        self.mu = float(mu)
        self.item_off = np.ascontiguousarray(item_off, dtype=np.float64)
        self.user_off = np.ascontiguousarray(user_off, dtype=np.float64)
        # The user solve's column offsets exactly as ALS training forms them: mu + item offset.
        self.col_offset = self.mu + self.item_off
        self.seen_indptr = np.ascontiguousarray(model.seen_indptr_, dtype=np.int64)
        self.seen_items = np.ascontiguousarray(model.seen_indices_)
        self.int_items = model.item_ids_.dtype == np.int64
        self.item_norms = self.user_norms = None
        if model.clip is True:
            self.clip = tuple(model.rating_range_)
        elif model.clip is False:
            self.clip = None
        else:
            self.clip = tuple(float(v) for v in model.clip)
        # A new user is solved like a training user; VB's users have unit prior variance.
        if getattr(model, "noise_variance_", None) is not None:
            noise = model.noise_variance_
            self.fold_in_penalty = (noise, noise / model.user_bias_variance_, "none")
        else:
            self.fold_in_penalty = (float(model.reg_), float(model.reg_bias_),
                                    model.reg_weighting_)
        self.n_threads = model.n_threads
        self._item_counts = None

    def item_counts(self):
        """Training ratings per item, int64 (n_items,), counted once per state."""
        if self._item_counts is None:
            self._item_counts = np.bincount(self.seen_items, minlength=self.X.shape[0])
        return self._item_counts

    def predict(self, u_index, i_index, new_user=None):
        """Predictions for dense indices (-1: unknown), clipped.

        An unknown user or item gets the fallback: the global mean plus whatever is known (the
        item's offset; the user's bias under ``normalize="biases"``). ``new_user``, a folded-in
        ``(user_vector, user_bias)``, stands for the user of every pair (``u_index`` unused).
        """
        i_known = i_index >= 0
        u_known = np.ones(i_index.shape, dtype=bool) if new_user is not None else u_index >= 0
        both = u_known & i_known
        pred = np.full(i_index.shape, self.global_mean, dtype=np.float64)
        if self.normalize != "none":
            pred[i_known] = self.mu + self.item_off[i_index[i_known]]
            only_user = u_known & ~i_known
            if self.biases:
                pred[only_user] = self.mu + (
                    new_user[1] if new_user is not None else self.user_off[u_index[only_user]]
                )
        ii = i_index[both]
        if new_user is not None:
            user_off, dots = new_user[1], self.X[ii] @ new_user[0]
        else:
            ui = u_index[both]
            user_off = self.user_off[ui]
            dots = np.empty(ii.shape[0])
            pair_dots(self.X, self.Theta, ii, ui, dots)
        pred[both] = self.mu + self.item_off[ii] + user_off + dots
        if self.clip is not None:
            np.clip(pred, self.clip[0], self.clip[1], out=pred)
        return pred


def state_of(model):
    """The model's serving state, made anew when a fitted attribute was replaced (a refit)."""
    state = model.__dict__.get("_serving")
    if state is not None and all(
        a is b for a, b in zip(state.key, (model.__dict__.get(n) for n in _FITTED))
    ):
        return state
    state = FittedState(model)
    model.__dict__["_serving"] = state  # a benign race: every thread builds the same state
    return state


def _check_n(n):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be an integer >= 0, found {n!r}")
    return int(n)


def _indices(known_ids, query):
    """Dense indices of a 1-D array of external ids (-1 where unknown), int64."""
    return lookup(known_ids, query)[0]


def _one_index(known_ids, value, what):
    """The dense index of one external id; KeyError naming it when unknown."""
    # numpy, not the lookup kernel: a one-off command line call then never waits for numba to
    # load its compiled code, which costs more than the whole answer.
    index = lookup(known_ids, np.asarray(value).reshape(1))[0][0]
    if index < 0:
        raise KeyError(f"unknown {what} {_plain(value)!r}: not in the model's {what}s")
    return int(index)


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _candidate_mask(model, items, filter_items):
    """(mask, use_mask): the candidate items as a boolean mask, or no mask at all."""
    if items is None and filter_items is None:
        return _NO_MASK, False
    n_items = model.item_factors_.shape[0]
    if items is None:
        mask = np.ones(n_items, dtype=np.bool_)
    else:
        index = _indices(model.item_ids_, np.atleast_1d(np.asarray(items)).reshape(-1))
        mask = np.zeros(n_items, dtype=np.bool_)
        mask[index[index >= 0]] = True
    if filter_items is not None:
        index = _indices(model.item_ids_, np.atleast_1d(np.asarray(filter_items)).reshape(-1))
        mask[index[index >= 0]] = False
    return mask, True


def _pad_id(ids):
    return "" if ids.dtype.kind == "U" else -1


def _ids_of(known_ids, index):
    """External ids for dense indices, the padding id where an index is -1."""
    if known_ids.shape[0] == 0:
        return np.full(index.shape, _pad_id(known_ids), dtype=known_ids.dtype)
    out = known_ids[np.maximum(index, 0)]
    if index.size and index.min() < 0:
        out[index < 0] = _pad_id(known_ids)
    return out


def _top_one(state, theta, base, seen_indptr, seen_items, u, exclude_seen, mask, use_mask, n,
             item_ids):
    """Top-n for one user vector ``theta``: BLAS scores, then numpy's partial selection.

    Plain numpy here (the batch path has its kernel): it is as fast for one user, safe from any
    thread, and keeps numba's start-up cost out of one-off command-line answers.
    """
    scores = state.X @ theta
    scores += state.item_off  # the user's own offset (base) moves every score alike: added last
    if use_mask:
        scores[~mask] = -np.inf
    if exclude_seen and u >= 0:
        scores[seen_items[seen_indptr[u] : seen_indptr[u + 1]]] = -np.inf
    best = _top_n_numpy(scores, n)
    return item_ids[best], scores[best] + base


def _top_n_numpy(scores, n):
    """Indices of the n largest finite scores, best first; ties by the smaller index."""
    size = scores.shape[0]
    n = min(int(n), size)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    part = np.argpartition(scores, size - n)[size - n :] if n < size else np.arange(size)
    cut = scores[part].min()
    if n < size and np.count_nonzero(scores >= cut) > n:
        # The partition cut through a tie: decide it by index, as the batch kernel does.
        part = np.flatnonzero(scores >= cut)
    best = part[np.lexsort((part, -scores[part]))][:n]
    return best[np.isfinite(scores[best])]


def _batch_rows(n_items):
    """Users per chunk of the batch path: a score buffer of about ``_BATCH_CELLS`` floats."""
    return max(1, _BATCH_CELLS // max(n_items, 1))


def recommend(model, user, n, exclude_seen, items, filter_items):
    """See `MatrixFactorization.recommend`."""
    n = _check_n(n)
    state = state_of(model)
    mask, use_mask = _candidate_mask(model, items, filter_items)
    exclude_seen = bool(exclude_seen)
    if np.ndim(user) == 0:
        u = _one_index(model.user_ids_, user, "user")
        return _top_one(
            state, state.Theta[u], state.mu + state.user_off[u], state.seen_indptr,
            state.seen_items, u, exclude_seen, mask, use_mask, n, model.item_ids_,
        )
    users = np.asarray(user).reshape(-1)
    index = _indices(model.user_ids_, users)
    if users.size and index.min() < 0:
        missing = users[np.flatnonzero(index < 0)[0]]
        raise KeyError(f"unknown user {_plain(missing)!r}: not in the model's training users")
    n_query = users.shape[0]
    out_index = np.empty((n_query, n), dtype=np.int64)
    out_scores = np.empty((n_query, n))
    if n_query and n:
        X = state.X
        offsets = Offsets(state.mu, state.item_off, state.user_off)
        seen = Seen(state.seen_indptr, state.seen_items)
        if not exclude_seen:
            seen = Seen(state.seen_indptr[:0], state.seen_items[:0])
        rows = min(n_query, _batch_rows(X.shape[0]))
        buffer = np.empty((rows, X.shape[0]))
        for start in range(0, n_query, rows):
            stop = min(start + rows, n_query)
            chunk = index[start:stop]
            scores = buffer[: stop - start]
            np.matmul(state.Theta[chunk], X.T, out=scores)  # BLAS; releases the GIL
            with parallel_kernels(model.n_threads):
                top_n_batch(scores, chunk, offsets, seen, mask, n,
                            TopN(out_index[start:stop], out_scores[start:stop]))
    return _ids_of(model.item_ids_, out_index), out_scores


# -- fold-in ------------------------------------------------------------------------------------
def _fold(model, items, values):
    """(user_vector, user_bias, dense indices of ``items``, -1 when unknown) of a new user."""
    state = state_of(model)
    items = np.asarray(items)
    # Fresh, writable, contiguous arrays: the kernels then always see the same types.
    values = np.array(values, dtype=np.float64)
    if items.ndim != 1 or values.shape != items.shape:
        raise ValueError(
            f"items and values must be 1-D arrays of one length, found shapes {items.shape} and "
            f"{values.shape}"
        )
    w = np.empty(state.X.shape[1])
    reg, reg_bias, weighting = state.fold_in_penalty
    weight_power = WEIGHT_POWERS[weighting]
    other = Other(state.X, state.col_offset)
    penalty = Penalty(float(reg), float(reg_bias), model.normalize == "biases")
    if items.dtype.kind in "iu" and state.int_items:
        index = np.empty(items.shape[0], dtype=np.int64)
        beta, status = fold_in_ids(
            model.item_ids_, np.array(items, dtype=np.int64), values, other, penalty,
            weight_power, index, w,
        )
    else:
        index = _indices(model.item_ids_, items)
        beta, status = fold_in_row(index, values, other, penalty, weight_power, w)
        if status in (0, 2) and index.size and index.min() < 0:
            unknown = items[index < 0]
            if np.unique(unknown).shape[0] != unknown.shape[0]:
                status = 1
    if status == 1:
        uniq, counts = np.unique(items, return_counts=True)
        raise ValueError(
            f"items must not repeat; item {_plain(uniq[counts > 1][0])!r} appears twice"
        )
    if status == 3:
        raise ValueError("values must be finite numbers, found NaN or infinity")
    return w, float(beta), index, state


def fold_in(model, items, values):
    """See `MatrixFactorization.fold_in`."""
    w, beta, _, _ = _fold(model, items, values)
    return w, beta


def recommend_new_user(model, items, values, n, exclude_seen):
    """See `MatrixFactorization.recommend_new_user`."""
    n = _check_n(n)
    w, beta, index, state = _fold(model, items, values)
    known = index[index >= 0]
    seen_indptr = np.array([0, known.shape[0]], dtype=np.int64)
    return _top_one(
        state, w, state.mu + beta, seen_indptr, known, 0, bool(exclude_seen), _NO_MASK, False, n,
        model.item_ids_,
    )


def predict_new_user(model, items, values, candidate_items):
    """See `MatrixFactorization.predict_new_user`."""
    w, beta, _, state = _fold(model, items, values)
    candidates = np.asarray(candidate_items)
    cand = _indices(model.item_ids_, candidates.reshape(-1)).reshape(candidates.shape)
    return state.predict(None, cand, new_user=(w, beta))


def add_users(model, ratings):
    """See `MatrixFactorization.add_users`."""
    import copy

    if not isinstance(ratings, Ratings):
        raise TypeError(f"ratings must be a fastcofi.Ratings, found {type(ratings).__name__}")
    state = state_of(model)
    old_ids = model.user_ids_
    new_ids = ratings.user_ids
    if (old_ids.dtype.kind == "U") != (new_ids.dtype.kind == "U") and old_ids.shape[0]:
        kind = "strings" if old_ids.dtype.kind == "U" else "integers"
        raise TypeError(f"ratings user ids must be {kind}, like the model's, found {new_ids.dtype}")
    clash = _indices(old_ids, new_ids) >= 0
    if clash.any():
        raise ValueError(
            f"user {_plain(new_ids[np.flatnonzero(clash)[0]])!r} is already in the model; "
            "add_users takes new users only"
        )
    # Ratings of items the model does not know are ignored, as in fold_in.
    indptr, cols, values = ratings.by_user
    col_index = _indices(model.item_ids_, ratings.item_ids)[np.asarray(cols)]
    keep = col_index >= 0
    n_new = new_ids.shape[0]
    row_of = np.repeat(np.arange(n_new, dtype=np.int64), np.diff(np.asarray(indptr)))
    counts = np.bincount(row_of[keep], minlength=n_new).astype(np.int64)
    new_indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    seen_dtype = state.seen_items.dtype
    new_cols = col_index[keep].astype(seen_dtype)
    new_values = np.ascontiguousarray(np.asarray(values)[keep], dtype=np.float64)

    k = state.X.shape[1]
    Theta_new = np.zeros((n_new, k))
    bias_new = np.zeros(n_new)
    fit_bias = model.normalize == "biases"
    reg, reg_bias, weighting = state.fold_in_penalty
    weights = row_weights(counts, weighting)
    if n_new:
        n_chunks = int(min(_MAX_CHUNKS, n_new))
        chunks = (np.arange(n_chunks + 1, dtype=np.int64) * n_new) // n_chunks

        with parallel_kernels(model.n_threads):
            solve_rows(
                Rows(new_indptr, new_cols, new_values, chunks), Other(state.X, state.col_offset),
                Penalty(float(reg), float(reg_bias), fit_bias), np.zeros(n_new), weights,
                Solved(Theta_new, bias_new), 0,
            )

    # Merge, keeping the user ids sorted so that lookups still work.
    all_ids = np.concatenate([old_ids, new_ids])
    order = np.argsort(all_ids, kind="stable")
    all_counts = np.concatenate([np.diff(state.seen_indptr), counts])[order]
    starts = np.concatenate([state.seen_indptr[:-1], state.seen_items.shape[0] + new_indptr[:-1]])
    merged_indptr = np.concatenate([[0], np.cumsum(all_counts)]).astype(np.int64)
    total = int(merged_indptr[-1])
    source = np.repeat(starts[order] - merged_indptr[:-1], all_counts) + np.arange(total)
    merged_items = np.concatenate([state.seen_items, new_cols])[source]

    new = copy.copy(model)
    new.__dict__.pop("_serving", None)
    new.user_ids_ = all_ids[order]
    new.user_factors_ = np.concatenate([state.Theta, Theta_new])[order]
    if model.user_bias_ is not None:
        new.user_bias_ = np.concatenate([model.user_bias_, bias_new])[order]
    new.seen_indptr_, new.seen_indices_ = merged_indptr, merged_items
    posterior = getattr(model, "_posterior", None)
    if posterior is not None:
        # A folded-in user has one bias, not a draw per kept sample: no spread of its own.
        samples = posterior["user_bias_samples"]
        new._posterior = {**posterior, "user_bias_samples": np.concatenate(
            [samples, np.repeat(bias_new[:, None], samples.shape[1], axis=1)])[order]}
        scales = posterior.get("user_noise_scales")
        if scales is not None:
            # Nor a noise scale of its own: each draw's prior E[1 / scale] = a / (a - 1).
            shapes = posterior["user_noise_shapes"]
            new._posterior["user_noise_scales"] = np.concatenate(
                [scales, np.repeat(((shapes - 1.0) / shapes)[None, :], n_new, axis=0)])[order]
    return new


# -- similarity ---------------------------------------------------------------------------------
def _norms(F):
    return np.sqrt(np.einsum("ij,ij->i", F, F))


def similar(model, query, n, side):
    """Cosine top-``n`` of an item (``side="item"``) or a user; see `similar_items`."""
    n = _check_n(n)
    state = state_of(model)
    if side == "item":
        ids, F = model.item_ids_, state.X
        if state.item_norms is None:
            state.item_norms = _norms(F)
        norms = state.item_norms
    else:
        ids, F = model.user_ids_, state.Theta
        if state.user_norms is None:
            state.user_norms = _norms(F)
        norms = state.user_norms
    q = _one_index(ids, query, side)
    n_eff = min(n, F.shape[0])
    out_index = np.empty(n_eff, dtype=np.int64)
    out_scores = np.empty(n_eff)
    count = cosine_top_n(F, norms, q, n_eff, out_index, out_scores)
    return ids[out_index[:count]], out_scores[:count]


# -- clusters -----------------------------------------------------------------------------------
class UserClusters:
    """Users grouped by k-means on their factors (`MatrixFactorization.cluster_users`).

    Attributes
    ----------
    labels : ndarray of shape (n_users,), int64
        The cluster of each user, aligned with the model's ``user_ids_``.
    centers : ndarray of shape (n_clusters, n_factors), float64
        Cluster centers in factor space.
    user_bias : ndarray of shape (n_clusters,), float64
        Mean user offset (bias) of each cluster's members (zeros without biases).
    sizes : ndarray of shape (n_clusters,), int64
    """

    def __init__(self, model, labels, centers):
        self._model = model
        self.labels = labels
        self.centers = centers
        n_clusters = centers.shape[0]
        self.sizes = np.bincount(labels, minlength=n_clusters).astype(np.int64)
        user_off = state_of(model).user_off
        sums = np.bincount(labels, weights=user_off, minlength=n_clusters)
        self.user_bias = np.where(self.sizes > 0, sums / np.maximum(self.sizes, 1), 0.0)

    def __repr__(self):
        return f"UserClusters(n_clusters={self.centers.shape[0]}, sizes={self.sizes.tolist()})"

    def members(self, cluster):
        """External ids of the users in ``cluster``."""
        return self._model.user_ids_[self.labels == self._check_cluster(cluster)]

    def _check_cluster(self, cluster):
        n_clusters = self.centers.shape[0]
        if isinstance(cluster, bool) or not isinstance(cluster, (int, np.integer)) or not (
            0 <= cluster < n_clusters
        ):
            raise ValueError(f"cluster must be an integer in [0, {n_clusters}), found {cluster!r}")
        return int(cluster)

    def recommend(self, cluster, n=10):
        """The items the cluster rates highest: scored against its center, best first.

        The score of item ``i`` is ``mu + item_offset[i] + mean member bias + X[i] . center``
        (raw, not clipped). No item is excluded.

        Returns
        -------
        item_ids : ndarray of shape (min(n, n_items),)
        scores : ndarray of float64, same shape
        """
        c = self._check_cluster(cluster)
        n = _check_n(n)
        model = self._model
        state = state_of(model)
        no_seen = np.zeros(1, dtype=np.int64)
        return _top_one(
            state, self.centers[c], state.mu + float(self.user_bias[c]), no_seen, no_seen, 0,
            False, _NO_MASK, False, n, model.item_ids_,
        )


def cluster_users(model, n_clusters, random_state):
    """See `MatrixFactorization.cluster_users`."""
    from scipy.cluster.vq import kmeans2

    n_users = model.user_factors_.shape[0]
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)) or not (
        1 <= n_clusters <= n_users
    ):
        raise ValueError(
            f"n_clusters must be an integer in [1, {n_users}] (the number of users), found "
            f"{n_clusters!r}"
        )
    rng = np.random.default_rng(random_state)
    data = np.array(model.user_factors_, dtype=np.float64)
    centers, labels = kmeans2(data, int(n_clusters), iter=50, minit="++", rng=rng)
    return UserClusters(model, labels.astype(np.int64), np.ascontiguousarray(centers))


# -- warm-up ------------------------------------------------------------------------------------
def warm_up(model):
    """Call every serving kernel once with the model's own array types (compiles or loads them)."""
    n_items, n_users = model.item_factors_.shape[0], model.user_factors_.shape[0]
    if n_items == 0:
        return
    item = model.item_ids_[0]
    if n_users:
        user = model.user_ids_[0]
        recommend(model, user, 1, True, None, None)
        recommend(model, user, 1, True, [item], [item])
        recommend(model, model.user_ids_[:1], 1, True, None, None)
        similar(model, user, 1, "user")
        UserClusters(model, np.zeros(n_users, dtype=np.int64),
                     np.zeros((1, model.item_factors_.shape[1]))).recommend(0, 1)
    similar(model, item, 1, "item")
    recommend_new_user(model, model.item_ids_[:1], [model.rating_range_[1]], 1, True)
    predict_new_user(model, model.item_ids_[:1], [model.rating_range_[1]], model.item_ids_[:1])
    # add_users' kernel, on one made-up user (the model is not changed).
    state = state_of(model)
    k = state.X.shape[1]
    with parallel_kernels():
        solve_rows(
            Rows(np.array([0, 1], dtype=np.int64), np.zeros(1, dtype=state.seen_items.dtype),
                 np.ones(1), np.array([0, 1], dtype=np.int64)),
            Other(state.X, state.col_offset), Penalty(1.0, 1.0, model.normalize == "biases"),
            np.zeros(1), np.ones(1), Solved(np.zeros((1, k)), np.zeros(1)), 0,
        )
