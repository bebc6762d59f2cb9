"""The compiled float32 vectors of `fastcofi.kernels.vectors` against numpy: masked loads and
stores of rows shorter than and as long as each width, bfloat16 widening, float64 stores,
lane sums."""

import numba as nb
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastcofi.kernels._jit import muladd
from fastcofi.kernels.vectors import (
    WIDTHS,
    lane_sum,
    load_bfloat16_row,
    load_row,
    load_vector,
    splat,
    store_row,
    store_vector,
)

from .conftest import JIT_DISABLED

pytestmark = pytest.mark.skipif(JIT_DISABLED, reason="intrinsics run compiled only")


def _compiled(lanes):
    @nb.njit
    def combine(rows, bits, count, x, out_rows, out, wide):
        """Row 0 plus twice the widened bits of row 1 into ``out_rows[1]``; row 0 as it is into
        ``out_rows[0]``; ``x`` times 3 into ``out`` and, widened, ``wide`` (float64); returns
        the lane sum of row 0 times x."""
        a = load_row(rows, 0, count, lanes)
        b = load_bfloat16_row(bits, 1, count, lanes)
        x_lanes = load_vector(x, count, lanes)
        store_row(out_rows, 0, count, a)
        store_row(out_rows, 1, count, muladd(splat(2.0, b), b, a))
        store_vector(out, count, x_lanes * splat(3.0, x_lanes))
        store_vector(wide, count, x_lanes * splat(3.0, x_lanes))
        return lane_sum(a * x_lanes)
    return combine


_BY_WIDTH = {lanes: _compiled(lanes) for lanes in WIDTHS}


@given(st.integers(0, 10_000), st.sampled_from(WIDTHS), st.integers(0, 64))
def test_vectors_read_and_write_the_first_count_values_only(seed, lanes, count):
    """Each intrinsic at each width with 0 to ``lanes`` values: what it loads, stores, adds,
    multiplies and sums is numpy's, and nothing past ``count`` is read or written."""
    count %= lanes + 1
    rng = np.random.default_rng(seed)
    # Rows as long as the width: the lanes from ``count`` on hold NaN, which a load must not
    # take in, and a store must leave the sentinels after ``count`` as they are.
    rows = rng.normal(size=(2, lanes)).astype(np.float32)
    rows[:, count:] = np.nan
    bits = (rows.view(np.uint32) >> 16).astype(np.uint16)
    x = np.full(lanes + 3, np.nan, np.float32)
    x[:count] = rng.normal(size=count)
    out_rows = np.full((2, lanes + 3), 7.0, np.float32)
    out = np.full(lanes + 3, 7.0, np.float32)
    wide = np.full(lanes + 3, 7.0)
    total = _BY_WIDTH[lanes](rows, bits, count, x, out_rows, out, wide)
    widened = (bits[1, :count].astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(out_rows[0, :count], rows[0, :count])
    np.testing.assert_allclose(out_rows[1, :count], rows[0, :count] + 2 * widened,
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out[:count], 3 * x[:count], rtol=1e-6)
    np.testing.assert_array_equal(wide[:count], out[:count].astype(np.float64))
    assert (out_rows[:, count:] == 7.0).all() and (out[count:] == 7.0).all()
    assert (wide[count:] == 7.0).all()
    expected = float(rows[0, :count].astype(np.float64) @ x[:count])
    assert abs(total - expected) <= 1e-5 * (1 + np.abs(rows[0, :count]) @ np.abs(x[:count]))
