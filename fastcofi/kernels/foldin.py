"""A new row's factors from its ratings with the other side fixed (fold-in of a new user or
item): the training row solve (`fastcofi.kernels.rowsolve.solve_row`) behind checks of the
ratings it is given."""

import numba as nb
import numpy as np

from .rowsolve import Penalty, row_weight, solve_row
from .sparse import lookup_int


@nb.njit(cache=True, nogil=True)
def _fold_known(index, values, other, penalty, weight_power, out, check_repeats):
    """`solve_row` on the ratings whose ``index`` is >= 0; returns ``(beta, status)``, status 1
    when ``check_repeats`` and one of those indices repeats."""
    m = 0
    for p in range(index.shape[0]):
        if index[p] >= 0:
            m += 1
    cols = np.empty(m, dtype=np.int64)
    vals = np.empty(m)
    q = 0
    for p in range(index.shape[0]):
        if index[p] >= 0:
            cols[q] = index[p]
            vals[q] = values[p]
            q += 1
    if check_repeats and _has_repeat(cols):
        return 0.0, 1
    weight = row_weight(m, weight_power)
    weighted = Penalty(penalty.reg * weight, penalty.reg_bias * weight, penalty.fit_bias)
    beta = solve_row(cols, vals, other, 0.0, weighted, out)
    if np.isnan(beta):
        for f in range(out.shape[0]):
            out[f] = 0.0
        return 0.0, 2
    return beta, 0


@nb.njit(cache=True, nogil=True)
def _has_repeat(values):
    if values.shape[0] < 2:
        return False
    ordered = np.sort(values)
    for p in range(1, ordered.shape[0]):
        if ordered[p] == ordered[p - 1]:
            return True
    return False


@nb.njit(cache=True, nogil=True)
def _all_finite(values):
    for p in range(values.shape[0]):
        if not np.isfinite(values[p]):
            return False
    return True


@nb.njit(cache=True, nogil=True)
def fold_in_row(index, values, other, penalty, weight_power, out):
    """A new row's factors from its ratings with ``other`` (`Other`) fixed: the training row
    solve, `solve_row`.

    ``index[p]`` is the row of ``other`` that ``values[p]`` rates, -1 for an unknown one
    (ignored). ``penalty`` (`Penalty`) is multiplied by (the number of known ratings) **
    ``weight_power``, as in training. Writes ``out`` (length k) and returns ``(beta,
    status)``: status 0 on success, 1 when a known column repeats, 2 when the system is not
    positive definite (``out`` and ``beta`` are zeros, as training leaves such a row), 3 when
    a value is not finite.
    """
    if not _all_finite(values):
        return 0.0, 3
    return _fold_known(index, values, other, penalty, weight_power, out, True)


@nb.njit(cache=True, nogil=True)
def fold_in_ids(known_ids, query, values, other, penalty, weight_power, index, out):
    """`fold_in_row` from integer external ids: looks ``query`` up in the sorted ``known_ids``
    (writing ``index``, -1 for unknown), then solves. Status 1 when any id repeats."""
    if not _all_finite(values):
        return 0.0, 3
    if _has_repeat(query):
        return 0.0, 1
    lookup_int(known_ids, query, index)
    return _fold_known(index, values, other, penalty, weight_power, out, False)
