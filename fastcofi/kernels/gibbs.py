"""Numba kernels of the Gibbs sampler: counter-based random streams and the parallel half-sweep.

Randomness never comes from numba's global ``np.random`` state (one state per thread, so samples
would depend on the thread count and on scheduling). Every row of every half-sweep has a stream
of its own, a pure function of ``(seed, sweep, side, row)``: a 64-bit key made by chaining
splitmix64's finalizer (a bijection of 64-bit words) over those four numbers, then the finalizer
of ``key + j * golden`` for draw ``j``, as in splitmix64 itself. A row's draws therefore do not
depend on which thread samples it or in what order, and a chain is bit-identical for any thread
count.

64-bit products are formed from 32-bit halves so that no intermediate overflows: with the JIT
off the kernels run on numpy scalars, which warn on wrap-around, and the results must be the
same bits either way.
"""

from typing import NamedTuple

import numba as nb
import numpy as np
from numba import prange

from ._jit import _FASTMATH
from .cholesky import _backward_solve, _cholesky_in_place, _forward_solve
from .sparse import Rows

__all__ = ["Draws", "Noise", "Other", "Prior", "Rows", "row_normals", "sample_row", "sample_rows",
           "stream_key"]

_M32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
# 2^-53: a 53-bit integer times this is a double in [0, 1) with every bit random.
_TWO_M53 = 1.0 / 9007199254740992.0
_TWO_PI = 2.0 * np.pi


@nb.njit(cache=True, nogil=True)
def _add64(a, b):
    """``(a + b) mod 2^64`` of two uint64, without an overflowing intermediate."""
    lo = (a & _M32) + (b & _M32)
    hi = ((a >> _S32) + (b >> _S32) + (lo >> _S32)) & _M32
    return (hi << _S32) | (lo & _M32)


@nb.njit(cache=True, nogil=True)
def _mul64(a, b):
    """``(a * b) mod 2^64`` of two uint64 from 32-bit halves (each partial product fits)."""
    a_lo, a_hi = a & _M32, a >> _S32
    b_lo, b_hi = b & _M32, b >> _S32
    lo = a_lo * b_lo
    cross = ((a_lo * b_hi) & _M32) + ((a_hi * b_lo) & _M32) + (lo >> _S32)
    return ((cross & _M32) << _S32) | (lo & _M32)


@nb.njit(cache=True, nogil=True)
def _mix64(z):
    """splitmix64's finalizer: a bijection of 64-bit words with full avalanche."""
    z = _mul64(z ^ (z >> _S30), _MIX1)
    z = _mul64(z ^ (z >> _S27), _MIX2)
    return z ^ (z >> _S31)


def stream_key(seed, sweep, side):
    """`_stream_key` as a numpy uint64 (numba hands uint64 back as a Python int, which it would
    type as int64 on the way in, or refuse above 2^63)."""
    return np.uint64(_stream_key(np.uint64(seed), int(sweep), int(side)))


@nb.njit(cache=True, nogil=True)
def _stream_key(seed, sweep, side):
    """The key of one half-sweep's streams: ``seed`` (uint64), ``sweep`` and ``side`` (ints >= 0).

    Chained through the bijective finalizer, so different (sweep, side) pairs of one seed give
    different keys."""
    key = _mix64(_add64(_mix64(np.uint64(seed)), np.uint64(side)))
    return _mix64(_add64(key, np.uint64(sweep)))


@nb.njit(cache=True, nogil=True)
def row_normals(key, row, out):
    """Fill ``out`` with standard normal draws of row ``row``'s stream under ``key`` (Box-Muller
    on pairs of 53-bit uniforms in (0, 1)); the same numbers whichever thread asks."""
    # Keys cross into Python as ints (typed int64 below 2^63): make them uint64 again, or the
    # shifts below would be arithmetic.
    state = _mix64(_add64(np.uint64(key), np.uint64(row)))
    n = out.shape[0]
    j = 0
    while j < n:
        state = _add64(state, _GOLDEN)
        u1 = (np.float64(_mix64(state) >> _S11) + 0.5) * _TWO_M53
        state = _add64(state, _GOLDEN)
        u2 = (np.float64(_mix64(state) >> _S11) + 0.5) * _TWO_M53
        radius = np.sqrt(-2.0 * np.log(u1))
        out[j] = radius * np.cos(_TWO_PI * u2)
        if j + 1 < n:
            out[j + 1] = radius * np.sin(_TWO_PI * u2)
        j += 2


@nb.njit(cache=True, nogil=True)
def uniforms(key, n):
    """``n`` uniforms in (0, 1) of stream ``key`` (row 0): for tests of the stream itself."""
    out = np.empty(n)
    state = _mix64(_add64(np.uint64(key), np.uint64(0)))
    for j in range(n):
        state = _add64(state, _GOLDEN)
        out[j] = (np.float64(_mix64(state) >> _S11) + 0.5) * _TWO_M53
    return out


@nb.njit(fastmath=_FASTMATH, cache=True, nogil=True)
def sample_row(cols, values, F, col_offset, col_scale, row_offset, prior_mean, prior_precision,
               tau, z, A, b, out):
    """One draw of a row's (factors, bias) from its Gaussian conditional.

    The model: ``values[p] = row_offset + col_offset[c] + (F[c], 1) . w + noise`` (``c =
    cols[p]``) of precision ``tau * col_scale[c]`` (``tau`` the row's own precision, the noise's
    times the row's scale), prior ``w ~ N(prior_mean, prior_precision^-1)`` (length d = k + 1,
    the bias last; ``prior_precision`` a symmetric positive definite d x d matrix). The
    conditional has precision ``A = prior_precision + sum tau_p f f^T`` (f = (F[c], 1), tau_p =
    tau col_scale[c]) and mean ``A^-1 b``, ``b = prior_precision @ prior_mean + sum tau_p f t``;
    with ``A = L L^T`` the draw ``L^-T (L^-1 b + z)`` is that mean plus ``L^-T z``, whose
    covariance is ``A^-1``, so one forward and one back substitution give it. ``z`` (d) holds
    standard normal draws; ``A`` (d x d) and ``b`` (d) are scratch. Writes ``out`` (d); returns
    False (``out`` untouched) when ``A`` is not positive definite.
    """
    k = F.shape[1]
    d = k + 1
    for r in range(d):
        acc = 0.0
        for c in range(d):
            acc += prior_precision[r, c] * prior_mean[c]
            A[r, c] = prior_precision[r, c] if c <= r else 0.0
        b[r] = acc
    for p in range(cols.shape[0]):
        col = cols[p]
        precision = tau * col_scale[col]
        target = precision * (values[p] - col_offset[col] - row_offset)
        for r in range(k):
            fr = precision * F[col, r]
            b[r] += F[col, r] * target
            for c in range(r + 1):
                A[r, c] += fr * F[col, c]
            A[k, r] += fr
        b[k] += target
        A[k, k] += precision
    if not _cholesky_in_place(A, d):
        return False
    _forward_solve(A, b, d)
    # z joins only once L^-1 b is complete: the forward solve reads its earlier entries.
    for r in range(d):
        b[r] += z[r]
    _backward_solve(A, b, d)
    for r in range(d):
        out[r] = b[r]
    return True


class Other(NamedTuple):
    """The other side's current draw: ``factors`` (n_other, k), ``bias`` (n_other,) and
    ``noise_scale`` (n_other,), each row's multiplier of the noise precision."""

    factors: np.ndarray
    bias: np.ndarray
    noise_scale: np.ndarray


class Noise(NamedTuple):
    """The noise precision of a rating of row ``r`` and column ``c``: ``precision *
    row_scale[r] * col_scale[c]`` (``col_scale`` is `Other`'s ``noise_scale``); ``row_scale``
    (n,) belongs to the side being sampled."""

    precision: float
    row_scale: np.ndarray


class Prior(NamedTuple):
    """A side's Gaussian prior on every row's (factors, bias), the bias last: ``mean`` (k + 1,)
    and ``precision`` (k + 1, k + 1), symmetric positive definite."""

    mean: np.ndarray
    precision: np.ndarray


class Draws(NamedTuple):
    """Where a half-sweep writes: ``factors`` (n, k), ``bias`` (n,), ``sse`` (n,), the sum of
    each row's squared residuals under its new draw, and ``scaled_sse`` (n,), the same with each
    residual's square times its column's noise scale (the statistic of the row's noise scale
    and, times that scale, of the noise precision)."""

    factors: np.ndarray
    bias: np.ndarray
    sse: np.ndarray
    scaled_sse: np.ndarray


@nb.njit(parallel=True, fastmath=_FASTMATH, cache=True, nogil=True)
def sample_rows(rows, other, mu, prior, noise, key, out):
    """Half-sweep: draw every row of one side from its conditional (`sample_row`), in parallel.

    ``rows`` (`Rows`) holds the side's ratings, ``other`` (`Other`) the other side's draw, ``mu``
    the global offset, ``prior`` (`Prior`) and ``noise`` (`Noise`) the row prior and the noise
    precision with this side's scales. Row
    ``r`` draws its normals from `row_normals` ``(key, r)``, so the result does not depend on the
    threads. Writes row ``r`` of every array of ``out`` (`Draws`). Returns the number of rows
    whose system was not positive definite (left unchanged).
    """
    # Bound to locals before the parallel loop: numba 0.68's parallel loops lose writes made
    # through a tuple's field inside them (as in `fastcofi.kernels.vb`).
    indptr, cols, values, chunks = rows.indptr, rows.indices, rows.values, rows.chunks
    F, col_bias, col_scale = other.factors, other.bias, other.noise_scale
    prior_mean, prior_precision = prior.mean, prior.precision
    tau, row_scale = noise.precision, noise.row_scale
    out_factors, out_bias = out.factors, out.bias
    row_sse, row_scaled_sse = out.sse, out.scaled_sse
    k = F.shape[1]
    d = k + 1
    n_chunks = chunks.shape[0] - 1
    failures = np.zeros(n_chunks, dtype=np.int64)
    for ch in prange(n_chunks):
        A = np.empty((d, d))
        b = np.empty(d)
        z = np.empty(d)
        w = np.empty(d)
        for r in range(chunks[ch], chunks[ch + 1]):
            start, end = indptr[r], indptr[r + 1]
            row_normals(key, r, z)
            if not sample_row(cols[start:end], values[start:end], F, col_bias, col_scale, mu,
                              prior_mean, prior_precision, tau * row_scale[r], z, A, b, w):
                failures[ch] += 1
            else:
                for q in range(k):
                    out_factors[r, q] = w[q]
                out_bias[r] = w[k]
            sse = 0.0
            scaled_sse = 0.0
            for p in range(start, end):
                c = cols[p]
                pred = mu + col_bias[c] + out_bias[r]
                for q in range(k):
                    pred += F[c, q] * out_factors[r, q]
                squared = (values[p] - pred) ** 2
                sse += squared
                scaled_sse += col_scale[c] * squared
            row_sse[r] = sse
            row_scaled_sse[r] = scaled_sse
    return failures.sum()
