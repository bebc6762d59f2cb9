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

from ._jit import _FASTMATH


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
