"""The regularized least-squares solve of one row (ALS sweeps, fold-in of a new user)."""

import numba as nb
import numpy as np
from numba import prange

from ._jit import _FASTMATH
from .sparse import lookup_int


@nb.njit(fastmath=_FASTMATH, cache=True, nogil=True)
def _cholesky_in_place(A, d):
    """Cholesky factor ``L`` (``A = L L^T``) written over the lower triangle of the symmetric
    leading d x d block of ``A`` (scratch may be larger); the upper triangle is not read.
    Returns False when that block is not positive definite."""
    for r in range(d):
        for c in range(r + 1):
            acc = A[r, c]
            for m in range(c):
                acc -= A[r, m] * A[c, m]
            if r == c:
                if acc <= 0.0:
                    return False
                A[r, r] = np.sqrt(acc)
            else:
                A[r, c] = acc / A[c, c]
    return True


# A row's ratings are gathered this many at a time into a contiguous tile of their factor rows
# (and a column of ones for the bias), whose Gram matrix is one small matrix product: a rank-256
# update instead of a scalar rank-1 update per rating.
_TILE_ROWS = 256


@nb.njit(fastmath=_FASTMATH, cache=True, nogil=True)
def _cholesky_solve(A, b, d):
    """Solve ``A z = b`` in place (``z`` into ``b``) for the symmetric leading d x d block of
    ``A`` (lower triangle read, overwritten by its Cholesky factor); False when that block is
    not positive definite."""
    if not _cholesky_in_place(A, d):
        return False
    _forward_solve(A, b, d)
    _backward_solve(A, b, d)
    return True


@nb.njit(fastmath=_FASTMATH, cache=True, nogil=True)
def _forward_solve(L, b, d):
    """``b = L^-1 b`` in place, ``L`` the Cholesky factor in the lower triangle of ``L``'s leading
    d x d block."""
    for r in range(d):
        acc = b[r]
        for m in range(r):
            acc -= L[r, m] * b[m]
        b[r] = acc / L[r, r]


@nb.njit(fastmath=_FASTMATH, cache=True, nogil=True)
def _backward_solve(L, b, d):
    """``b = L^-T b`` in place (see `_forward_solve`)."""
    for r in range(d - 1, -1, -1):
        acc = b[r]
        for m in range(r + 1, d):
            acc -= L[m, r] * b[m]
        b[r] = acc / L[r, r]


@nb.njit(fastmath=_FASTMATH, cache=True, nogil=True)
def _gather(cols, values, F, col_offset, row_offset, fit_bias, start, m, tile, target):
    """Rows ``start:start + m`` of the row's ratings into ``tile`` (factor rows, then 1 for the
    bias) and ``target`` (what the factors must explain)."""
    k = F.shape[1]
    for q in range(m):
        col = cols[start + q]
        for f in range(k):
            tile[q, f] = F[col, f]
        if fit_bias:
            tile[q, k] = 1.0
        target[q] = values[start + q] - col_offset[col] - row_offset


@nb.njit(fastmath=_FASTMATH, cache=True, nogil=True)
def _solve_dual(n, k, reg, reg_bias, fit_bias, S, tile, target, out):
    """The row's solution through the n x n system of its ratings, for n < d.

    With ``T`` the gathered tile (n x d) and ``P`` the diagonal penalty, ``(T'T + P) w = T't``
    has the solution ``w = P^-1 T' z`` with ``(T P^-1 T' + I) z = t`` (push-through identity):
    an n x n factorization instead of a d x d one, which for the many rows with a handful of
    ratings is most of a sweep. Needs every penalty > 0. Returns beta (NaN when not positive
    definite).
    """
    inv_reg = 1.0 / reg
    inv_bias = 1.0 / reg_bias if fit_bias else 0.0
    for p in range(n):
        for q in range(p + 1):
            acc = 0.0
            for f in range(k):
                acc += tile[p, f] * tile[q, f]
            S[p, q] = acc * inv_reg + inv_bias
        S[p, p] += 1.0
    if not _cholesky_solve(S, target, n):
        return np.nan
    for f in range(k):
        out[f] = 0.0
    beta = 0.0
    for p in range(n):
        z = target[p]
        for f in range(k):
            out[f] += tile[p, f] * z
        beta += z
    for f in range(k):
        out[f] *= inv_reg
    return beta * inv_bias


@nb.njit(fastmath=_FASTMATH, cache=True, nogil=True)
def _solve_row_tiled(cols, values, F, col_offset, row_offset, reg, reg_bias, fit_bias, A, b,
                     gram, tile, target, out):
    """`solve_row` with all its scratch given: ``gram`` (d x d), ``tile`` (at least d rows, d
    columns) and ``target`` (as many entries as ``tile`` has rows)."""
    k = F.shape[1]
    d = k + 1 if fit_bias else k
    n = cols.shape[0]
    rows = tile.shape[0]
    if n < d and n <= rows and reg > 0.0 and (reg_bias > 0.0 or not fit_bias):
        _gather(cols, values, F, col_offset, row_offset, fit_bias, 0, n, tile, target)
        beta = _solve_dual(n, k, reg, reg_bias, fit_bias, A, tile, target, out)
        if np.isnan(beta):
            for f in range(k):
                out[f] = 0.0
        return beta
    for r in range(d):
        b[r] = 0.0
        for c in range(d):
            A[r, c] = 0.0
    for start in range(0, n, rows):
        m = min(rows, n - start)
        _gather(cols, values, F, col_offset, row_offset, fit_bias, start, m, tile, target)
        for q in range(m):
            t = target[q]
            for c in range(d):
                b[c] += tile[q, c] * t
        part = tile[:m]
        # A BLAS matrix product (numba calls scipy's); training holds BLAS to one thread.
        np.dot(part.T, part, gram)
        for r in range(d):
            for c in range(r + 1):
                A[r, c] += gram[r, c]
    for r in range(k):
        A[r, r] += reg
    if fit_bias:
        A[k, k] += reg_bias
    if not _cholesky_solve(A, b, d):
        for f in range(k):
            out[f] = 0.0
        return np.nan
    for f in range(k):
        out[f] = b[f]
    return b[k] if fit_bias else 0.0


# Reassociated sums: the row-solve tests compare with numpy's solution at 1e-10 relative.
@nb.njit(fastmath=_FASTMATH, cache=True, nogil=True)
def solve_row(cols, values, F, col_offset, row_offset, reg, reg_bias, fit_bias, A, b, out):
    """One regularized least-squares row: the ALS update and the fold-in of a new user.

    Minimizes ``sum_p (F[cols[p]] . w + beta + col_offset[cols[p]] + row_offset - values[p])^2
    + reg |w|^2 + reg_bias beta^2`` over ``w`` (length k) and, when ``fit_bias``, the scalar
    ``beta``. ``A`` (d x d) and ``b`` (d) are scratch, d = k + fit_bias. Writes ``out[:]`` and
    returns beta (0.0 without bias); returns NaN for beta (and zeros in ``out``) when the system
    is not positive definite (only possible with a zero penalty).

    A row with fewer ratings n than d is solved through the n x n system of its ratings (see
    `_solve_dual`), a longer one through the d x d normal equations, whose Gram matrix is
    summed from tiles of gathered factor rows; both by Cholesky factorization.
    """
    k = F.shape[1]
    d = k + 1 if fit_bias else k
    rows = max(min(cols.shape[0], _TILE_ROWS), d)
    return _solve_row_tiled(cols, values, F, col_offset, row_offset, reg, reg_bias, fit_bias,
                            A, b, np.empty((d, d)), np.empty((rows, d)), np.empty(rows), out)


@nb.njit(parallel=True, fastmath=_FASTMATH, cache=True, nogil=True)
def solve_rows(
    indptr, cols, values, chunks, F, col_offset, row_offset, reg, reg_bias, row_weight, fit_bias,
    out, out_bias,
):
    """`solve_row` for every row of a CSR, in parallel; each thread owns whole rows.

    Row ``r`` is regularized by ``reg * row_weight[r]`` (and ``reg_bias * row_weight[r]``).
    Each row's result depends on its own ratings only, so not on ``chunks`` or the threads.

    Returns the number of rows whose system was not positive definite (their factors are 0).
    """
    k = F.shape[1]
    d = k + 1 if fit_bias else k
    n_chunks = chunks.shape[0] - 1
    rows = max(_TILE_ROWS, d)
    failures = np.zeros(n_chunks, dtype=np.int64)
    for c in prange(n_chunks):
        A = np.empty((d, d))
        b = np.empty(d)
        gram = np.empty((d, d))
        tile = np.empty((rows, d))
        target = np.empty(rows)
        for r in range(chunks[c], chunks[c + 1]):
            start, end = indptr[r], indptr[r + 1]
            beta = _solve_row_tiled(
                cols[start:end], values[start:end], F, col_offset, row_offset[r],
                reg * row_weight[r], reg_bias * row_weight[r], fit_bias, A, b, gram, tile,
                target, out[r],
            )
            if np.isnan(beta):
                failures[c] += 1
                beta = 0.0
            if fit_bias:
                out_bias[r] = beta
    return failures.sum()


@nb.njit(cache=True, nogil=True)
def row_weight(count, power):
    """A row's penalty multiplier from its number of ratings: ``count ** power``, and 1 when
    ``power`` is 0 (no weighting, even for a row without ratings)."""
    if power == 0.0:
        return 1.0
    return float(count) ** power


@nb.njit(cache=True, nogil=True)
def row_weights(counts, power, out):
    """`row_weight` of every row: ``out[r]`` from ``counts[r]``."""
    for r in range(counts.shape[0]):
        out[r] = row_weight(counts[r], power)


@nb.njit(cache=True, nogil=True)
def _fold_known(index, values, F, col_offset, reg, reg_bias, weight_power, fit_bias, out):
    """`solve_row` on the ratings whose ``index`` is >= 0; returns ``(beta, status)``."""
    m = 0
    for p in range(index.shape[0]):
        if index[p] >= 0:
            m += 1
    cols = np.empty(m, dtype=np.int64)
    vals = np.empty(m)
    q = 0
    for p in range(index.shape[0]):
        if index[p] >= 0:
            cols[q] = index[p]
            vals[q] = values[p]
            q += 1
    weight = row_weight(m, weight_power)
    k = F.shape[1]
    d = k + 1 if fit_bias else k
    A = np.empty((d, d))
    b = np.empty(d)
    beta = solve_row(
        cols, vals, F, col_offset, 0.0, reg * weight, reg_bias * weight, fit_bias, A, b, out
    )
    if np.isnan(beta):
        for f in range(k):
            out[f] = 0.0
        return 0.0, 2
    return beta, 0


@nb.njit(cache=True, nogil=True)
def _has_repeat(values):
    if values.shape[0] < 2:
        return False
    ordered = np.sort(values)
    for p in range(1, ordered.shape[0]):
        if ordered[p] == ordered[p - 1]:
            return True
    return False


@nb.njit(cache=True, nogil=True)
def _all_finite(values):
    for p in range(values.shape[0]):
        if not np.isfinite(values[p]):
            return False
    return True


@nb.njit(cache=True, nogil=True)
def fold_in_row(index, values, F, col_offset, reg, reg_bias, weight_power, fit_bias, out):
    """A new row's factors from its ratings with ``F`` fixed: the training row solve, `solve_row`.

    ``index[p]`` is the column of ``values[p]``, -1 for an unknown column (ignored). The
    penalties are multiplied by (the number of known ratings) ** ``weight_power``, as in
    training. Writes ``out`` (length k) and returns ``(beta, status)``: status 0 on success, 1
    when a known column repeats, 2 when the system is not positive definite (``out`` and
    ``beta`` are zeros, as training leaves such a row), 3 when a value is not finite.
    """
    if not _all_finite(values):
        return 0.0, 3
    m = 0
    for p in range(index.shape[0]):
        if index[p] >= 0:
            m += 1
    known = np.empty(m, dtype=np.int64)
    q = 0
    for p in range(index.shape[0]):
        if index[p] >= 0:
            known[q] = index[p]
            q += 1
    if _has_repeat(known):
        return 0.0, 1
    return _fold_known(index, values, F, col_offset, reg, reg_bias, weight_power, fit_bias, out)


@nb.njit(cache=True, nogil=True)
def fold_in_ids(
    known_ids, query, values, F, col_offset, reg, reg_bias, weight_power, fit_bias, index, out
):
    """`fold_in_row` from integer external ids: looks ``query`` up in the sorted ``known_ids``
    (writing ``index``, -1 for unknown), then solves. Status 1 when any id repeats."""
    if not _all_finite(values):
        return 0.0, 3
    if _has_repeat(query):
        return 0.0, 1
    lookup_int(known_ids, query, index)
    return _fold_known(index, values, F, col_offset, reg, reg_bias, weight_power, fit_bias, out)
