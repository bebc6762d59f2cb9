"""The regularized least-squares solve of one row (ALS sweeps, fold-in of a new user)."""

from typing import NamedTuple

import numba as nb
import numpy as np
from numba import prange

from ._jit import _FASTMATH
from .sparse import lookup_int

# A pivot at most this fraction of its diagonal entry counts as zero: rounding leaves about
# 1e-16 of it in an exactly singular system, while a penalty of 1e-10 of a row's Gram diagonal
# still passes.
_PIVOT_FLOOR = 1e-13


@nb.njit(fastmath=_FASTMATH, cache=True, nogil=True)
def _cholesky_in_place(A, d):
    """Cholesky factor ``L`` (``A = L L^T``) written over the lower triangle of the symmetric
    leading d x d block of ``A`` (scratch may be larger); the upper triangle is not read.
    Returns False when that block is not positive definite (see `_PIVOT_FLOOR`)."""
    for r in range(d):
        for c in range(r + 1):
            acc = A[r, c]
            for m in range(c):
                acc -= A[r, m] * A[c, m]
            if r == c:
                # A[r, r] is still the system's own diagonal here. A rank-deficient system (a
                # row with fewer ratings than unknowns and no penalty) leaves a pivot of
                # rounding size, which must fail, not pass as a huge solution.
                if acc <= _PIVOT_FLOOR * A[r, r]:
                    return False
                A[r, r] = np.sqrt(acc)
            else:
                A[r, c] = acc / A[c, c]
    return True


# A row's ratings are gathered this many at a time into a contiguous tile of their factor rows,
# whose Gram matrix is one small matrix product: a rank-256 update instead of a scalar rank-1
# update per rating. The bias's column of ones stays out of the tile (its Gram entries are column
# sums, added in float64): sgemm on k = 32 columns took 4.67 us per 256-row tile against 5.84 us
# on 33, a 1e8-rating sweep about 3 % less.
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


class Other(NamedTuple):
    """The side held fixed while a row is solved: ``factors`` (n_other, k), float64, or a float32
    copy for a training sweep's reads, and ``offset`` (n_other,), what each of its rows adds to
    a prediction besides the factors (its bias plus the global mean, or its fixed mean)."""

    factors: np.ndarray
    offset: np.ndarray


class Penalty(NamedTuple):
    """A row's penalties, ``reg`` on the factors and ``reg_bias`` on its bias, before the row's
    weight; ``fit_bias``: the row has a bias to solve for."""

    reg: float
    reg_bias: float
    fit_bias: bool


class Solved(NamedTuple):
    """Where `solve_rows` writes: ``factors`` (n, k) and ``bias`` (n,), float64."""

    factors: np.ndarray
    bias: np.ndarray


@nb.njit(fastmath=_FASTMATH, cache=True, nogil=True)
def _gather(cols, values, F, col_offset, row_offset, start, m, tile, target):
    """Rows ``start:start + m`` of the row's ratings into ``tile`` (their factor rows, of ``F``'s
    type) and ``target`` (what the factors must explain)."""
    k = F.shape[1]
    for q in range(m):
        col = cols[start + q]
        for f in range(k):
            tile[q, f] = F[col, f]
        target[q] = values[start + q] - col_offset[col] - row_offset


@nb.njit(fastmath=_FASTMATH, cache=True, nogil=True)
def _solve_dual(n, k, reg, reg_bias, fit_bias, S, tile, target, out):
    """The row's solution through the n x n system of its ratings, for n < d.

    With ``T`` the gathered tile and a column of ones for the bias (n x d) and ``P`` the
    diagonal penalty, ``(T'T + P) w = T't`` has the solution ``w = P^-1 T' z`` with
    ``(T P^-1 T' + I) z = t`` (push-through identity):
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
                acc += np.float64(tile[p, f]) * tile[q, f]
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
    """`solve_row` with all its scratch given: ``A`` and ``b`` (d x d, d; float64), ``gram``
    (k x k) and ``tile`` (at least d rows, k columns), both of ``F``'s type, and ``target``
    (float64, as many entries as ``tile`` has rows)."""
    k = F.shape[1]
    d = k + 1 if fit_bias else k
    n = cols.shape[0]
    rows = tile.shape[0]
    if reg == 0.0 and (n < k or (fit_bias and reg_bias == 0.0 and n < d)):
        # Fewer ratings than unpenalized unknowns: singular by count. Its last pivot is rounding
        # only, but rounding amplified by small earlier pivots can pass any fixed floor
        # (5.7e-13 of its diagonal for 3 ratings and k = 4 with random factors).
        for f in range(k):
            out[f] = 0.0
        return np.nan
    if n < d and n <= rows and reg > 0.0 and (reg_bias > 0.0 or not fit_bias):
        _gather(cols, values, F, col_offset, row_offset, 0, n, tile, target)
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
        _gather(cols, values, F, col_offset, row_offset, start, m, tile, target)
        for q in range(m):
            t = target[q]
            for c in range(k):
                b[c] += tile[q, c] * t
            if fit_bias:
                b[k] += t
                for c in range(k):
                    A[k, c] += tile[q, c]
        if fit_bias:
            A[k, k] += m
        part = tile[:m]
        # A BLAS matrix product (numba calls scipy's; sgemm on a float32 tile, twice dgemm's
        # rate); training holds BLAS to one thread. Sums across tiles are float64.
        np.dot(part.T, part, gram)
        for r in range(k):
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
def solve_row(cols, values, other, row_offset, penalty, out):
    """One regularized least-squares row: the ALS update and the fold-in of a new user.

    Minimizes ``sum_p (F[c_p] . w + beta + offset[c_p] + row_offset - values[p])^2
    + reg |w|^2 + reg_bias beta^2`` over ``w`` (length k) and, when ``penalty.fit_bias``, the
    scalar ``beta``, where ``c_p = cols[p]`` and ``F``, ``offset`` are ``other``'s (`Other`).
    Writes ``out[:]`` and returns beta (0.0 without bias); returns NaN for beta (and zeros in
    ``out``) when the system is not positive definite (only possible with a zero penalty).

    A row with fewer ratings n than d = k + fit_bias is solved through the n x n system of its
    ratings (see `_solve_dual`), a longer one through the d x d normal equations, whose Gram
    matrix is summed from tiles of gathered factor rows; both by Cholesky factorization in
    float64. With float32 factors the tile products are rounded to float32 (about 1e-6
    relative; training sweeps read such a copy), with float64 ones the solve is exact to
    rounding (fold-in).
    """
    F = other.factors
    k = F.shape[1]
    fit_bias = penalty.fit_bias
    d = k + 1 if fit_bias else k
    rows = max(min(cols.shape[0], _TILE_ROWS), d)
    return _solve_row_tiled(
        cols, values, F, other.offset, row_offset, penalty.reg, penalty.reg_bias, fit_bias,
        np.empty((d, d)), np.empty(d), np.empty((k, k), dtype=F.dtype),
        np.empty((rows, k), dtype=F.dtype), np.empty(rows), out,
    )


@nb.njit(parallel=True, fastmath=_FASTMATH, cache=True, nogil=True)
def solve_rows(rows, other, penalty, row_offset, row_weight, out):
    """`solve_row` for every row of a side, in parallel; each thread owns whole rows.

    ``rows`` (`Rows`) holds the side's ratings, ``other`` (`Other`) the fixed side, row ``r``
    is offset by ``row_offset[r]`` and regularized by ``penalty`` (`Penalty`) times
    ``row_weight[r]``; its solution goes to row ``r`` of ``out`` (`Solved`; the bias only when
    ``penalty.fit_bias``). Each row's result depends on its own ratings only, so not on the
    chunks or the threads.

    Returns the number of rows whose system was not positive definite (their factors are 0).
    """
    # Bound to locals before the parallel loop: numba 0.68's parallel loops lose writes made
    # through a tuple's field inside them.
    indptr, cols, values, chunks = rows.indptr, rows.indices, rows.values, rows.chunks
    F, col_offset = other.factors, other.offset
    reg, reg_bias, fit_bias = penalty.reg, penalty.reg_bias, penalty.fit_bias
    out_factors, out_bias = out.factors, out.bias
    k = F.shape[1]
    d = k + 1 if fit_bias else k
    n_chunks = chunks.shape[0] - 1
    tile_rows = max(_TILE_ROWS, d)
    failures = np.zeros(n_chunks, dtype=np.int64)
    for c in prange(n_chunks):
        A = np.empty((d, d))
        b = np.empty(d)
        gram = np.empty((k, k), dtype=F.dtype)
        tile = np.empty((tile_rows, k), dtype=F.dtype)
        target = np.empty(tile_rows)
        for r in range(chunks[c], chunks[c + 1]):
            start, end = indptr[r], indptr[r + 1]
            beta = _solve_row_tiled(
                cols[start:end], values[start:end], F, col_offset, row_offset[r],
                reg * row_weight[r], reg_bias * row_weight[r], fit_bias, A, b, gram, tile,
                target, out_factors[r],
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
def _fold_known(index, values, other, penalty, weight_power, out):
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
    weighted = Penalty(penalty.reg * weight, penalty.reg_bias * weight, penalty.fit_bias)
    beta = solve_row(cols, vals, other, 0.0, weighted, out)
    if np.isnan(beta):
        for f in range(out.shape[0]):
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
def fold_in_row(index, values, other, penalty, weight_power, out):
    """A new row's factors from its ratings with ``other`` (`Other`) fixed: the training row
    solve, `solve_row`.

    ``index[p]`` is the row of ``other`` that ``values[p]`` rates, -1 for an unknown one
    (ignored). ``penalty`` (`Penalty`) is multiplied by (the number of known ratings) **
    ``weight_power``, as in training. Writes ``out`` (length k) and returns ``(beta, status)``: status 0 on success, 1
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
    return _fold_known(index, values, other, penalty, weight_power, out)


@nb.njit(cache=True, nogil=True)
def fold_in_ids(known_ids, query, values, other, penalty, weight_power, index, out):
    """`fold_in_row` from integer external ids: looks ``query`` up in the sorted ``known_ids``
    (writing ``index``, -1 for unknown), then solves. Status 1 when any id repeats."""
    if not _all_finite(values):
        return 0.0, 3
    if _has_repeat(query):
        return 0.0, 1
    lookup_int(known_ids, query, index)
    return _fold_known(index, values, other, penalty, weight_power, out)
