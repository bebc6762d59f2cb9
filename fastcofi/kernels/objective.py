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

from typing import NamedTuple

import numba as nb
import numpy as np
from numba import prange

from ._jit import _FASTMATH, _LINE, muladd, prefetch


class Side(NamedTuple):
    """One side of the factorization (the items, or the users) as the kernels read it.

    ``factors`` (n, k) and ``bias`` (n,) float64; ``weight`` (n,) float64, each row's penalty
    multiplier; the side's ratings by row as CSR (``indptr`` (n + 1,), ``indices`` (nnz,) of the
    other side's rows, ``values`` (nnz,)); ``chunks``, row boundaries of nonzero-balanced chunks.
    """

    factors: np.ndarray
    bias: np.ndarray
    weight: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    chunks: np.ndarray


class Gradient(NamedTuple):
    """Where a side's gradients are written: ``factors`` (n, k) and ``bias`` (n,), float64."""

    factors: np.ndarray
    bias: np.ndarray


@nb.njit(fastmath=_FASTMATH, cache=True, nogil=True)
def _penalty_rows(own, grad, start, stop, reg, reg_bias):
    """Write the penalty's gradient into rows ``start..stop`` of ``grad``; returns its cost."""
    A, bias, weight = own.factors, own.bias, own.weight
    k = A.shape[1]
    total = 0.0
    for i in range(start, stop):
        row_reg = reg * weight[i]
        row_reg_bias = reg_bias * weight[i]
        norm2 = 0.0
        for f in range(k):
            grad.factors[i, f] = row_reg * A[i, f]
            norm2 += A[i, f] * A[i, f]
        total += 0.5 * (row_reg * norm2 + row_reg_bias * bias[i] * bias[i])
        grad.bias[i] = row_reg_bias * bias[i]
    return total


@nb.njit(fastmath=_FASTMATH, cache=True, nogil=True)
def _own_rows(own, other, grad, start, stop, mu, reg, reg_bias, residual_cost):
    """Gradients of rows ``start..stop`` of ``own``'s side from its own CSR (the other side only
    read); returns their penalty plus, when ``residual_cost``, half their squared residuals."""
    A, B = own.factors, other.factors
    k = A.shape[1]
    total = _penalty_rows(own, grad, start, stop, reg, reg_bias)
    # Rows are indexed as A[r, f], never taken as views: a view inside the loop costs an atomic
    # reference-count update per rating, which threads then contend for.
    for i in range(start, stop):
        offset = mu + own.bias[i]
        bias_grad = grad.bias[i]
        for p in range(own.indptr[i], own.indptr[i + 1]):
            j = own.indices[p]
            err = offset + other.bias[j] - own.values[p]
            for f in range(k):
                err += A[i, f] * B[j, f]
            if residual_cost:
                total += 0.5 * err * err
            bias_grad += err
            for f in range(k):
                grad.factors[i, f] += err * B[j, f]
        grad.bias[i] = bias_grad
    return total


# How many groups of four ratings the one-pass walk sums the walked row's gradient terms over in
# the reads' type before adding them to its float64 gradient: a float32 sum of 16 terms is
# within about 1e-6 of their size (a few 1e-7 typically), each term's float32 read within 6e-8.
_FLUSH_GROUPS = 4

# How many ratings ahead the one-pass walk asks for the rows it will read and update: far
# enough for the cache's latency, near enough that they are still there when used.
_AHEAD = 8


@nb.njit(cache=True, nogil=True)
def _fetch_ahead(columns, first, reads, buffer, g, lined_rows):
    """Ask the cache for every line of the rows of ``reads`` and of group ``g``'s ``buffer``
    that the four ratings from ``first`` will touch; ``lined_rows``: each row of ``reads``
    starts a cache line (its last value then lies in a line already asked for)."""
    k = reads.shape[1]
    line = max(1, _LINE // reads.itemsize)
    for q in range(first, first + 4):
        j = columns[q]
        for f in range(0, k, line):
            prefetch(reads, (j, f))
            prefetch(buffer, (g, j, f))
        if not lined_rows:
            prefetch(reads, (j, k - 1))
        prefetch(buffer, (g, j, k))


@nb.njit(parallel=True, fastmath=_FASTMATH, cache=True, nogil=True)
def cost_and_grad_buffered(walked, other, walked_grad, other_grad, groups, blocks, mu, reg,
                           reg_bias, reads):
    """Fused masked cost and gradients in one pass over one side's CSR; returns the cost.

    ``walked`` is the side whose CSR is walked, ``other`` the side read at random (its CSR and
    chunks are not used); either may be items or users, the objective is symmetric (see
    ``cost_and_grad_two_pass`` for its terms). ``groups`` are row boundaries of the walked side,
    one group per parallel task; each group adds into its own slice of a buffer of the other
    side's rows, the bias gradient in the last column. ``blocks`` are column boundaries (other
    rows, from 0 to their count): each group walks its rows once per block, so that the other
    rows and the buffer read at random stay within one block's range, which the cache can hold.
    A row's walk in a block stops at its first column past the block, and the last block takes
    whatever is left, so every rating counts once in any case; with columns sorted within each
    row (as every `Ratings` builds them) each other row's gradient is also summed in the same
    order for any ``blocks``, so it does not depend on them. The walked rows' gradients add
    their ratings in groups of four, and with float32 reads sixteen (`_FLUSH_GROUPS` groups),
    from where a block starts, so they (and the cost) do, by rounding.

    ``reads`` is ``other.factors`` as the walk reads them: that float64 array itself, or a
    float32 copy. With a copy the residuals' dot products (summed in float32), the walked
    row's copy, the buffer and the walked row's gradient terms, summed sixteen ratings at a time
    (`_FLUSH_GROUPS`), are float32 (the penalties, the residuals, their sums and the walked
    side's gradient stay float64): half the bytes read at random, at about 1e-7 of each term's
    size in rounding, and within about 1e-6 of a sixteen-rating sum's (a row's last one to
    three ratings add their terms in float64). A copy whose rows start cache lines
    (``train.objective._line_aligned_empty`` at k = 32) is read two lines a row, not three.
    """
    # Every field the parallel loops touch is bound to a local first: numba's parallel loops lose
    # writes made through a tuple's field inside them (numba 0.68).
    A, B = walked.factors, other.factors
    indptr, columns, values = walked.indptr, walked.indices, walked.values
    own_bias, other_bias = walked.bias, other.bias
    A_grad, own_bias_grad = walked_grad.factors, walked_grad.bias
    B_grad, other_bias_grad = other_grad.factors, other_grad.bias
    k = A.shape[1]
    n_groups = groups.shape[0] - 1
    n_other = B.shape[0]
    n_blocks = blocks.shape[0] - 1
    buffer = np.empty((n_groups, n_other, k + 1), dtype=reads.dtype)
    lined_rows = (reads.ctypes.data % _LINE == 0 and reads.strides[0] % _LINE == 0
                  and reads.strides[1] == reads.itemsize)
    partial = np.zeros(n_groups)
    # Where each row's walk resumes in the next block.
    resume = np.empty(A.shape[0], dtype=np.int64)

    for g in prange(n_groups):
        for j in range(n_other):
            for f in range(k + 1):
                buffer[g, j, f] = 0.0
        total = _penalty_rows(walked, walked_grad, groups[g], groups[g + 1], reg, reg_bias)
        for i in range(groups[g], groups[g + 1]):
            resume[i] = indptr[i]
        # The walked row and its gradient in arrays of the group's own: LLVM cannot tell the
        # gradient apart from the buffer, so summed in place each rating's update waited on the
        # previous one's store (an evaluation at 1e8 ratings took 2.4x as long at k = 10).
        row = np.empty(k, dtype=reads.dtype)
        row_grad = np.empty(k)
        row_grad_part = np.empty(k, dtype=reads.dtype)
        zero = reads.dtype.type(0.0)
        cast = reads.dtype.type
        for b in range(n_blocks):
            for i in range(groups[g], groups[g + 1]):
                start = resume[i]
                stop = indptr[i + 1]
                if b < n_blocks - 1:
                    block_end = stop
                    stop = start
                    while stop < block_end and columns[stop] < blocks[b + 1]:
                        stop += 1
                resume[i] = stop
                if start == stop:
                    continue
                for f in range(k):
                    row[f] = A[i, f]
                    row_grad[f] = A_grad[i, f]
                    row_grad_part[f] = 0.0
                offset = mu + own_bias[i]
                bias_grad = own_bias_grad[i]
                unflushed = 0
                # Four ratings at a time: their four dot products vectorize as one loop over the
                # factors, where a single one of k = 32 is mostly its horizontal sum, and the
                # walked row's gradient takes four ratings per load and store. With the rows
                # fetched ahead, an evaluation at 1e8 ratings (Netflix shape, k = 32, float32
                # reads) took 0.67-0.70x the time of a rating at a time (bench/README.md).
                p = start
                while p + 4 <= stop:
                    if p + _AHEAD + 4 <= stop:
                        _fetch_ahead(columns, p + _AHEAD, reads, buffer, g, lined_rows)
                    j0, j1, j2, j3 = columns[p], columns[p + 1], columns[p + 2], columns[p + 3]
                    s0, s1, s2, s3 = zero, zero, zero, zero
                    for f in range(k):
                        x = row[f]
                        s0 = muladd(x, reads[j0, f], s0)
                        s1 = muladd(x, reads[j1, f], s1)
                        s2 = muladd(x, reads[j2, f], s2)
                        s3 = muladd(x, reads[j3, f], s3)
                    e0 = offset + other_bias[j0] - values[p] + s0
                    e1 = offset + other_bias[j1] - values[p + 1] + s1
                    e2 = offset + other_bias[j2] - values[p + 2] + s2
                    e3 = offset + other_bias[j3] - values[p + 3] + s3
                    total += 0.5 * ((e0 * e0 + e1 * e1) + (e2 * e2 + e3 * e3))
                    bias_grad += (e0 + e1) + (e2 + e3)
                    t0, t1, t2, t3 = cast(e0), cast(e1), cast(e2), cast(e3)
                    # The walked row's gradient terms are summed in the reads' type over
                    # `_FLUSH_GROUPS` groups of four ratings, then added to the float64
                    # gradient: from float32 reads, widening each group's sum took a conversion
                    # per value and twice the vectors (an evaluation at 1e8 ratings took 1.1x
                    # as long, bench/README.md).
                    for f in range(k):
                        row_grad_part[f] += ((t0 * reads[j0, f] + t1 * reads[j1, f])
                                             + (t2 * reads[j2, f] + t3 * reads[j3, f]))
                    unflushed += 1
                    if unflushed == _FLUSH_GROUPS:
                        unflushed = 0
                        for f in range(k):
                            row_grad[f] += row_grad_part[f]
                            row_grad_part[f] = 0.0
                    # A loop per updated row: a single loop over the four was no faster.
                    for f in range(k):
                        buffer[g, j0, f] += t0 * row[f]
                    for f in range(k):
                        buffer[g, j1, f] += t1 * row[f]
                    for f in range(k):
                        buffer[g, j2, f] += t2 * row[f]
                    for f in range(k):
                        buffer[g, j3, f] += t3 * row[f]
                    buffer[g, j0, k] += t0
                    buffer[g, j1, k] += t1
                    buffer[g, j2, k] += t2
                    buffer[g, j3, k] += t3
                    p += 4
                while p < stop:
                    j = columns[p]
                    s = zero
                    for f in range(k):
                        s = muladd(row[f], reads[j, f], s)
                    err = offset + other_bias[j] - values[p] + s
                    total += 0.5 * err * err
                    bias_grad += err
                    step = cast(err)
                    for f in range(k):
                        row_grad[f] += err * reads[j, f]
                        buffer[g, j, f] += step * row[f]
                    buffer[g, j, k] += step
                    p += 1
                for f in range(k):
                    A_grad[i, f] = row_grad[f] + row_grad_part[f]
                own_bias_grad[i] = bias_grad
        partial[g] = total

    other_cost = np.empty(n_other)
    for j in prange(n_other):
        other_cost[j] = _penalty_rows(other, other_grad, j, j + 1, reg, reg_bias)
        for f in range(k):
            grad = B_grad[j, f]
            for g in range(n_groups):
                grad += buffer[g, j, f]
            B_grad[j, f] = grad
        bias_grad = other_bias_grad[j]
        for g in range(n_groups):
            bias_grad += buffer[g, j, k]
        other_bias_grad[j] = bias_grad

    cost = 0.0
    for g in range(n_groups):
        cost += partial[g]
    for j in range(n_other):
        cost += other_cost[j]
    return cost


@nb.njit(parallel=True, fastmath=_FASTMATH, cache=True, nogil=True)
def cost_and_grad_two_pass(items, users, item_grad, user_grad, mu, reg, reg_bias):
    """Fused masked cost and gradients; writes both sides' gradients, returns the cost.

    The residual of rating ``y`` of item ``i`` by user ``j`` is
    ``X[i] . Theta[j] + mu + item_bias[i] + user_bias[j] - y`` (``X``, ``Theta`` the sides'
    factors); the cost is half the sum of squared residuals plus ``reg/2 (|X|^2 + |Theta|^2) +
    reg_bias/2 (|item_bias|^2 + |user_bias|^2)``, each row's penalty multiplied by its side's
    ``weight`` (ones, or rating counts for count-weighted regularization). Under mean
    normalization the items' bias holds the fixed item means and ``reg_bias`` is 0; the bias
    gradients are then simply not used. Each residual is computed twice, once in an item-owned
    pass and once in a user-owned pass, and its square counted in the first.
    """
    n_item_chunks = items.chunks.shape[0] - 1
    n_user_chunks = users.chunks.shape[0] - 1
    item_partial = np.zeros(n_item_chunks)
    user_partial = np.zeros(n_user_chunks)
    for c in prange(n_item_chunks):
        item_partial[c] = _own_rows(items, users, item_grad, items.chunks[c],
                                    items.chunks[c + 1], mu, reg, reg_bias, True)
    for c in prange(n_user_chunks):
        user_partial[c] = _own_rows(users, items, user_grad, users.chunks[c],
                                    users.chunks[c + 1], mu, reg, reg_bias, False)
    cost = 0.0
    for c in range(n_item_chunks):
        cost += item_partial[c]
    for c in range(n_user_chunks):
        cost += user_partial[c]
    return cost
