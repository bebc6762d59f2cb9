"""The regularized least-squares solve of one row (ALS sweeps, fold-in of a new user)."""

from functools import cache
from typing import NamedTuple

import numba as nb
import numpy as np
from numba import prange
from numba.core import types
from numba.extending import overload

from ._jit import _FASTMATH, muladd, prefetch, take_next
from .bfloat16 import _scratch_for, _widened_row
from .cgpass import _normal_products
from .cholesky import _cholesky_in_place, _cholesky_solve
from .vectors import NATIVE_MASKS, WIDTHS, lane_sum, load_row, splat, store_vector

# The helpers a sweep calls for every row are compiled without numba's reference counts
# (``_nrt=False``): they allocate nothing, and each array they were passed or sliced cost an
# atomic increment and decrement, among the hottest spots of a profile of the users'
# half-sweep (rows of a handful of ratings). Such a function can neither allocate nor return
# an array.

# A row's ratings are gathered this many at a time into a contiguous tile of their factor rows,
# whose Gram matrix is one small matrix product: a rank-256 update instead of a scalar rank-1
# update per rating. The tile also holds a column of ones for the bias and the targets, so that
# the same product gives the bias's entries, the right-hand side and the targets' squared sum.
_TILE_ROWS = 256


class Other(NamedTuple):
    """The side held fixed while a row is solved: ``factors`` (n_other, k), float64, or for a
    training sweep's reads a float32 copy or bfloat16 bits (uint16, `to_bfloat16`), and
    ``offset`` (n_other,), what each of its rows adds to a prediction besides the factors (its
    bias plus the global mean, or its fixed mean)."""

    factors: np.ndarray
    offset: np.ndarray


class Penalty(NamedTuple):
    """A row's penalties, ``reg`` on the factors and ``reg_bias`` on its bias, before the row's
    weight; ``fit_bias``: the row has a bias to solve for."""

    reg: float
    reg_bias: float
    fit_bias: bool


class Solved(NamedTuple):
    """Where `solve_rows` writes: ``factors`` (n, k) and ``bias`` (n,), float64. What they hold
    before is where a row's conjugate-gradient steps start."""

    factors: np.ndarray
    bias: np.ndarray


class SolveSummary(NamedTuple):
    """What `solve_rows` reports about a side.

    ``failures``: rows whose system was not positive definite (their factors are 0).
    ``cost``: half the squared residuals of the side's ratings plus ``penalty``, at the solution
    (the objective's terms that the side's rows hold).
    ``penalty``: half the side's rows' penalties at the solution.
    """

    failures: int
    cost: float
    penalty: float


# How many ratings ahead `_gather` asks for the rows it will read: far enough for the memory's
# latency, near enough that the rows are still in cache when read.
_AHEAD = 16


@nb.njit(fastmath=_FASTMATH, cache=True, nogil=True, _nrt=False)
def _gather(cols, values, F, col_offset, row_offset, start, m, fit_bias, tile):
    """Ratings ``start:start + m`` of a row into the first ``m`` rows of ``tile``
    (`_scratch_for` ``F``): their factor rows, a 1 for the bias when ``fit_bias``, and last
    what the factors must explain (the rating less the offsets). The rows it asks the cache
    for run on past the row's end into the ratings that follow in ``cols`` (the next rows a
    sweep solves): a row of a handful of ratings had none asked for ahead."""
    k = F.shape[1]
    last = k + 1 if fit_bias else k
    reach = cols.shape[0] - start
    for q in range(m):
        if q + _AHEAD < reach:
            ahead = cols[start + q + _AHEAD]
            prefetch(F, ahead)
            prefetch(col_offset, ahead)
        col = cols[start + q]
        _widened_row(F, col, tile, q)
        if fit_bias:
            tile[q, k] = 1.0
        tile[q, last] = values[start + q] - col_offset[col] - row_offset


def _dual_system(n, k, inv_reg, inv_bias, S, tile):
    """The lower triangle of ``T T' / reg + 1 / reg_bias + I`` (`_solve_dual`; ``inv_bias`` is 0
    without a bias) into the leading n x n block of ``S`` (float64), ``T`` the first k columns
    of the tile's first n rows."""
    zero = tile.dtype.type(0.0)
    for p in range(n):
        # Summed in the tile's type: k products of float32 factors lose less than their own
        # rounding (the Gram path's sgemm sums the same way). Four entries at a time: their
        # four sums over the factors vectorize as one loop, where a single sum of k = 32 runs
        # scalar (see `_normal_products`); twice as fast from 5 ratings. The last one to
        # three entries of a row of S repeat its diagonal entry to fill the four. From 0 to k:
        # a loop from 1, k - 1 long, fell short of the vector loop's 32 and ran scalar (the
        # Gram of rows of 1 to 11 ratings at k = 32 took a third longer).
        for q in range(0, p + 1, 4):
            q1, q2, q3 = min(q + 1, p), min(q + 2, p), min(q + 3, p)
            s0, s1, s2, s3 = zero, zero, zero, zero
            for f in range(k):
                a = tile[p, f]
                s0 = muladd(a, tile[q, f], s0)
                s1 = muladd(a, tile[q1, f], s1)
                s2 = muladd(a, tile[q2, f], s2)
                s3 = muladd(a, tile[q3, f], s3)
            # Widened first: with the JIT off, numpy would keep float32 * float in float32.
            S[p, q] = np.float64(s0) * inv_reg + inv_bias
            S[p, q1] = np.float64(s1) * inv_reg + inv_bias
            S[p, q2] = np.float64(s2) * inv_reg + inv_bias
            S[p, q3] = np.float64(s3) * inv_reg + inv_bias
        S[p, p] += 1.0


def _dual_combination(n, k, tile, z, out):
    """``out = T' z`` (k,), float64, ``T`` as in `_dual_system` and ``z`` (n,) float64."""
    for f in range(k):
        out[f] = 0.0
    # Four ratings at a time, as in `_dual_system`.
    p = 0
    while p + 4 <= n:
        z0, z1, z2, z3 = z[p], z[p + 1], z[p + 2], z[p + 3]
        for f in range(k):
            out[f] += ((tile[p, f] * z0 + tile[p + 1, f] * z1)
                       + (tile[p + 2, f] * z2 + tile[p + 3, f] * z3))
        p += 4
    while p < n:
        zp = z[p]
        for f in range(k):
            out[f] += tile[p, f] * zp
        p += 1


@overload(_dual_system, jit_options={"fastmath": _FASTMATH, "_nrt": False})
def _dual_system_jit(n, k, inv_reg, inv_bias, S, tile):
    loops = nb.njit(fastmath=_FASTMATH, _nrt=False)(_dual_system)
    if not (NATIVE_MASKS and tile.dtype == types.float32 and tile.layout == "C"):
        return lambda n, k, inv_reg, inv_bias, S, tile: loops(n, k, inv_reg, inv_bias, S, tile)
    narrow, mid, wide, widest = (_dual_in_registers(lanes)[0] for lanes in WIDTHS)

    def by_k(n, k, inv_reg, inv_bias, S, tile):
        if k <= WIDTHS[0]:
            narrow(n, k, inv_reg, inv_bias, S, tile)
        elif k <= WIDTHS[1]:
            mid(n, k, inv_reg, inv_bias, S, tile)
        elif k <= WIDTHS[2]:
            wide(n, k, inv_reg, inv_bias, S, tile)
        elif k <= WIDTHS[3]:
            widest(n, k, inv_reg, inv_bias, S, tile)
        else:
            loops(n, k, inv_reg, inv_bias, S, tile)
    return by_k


@overload(_dual_combination, jit_options={"fastmath": _FASTMATH, "_nrt": False})
def _dual_combination_jit(n, k, tile, z, out):
    loops = nb.njit(fastmath=_FASTMATH, _nrt=False)(_dual_combination)
    if not (NATIVE_MASKS and tile.dtype == types.float32 and tile.layout == out.layout == "C"):
        return lambda n, k, tile, z, out: loops(n, k, tile, z, out)
    narrow, mid, wide, widest = (_dual_in_registers(lanes)[1] for lanes in WIDTHS)

    def by_k(n, k, tile, z, out):
        if k <= WIDTHS[0]:
            narrow(n, k, tile, z, out)
        elif k <= WIDTHS[1]:
            mid(n, k, tile, z, out)
        elif k <= WIDTHS[2]:
            wide(n, k, tile, z, out)
        elif k <= WIDTHS[3]:
            widest(n, k, tile, z, out)
        else:
            loops(n, k, tile, z, out)
    return by_k


@cache
def _dual_in_registers(lanes):
    """`_dual_system` and `_dual_combination` of a float32 tile of at most ``lanes`` factor
    columns, each row of it a `Float32Vector`, where the loops' k-long loops cost about as much
    to enter as to run (a few per cent of the users' half at 1e7, k = 32: bench/README.md).
    The combination is summed in float32 (z rounded to it), within about (n + 1) 2^-24 of the
    float64 sum relative to the sum of magnitudes. The zero vector's type comes from the
    tile's first row, which every caller's tile has (at least d rows), rated or not."""
    def system(n, k, inv_reg, inv_bias, S, tile):
        for p in range(n):
            a = load_row(tile, p, k, lanes)
            for q in range(p + 1):
                dot = lane_sum(a * load_row(tile, q, k, lanes))
                S[p, q] = np.float64(dot) * inv_reg + inv_bias
            S[p, p] += 1.0

    def combination(n, k, tile, z, out):
        total = splat(0.0, load_row(tile, 0, k, lanes))
        for p in range(n):
            a = load_row(tile, p, k, lanes)
            total = muladd(splat(z[p], a), a, total)
        store_vector(out, k, total)
    return (nb.njit(fastmath=_FASTMATH, _nrt=False)(system),
            nb.njit(fastmath=_FASTMATH, _nrt=False)(combination))


@nb.njit(fastmath=_FASTMATH, cache=True, nogil=True, _nrt=False)
def _solve_dual(n, k, reg, reg_bias, fit_bias, S, tile, z, out):
    """The row's solution through the n x n system of its ratings, for n < d.

    With ``T`` the gathered tile's factor rows and a column of ones for the bias (n x d), ``t``
    its targets and ``P`` the diagonal penalty, ``(T'T + P) w = T't`` has the solution
    ``w = P^-1 T' z`` with ``(T P^-1 T' + I) z = t`` (push-through identity): an n x n
    factorization instead of a d x d one, which for the many rows with a handful of ratings is
    most of a sweep. Then ``t - T w = z``: the residuals come with it. Needs every penalty > 0.
    Returns ``(beta, squared residual sum)``, beta NaN when not positive definite.
    """
    d = k + 1 if fit_bias else k
    inv_reg = 1.0 / reg
    inv_bias = 1.0 / reg_bias if fit_bias else 0.0
    _dual_system(n, k, inv_reg, inv_bias, S, tile)
    for p in range(n):
        z[p] = tile[p, d]
    if not _cholesky_solve(S, z, n):
        return np.nan, 0.0
    _dual_combination(n, k, tile, z, out)
    beta = 0.0
    squares = 0.0
    for p in range(n):
        beta += z[p]
        squares += z[p] * z[p]
    for f in range(k):
        out[f] *= inv_reg
    return beta * inv_bias, squares


@nb.njit(cache=True, nogil=True)
def _singular_by_count(n, k, reg, reg_bias, fit_bias):
    """Whether a row of n ratings has fewer than its unpenalized unknowns (the k factors when
    ``reg`` is 0, the bias when ``fit_bias`` and ``reg_bias`` is 0): its system is then singular
    whatever the ratings. Its last pivot is rounding only, but rounding amplified by small
    earlier pivots can pass any fixed floor (5.7e-13 of its diagonal for 3 ratings and k = 4
    with random factors; 1.02e-13 for 2 ratings and k = 3), so the count decides."""
    free = (k if reg == 0.0 else 0) + (1 if fit_bias and reg_bias == 0.0 else 0)
    return n < free


# Reference-counted even when called from `_solve_row_tiled`: numba's matrix product returns
# its output array.
@nb.njit(fastmath=_FASTMATH, cache=True, nogil=True, _nrt=True)
def _row_gram(cols, values, start, stop, F, col_offset, row_offset, fit_bias, A, gram, tile):
    """The lower triangle of ``[T 1 t]' [T 1 t]`` into the leading d + 1 block of ``A``
    (float64), for the ratings ``start:stop`` of a row gathered as `_gather` does (``T`` their
    factor rows, the column of ones only when ``fit_bias``, ``t`` their targets): the Gram
    matrix, the right-hand side and the targets' squared sum of the row's normal equations.
    ``gram`` (d + 1 x d + 1) and ``tile`` (d + 1 columns) are scratch of ``F``'s type."""
    k = F.shape[1]
    d = k + 1 if fit_bias else k
    rows = min(tile.shape[0], _TILE_ROWS)
    for r in range(d + 1):
        for c in range(r + 1):
            A[r, c] = 0.0
    for begin in range(start, stop, rows):
        m = min(rows, stop - begin)
        _gather(cols, values, F, col_offset, row_offset, begin, m, fit_bias, tile)
        part = tile[:m]
        # A BLAS matrix product (numba calls scipy's; sgemm on a float32 tile, twice dgemm's
        # rate); training holds BLAS to one thread. Sums across tiles are float64.
        np.dot(part.T, part, gram)
        for r in range(d + 1):
            for c in range(r + 1):
                A[r, c] += gram[r, c]


@nb.njit(fastmath=_FASTMATH, cache=True, nogil=True, _nrt=False)
def _solve_row_tiled(cols, values, start, stop, F, col_offset, row_offset, penalty, A, b,
                     gram, tile, out):
    """`solve_row` of the ratings ``start:stop`` with all its scratch given.

    Scratch: ``A`` (d + 1 x d + 1, float64), ``b`` (float64, at least 2 d), ``gram``
    (d + 1 x d + 1) and ``tile`` (at least d rows, d + 1 columns), both of ``F``'s type.
    ``penalty`` is ``(reg, reg_bias, fit_bias)`` with the row's weight applied. Returns
    ``(beta, squares)``: the bias (NaN when the system is not positive definite, the factors
    then 0) and the squared residuals at the solution.
    """
    reg, reg_bias, fit_bias = penalty
    k = F.shape[1]
    d = k + 1 if fit_bias else k
    n = stop - start
    rows = min(tile.shape[0], _TILE_ROWS)
    if n < d and n <= rows and reg > 0.0 and (reg_bias > 0.0 or not fit_bias):
        _gather(cols, values, F, col_offset, row_offset, start, n, fit_bias, tile)
        beta, squares = _solve_dual(n, k, reg, reg_bias, fit_bias, A, tile, b, out)
        if np.isnan(beta):
            for f in range(k):
                out[f] = 0.0
        return beta, squares
    _row_gram(cols, values, start, stop, F, col_offset, row_offset, fit_bias, A, gram, tile)
    targets_squared = A[d, d]
    if _singular_by_count(n, k, reg, reg_bias, fit_bias):
        for f in range(k):
            out[f] = 0.0
        return np.nan, targets_squared
    for r in range(d):
        b[r] = A[d, r]
        b[d + r] = A[d, r]
    for r in range(k):
        A[r, r] += reg
    if fit_bias:
        A[k, k] += reg_bias
    if not _cholesky_solve(A, b, d):
        for f in range(k):
            out[f] = 0.0
        return np.nan, targets_squared
    # At the solution w of (G + P) w = c the squared residuals are t't - w'c - w'P w.
    explained = 0.0
    penalized = 0.0
    for r in range(d):
        explained += b[r] * b[d + r]
        penalized += (reg if r < k else reg_bias) * b[r] * b[r]
    for f in range(k):
        out[f] = b[f]
    return (b[k] if fit_bias else 0.0), max(targets_squared - explained - penalized, 0.0)


# The rows that take conjugate-gradient steps in a training sweep (`solve_rows`): from this many
# ratings, where the n x n system of `_solve_dual` costs more than a few passes over the row;
_CG_MIN = 12
# up to this many, whose gathered tile (2.2 MB at k = 32) stays in the cache for every pass: a
# pass costs about 4 ns a rating (`_normal_products`), forming the normal equations 40 (sgemm).
# A longer row's passes would stream it from memory, where its normal equations read each
# rating once; 16384 ran a sweep at 1e7 ratings faster than 1024, 4096 and 32768. (Figures of
# one machine; on a second, 11 and 20 ns before `muladd`, and 256 was no faster: bench/README.md.)
_CG_ROWS = 16384

# The parallel tasks of `solve_rows`, more than the threads of any machine it runs on. numba
# splits a parallel loop's iterations between the threads evenly and up front, so a thread on a
# slower or shared CPU held up every half-sweep; instead each task takes the next chunk not yet
# taken (`take_next`) until none is left, so in effect each thread's first task does that
# thread's share, with one set of scratch arrays (a tile of up to 2.2 MB allocated per chunk
# came back as fresh pages every time, whose faults and zeroing took a tenth of a sweep). A
# task that finds no chunk left costs one atomic add. Which thread solves a chunk changes
# nothing in its results. (numba.get_num_threads() in a kernel makes it uncacheable.)
_TASKS = 256


@nb.njit(cache=True, nogil=True)
def _takes_steps(n, d, cg_steps):
    """Whether a training row of n ratings and d unknowns takes ``cg_steps`` conjugate-gradient
    steps (`_cg_row`) rather than an exact solve: fewer steps than unknowns (as many would cost
    more than solving), and a length from `_CG_MIN` to `_CG_ROWS`."""
    return 0 < cg_steps < d and _CG_MIN <= n <= _CG_ROWS


@nb.njit(fastmath=_FASTMATH, cache=True, nogil=True, _nrt=False)
def _cg_row(n, fit_bias, penalty, steps, tile, out, bias, scratch, vectors):
    """``steps`` conjugate-gradient steps on a row's normal equations from its current factors
    ``out`` and ``bias``, preconditioned by their diagonal, on the tile of all its n gathered
    ratings (`_gather`). Writes ``out``; returns ``(beta, squares)``, the squared residuals
    at the result.

    A step costs two matrix-vector products with the tile (`_normal_products`) where the
    row's Gram matrix costs a matrix product; warm-started rows of an ALS sweep need only a
    few (Takacs, Pilaszy and Tikk, RecSys 2011). ``scratch`` (5, at least max(n, k)) of the
    tile's type: the residuals, a step's products, the factors' part of the vector they are
    taken of, their image and the tile's factor columns' sums of squares; ``vectors``
    (5, at least k) float64: the factors' part of the residual, the preconditioned residual,
    the direction, its image and the preconditioner.
    """
    reg, reg_bias = penalty[0], penalty[1]
    d = tile.shape[1] - 1
    k = d - 1 if fit_bias else d
    part = tile[:n]
    residual, product, x = scratch[0, :n], scratch[1, :n], scratch[2, :k]
    products, squares = scratch[3, :k], scratch[4, :k]
    r, z, p, Ap, scale = (vectors[0, :k], vectors[1, :k], vectors[2, :k], vectors[3, :k],
                          vectors[4, :k])
    # The factors' coordinates in k-long loops, the bias's (the last when ``fit_bias``) as
    # scalars beside them: a branch between the two in every loop kept those loops from
    # vectorizing.
    beta = bias if fit_bias else 0.0
    # x = (w, beta) against the target's -1: the residuals.
    for f in range(k):
        x[f] = out[f]
    # The factor columns' sums of squares, the Gram matrix's diagonal, come with that pass;
    # the bias column's is the count.
    bias_product = _normal_products(part, k, x, beta, -1.0, residual, products, squares)
    rz = 0.0
    for f in range(k):
        r[f] = -(products[f] + reg * out[f])
        curvature = squares[f] + reg
        scale[f] = 1.0 / curvature if curvature > 0.0 else 0.0
        z[f] = r[f] * scale[f]
        p[f] = z[f]
        rz += r[f] * z[f]
    r_bias = z_bias = p_bias = scale_bias = 0.0
    if fit_bias:
        r_bias = -(bias_product + reg_bias * beta)
        scale_bias = 1.0 / (n + reg_bias)
        z_bias = p_bias = r_bias * scale_bias
        rz += r_bias * z_bias
    for _ in range(steps):
        if rz <= 0.0:
            break
        for f in range(k):
            x[f] = p[f]
        bias_product = _normal_products(part, k, x, p_bias, 0.0, product, products)
        pAp = 0.0
        for f in range(k):
            Ap[f] = products[f] + reg * p[f]
            pAp += p[f] * Ap[f]
        Ap_bias = bias_product + reg_bias * p_bias if fit_bias else 0.0
        pAp += p_bias * Ap_bias
        if pAp <= 0.0:
            break
        alpha = rz / pAp
        for q in range(n):
            residual[q] += alpha * product[q]
        rz_next = 0.0
        for f in range(k):
            out[f] += alpha * p[f]
            r[f] -= alpha * Ap[f]
            z[f] = r[f] * scale[f]
            rz_next += r[f] * z[f]
        beta += alpha * p_bias
        r_bias -= alpha * Ap_bias
        z_bias = r_bias * scale_bias
        rz_next += r_bias * z_bias
        ratio = rz_next / rz
        for f in range(k):
            p[f] = z[f] + ratio * p[f]
        p_bias = z_bias + ratio * p_bias
        rz = rz_next
    squares = 0.0
    for q in range(n):
        squares += np.float64(residual[q]) * residual[q]
    return beta, squares


# Reassociated sums: the row-solve tests compare with numpy's solution at 1e-10 relative.
@nb.njit(fastmath=_FASTMATH, cache=True, nogil=True)
def solve_row(cols, values, other, row_offset, penalty, out):
    """One regularized least-squares row: the ALS update and the fold-in of a new user.

    Minimizes ``sum_p (F[c_p] . w + beta + offset[c_p] + row_offset - values[p])^2
    + reg |w|^2 + reg_bias beta^2`` over ``w`` (length k) and, when ``penalty.fit_bias``, the
    scalar ``beta``, where ``c_p = cols[p]`` and ``F``, ``offset`` are ``other``'s (`Other`).
    Writes ``out[:]`` and returns beta (0.0 without bias); returns NaN for beta (and zeros in
    ``out``) when the system is not positive definite (only possible with a zero penalty).

    A row with fewer ratings n than d = k + fit_bias is solved through the n x n system of its
    ratings (see `_solve_dual`), a longer one through the d x d normal equations, whose Gram
    matrix is summed from tiles of gathered factor rows; both by Cholesky factorization in
    float64. With float32 factors the tile products, and a short row's solution from its n x n
    system, are summed in float32 (about 1e-6 relative; training sweeps read such a copy), with
    float64 ones the solve is exact to rounding (fold-in).
    """
    F = other.factors
    k = F.shape[1]
    d = k + 1 if penalty.fit_bias else k
    rows = max(min(cols.shape[0], _TILE_ROWS), d)
    beta, _ = _solve_row_tiled(
        cols, values, 0, cols.shape[0], F, other.offset, row_offset, penalty,
        np.empty((d + 1, d + 1)), np.empty(2 * d), _scratch_for(F, (d + 1, d + 1)),
        _scratch_for(F, (rows, d + 1)), out,
    )
    return beta


@nb.njit(parallel=True, fastmath=_FASTMATH, cache=True, nogil=True)
def solve_rows(rows, other, penalty, row_offset, row_weight, out, cg_steps):
    """`solve_row` for every row of a side, in parallel; each thread owns whole rows.

    ``rows`` (`Rows`) holds the side's ratings, ``other`` (`Other`) the fixed side, row ``r``
    is offset by ``row_offset[r]`` and regularized by ``penalty`` (`Penalty`) times
    ``row_weight[r]``; its solution goes to row ``r`` of ``out`` (`Solved`; the bias only when
    ``penalty.fit_bias``). ``cg_steps`` 0: every row solved exactly (`solve_row`); more: a row
    with at least d = k + fit_bias ratings instead takes that many conjugate-gradient steps
    from the values ``out`` holds (`_cg_row`), an ALS sweep's inexact update. Each row's result
    depends on its own ratings only, so not on the chunks or the threads; the summary's sums
    are added in chunk order.

    Returns a `SolveSummary`.
    """
    # Bound to locals before the parallel loop: numba 0.68's parallel loops lose writes made
    # through a tuple's field inside them.
    indptr, cols, values, chunks = rows.indptr, rows.indices, rows.values, rows.chunks
    F, col_offset = other.factors, other.offset
    reg, reg_bias, fit_bias = penalty.reg, penalty.reg_bias, penalty.fit_bias
    out_factors, out_bias = out.factors, out.bias
    k = F.shape[1]
    d = k + 1 if fit_bias else k
    n_chunks = chunks.shape[0] - 1
    failures = np.zeros(n_chunks, dtype=np.int64)
    squares = np.zeros(n_chunks)
    penalties = np.zeros(n_chunks)
    longest = 0
    if cg_steps > 0:
        for row in range(indptr.shape[0] - 1):
            count = indptr[row + 1] - indptr[row]
            if _takes_steps(count, d, cg_steps):
                longest = max(longest, count)
    next_chunk = np.zeros(1, dtype=np.int64)
    for task in prange(_TASKS):
        c = take_next(next_chunk)
        if c >= n_chunks:
            continue
        A = np.empty((d + 1, d + 1))
        b = np.empty(2 * d)
        gram = _scratch_for(F, (d + 1, d + 1))
        tile = _scratch_for(F, (max(_TILE_ROWS, d, longest), d + 1))
        scratch = _scratch_for(F, (5, max(longest, k)))  # as `_cg_row` takes them
        vectors = np.empty((5, k))
        # Each row is solved into this and copied out: a view of row r of ``out_factors``
        # would count a reference on an array both threads share, a contended atomic per row.
        solution = np.empty(k)
        while c < n_chunks:
            chunk_squares = 0.0
            chunk_penalty = 0.0
            for r in range(chunks[c], chunks[c + 1]):
                start, stop = indptr[r], indptr[r + 1]
                n = stop - start
                weight = row_weight[r]
                row_penalty = (reg * weight, reg_bias * weight, fit_bias)
                if _takes_steps(n, d, cg_steps):
                    for f in range(k):
                        solution[f] = out_factors[r, f]
                    _gather(cols, values, F, col_offset, row_offset[r], start, n, fit_bias,
                            tile)
                    beta, row_squares = _cg_row(n, fit_bias, row_penalty, cg_steps, tile,
                                                solution, out_bias[r] if fit_bias else 0.0,
                                                scratch, vectors)
                else:
                    beta, row_squares = _solve_row_tiled(
                        cols, values, start, stop, F, col_offset, row_offset[r], row_penalty,
                        A, b, gram, tile, solution,
                    )
                if np.isnan(beta):
                    failures[c] += 1
                    beta = 0.0
                if fit_bias:
                    out_bias[r] = beta
                norm2 = 0.0
                for f in range(k):
                    out_factors[r, f] = solution[f]
                    norm2 += solution[f] * solution[f]
                chunk_squares += row_squares
                chunk_penalty += row_penalty[0] * norm2 + row_penalty[1] * beta * beta
            squares[c] = chunk_squares
            penalties[c] = chunk_penalty
            c = take_next(next_chunk)
    total_squares = 0.0
    total_penalty = 0.0
    for c in range(n_chunks):
        total_squares += squares[c]
        total_penalty += penalties[c]
    return SolveSummary(failures.sum(), 0.5 * (total_squares + total_penalty),
                        0.5 * total_penalty)


@nb.njit(parallel=True, fastmath=_FASTMATH, cache=True, nogil=True)
def row_preconditioners(rows, other, penalty, row_weight, out):
    """Each row's inverse Cholesky factor of its own curvature with ``other`` held fixed.

    Row ``r``'s block of the objective's Hessian in its own parameters (its factors, then its
    bias when ``penalty.fit_bias``) is ``H_r = T'T + P``: ``T`` the fixed side's rows it rated
    (with a 1 for the bias, as `solve_rows` gathers them), ``P`` its penalty times
    ``row_weight[r]``. Writes ``out[r]`` (d x d float64, upper triangular) ``= L^-T`` for
    ``H_r = L L'``, so that ``out[r] out[r]' = H_r^-1``: the change of variables that makes
    the block the identity. A block that is not positive definite (no ratings and no
    penalty, or too few ratings without one) gets ``1 / sqrt`` of its diagonal instead, 1
    where that is 0. Returns the number of such rows.
    """
    indptr, cols, values, chunks = rows.indptr, rows.indices, rows.values, rows.chunks
    F, col_offset = other.factors, other.offset
    reg, reg_bias, fit_bias = penalty.reg, penalty.reg_bias, penalty.fit_bias
    k = F.shape[1]
    d = k + 1 if fit_bias else k
    n_chunks = chunks.shape[0] - 1
    fallbacks = np.zeros(n_chunks, dtype=np.int64)
    next_chunk = np.zeros(1, dtype=np.int64)
    for task in prange(_TASKS):  # as in `solve_rows`
        c = take_next(next_chunk)
        if c >= n_chunks:
            continue
        A = np.empty((d + 1, d + 1))
        diagonal = np.empty(d)
        gram = _scratch_for(F, (d + 1, d + 1))
        tile = _scratch_for(F, (_TILE_ROWS, d + 1))
        while c < n_chunks:
            for r in range(chunks[c], chunks[c + 1]):
                row_reg, row_reg_bias = reg * row_weight[r], reg_bias * row_weight[r]
                _row_gram(cols, values, indptr[r], indptr[r + 1], F, col_offset, 0.0,
                          fit_bias, A, gram, tile)
                for f in range(d):
                    A[f, f] += row_reg if f < k else row_reg_bias
                    diagonal[f] = A[f, f]
                block = out[r]
                for i in range(d):
                    for j in range(d):
                        block[i, j] = 0.0
                if not _singular_by_count(indptr[r + 1] - indptr[r], k, row_reg, row_reg_bias,
                                          fit_bias) and _cholesky_in_place(A, d):
                    # Column j of L^-1 by forward substitution, stored as row j of L^-T.
                    for j in range(d):
                        block[j, j] = 1.0 / A[j, j]
                        for i in range(j + 1, d):
                            acc = 0.0
                            for m in range(j, i):
                                acc -= A[i, m] * block[j, m]
                            block[j, i] = acc / A[i, i]
                else:
                    fallbacks[c] += 1
                    for f in range(d):
                        block[f, f] = 1.0 / np.sqrt(diagonal[f]) if diagonal[f] > 0.0 else 1.0
            c = take_next(next_chunk)
    return fallbacks.sum()


@nb.njit(cache=True, nogil=True)
def row_weight(count, power):
    """A row's penalty multiplier from its number of ratings: ``count ** power``, and 1 when
    ``power`` is 0 (no weighting, even for a row without ratings)."""
    if power == 0.0:
        return 1.0
    return float(count) ** power


@nb.njit(cache=True, nogil=True)
def row_weights(counts, power, out):
    """`row_weight` of every row: ``out[r]`` from ``counts[r]``."""
    for r in range(counts.shape[0]):
        out[r] = row_weight(counts[r], power)
