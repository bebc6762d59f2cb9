"""Sparse structure: counting sorts, CSR transposes, id compaction and lookup."""

from typing import NamedTuple

import numba as nb
import numpy as np
from numba import prange

# Below this many entries per thread, a counting sort stays on one thread: the per-thread key
# counts would cost more than they save.
_SORT_MIN_PER_THREAD = 1 << 16


def _sort_parts(nnz, n_keys):
    """Threads for a counting sort of ``nnz`` entries by ``n_keys`` keys. Their key counts
    (8 bytes per key each) are kept under 4 bytes per entry, so that many threads and many keys
    (millions of users on a large server) do not cost more memory than the sort itself."""
    # Read here, not in a kernel: a kernel that asks numba for its thread count cannot be
    # cached (the call goes through a ctypes pointer).
    by_memory = nnz // (2 * max(n_keys, 1))
    return max(1, min(nb.get_num_threads(), nnz // _SORT_MIN_PER_THREAD, by_memory))


@nb.njit(parallel=True, cache=True, nogil=True)
def _counting_offsets(keys, starts, n_keys):
    """Where each part's entries go in a stable counting sort of ``keys`` (values in
    ``[0, n_keys)``), parts being the runs ``starts[t]:starts[t + 1]`` of positions.

    Returns ``fill`` (n_parts, n_keys), the output position of part t's first entry with key
    c, and the ``indptr`` (length n_keys + 1) of the sorted keys. Part t's entries of a key
    follow those of the parts before it, so scattering each part in order reproduces the
    serial sort for any number of parts, and no two parts write one position.
    """
    n_parts = starts.shape[0] - 1
    fill = np.zeros((n_parts, n_keys), dtype=np.int64)
    for t in prange(n_parts):
        for p in range(starts[t], starts[t + 1]):
            fill[t, keys[p]] += 1
    indptr = np.empty(n_keys + 1, dtype=np.int64)
    at = 0
    for c in range(n_keys):
        indptr[c] = at
        for t in range(n_parts):
            count = fill[t, c]
            fill[t, c] = at
            at += count
    indptr[n_keys] = at
    return fill, indptr


def row_major_order(rows, cols, n_rows):
    """Permutation sorting entries by row, then column, equal pairs kept in input order.

    A counting sort by row (runs of entries in parallel), then a stable sort of each row's
    columns (rows in parallel). Returns the permutation (int64) and the row ``indptr`` (int64,
    length n_rows + 1).
    """
    return _row_major_order(rows, cols, n_rows, _sort_parts(rows.shape[0], n_rows))


@nb.njit(parallel=True, cache=True, nogil=True)
def _row_major_order(rows, cols, n_rows, n_parts):
    nnz = rows.shape[0]
    starts = (np.arange(n_parts + 1) * nnz) // n_parts
    fill, indptr = _counting_offsets(rows, starts, n_rows)
    order = np.empty(nnz, dtype=np.int64)
    for t in prange(n_parts):
        for p in range(starts[t], starts[t + 1]):
            r = rows[p]
            order[fill[t, r]] = p
            fill[t, r] += 1
    _sort_rows_by_key(order, indptr, cols)
    return order, indptr


def row_order(indptr, keys):
    """Permutation (int64) sorting each CSR row's entries by ``keys``, stably, rows in parallel."""
    order = np.arange(keys.shape[0], dtype=np.int64)
    _sort_rows_by_key(order, indptr, keys)
    return order


@nb.njit(parallel=True, cache=True, nogil=True)
def _sort_rows_by_key(order, indptr, keys):
    for r in prange(indptr.shape[0] - 1):
        start, end = indptr[r], indptr[r + 1]
        in_order = True
        for q in range(start + 1, end):
            if keys[order[q]] < keys[order[q - 1]]:
                in_order = False
                break
        if not in_order:
            segment = order[start:end].copy()
            # mergesort is stable: repeated pairs stay in input order
            rank = np.argsort(keys[segment], kind="mergesort")
            for q in range(end - start):
                order[start + q] = segment[rank[q]]


@nb.njit(parallel=True, cache=True, nogil=True)
def gather_rows(order, indptr, cols, values, out_cols, out_values):
    """``out_cols = cols[order]``, ``out_values = values[order]``, rows in parallel; returns
    whether two neighbours within a row share a column (a repeated pair)."""
    n_rows = indptr.shape[0] - 1
    repeated = np.zeros(n_rows, dtype=np.bool_)
    for r in prange(n_rows):
        previous = -1
        for q in range(indptr[r], indptr[r + 1]):
            p = order[q]
            c = cols[p]
            out_cols[q] = c
            out_values[q] = values[p]
            if c == previous:
                repeated[r] = True
            previous = c
    return repeated.any()


@nb.njit(parallel=True, cache=True, nogil=True)
def take(values, order):
    """``values[order]`` with the gather spread over threads."""
    out = np.empty(order.shape[0], dtype=values.dtype)
    for q in prange(order.shape[0]):
        out[q] = values[order[q]]
    return out


def transpose_csr(indptr, indices, values, n_cols, out_indices, out_values, extra=None,
                  out_extra=None):
    """The CSR of the transpose: writes ``out_indices`` / ``out_values`` (and ``out_extra``
    from ``extra``, an optional second array aligned with ``values``), returns its indptr.

    A stable counting sort by column, so each output row lists its entries by ascending row,
    with threads taking runs of rows with equal numbers of entries (see `_counting_offsets`).
    """
    return _transpose_csr(indptr, indices, values, n_cols, out_indices, out_values, extra,
                          out_extra, _sort_parts(indices.shape[0], n_cols))


@nb.njit(parallel=True, cache=True, nogil=True)
def _transpose_csr(indptr, indices, values, n_cols, out_indices, out_values, extra, out_extra,
                   n_parts):
    n_rows = indptr.shape[0] - 1
    nnz = indices.shape[0]
    bounds = np.searchsorted(indptr, (np.arange(n_parts + 1) * nnz) // n_parts)
    bounds[0] = 0
    bounds[n_parts] = n_rows
    fill, out_indptr = _counting_offsets(indices, indptr[bounds], n_cols)
    for t in prange(n_parts):
        for r in range(bounds[t], bounds[t + 1]):
            for p in range(indptr[r], indptr[r + 1]):
                c = indices[p]
                q = fill[t, c]
                out_indices[q] = r
                out_values[q] = values[p]
                if extra is not None:
                    out_extra[q] = extra[p]
                fill[t, c] = q + 1
    return out_indptr


@nb.njit(parallel=True, cache=True, nogil=True)
def compact_ids(ids, lo, span, out):
    """Ranks of integer ids among their distinct values, for ids in ``[lo, lo + span)``.

    Writes each entry's rank into ``out`` (the gather in parallel) and returns the distinct
    values as ascending int64 offsets from ``lo``. ``lo`` is an int64 for signed ids and a
    uint64 for unsigned ones. O(n + span): no sort.
    """
    present = np.zeros(span, dtype=np.bool_)
    for p in range(ids.shape[0]):
        present[ids[p] - lo] = True
    rank = np.empty(span, dtype=np.int64)
    n_distinct = 0
    for v in range(span):
        rank[v] = n_distinct
        n_distinct += present[v]
    distinct = np.empty(n_distinct, dtype=np.int64)
    for v in range(span):
        if present[v]:
            distinct[rank[v]] = v
    for p in prange(ids.shape[0]):
        out[p] = rank[ids[p] - lo]
    return distinct


@nb.njit(parallel=True, cache=True, nogil=True)
def lookup_compact(known_ids, lo, span, query, out):
    """``out[p]`` = the position of ``query[p]`` in the sorted, distinct ``known_ids`` or -1,
    through a table over ``[lo, lo + span)`` (``lo`` int64 or uint64 as in `compact_ids`), which
    must hold every known id. O(n + span); returns the smallest entry written (-1: a miss)."""
    table = np.full(span, -1, dtype=np.int64)
    for r in range(known_ids.shape[0]):
        table[known_ids[r] - lo] = r
    for p in prange(query.shape[0]):
        value = query[p]
        if value < lo or value - lo >= span:
            out[p] = -1
        else:
            out[p] = table[value - lo]
    return out.min() if out.shape[0] else 0


@nb.njit(cache=True, nogil=True)
def lookup_int(known_ids, query, out):
    """``out[p]`` = the position of ``query[p]`` in the sorted ``known_ids`` or -1 (bisection)."""
    m = known_ids.shape[0]
    for p in range(query.shape[0]):
        value = query[p]
        lo, hi = 0, m
        while lo < hi:
            mid = (lo + hi) >> 1
            if known_ids[mid] < value:
                lo = mid + 1
            else:
                hi = mid
        out[p] = lo if lo < m and known_ids[lo] == value else -1


class Rows(NamedTuple):
    """One side's ratings by row: CSR (``indptr`` (n + 1,), ``indices`` (nnz,) of the other side's
    rows, ``values`` (nnz,)) and ``chunks``, row boundaries of nonzero-balanced chunks."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    chunks: np.ndarray
