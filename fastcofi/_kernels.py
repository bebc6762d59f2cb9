"""Numba kernels: arrays and scalars in, arrays or scalars out; no validation, no RNG, no objects.

The Python wrappers (:mod:`fastcofi.ratings`, :mod:`fastcofi.objective`) check shapes and dtypes;
a kernel trusts what it is given.

Parallel kernels are race-free by ownership: the item-gradient pass walks the by-item CSR and each
thread writes only the item rows it owns, the user-gradient pass does the same over the by-user
CSR. The residual of a rating is computed in both passes (k multiply-adds, from rows the pass reads
anyway), which costs less than sharing it through a scatter. Rows are grouped into chunks of about
equal nonzero counts, fixed by the data and not by the thread count, and partial sums are added
in chunk order, so results are bit-identical for any number of threads.
"""

import numba as nb
import numpy as np
from numba import prange

# Reassociation lets the k-long dot products vectorize; tests compare against the dense
# reference at a relative 1e-9, far above the rounding differences it causes.
_FASTMATH = {"reassoc", "contract"}


@nb.njit(cache=True, nogil=True)
def stable_order_by_key(keys, n_keys, order):
    """Return ``order`` stably re-sorted by ``keys[order]`` (a counting sort, O(n + n_keys)).

    Returns the new order and the CSR ``indptr`` of the key groups (int64, length n_keys + 1).
    """
    indptr = np.zeros(n_keys + 1, dtype=np.int64)
    for p in range(order.shape[0]):
        indptr[keys[order[p]] + 1] += 1
    for r in range(n_keys):
        indptr[r + 1] += indptr[r]
    fill = indptr[:-1].copy()
    out = np.empty_like(order)
    for p in range(order.shape[0]):
        q = order[p]
        key = keys[q]
        out[fill[key]] = q
        fill[key] += 1
    return out, indptr


@nb.njit(parallel=True, fastmath=_FASTMATH, cache=True, nogil=True)
def cost_and_grad(
    X,
    Theta,
    item_bias,
    user_bias,
    mu,
    item_indptr,
    item_users,
    item_values,
    item_chunks,
    user_indptr,
    user_items,
    user_values,
    user_chunks,
    reg,
    reg_bias,
    item_weight,
    user_weight,
    X_grad,
    Theta_grad,
    item_bias_grad,
    user_bias_grad,
):
    """Fused masked cost and gradients; writes the four gradient arrays, returns the cost.

    The residual of rating ``y`` of item ``i`` by user ``j`` is
    ``X[i] . Theta[j] + mu + item_bias[i] + user_bias[j] - y``; the cost is half the sum of squared
    residuals plus ``reg/2 (|X|^2 + |Theta|^2) + reg_bias/2 (|item_bias|^2 + |user_bias|^2)``,
    each row's penalty multiplied by its weight (``item_weight[i]``, ``user_weight[j]``: ones, or
    rating counts for count-weighted regularization).
    Under mean normalization ``item_bias`` holds the fixed item means and ``reg_bias`` is 0; the
    bias gradients are then simply not used. ``item_chunks`` / ``user_chunks`` are row boundaries
    of nonzero-balanced chunks.
    """
    k = X.shape[1]
    n_item_chunks = item_chunks.shape[0] - 1
    n_user_chunks = user_chunks.shape[0] - 1
    item_partial = np.zeros(n_item_chunks)
    user_partial = np.zeros(n_user_chunks)

    # Rows are indexed as A[r, f], never taken as views: a view inside the loop costs an atomic
    # reference-count update per rating, which threads then contend for.
    for c in prange(n_item_chunks):
        total = 0.0
        for i in range(item_chunks[c], item_chunks[c + 1]):
            row_reg = reg * item_weight[i]
            row_reg_bias = reg_bias * item_weight[i]
            norm2 = 0.0
            for f in range(k):
                X_grad[i, f] = row_reg * X[i, f]
                norm2 += X[i, f] * X[i, f]
            total += 0.5 * (row_reg * norm2 + row_reg_bias * item_bias[i] * item_bias[i])
            offset = mu + item_bias[i]
            bias_grad = row_reg_bias * item_bias[i]
            for p in range(item_indptr[i], item_indptr[i + 1]):
                j = item_users[p]
                err = offset + user_bias[j] - item_values[p]
                for f in range(k):
                    err += X[i, f] * Theta[j, f]
                total += 0.5 * err * err
                bias_grad += err
                for f in range(k):
                    X_grad[i, f] += err * Theta[j, f]
            item_bias_grad[i] = bias_grad
        item_partial[c] = total

    for c in prange(n_user_chunks):
        total = 0.0
        for j in range(user_chunks[c], user_chunks[c + 1]):
            row_reg = reg * user_weight[j]
            row_reg_bias = reg_bias * user_weight[j]
            norm2 = 0.0
            for f in range(k):
                Theta_grad[j, f] = row_reg * Theta[j, f]
                norm2 += Theta[j, f] * Theta[j, f]
            total += 0.5 * (row_reg * norm2 + row_reg_bias * user_bias[j] * user_bias[j])
            offset = mu + user_bias[j]
            bias_grad = row_reg_bias * user_bias[j]
            for p in range(user_indptr[j], user_indptr[j + 1]):
                i = user_items[p]
                err = offset + item_bias[i] - user_values[p]
                for f in range(k):
                    err += X[i, f] * Theta[j, f]
                bias_grad += err
                for f in range(k):
                    Theta_grad[j, f] += err * X[i, f]
            user_bias_grad[j] = bias_grad
        user_partial[c] = total

    cost = 0.0
    for c in range(n_item_chunks):
        cost += item_partial[c]
    for c in range(n_user_chunks):
        cost += user_partial[c]
    return cost


@nb.njit(cache=True, nogil=True)
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
    for r in range(d):
        for c in range(r + 1):
            acc = A[r, c]
            for m in range(c):
                acc -= A[r, m] * A[c, m]
            if r == c:
                if acc <= 0.0:
                    for q in range(k):
                        out[q] = 0.0
                    return np.nan
                A[r, r] = np.sqrt(acc)
            else:
                A[r, c] = acc / A[c, c]
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


@nb.njit(parallel=True, cache=True, nogil=True)
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
