"""Numba kernels of stochastic gradient descent: one epoch over the users' CSR in blocks.

The ratings are cut into B x B blocks: B contiguous ranges of users (rows) by B contiguous ranges
of items (columns). Blocks ``(b, (b + d) mod B)`` for ``b = 0 .. B - 1`` share no user and no
item, so one diagonal ``d`` runs its B blocks in parallel without a race (Gemulla et al., KDD
2011; LIBMF's FPSG, Chin et al., 2015), and an epoch is B diagonals. The order of updates is fixed
(a block's users in order, each user's ratings of the block's items in column order), so an
epoch gives the same bits on any number of threads.

Walking a block user by user keeps that user's factors in cache and reads only the block's
items, a B-th of the item table, where a shuffled order would read both at random.
"""

from typing import NamedTuple

import numba as nb
import numpy as np
from numba import prange

from ._jit import _FASTMATH

__all__ = ["Blocks", "Side", "rows_sorted", "sgd_epoch"]


class Blocks(NamedTuple):
    """The B x B blocks of a users' CSR: ``row_bounds`` and ``col_bounds`` (B + 1,) int64, the
    users of row block ``b`` being ``row_bounds[b] .. row_bounds[b + 1]`` and the items of
    column block ``c`` ``col_bounds[c] .. col_bounds[c + 1]``."""

    row_bounds: np.ndarray
    col_bounds: np.ndarray


class Side(NamedTuple):
    """One side's parameters and step state, float32 (n = its rows, k factors): ``factors``
    (n, k), ``bias`` (n,), ``penalty`` and ``bias_penalty`` (n,), the factors' and the bias's
    penalty per rating of the row, and ``steps`` (n,), the row's sum of mean squared gradients
    (its AdaGrad step is ``eta / sqrt(steps)``)."""

    factors: np.ndarray
    bias: np.ndarray
    penalty: np.ndarray
    bias_penalty: np.ndarray
    steps: np.ndarray


@nb.njit(parallel=True, cache=True, nogil=True)
def rows_sorted(indptr, indices):
    """Whether every row of a CSR lists its columns in ascending order (the epoch's contract)."""
    n_rows = indptr.shape[0] - 1
    unsorted = np.zeros(n_rows, dtype=np.bool_)
    for r in prange(n_rows):
        for p in range(indptr[r] + 1, indptr[r + 1]):
            if indices[p] < indices[p - 1]:
                unsorted[r] = True
    return not unsorted.any()


@nb.njit(fastmath=True, cache=True, nogil=True)
def _block(rows, cursor, users_range, col_stop, wraps, mu, eta, fit_bias, user, item):
    """The updates of one block, in order: users ``users_range[0] .. users_range[1]``, each from
    its ``cursor`` (its first rating of this block's items) up to the first item at or past
    ``col_stop``. Leaves each cursor at the user's first rating of the next column block (its
    row's start when the block ``wraps``, being the last). ``rows``: the CSR's (indptr,
    indices, values); ``user``/``item``: a `Side`'s five arrays. Returns the sum of the block's
    squared errors, each taken before its update."""
    indptr, indices, values = rows
    P, user_bias, user_penalty, user_bias_penalty, user_steps = user
    Q, item_bias, item_penalty, item_bias_penalty, item_steps = item
    k = P.shape[1]
    sse = 0.0
    for u in range(users_range[0], users_range[1]):
        p, end = cursor[u], indptr[u + 1]
        while p < end and indices[p] < col_stop:
            i = indices[p]
            pred = np.float32(0.0)
            for f in range(k):
                pred += P[u, f] * Q[i, f]
            error = np.float32(values[p] - mu) - user_bias[u] - item_bias[i] - pred
            sse += np.float64(error) * error
            step_u = eta / np.sqrt(user_steps[u])
            step_i = eta / np.sqrt(item_steps[i])
            reg_u, reg_i = user_penalty[u], item_penalty[i]
            squares_u = np.float32(0.0)
            squares_i = np.float32(0.0)
            for f in range(k):
                pu, qi = P[u, f], Q[i, f]
                grad_u = error * qi - reg_u * pu
                grad_i = error * pu - reg_i * qi
                P[u, f] = pu + step_u * grad_u
                Q[i, f] = qi + step_i * grad_i
                squares_u += grad_u * grad_u
                squares_i += grad_i * grad_i
            if fit_bias:
                user_bias[u] += step_u * (error - user_bias_penalty[u] * user_bias[u])
                item_bias[i] += step_i * (error - item_bias_penalty[i] * item_bias[i])
            user_steps[u] += squares_u / k
            item_steps[i] += squares_i / k
            p += 1
        cursor[u] = indptr[u] if wraps else p
    return sse


@nb.njit(parallel=True, fastmath=_FASTMATH, cache=True, nogil=True)
def sgd_epoch(rows, blocks, users, items, mu, eta, fit_bias, shift):
    """One epoch of SGD on ``0.5 sum (r - mu - b_u - b_i - p_u . q_i)^2`` plus, per rating, the
    rows' penalties ``0.5 (penalty_u |p_u|^2 + penalty_i |q_i|^2 + bias_penalty_u b_u^2 +
    bias_penalty_i b_i^2)``, each row with its AdaGrad step.

    ``rows`` (`fastcofi.kernels.sparse.Rows`) is the users' CSR, each row's columns ascending
    (`rows_sorted`; its ``chunks`` unused), ``blocks`` (`Blocks`) its blocks, ``users``/``items``
    (`Side`) updated in place; ``mu`` the fixed global offset, ``eta`` the base step (float32),
    ``fit_bias`` whether the biases learn (else they stay fixed offsets), ``shift`` which
    diagonal comes first (the epoch number: blocks meet in another order each epoch). Returns
    the epoch's sum of squared errors, each taken before its update.
    """
    # Bound to locals before the parallel loops (as in `fastcofi.kernels.gibbs`).
    indptr, indices = rows.indptr, rows.indices
    csr = (indptr, indices, rows.values)
    row_bounds, col_bounds = blocks.row_bounds, blocks.col_bounds
    user = (users.factors, users.bias, users.penalty, users.bias_penalty, users.steps)
    item = (items.factors, items.bias, items.penalty, items.bias_penalty, items.steps)
    n_blocks = row_bounds.shape[0] - 1
    mu32 = np.float32(mu)
    # Each user's position in its row: a row's column blocks come in cyclic order, so one
    # search per user and epoch finds where its first block starts, and the walk moves on.
    cursor = np.empty(indptr.shape[0] - 1, dtype=np.int64)
    for b in prange(n_blocks):
        first = col_bounds[(b + shift) % n_blocks]
        for u in range(row_bounds[b], row_bounds[b + 1]):
            cursor[u] = indptr[u] + np.searchsorted(indices[indptr[u]:indptr[u + 1]], first)
    sums = np.zeros(n_blocks)
    for d in range(n_blocks):
        for b in prange(n_blocks):
            col_block = (b + d + shift) % n_blocks
            sums[b] += _block(csr, cursor, row_bounds[b:b + 2], col_bounds[col_block + 1],
                              col_block == n_blocks - 1, mu32, eta, fit_bias, user, item)
    return sums.sum()
