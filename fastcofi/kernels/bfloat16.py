"""Reduced-precision copies of a fixed side for row solves: bfloat16 bits (`to_bfloat16`) and
the widening of their rows, or of float32 ones, as a row solve gathers them."""

import numba as nb
import numpy as np
from llvmlite import ir
from numba import prange
from numba.core import types
from numba.extending import intrinsic, overload

from ._jit import _FASTMATH
from .vectors import NATIVE_HALF_MASKS, NATIVE_MASKS, WIDTHS, load_bfloat16_row, load_row, store_row

# Rows converted per task in `to_bfloat16`, through one float32 buffer.
_CONVERT_ROWS = 4096


@nb.njit(parallel=True, cache=True, nogil=True)
def to_bfloat16(source, out):
    """``source`` (n, k) rounded to bfloat16 into ``out`` (n, k) uint16: each value's float32
    rounded to its upper 16 bits (to nearest, ties to even; NaN stays NaN): 8 significant
    bits, within 2^-8 of it relatively. `solve_rows` reads such a copy of a fixed side too
    large for the cache: half the bytes of float32 for each random read."""
    n, k = source.shape
    for block in prange((n + _CONVERT_ROWS - 1) // _CONVERT_ROWS):
        buffer = np.empty(k, np.float32)
        bits = buffer.view(np.uint32)
        for r in range(block * _CONVERT_ROWS, min(n, (block + 1) * _CONVERT_ROWS)):
            for f in range(k):
                buffer[f] = source[r, f]
            for f in range(k):
                u = bits[f]
                if u & np.uint32(0x7FFFFFFF) > np.uint32(0x7F800000):
                    out[r, f] = np.uint16(0x7FC0)
                else:
                    u += np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))
                    out[r, f] = np.uint16(u >> np.uint32(16))


def _scratch_for(F, shape):
    """Scratch for products of ``F``'s rows: float32 for bfloat16 bits, else ``F``'s type."""
    return np.empty(shape, np.float32 if F.dtype == np.uint16 else F.dtype)


@overload(_scratch_for)
def _scratch_for_jit(F, shape):
    if F.dtype == types.uint16:
        return lambda F, shape: np.empty(shape, np.float32)
    return lambda F, shape: np.empty(shape, F.dtype)


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose bits are the low 32 of ``bits``: a bfloat16 value widened exactly once
    its bits are shifted up by 16. A view of the tile as uint32 did it before, at the cost of an
    array taken, and reference-counted, per gather."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        low = context.cast(builder, args[0], signature.args[0], types.uint32)
        return builder.bitcast(low, ir.FloatType())
    return types.float32(bits), codegen


def _widened_row(F, col, tile, q):
    """Row ``col`` of ``F`` into ``tile[q, :k]`` (`_scratch_for` ``F``): as it is, or, for
    bfloat16 bits, as the float32 values whose upper halves they are (exact)."""
    k = F.shape[1]
    if F.dtype == np.uint16:
        tile[q, :k] = (F[col].astype(np.uint32) << 16).view(np.float32)
    else:
        tile[q, :k] = F[col]


# Inlined: compiled on its own, the copy ran 2-3x as slow as in the gather's loop.
@overload(_widened_row, jit_options={"fastmath": _FASTMATH}, inline="always")
def _widened_row_jit(F, col, tile, q):
    bits = F.dtype == types.uint16

    def loops(F, col, tile, q):
        for f in range(F.shape[1]):
            if bits:
                tile[q, f] = _float32_from_bits(np.uint32(F[col, f]) << np.uint32(16))
            else:
                tile[q, f] = F[col, f]
    if not (tile.dtype == types.float32 and tile.layout == F.layout == "C"
            and (NATIVE_HALF_MASKS if bits else NATIVE_MASKS and F.dtype == types.float32)):
        return loops
    # A row of at most 64 values as one vector (`vectors`): the loops, with k known only at run
    # time, spend more on their bounds than on the copy.
    load = load_bfloat16_row if bits else load_row
    narrow, mid, wide, widest = WIDTHS
    inlined = nb.njit(fastmath=_FASTMATH, inline="always")(loops)

    def by_k(F, col, tile, q):
        k = F.shape[1]
        if k <= narrow:
            store_row(tile, q, k, load(F, col, k, narrow))
        elif k <= mid:
            store_row(tile, q, k, load(F, col, k, mid))
        elif k <= wide:
            store_row(tile, q, k, load(F, col, k, wide))
        elif k <= widest:
            store_row(tile, q, k, load(F, col, k, widest))
        else:
            inlined(F, col, tile, q)
    return by_k
