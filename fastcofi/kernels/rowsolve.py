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


# Reassociated sums: the row-solve tests compare with numpy's solution at 1e-10 relative.
@nb.njit(fastmath=_FASTMATH, cache=True, nogil=True)
def solve_row(cols, values, F, col_offset, row_offset, reg, reg_bias, fit_bias, A, b, out):
    """One regularized least-squares row: the ALS update and the fold-in of a new user.

    Minimizes ``sum_p (F[cols[p]] . w + beta + col_offset[cols[p]] + row_offset - values[p])^2
    + reg |w|^2 + reg_bias beta^2`` over ``w`` (length k) and, when ``fit_bias``, the scalar
    ``beta``. ``A`` (d x d) and ``b`` (d) are scratch, d = k + fit_bias. Writes ``out[:]`` and
    returns beta (0.0 without bias) by a Cholesky factorization of the normal equations; returns
    NaN for beta when the system is not positive definite (only possible with reg == 0).
    """
    k = F.shape[1]
    d = k + 1 if fit_bias else k
    for r in range(d):
        b[r] = 0.0
        for c in range(d):
            A[r, c] = 0.0
    for r in range(k):
        A[r, r] = reg
    if fit_bias:
        A[k, k] = reg_bias
    for p in range(cols.shape[0]):
        col = cols[p]
        target = values[p] - col_offset[col] - row_offset
        for r in range(k):
            fr = F[col, r]
            b[r] += fr * target
            for c in range(r + 1):
                A[r, c] += fr * F[col, c]
        if fit_bias:
            b[k] += target
            for c in range(k):
                A[k, c] += F[col, c]
            A[k, k] += 1.0
    # Cholesky A = L L^T in the lower triangle, then two triangular solves into b.
    if not _cholesky_in_place(A, d):
        for q in range(k):
            out[q] = 0.0
        return np.nan
    for r in range(d):
        acc = b[r]
        for m in range(r):
            acc -= A[r, m] * b[m]
        b[r] = acc / A[r, r]
    for r in range(d - 1, -1, -1):
        acc = b[r]
        for m in range(r + 1, d):
            acc -= A[m, r] * b[m]
        b[r] = acc / A[r, r]
    for q in range(k):
        out[q] = b[q]
    return b[k] if fit_bias else 0.0


@nb.njit(parallel=True, fastmath=_FASTMATH, cache=True, nogil=True)
def solve_rows(
    indptr, cols, values, chunks, F, col_offset, row_offset, reg, reg_bias, row_weight, fit_bias,
    out, out_bias,
):
    """`solve_row` for every row of a CSR, in parallel; each thread owns whole rows.

    Row ``r`` is regularized by ``reg * row_weight[r]`` (and ``reg_bias * row_weight[r]``).

    Returns the number of rows whose system was not positive definite (their factors are 0).
    """
    k = F.shape[1]
    d = k + 1 if fit_bias else k
    n_chunks = chunks.shape[0] - 1
    failures = np.zeros(n_chunks, dtype=np.int64)
    for c in prange(n_chunks):
        A = np.empty((d, d))
        b = np.empty(d)
        for r in range(chunks[c], chunks[c + 1]):
            start, end = indptr[r], indptr[r + 1]
            beta = solve_row(
                cols[start:end], values[start:end], F, col_offset, row_offset[r],
                reg * row_weight[r], reg_bias * row_weight[r], fit_bias, A, b, out[r],
            )
            if np.isnan(beta):
                failures[c] += 1
                beta = 0.0
            if fit_bias:
                out_bias[r] = beta
    return failures.sum()


# -- variational Bayes ---------------------------------------------------------------------------
# Each row's posterior is Gaussian over (factors, bias); the other side enters only through its
# per-row moments, precomputed once per half-sweep, so a rating costs one (k+1) x (k+1) add.


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
    # (m ** 0.0 is 1: no weighting, even for a row with no known rating)
    weight = float(m) ** weight_power
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
