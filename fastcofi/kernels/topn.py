"""Top-n selection: one user, a batch of users, cosine neighbours; the factor term of pairs."""

from typing import NamedTuple

import numba as nb
import numpy as np
from numba import prange

from ._jit import _FASTMATH


@nb.njit(cache=True, nogil=True)
def _worse(s1, i1, s2, i2):
    """True when (s1, i1) ranks below (s2, i2): a lower score, or an equal score, larger index."""
    return s1 < s2 or (s1 == s2 and i1 > i2)


@nb.njit(cache=True, nogil=True)
def _sift_down(heap_s, heap_i, size, pos):
    s, i = heap_s[pos], heap_i[pos]
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        right = child + 1
        if right < size and _worse(heap_s[right], heap_i[right], heap_s[child], heap_i[child]):
            child = right
        if not _worse(heap_s[child], heap_i[child], s, i):
            break
        heap_s[pos], heap_i[pos] = heap_s[child], heap_i[child]
        pos = child
    heap_s[pos], heap_i[pos] = s, i


@nb.njit(cache=True, nogil=True)
def select_top_n(scores, n, out_index, out_scores):
    """The ``n`` best finite entries of ``scores``, best first, into ``out_index`` / ``out_scores``.

    Entries that are -inf or NaN are skipped. Equal scores are ordered by the smaller index first.
    ``out_*`` need room for ``n``; returns how many were written (fewer than ``n`` when there are
    fewer candidates). The outputs are used as the heap, so no scratch is allocated.
    """
    size = 0
    if n <= 0:
        return 0
    for i in range(scores.shape[0]):
        s = scores[i]
        if not s > -np.inf:
            continue
        if size < n:
            # Sift the new pair up from the end.
            pos = size
            size += 1
            while pos > 0:
                parent = (pos - 1) // 2
                if not _worse(s, i, out_scores[parent], out_index[parent]):
                    break
                out_scores[pos], out_index[pos] = out_scores[parent], out_index[parent]
                pos = parent
            out_scores[pos], out_index[pos] = s, i
        elif _worse(out_scores[0], out_index[0], s, i):
            out_scores[0], out_index[0] = s, i
            _sift_down(out_scores, out_index, size, 0)
    # Heap sort: move the worst kept pair to the end, repeatedly; leaves them best first.
    for end in range(size - 1, 0, -1):
        s, i = out_scores[0], out_index[0]
        out_scores[0], out_index[0] = out_scores[end], out_index[end]
        out_scores[end], out_index[end] = s, i
        _sift_down(out_scores, out_index, end, 0)
    return size


class Offsets(NamedTuple):
    """What turns a dot product into a score: ``mu + item_off[i] + user_off[u]`` (float64)."""

    mu: float
    item_off: np.ndarray
    user_off: np.ndarray


class Seen(NamedTuple):
    """Items to leave out per user, as CSR (``indptr`` (n_users + 1,), ``items``); an empty
    ``indptr`` leaves nothing out."""

    indptr: np.ndarray
    items: np.ndarray


class TopN(NamedTuple):
    """Where each row's top-n goes: ``index`` (rows, n) int64 and ``scores`` (rows, n) float64."""

    index: np.ndarray
    scores: np.ndarray


@nb.njit(parallel=True, cache=True, nogil=True)
def top_n_batch(scores, users, offsets, seen, mask, n, out):
    """Top-``n`` items of each row of ``scores`` (user ``users[r]``), in parallel over rows.

    The score of item ``i`` for row ``r`` is ``scores[r, i]`` plus its `Offsets`; the user's
    `Seen` items are left out, and so are the items where ``mask`` is False (an empty ``mask``
    leaves every item in).

    Row ``r`` of ``out`` (a `TopN`) receives the top-n, padded with -1 and -inf; each thread
    writes only the rows it owns.
    """
    # Bound to locals before the parallel loop: numba 0.68's parallel loops lose writes made
    # through a tuple's field inside them.
    out_index, out_scores = out.index, out.scores
    item_off, user_off, mu = offsets.item_off, offsets.user_off, offsets.mu
    seen_indptr, seen_items = seen.indptr, seen.items
    exclude_seen = seen_indptr.shape[0] > 0
    use_mask = mask.shape[0] > 0
    for r in prange(scores.shape[0]):
        u = users[r]
        row = scores[r]
        base = mu + user_off[u]
        for i in range(row.shape[0]):
            row[i] = row[i] + item_off[i] + base
        if exclude_seen:
            for p in range(seen_indptr[u], seen_indptr[u + 1]):
                row[seen_items[p]] = -np.inf
        if use_mask:
            for i in range(row.shape[0]):
                if not mask[i]:
                    row[i] = -np.inf
        count = select_top_n(row, n, out_index[r], out_scores[r])
        for q in range(count, n):
            out_index[r, q] = -1
            out_scores[r, q] = -np.inf


@nb.njit(fastmath=_FASTMATH, cache=True, nogil=True)
def cosine_top_n(F, norms, q, n, out_index, out_scores):
    """Rows of ``F`` most cosine-similar to row ``q`` (itself left out), best first.

    ``norms`` holds each row's Euclidean norm; a zero-norm row has similarity 0 with everything.
    Returns how many were written.
    """
    k = F.shape[1]
    sims = np.empty(F.shape[0])
    qn = norms[q]
    for i in range(F.shape[0]):
        denom = norms[i] * qn
        if denom > 0.0:
            acc = 0.0
            for f in range(k):
                acc += F[i, f] * F[q, f]
            sims[i] = acc / denom
        else:
            sims[i] = 0.0
    sims[q] = -np.inf
    return select_top_n(sims, n, out_index, out_scores)


@nb.njit(fastmath=_FASTMATH, cache=True, nogil=True)
def pair_dots(X, Theta, items, users, out):
    """``out[p] = X[items[p]] . Theta[users[p]]`` for every pair ``p``: the factor term of a
    prediction. Reads the rows in place rather than gathering them into two fresh (m, k)
    arrays first, whose allocation and page faults cost more than the products; training
    scores its validation set this way after every iteration."""
    k = X.shape[1]
    for p in range(items.shape[0]):
        i, u = items[p], users[p]
        acc = 0.0
        for f in range(k):
            acc += X[i, f] * Theta[u, f]
        out[p] = acc
