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
    item_offset,
    item_indptr,
    item_users,
    item_values,
    item_chunks,
    user_indptr,
    user_items,
    user_values,
    user_chunks,
    reg,
    X_grad,
    Theta_grad,
):
    """Fused masked cost and gradients; writes ``X_grad`` and ``Theta_grad``, returns the cost.

    The residual of rating ``y`` of item ``i`` by user ``j`` is ``X[i] . Theta[j] + item_offset[i] - y``
    (``item_offset`` is the item mean under mean normalization, zeros otherwise).
    ``item_chunks`` / ``user_chunks`` are row boundaries of nonzero-balanced chunks.
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
            norm2 = 0.0
            for f in range(k):
                X_grad[i, f] = reg * X[i, f]
                norm2 += X[i, f] * X[i, f]
            total += 0.5 * reg * norm2
            offset = item_offset[i]
            for p in range(item_indptr[i], item_indptr[i + 1]):
                j = item_users[p]
                err = offset - item_values[p]
                for f in range(k):
                    err += X[i, f] * Theta[j, f]
                total += 0.5 * err * err
                for f in range(k):
                    X_grad[i, f] += err * Theta[j, f]
        item_partial[c] = total

    for c in prange(n_user_chunks):
        total = 0.0
        for j in range(user_chunks[c], user_chunks[c + 1]):
            norm2 = 0.0
            for f in range(k):
                Theta_grad[j, f] = reg * Theta[j, f]
                norm2 += Theta[j, f] * Theta[j, f]
            total += 0.5 * reg * norm2
            for p in range(user_indptr[j], user_indptr[j + 1]):
                i = user_items[p]
                err = item_offset[i] - user_values[p]
                for f in range(k):
                    err += X[i, f] * Theta[j, f]
                for f in range(k):
                    Theta_grad[j, f] += err * X[i, f]
        user_partial[c] = total

    cost = 0.0
    for c in range(n_item_chunks):
        cost += item_partial[c]
    for c in range(n_user_chunks):
        cost += user_partial[c]
    return cost
