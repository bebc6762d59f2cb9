"""Numba kernels: arrays and scalars in, arrays or scalars out; no validation, no RNG, no objects.

The Python wrappers (:mod:`fastcofi.ratings`, :mod:`fastcofi.objective`, :mod:`fastcofi.io`)
check shapes and dtypes and turn status codes into errors; a kernel trusts what it is given.

The objective has two race-free parallel kernels. ``cost_and_grad_buffered`` walks the CSR of the
side with more rows once: each thread owns a group of those rows (balanced by nonzeros) and adds
the other side's gradient into a buffer of its own, and the buffers are summed row by row in group
order. Each residual is computed once and the randomly read rows belong to the smaller side; when
those rows and their buffer outgrow the cache, the walk is cut into column blocks that fit. Its
buffers cost groups x rows x (k + 1) floats, so when the smaller side is still too large,
``cost_and_grad_two_pass`` computes each residual twice instead, once in an item-owned pass and
once in a user-owned pass, with no buffer at all. Work is split by the data (groups of
a fixed count, or chunks of about equal nonzero counts), never by the number of running threads,
and partial sums are added in a fixed order, so results are bit-identical for any thread count.
"""

import numba as nb
import numpy as np
from numba import prange

# Reassociation lets the k-long dot products vectorize; tests compare against the dense
# reference at a relative 1e-9, far above the rounding differences it causes.
_FASTMATH = {"reassoc", "contract"}


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


@nb.njit(parallel=True, fastmath=_FASTMATH, cache=True, nogil=True)
def cost_and_grad_buffered(
    A,
    B,
    own_bias,
    other_bias,
    mu,
    indptr,
    other,
    values,
    groups,
    blocks,
    reg,
    reg_bias,
    own_weight,
    other_weight,
    A_grad,
    B_grad,
    own_bias_grad,
    other_bias_grad,
):
    """Fused masked cost and gradients in one pass over one side's CSR; returns the cost.

    ``A`` holds the factors of the side whose CSR (``indptr``, ``other``, ``values``) is walked,
    ``B`` those of the other side; either may be items or users, the objective is symmetric (see
    ``cost_and_grad_two_pass`` for its terms). ``groups`` are row boundaries of ``A``'s side, one
    group per parallel task; each group adds into its own slice of a buffer of ``B``'s rows, the
    bias gradient in the last column. ``blocks`` are column boundaries (``B``'s rows, from 0 to
    ``B.shape[0]``): each group walks its rows once per block, so that the rows of ``B`` and of
    the buffer read at random stay within one block's range, which the cache can hold. A row's
    walk in a block stops at its first column past the block, and the last block takes whatever
    is left, so every rating counts once in any case; with columns sorted within each row (as
    every `Ratings` builds them) each sum is also taken in the same order for any ``blocks``, so
    the gradients do not depend on them (the cost's rounding may).
    """
    k = A.shape[1]
    n_groups = groups.shape[0] - 1
    n_other = B.shape[0]
    n_blocks = blocks.shape[0] - 1
    buffer = np.empty((n_groups, n_other, k + 1))
    partial = np.zeros(n_groups)
    # Where each row's walk resumes in the next block.
    resume = np.empty(A.shape[0], dtype=np.int64)

    for g in prange(n_groups):
        for j in range(n_other):
            for f in range(k + 1):
                buffer[g, j, f] = 0.0
        total = 0.0
        for i in range(groups[g], groups[g + 1]):
            row_reg = reg * own_weight[i]
            row_reg_bias = reg_bias * own_weight[i]
            norm2 = 0.0
            for f in range(k):
                A_grad[i, f] = row_reg * A[i, f]
                norm2 += A[i, f] * A[i, f]
            total += 0.5 * (row_reg * norm2 + row_reg_bias * own_bias[i] * own_bias[i])
            own_bias_grad[i] = row_reg_bias * own_bias[i]
            resume[i] = indptr[i]
        for b in range(n_blocks):
            for i in range(groups[g], groups[g + 1]):
                start = resume[i]
                stop = indptr[i + 1]
                if b < n_blocks - 1:
                    block_end = stop
                    stop = start
                    while stop < block_end and other[stop] < blocks[b + 1]:
                        stop += 1
                resume[i] = stop
                offset = mu + own_bias[i]
                bias_grad = own_bias_grad[i]
                for p in range(start, stop):
                    j = other[p]
                    err = offset + other_bias[j] - values[p]
                    for f in range(k):
                        err += A[i, f] * B[j, f]
                    total += 0.5 * err * err
                    bias_grad += err
                    for f in range(k):
                        A_grad[i, f] += err * B[j, f]
                        buffer[g, j, f] += err * A[i, f]
                    buffer[g, j, k] += err
                own_bias_grad[i] = bias_grad
        partial[g] = total

    other_cost = np.empty(n_other)
    for j in prange(n_other):
        row_reg = reg * other_weight[j]
        row_reg_bias = reg_bias * other_weight[j]
        norm2 = 0.0
        for f in range(k):
            grad = row_reg * B[j, f]
            for g in range(n_groups):
                grad += buffer[g, j, f]
            B_grad[j, f] = grad
            norm2 += B[j, f] * B[j, f]
        bias_grad = row_reg_bias * other_bias[j]
        for g in range(n_groups):
            bias_grad += buffer[g, j, k]
        other_bias_grad[j] = bias_grad
        other_cost[j] = 0.5 * (row_reg * norm2 + row_reg_bias * other_bias[j] * other_bias[j])

    cost = 0.0
    for g in range(n_groups):
        cost += partial[g]
    for j in range(n_other):
        cost += other_cost[j]
    return cost


@nb.njit(parallel=True, fastmath=_FASTMATH, cache=True, nogil=True)
def cost_and_grad_two_pass(
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


@nb.njit(fastmath=_FASTMATH, cache=True, nogil=True)
def _cholesky_inverse(L, inv_diag, row, out):
    """``out`` = inverse of the symmetric positive definite matrix in ``L``; returns its log det.

    ``L`` (d x d) is overwritten by its Cholesky factor (`_cholesky_in_place`); ``inv_diag``
    and ``row`` (d) are scratch: the factor's diagonal reciprocals (multiplying by them keeps
    divisions out of the d^3 solves) and the row being solved. Returns NaN when the matrix is
    not positive definite.
    """
    d = L.shape[0]
    if not _cholesky_in_place(L, d):
        return np.nan
    logdet = 0.0
    for r in range(d):
        inv_diag[r] = 1.0 / L[r, r]
        logdet += 2.0 * np.log(L[r, r])
    # Solve L Y = I, then L^T X = Y, a whole row of the right-hand sides at a time: the inner
    # loops run along rows (independent, vectorizable) instead of down one dependent chain.
    # The row being built lives in ``row``, apart from ``out``, so no store aliases a load.
    for r in range(d):
        for c in range(d):
            row[c] = 0.0
        row[r] = 1.0
        for m in range(r):
            f = L[r, m]
            for c in range(d):
                row[c] -= f * out[m, c]
        for c in range(d):
            out[r, c] = row[c] * inv_diag[r]
    for r in range(d - 1, -1, -1):
        for c in range(d):
            row[c] = out[r, c]
        for m in range(r + 1, d):
            f = L[m, r]
            for c in range(d):
                row[c] -= f * out[m, c]
        for c in range(d):
            out[r, c] = row[c] * inv_diag[r]
    return logdet


@nb.njit(parallel=True, fastmath=_FASTMATH, cache=True, nogil=True)
def vb_update_rows(
    indptr, cols, values, chunks, mu, second, cross, first, bias_mean, bias_second, prior_precision,
    tau, mean, cov, row_sse, row_logdet,
):
    """Mean-field update of every row's Gaussian posterior over (factors, bias), in parallel.

    The model is ``values[p] = mu + u_r . (w_c, 1) + c_c + noise(precision tau)`` with ``u_r`` =
    (factors, bias) of row ``r`` (length d = k + 1) and ``(w_c, c_c)`` those of column ``c`` on the
    other side, whose posterior enters through its moments: ``first[c]`` = E[(w, 1)],
    ``second[c]`` = E[(w, 1)(w, 1)^T] flattened (d * d), ``cross[c]`` = E[(w, 1) c],
    ``bias_mean[c]`` = E[c], ``bias_second[c]`` = E[c^2]. The prior of ``u_r`` is
    N(0, diag(1 / prior_precision)).

    Writes ``mean[r]``, ``cov[r]`` (d x d), ``row_sse[r]`` = the expected squared error of the
    row's ratings under the updated posteriors and ``row_logdet[r]`` = log det ``cov[r]``. Returns
    the number of rows whose system was not positive definite (left unchanged).
    """
    d = mean.shape[1]
    n_chunks = chunks.shape[0] - 1
    failures = np.zeros(n_chunks, dtype=np.int64)
    for ch in prange(n_chunks):
        gram_flat = np.empty(d * d)
        gram = gram_flat.reshape((d, d))
        system = np.empty((d, d))
        inverse = np.empty((d, d))
        inv_diag = np.empty(d)
        row = np.empty(d)
        target_first = np.empty(d)
        sum_cross = np.empty(d)
        m = np.empty(d)
        for r in range(chunks[ch], chunks[ch + 1]):
            for a in range(d):
                target_first[a] = 0.0
                sum_cross[a] = 0.0
            for a in range(d * d):
                gram_flat[a] = 0.0
            target2 = 0.0
            target_bias = 0.0
            bias2 = 0.0
            for p in range(indptr[r], indptr[r + 1]):
                c = cols[p]
                y = values[p] - mu
                # One flat loop of d * d: a vector body even when k is small.
                for a in range(d * d):
                    gram_flat[a] += second[c, a]
                for a in range(d):
                    target_first[a] += y * first[c, a]
                    sum_cross[a] += cross[c, a]
                target2 += y * y
                target_bias += y * bias_mean[c]
                bias2 += bias_second[c]
            for a in range(d):
                for b in range(d):
                    system[a, b] = tau * gram[a, b]
                system[a, a] += prior_precision[a]
            logdet = _cholesky_inverse(system, inv_diag, row, inverse)
            if np.isnan(logdet):
                failures[ch] += 1
                continue
            for a in range(d):
                acc = 0.0
                for b in range(d):
                    acc += inverse[a, b] * (target_first[b] - sum_cross[b])
                m[a] = tau * acc
            # E[(y - prediction)^2] summed over the row, expanded in the accumulated moments.
            sse = target2 - 2.0 * target_bias + bias2
            for a in range(d):
                quad = 0.0
                trace = 0.0
                for b in range(d):
                    quad += gram[a, b] * m[b]
                    trace += inverse[a, b] * gram[b, a]
                sse += m[a] * quad + trace - 2.0 * m[a] * (target_first[a] - sum_cross[a])
                mean[r, a] = m[a]
                for b in range(d):
                    cov[r, a, b] = inverse[a, b]
            row_sse[r] = sse
            row_logdet[r] = -logdet
    return failures.sum()


# -- serving -------------------------------------------------------------------------------------
# Top-n selection keeps a min-heap of the n best (score, index) pairs seen so far, "best" meaning
# the higher score and, between equal scores, the smaller index; the root is the worst kept pair.
# One pass over the scores, O(n_items log n), no full sort. Excluded items carry a score of -inf
# (NaN is excluded too) and are never selected.


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


@nb.njit(cache=True, nogil=True)
def _finish_row(scores, item_off, base, seen_indptr, seen_items, u, exclude_seen, mask, use_mask):
    """Turn dot products into scores in place: add the offsets, set excluded items to -inf."""
    for i in range(scores.shape[0]):
        scores[i] = scores[i] + item_off[i] + base
    if exclude_seen:
        for p in range(seen_indptr[u], seen_indptr[u + 1]):
            scores[seen_items[p]] = -np.inf
    if use_mask:
        for i in range(scores.shape[0]):
            if not mask[i]:
                scores[i] = -np.inf


@nb.njit(parallel=True, cache=True, nogil=True)
def top_n_batch(
    scores, users, item_off, mu, user_off, seen_indptr, seen_items, exclude_seen, mask, use_mask,
    n, out_index, out_scores,
):
    """Top-``n`` items of each row of ``scores`` (user ``users[r]``), in parallel over rows.

    The score of item ``i`` for row ``r`` is ``scores[r, i] + item_off[i] + mu + user_off[u]``;
    the items of the user's row of the seen CSR are left out when ``exclude_seen``, and so are
    the items where ``mask`` is False when ``use_mask``.

    Row ``r`` of ``out_index`` / ``out_scores`` receives the top-n, padded with -1 and -inf; each
    thread writes only the rows it owns.
    """
    for r in prange(scores.shape[0]):
        u = users[r]
        _finish_row(
            scores[r], item_off, mu + user_off[u], seen_indptr, seen_items, u, exclude_seen, mask,
            use_mask,
        )
        count = select_top_n(scores[r], n, out_index[r], out_scores[r])
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


# -- the built-in text parser --------------------------------------------------------------------
# The builtin engine of :func:`fastcofi.io.read_ratings` parses delimited bytes here; the reader
# turns a status other than PARSE_OK into its error message.
(PARSE_OK, PARSE_TOO_FEW, PARSE_TOO_MANY, PARSE_EMPTY, PARSE_BAD_INT, PARSE_BAD_FLOAT,
 PARSE_NONFINITE) = range(7)
# Exactly representable powers of ten: mantissa * or / these is correctly rounded (Clinger).
POW10 = np.array([10.0**k for k in range(23)])


@nb.njit(cache=True, nogil=True)
def _is_sep(buf, pos, n, sep0, sep_len):
    if buf[pos] != sep0:
        return False
    return sep_len == 1 or (pos + 1 < n and buf[pos + 1] == sep0)


@nb.njit(cache=True, nogil=True)
def _trim(buf, start, end):
    while start < end and (buf[start] == 32 or buf[start] == 34):  # spaces, a quote
        start += 1
    while end > start and (buf[end - 1] == 32 or buf[end - 1] == 34):
        end -= 1
    return start, end


@nb.njit(cache=True, nogil=True)
def _parse_int(buf, start, end):
    """(ok, value): an optionally signed decimal integer of at most 18 digits."""
    start, end = _trim(buf, start, end)
    neg = False
    if start < end and (buf[start] == 45 or buf[start] == 43):
        neg = buf[start] == 45
        start += 1
    if start >= end or end - start > 18:
        return False, 0
    value = 0
    for p in range(start, end):
        d = np.int64(buf[p]) - 48  # int64: uint8 arithmetic would wrap without the JIT
        if d < 0 or d > 9:
            return False, 0
        value = value * 10 + d
    return True, -value if neg else value


@nb.njit(cache=True, nogil=True)
def _lower(c):
    return c + 32 if 65 <= c <= 90 else c


@nb.njit(cache=True, nogil=True)
def _word(buf, start, end, word):
    if end - start != len(word):
        return False
    for k in range(len(word)):
        if _lower(buf[start + k]) != word[k]:
            return False
    return True


@nb.njit(cache=True, nogil=True)
def _parse_float(buf, start, end, pow10, nan_w, inf_w, infinity_w):
    """(ok, value): decimal with optional fraction and exponent; nan/inf words too."""
    start, end = _trim(buf, start, end)
    neg = False
    if start < end and (buf[start] == 45 or buf[start] == 43):
        neg = buf[start] == 45
        start += 1
    if start >= end:
        return False, 0.0
    if _word(buf, start, end, nan_w):
        return True, np.nan
    if _word(buf, start, end, inf_w) or _word(buf, start, end, infinity_w):
        return True, -np.inf if neg else np.inf
    mant = 0
    exp10 = 0
    digits = 0
    p = start
    while p < end and 48 <= buf[p] <= 57:
        if mant < 100000000000000000:
            mant = mant * 10 + (np.int64(buf[p]) - 48)
        else:
            exp10 += 1
        digits += 1
        p += 1
    if p < end and buf[p] == 46:
        p += 1
        while p < end and 48 <= buf[p] <= 57:
            if mant < 100000000000000000:
                mant = mant * 10 + (np.int64(buf[p]) - 48)
                exp10 -= 1
            digits += 1
            p += 1
    if digits == 0:
        return False, 0.0
    if p < end and (buf[p] == 101 or buf[p] == 69):
        p += 1
        eneg = False
        if p < end and (buf[p] == 45 or buf[p] == 43):
            eneg = buf[p] == 45
            p += 1
        if p >= end:
            return False, 0.0
        e = 0
        while p < end and 48 <= buf[p] <= 57:
            if e < 100000:
                e = e * 10 + (np.int64(buf[p]) - 48)
            p += 1
        exp10 += -e if eneg else e
    if p != end:
        return False, 0.0
    value = float(mant)
    if mant < 9007199254740992 and -22 <= exp10 <= 22:
        value = value * pow10[exp10] if exp10 >= 0 else value / pow10[-exp10]
    else:
        # Outside the exact range: within a few ulps, far below any rating's precision.
        value = value * 10.0**exp10
    return True, -value if neg else value


@nb.njit(cache=True, nogil=True)
def parse_block(buf, sep0, sep_len, ncols, slot_of_field, string_slot, out_int, out_end,
                out_float, pow10, nan_w, inf_w, infinity_w):
    """Parse whole lines of ``buf`` into columns.

    ``slot_of_field[f]`` is 0 user, 1 item, 2 rating, 3 timestamp or -1 (ignored). Integer slots
    fill ``out_int[slot]``; a slot with ``string_slot[slot]`` stores its field's start and end
    offsets in ``out_int`` / ``out_end`` instead. Blank lines are skipped.

    Returns (n_rows, status, line index in block, field index, byte offset of the problem).
    """
    n = buf.shape[0]
    pos = 0
    row = 0
    line = 0
    while pos < n:
        if buf[pos] == 10:
            pos += 1
            line += 1
            continue
        if buf[pos] == 13 and (pos + 1 == n or buf[pos + 1] == 10):
            pos += 2
            line += 1
            continue
        line_start = pos
        field = 0
        while True:
            start = pos
            while pos < n and buf[pos] != 10 and not _is_sep(buf, pos, n, sep0, sep_len):
                pos += 1
            end = pos
            if (pos == n or buf[pos] == 10) and end > start and buf[end - 1] == 13:
                end -= 1
            if field >= ncols:
                return row, PARSE_TOO_MANY, line, field, start
            slot = slot_of_field[field]
            if slot >= 0:
                s, e = _trim(buf, start, end)
                if s == e:
                    return row, PARSE_EMPTY, line, field, start
                if slot == 2:
                    ok, v = _parse_float(buf, start, end, pow10, nan_w, inf_w, infinity_w)
                    if not ok:
                        return row, PARSE_BAD_FLOAT, line, field, start
                    if not np.isfinite(v):
                        return row, PARSE_NONFINITE, line, field, start
                    out_float[row] = v
                elif string_slot[slot]:
                    out_int[slot, row] = s
                    out_end[slot, row] = e
                else:
                    ok, iv = _parse_int(buf, start, end)
                    if not ok:
                        return row, PARSE_BAD_INT, line, field, start
                    out_int[slot, row] = iv
            field += 1
            if pos < n and buf[pos] != 10:
                pos += sep_len
                continue
            break
        if field < ncols:
            return row, PARSE_TOO_FEW, line, field, line_start
        row += 1
        line += 1
        pos += 1
    return row, PARSE_OK, line, 0, n


# How the lines read are ordered, so that the reader can skip sorting what already is sorted.
UNORDERED, BY_USER, BY_USER_THEN_ITEM = range(3)


@nb.njit(cache=True, nogil=True)
def user_order(users, items):
    """How lines are ordered: `BY_USER_THEN_ITEM` when (user, item) pairs strictly increase
    (hence no repeat), `BY_USER` when only the users never decrease, else `UNORDERED`."""
    order = BY_USER_THEN_ITEM
    for p in range(1, users.shape[0]):
        if users[p] < users[p - 1]:
            return UNORDERED
        if users[p] == users[p - 1] and items[p] <= items[p - 1]:
            order = BY_USER
    return order
