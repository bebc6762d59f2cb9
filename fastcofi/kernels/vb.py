"""Variational Bayes: the mean-field update of every row of one side.

Each row's posterior is Gaussian over (factors, bias); the other side enters only through its
per-row moments, precomputed once per half-sweep, so a rating costs one (k+1) x (k+1) add.
"""

from typing import NamedTuple

import numba as nb
import numpy as np
from numba import prange

from ._jit import _FASTMATH
from .cholesky import _cholesky_in_place


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




class Moments(NamedTuple):
    """The other side's posterior moments, per row ``c`` with ``(w_c, c_c)`` its (factors, bias):
    ``first[c]`` = E[(w, 1)] (d,), ``second[c]`` = E[(w, 1)(w, 1)^T] flattened (d * d,),
    ``cross[c]`` = E[(w, 1) c] (d,), ``bias_mean[c]`` = E[c], ``bias_second[c]`` = E[c^2]."""

    first: np.ndarray
    second: np.ndarray
    cross: np.ndarray
    bias_mean: np.ndarray
    bias_second: np.ndarray


class Posterior(NamedTuple):
    """Where a side's updated posteriors go: ``mean`` (n, d), ``cov`` (n, d, d), ``sse`` (n,) the
    expected squared error of each row's ratings, ``logdet`` (n,) log det of each ``cov``."""

    mean: np.ndarray
    cov: np.ndarray
    sse: np.ndarray
    logdet: np.ndarray


@nb.njit(parallel=True, fastmath=_FASTMATH, cache=True, nogil=True)
def vb_update_rows(rows, other, mu, tau, prior_precision, out):
    """Mean-field update of every row's Gaussian posterior over (factors, bias), in parallel.

    The model is ``values[p] = mu + u_r . (w_c, 1) + c_c + noise(precision tau)`` with ``u_r`` =
    (factors, bias) of row ``r`` (length d = k + 1) and ``(w_c, c_c)`` those of column ``c`` on the
    other side, whose posterior enters through its `Moments`. The prior of ``u_r`` is
    N(0, diag(1 / prior_precision)).

    Writes row ``r`` of every array of ``out`` (a `Posterior`). Returns the number of rows whose
    system was not positive definite (left unchanged).
    """
    # Bound to locals before the parallel loop: numba 0.68's parallel loops lose writes made
    # through a tuple's field inside them.
    indptr, cols, values, chunks = rows.indptr, rows.indices, rows.values, rows.chunks
    first, second, cross = other.first, other.second, other.cross
    bias_mean, bias_second = other.bias_mean, other.bias_second
    mean, cov, row_sse, row_logdet = out.mean, out.cov, out.sse, out.logdet
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
