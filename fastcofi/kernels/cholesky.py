"""Cholesky factorization of small symmetric positive definite systems, in place, and the
substitutions that solve with the factor: the row solves, VB's and Gibbs's. Compiled
without numba's reference counts, as `rowsolve` explains for the helpers a sweep calls for
every row."""

import numba as nb
import numpy as np

from ._jit import _FASTMATH

# A pivot at most this fraction of its diagonal entry counts as zero: rounding leaves about
# 1e-16 of it in an exactly singular system, while a penalty of 1e-10 of a row's Gram diagonal
# still passes.
_PIVOT_FLOOR = 1e-13


@nb.njit(fastmath=_FASTMATH, cache=True, nogil=True, _nrt=False)
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


@nb.njit(fastmath=_FASTMATH, cache=True, nogil=True, _nrt=False)
def _cholesky_solve(A, b, d):
    """Solve ``A z = b`` in place (``z`` into ``b``) for the symmetric leading d x d block of
    ``A`` (lower triangle read, overwritten by its Cholesky factor); False when that block is
    not positive definite."""
    if not _cholesky_in_place(A, d):
        return False
    _forward_solve(A, b, d)
    _backward_solve(A, b, d)
    return True


@nb.njit(fastmath=_FASTMATH, cache=True, nogil=True, _nrt=False)
def _forward_solve(L, b, d):
    """``b = L^-1 b`` in place, ``L`` the Cholesky factor in the lower triangle of ``L``'s leading
    d x d block."""
    for r in range(d):
        acc = b[r]
        for m in range(r):
            acc -= L[r, m] * b[m]
        b[r] = acc / L[r, r]


@nb.njit(fastmath=_FASTMATH, cache=True, nogil=True, _nrt=False)
def _backward_solve(L, b, d):
    """``b = L^-T b`` in place (see `_forward_solve`)."""
    for r in range(d - 1, -1, -1):
        acc = b[r]
        for m in range(r + 1, d):
            acc -= L[m, r] * b[m]
        b[r] = acc / L[r, r]
