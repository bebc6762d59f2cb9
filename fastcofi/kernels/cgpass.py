"""One conjugate-gradient pass over a row's gathered tile (`rowsolve._gather`): the two
products of a CG step on the row's normal equations, read from the tile once."""

from functools import cache

import numba as nb
import numpy as np
from numba.core import types
from numba.extending import overload

from ._jit import _FASTMATH, muladd
from .vectors import NATIVE_MASKS, WIDTHS, lane_sum, load_row, load_vector, splat, store_vector


def _normal_products(part, k, x, x_bias, x_target, product, out, squares=None):
    """One conjugate-gradient pass over a row's gathered tile ``part`` (n, width;
    `rowsolve._gather`):
    ``product = T @ x + x_bias + x_target * t`` with ``T`` its first k columns (the factor
    rows) and ``t`` its last (the targets), then ``out = T.T @ product`` (k,), in the tile's
    type. Returns ``product``'s sum, its product with the column of ones when the tile has one.
    With ``squares`` (k,) of the tile's type, also each factor column's sum of squares (the
    first pass of a row gives its diagonal preconditioner too)."""
    factors, targets = part[:, :k], part[:, -1]
    np.dot(factors, x, product)
    product += x_bias
    product += x_target * targets
    np.dot(factors.T, product, out)
    if squares is not None:
        np.einsum("qf,qf->f", factors, factors, out=squares)
    return product.sum()


@overload(_normal_products, jit_options={"fastmath": _FASTMATH, "_nrt": False})
def _normal_products_jit(part, k, x, x_bias, x_target, product, out, squares=None):
    # Compiled, both products come from one pass over the tile, four ratings at a time: four
    # dot products over the factors vectorize as one reduction (a single one of k = 32 does
    # not: LLVM leaves loops that short scalar), and each k-long update of ``out`` then adds
    # four ratings. The loops run over the k factor columns only, the bias and the target
    # added as scalars: over all k + 2 columns, the two past a whole number of vectors ran as a
    # scalar tail for every four ratings. Two BLAS matrix-vector calls took three times as
    # long on rows of hundreds of ratings at k = 32, six times on rows of a dozen. Fused
    # multiply-adds (`muladd`) took a tenth off a pass. The squares are summed in the tile's
    # type too, not widened one by one: they only scale the steps (a preconditioner).
    cast = np.float32 if part.dtype == types.float32 else np.float64
    with_squares = not (squares is None or isinstance(squares, types.NoneType))

    def fused(part, k, x, x_bias, x_target, product, out, squares=None):
        n = part.shape[0]
        last = part.shape[1] - 1
        shift, weight = cast(x_bias), cast(x_target)
        for f in range(k):
            out[f] = 0.0
            if with_squares:
                squares[f] = 0.0
        total = cast(0.0)
        q = 0
        while q + 4 <= n:
            s0, s1, s2, s3 = cast(0.0), cast(0.0), cast(0.0), cast(0.0)
            for f in range(k):
                xf = x[f]
                s0 = muladd(part[q, f], xf, s0)
                s1 = muladd(part[q + 1, f], xf, s1)
                s2 = muladd(part[q + 2, f], xf, s2)
                s3 = muladd(part[q + 3, f], xf, s3)
            s0 = muladd(weight, part[q, last], s0 + shift)
            s1 = muladd(weight, part[q + 1, last], s1 + shift)
            s2 = muladd(weight, part[q + 2, last], s2 + shift)
            s3 = muladd(weight, part[q + 3, last], s3 + shift)
            product[q], product[q + 1], product[q + 2], product[q + 3] = s0, s1, s2, s3
            total += (s0 + s1) + (s2 + s3)
            for f in range(k):
                a0, a1, a2, a3 = part[q, f], part[q + 1, f], part[q + 2, f], part[q + 3, f]
                out[f] = muladd(s3, a3, muladd(s2, a2, muladd(s1, a1, muladd(s0, a0, out[f]))))
                if with_squares:
                    squares[f] = muladd(a3, a3, muladd(a2, a2, muladd(a1, a1, muladd(
                        a0, a0, squares[f]))))
            q += 4
        while q < n:
            s = cast(0.0)
            for f in range(k):
                s = muladd(part[q, f], x[f], s)
            s = muladd(weight, part[q, last], s + shift)
            product[q] = s
            total += s
            for f in range(k):
                out[f] = muladd(s, part[q, f], out[f])
                if with_squares:
                    squares[f] = muladd(part[q, f], part[q, f], squares[f])
            q += 1
        return total

    vectors = [part, x, out] + ([squares] if with_squares else [])
    if not (NATIVE_MASKS and all(array.dtype == types.float32 and array.layout == "C"
                                 for array in vectors)):
        return fused
    fused = nb.njit(fastmath=_FASTMATH, _nrt=False)(fused)
    narrow, mid, wide, widest = (_pass_in_registers(lanes, with_squares) for lanes in WIDTHS)

    def by_k(part, k, x, x_bias, x_target, product, out, squares=None):
        if k <= WIDTHS[0]:
            return narrow(part, k, x, x_bias, x_target, product, out, squares)
        if k <= WIDTHS[1]:
            return mid(part, k, x, x_bias, x_target, product, out, squares)
        if k <= WIDTHS[2]:
            return wide(part, k, x, x_bias, x_target, product, out, squares)
        if k <= WIDTHS[3]:
            return widest(part, k, x, x_bias, x_target, product, out, squares)
        return fused(part, k, x, x_bias, x_target, product, out, squares)
    return by_k


@cache
def _pass_in_registers(lanes, with_squares):
    """`_normal_products` of a float32 tile of at most ``lanes`` factor columns, each rating's
    row loaded once as a `Float32Vector` and ``x``, ``out`` and the squares held as such for
    the whole pass. Where the pass of `_normal_products_jit` reads a row twice and loads and
    stores ``out`` every four ratings, this reads the tile once (an ALS sweep at 1e7 ratings and
    k = 32 in 0.89 of the time: bench/README.md). Two ratings at a time, each with its own
    sum into ``out``: one chain of dependent multiply-adds through the whole row would wait on
    each."""
    def fused(part, k, x, x_bias, x_target, product, out, squares):
        n = part.shape[0]
        last = part.shape[1] - 1
        shift, weight = np.float32(x_bias), np.float32(x_target)
        x_lanes = load_vector(x, k, lanes)
        zero = splat(0.0, x_lanes)
        even, odd, diagonal = zero, zero, zero
        total = np.float32(0.0)
        for q in range(0, n - 1, 2):
            a, b = load_row(part, q, k, lanes), load_row(part, q + 1, k, lanes)
            sa = muladd(weight, part[q, last], lane_sum(a * x_lanes) + shift)
            sb = muladd(weight, part[q + 1, last], lane_sum(b * x_lanes) + shift)
            product[q], product[q + 1] = sa, sb
            total += sa + sb
            even = muladd(splat(sa, a), a, even)
            odd = muladd(splat(sb, b), b, odd)
            if with_squares:
                diagonal = muladd(b, b, muladd(a, a, diagonal))
        if n % 2:
            q = n - 1
            a = load_row(part, q, k, lanes)
            sa = muladd(weight, part[q, last], lane_sum(a * x_lanes) + shift)
            product[q] = sa
            total += sa
            even = muladd(splat(sa, a), a, even)
            if with_squares:
                diagonal = muladd(a, a, diagonal)
        store_vector(out, k, even + odd)
        if with_squares:
            store_vector(squares, k, diagonal)
        return total
    return nb.njit(fastmath=_FASTMATH, _nrt=False)(fused)
