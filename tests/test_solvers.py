import platform
import sys
import time
import warnings
from unittest import mock

import numba as nb
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy.optimize import check_grad

from fastcofi import ConvergenceWarning, MatrixFactorization, Ratings
from fastcofi._parallel import threads
from fastcofi.data.synthetic import planted
from fastcofi.kernels._jit import muladd, take_next
from fastcofi.kernels.bfloat16 import to_bfloat16
from fastcofi.kernels.cgpass import _normal_products
from fastcofi.kernels.cholesky import _cholesky_in_place
from fastcofi.kernels.rowsolve import (
    _CG_MIN,
    _CG_ROWS,
    _TILE_ROWS,
    Other,
    Penalty,
    Solved,
    solve_row,
    solve_rows,
)
from fastcofi.kernels.sparse import Rows
from fastcofi.train import objective as flat_objective
from fastcofi.train import solvers
from fastcofi.train.objective import FlatObjective
from fastcofi.train.solvers import (
    DivergenceError,
    ScaledObjective,
    minimize_als,
    minimize_scipy,
)

from .conftest import JIT_DISABLED
from .strategies import finite_difference_error, relative_error, sparse_problems


def _problem(seed=0, n_users=60, n_items=40, density=0.3):
    """Planted rank-3 ratings plus noise: a well-determined minimum for the solvers to agree on."""
    rng = np.random.default_rng(seed)
    mask = rng.random((n_items, n_users)) < density
    items, users = np.nonzero(mask)
    planted = 3.0 + rng.normal(size=(n_items, 3)) @ rng.normal(size=(n_users, 3)).T
    values = planted[items, users] + 0.3 * rng.normal(size=items.shape[0])
    return Ratings.from_arrays(
        users, items, values, all_users=range(n_users), all_items=range(n_items)
    )


def _dense_objective(ratings, X, Theta, bi, bu, mu, reg, reg_bias, weighting):
    users, items, values = ratings.coo()
    err = np.einsum("ij,ij->i", X[items], Theta[users]) + mu + bi[items] + bu[users] - values
    power = {"none": 0.0, "count": 1.0, "sqrt": 0.5}[weighting]
    wi = np.diff(ratings.by_item[0]).astype(float) ** power
    wu = np.diff(ratings.by_user[0]).astype(float) ** power
    penalty = reg * (wi @ np.sum(X**2, axis=1) + wu @ np.sum(Theta**2, axis=1))
    penalty += reg_bias * (wi @ bi**2 + wu @ bu**2)
    return 0.5 * err @ err + 0.5 * penalty


@given(sparse_problems(max_items=15, max_users=15, max_factors=4),
       st.sampled_from(["none", "count", "sqrt"]))
def test_biased_weighted_objective_matches_formula_and_finite_differences(problem, weighting):
    ratings, _, _, X, Theta, reg = problem
    rng = np.random.default_rng(0)
    bi, bu = rng.normal(size=ratings.n_items), rng.normal(size=ratings.n_users)
    objective = FlatObjective(
        ratings, X.shape[1], reg, mu=0.7, learn_biases=True, reg_bias=0.3, reg_weighting=weighting
    )
    x0 = objective.pack(X, Theta, bi, bu)
    cost, grad = objective(x0)
    expected = _dense_objective(ratings, X, Theta, bi, bu, 0.7, reg, 0.3, weighting)
    assert abs(cost - expected) <= 1e-9 * (1 + abs(expected))
    error = finite_difference_error(objective, x0)
    assert error <= 1e-5 * (1 + np.linalg.norm(grad))


@given(st.integers(0, 10_000), st.integers(1, 6), st.booleans(), st.integers(0, 12))
def test_row_solve_equals_normal_equations(seed, k, fit_bias, n):
    rng = np.random.default_rng(seed)
    F = rng.normal(size=(15, k))
    col_offset = rng.normal(size=15)
    cols = rng.choice(15, size=n, replace=False).astype(np.int32)
    values = rng.normal(size=n)
    reg, reg_bias, row_offset = 0.7, 0.2, 0.4
    out = np.empty(k)
    beta = solve_row(cols, values, Other(F, col_offset), row_offset,
                     Penalty(reg, reg_bias, fit_bias), out)
    design = np.hstack([F[cols], np.ones((n, 1))]) if fit_bias else F[cols]
    target = values - col_offset[cols] - row_offset
    penalty = np.diag([reg] * k + ([reg_bias] if fit_bias else []))
    expected = np.linalg.solve(design.T @ design + penalty, design.T @ target)
    assert relative_error(out, expected[:k]) <= 1e-10
    assert beta == pytest.approx(expected[k] if fit_bias else 0.0, abs=1e-10)


def _row_problem(rng, k, fit_bias, lengths, dtype):
    """Rows of the given lengths over 2 tiles' worth of columns, as `solve_rows` reads them."""
    n_cols = max(2 * _TILE_ROWS, _CG_ROWS) + 10
    F = rng.normal(size=(n_cols, k)).astype(dtype)
    col_offset = rng.normal(size=n_cols)
    row_offset = rng.normal(size=len(lengths))
    weight = rng.uniform(0.5, 2.0, size=len(lengths))
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    cols = np.concatenate([np.sort(rng.choice(n_cols, n, replace=False)) for n in lengths])
    values = rng.normal(size=cols.shape[0])
    chunks = np.array([0, len(lengths) // 2, len(lengths)], dtype=np.int64)
    return Rows(indptr, cols.astype(np.int32), values, chunks), F, col_offset, row_offset, weight


def _dense_rows(rows, F, col_offset, row_offset, weight, reg, reg_bias, fit_bias):
    """Per row: (design, target, penalty diagonal, exact solution) in float64."""
    F = F.astype(np.float64)
    k = F.shape[1]
    for r in range(len(row_offset)):
        span = slice(rows.indptr[r], rows.indptr[r + 1])
        design = F[rows.indices[span]]
        if fit_bias:
            design = np.hstack([design, np.ones((design.shape[0], 1))])
        target = rows.values[span] - col_offset[rows.indices[span]] - row_offset[r]
        penalty = weight[r] * np.array([reg] * k + ([reg_bias] if fit_bias else []))
        exact = np.linalg.solve(design.T @ design + np.diag(penalty), design.T @ target)
        yield design, target, penalty, exact


@given(st.integers(0, 10_000), st.integers(1, 9), st.booleans(),
       st.lists(st.sampled_from([0, 1, 2, 5, 9, 10, 11, 12, 13, _TILE_ROWS - 1, _TILE_ROWS,
                                 2 * _TILE_ROWS + 3, _CG_ROWS + 1]), min_size=1, max_size=5),
       st.sampled_from([0.0, 0.05, 1.0, 3.0]), st.sampled_from([0.0, 0.3]),
       st.sampled_from([np.float64, np.float32]))
# Rows of 6 to 16 ratings below d = 17: every group and remainder of the dual system's
# four-at-a-time loops (the drawn k up to 9 reaches rows of at most 9 there).
@example(seed=1, k=16, fit_bias=True, lengths=[6, 7, 8, 13, 16], reg=0.05, reg_bias=0.3,
         dtype=np.float64)
@example(seed=2, k=16, fit_bias=False, lengths=[15, 9, 11], reg=1.0, reg_bias=0.0,
         dtype=np.float32)
@example(seed=62, k=9, fit_bias=True, lengths=[0, 0, 0], reg=0.0, reg_bias=0.0,
         dtype=np.float32)
# Float32 short rows at the widths of `vectors.WIDTHS` past the drawn k, and past the last.
@example(seed=3, k=32, fit_bias=True, lengths=[1, 6, 11, 31], reg=0.05, reg_bias=0.3,
         dtype=np.float32)
@example(seed=4, k=40, fit_bias=False, lengths=[2, 9, 39], reg=1.0, reg_bias=0.0,
         dtype=np.float32)
@example(seed=5, k=65, fit_bias=True, lengths=[1, 11, 64], reg=0.05, reg_bias=0.3,
         dtype=np.float32)
def test_row_solves_match_a_dense_solve(seed, k, fit_bias, lengths, reg, reg_bias, dtype):
    """Every path of the exact row solve (the n x n system of a short row, the tiled normal
    equations of a long one, several tiles, a zero penalty) against numpy, rows of a CSR solved
    in parallel with their own penalty weights; with the float32 factors of a training sweep,
    to float32 rounding of the products. The summary's cost and penalty from their definitions
    at the solution. An unpenalized bias beside penalized factors: the Gram path even for a
    short row."""
    rng = np.random.default_rng(seed)
    if reg == 0.0:
        # Without a penalty a row needs d ratings to be determined (a rank-deficient system
        # may pass the factorization on rounding: test_row_solve_reports_a_singular_system).
        lengths = [max(n, k + 1) for n in lengths]
    elif reg_bias == 0.0 and fit_bias:
        lengths = [max(n, 1) for n in lengths]  # an unpenalized bias needs a rating
    rows, F, col_offset, row_offset, weight = _row_problem(rng, k, fit_bias, lengths, dtype)
    start = rng.normal(size=(len(lengths), k))
    start_bias = rng.normal(size=len(lengths))
    out, out_bias = start.copy(), start_bias.copy()
    summary = solve_rows(rows, Other(F, col_offset), Penalty(reg, reg_bias, fit_bias),
                         row_offset, weight, Solved(out, out_bias), 0)
    # float32 products: errors of about 1e-7 relative per product, amplified by the system's
    # conditioning, which a zero penalty leaves large.
    tolerance = 1e-9 if dtype == np.float64 else (1e-4 if reg > 0 else 1e-2)
    squares = penalties = ill_conditioned = 0.0
    dense = _dense_rows(rows, F, col_offset, row_offset, weight, reg, reg_bias, fit_bias)
    for r, (design, target, penalty, expected) in enumerate(dense):
        # Any solve's error grows with its system's condition number: without a penalty, a
        # row of exactly d random ratings can reach 1e11 (2.9e-8 relative, seed 7167, k = 3);
        # with float32 products 5.6e5 gave 1.6e-2 (seed 62, k = 9).
        row_tolerance = max(tolerance, (1e-14 if dtype == np.float64 else 1e-6)
                            * np.linalg.cond(design.T @ design + np.diag(penalty)))
        ill_conditioned += (row_tolerance - tolerance) * np.sum(target**2)
        assert relative_error(out[r], expected[:k]) <= row_tolerance
        solution = out[r]
        if fit_bias:
            assert out_bias[r] == pytest.approx(expected[k],
                                                abs=row_tolerance * (1 + abs(expected[k])))
            solution = np.append(solution, out_bias[r])
        squares += np.sum((design @ solution - target) ** 2)
        penalties += np.sum(penalty * solution**2)
    assert summary.failures == 0
    # The cost's squares come from the normal equations (t't - w'c - w'Pw) on long rows: their
    # rounding is relative to the targets' squared sum, not to the residuals'.
    scale = sum(np.sum(t**2) for _, t, _, _ in
                _dense_rows(rows, F, col_offset, row_offset, weight, reg, reg_bias, fit_bias))
    assert summary.penalty == pytest.approx(0.5 * penalties, rel=tolerance, abs=1e-12)
    assert abs(summary.cost - 0.5 * (squares + penalties)) <= (tolerance * (1 + scale)
                                                              + ill_conditioned)


# With the JIT off, the loaded profile's count (nojit's, not more): rows of `_CG_ROWS` ratings
# are gathered one rating at a time in Python there, and 25 examples took 34 s in one run and
# 139 s in another.
_FEW_EXAMPLES = settings().max_examples


@settings(max_examples=_FEW_EXAMPLES if JIT_DISABLED else 25)
@given(st.integers(0, 10_000), st.integers(4, 9), st.booleans(),
       st.lists(st.sampled_from([0, 3, _CG_MIN - 1, _CG_MIN, 40, _CG_ROWS, _CG_ROWS + 1]),
                min_size=1, max_size=5),
       st.sampled_from([np.float64, np.float32]))
def test_training_rows_take_conjugate_gradient_steps_from_where_they_are(seed, k, fit_bias,
                                                                         lengths, dtype):
    """With ``cg_steps`` fewer than the unknowns, a row of `_CG_MIN` to `_CG_ROWS` ratings takes
    that many preconditioned CG steps from the values ``out`` holds: never a higher row cost
    than its start, the exact solution after repeated calls, and the summary's cost that of
    the result. Shorter and longer rows are solved exactly whatever ``cg_steps``."""
    rng = np.random.default_rng(seed)
    rows, F, col_offset, row_offset, weight = _row_problem(rng, k, fit_bias, lengths, dtype)
    # Penalties that bound the rows' conditioning: restarted every 2 steps, CG's progress per
    # call shrinks with it.
    reg, reg_bias = 0.5, 0.3
    d = k + 1 if fit_bias else k
    start = rng.normal(size=(len(lengths), k))
    start_bias = rng.normal(size=len(lengths))
    out, out_bias = start.copy(), start_bias.copy()
    penalty_spec = Penalty(reg, reg_bias, fit_bias)
    summary = solve_rows(rows, Other(F, col_offset), penalty_spec, row_offset, weight,
                         Solved(out, out_bias), 2)
    first, first_bias = out.copy(), out_bias.copy()
    exact, exact_bias = start.copy(), start_bias.copy()
    solve_rows(rows, Other(F, col_offset), penalty_spec, row_offset, weight,
               Solved(exact, exact_bias), 0)
    tolerance = 1e-9 if dtype == np.float64 else 1e-4
    squares = penalties = 0.0
    dense = list(_dense_rows(rows, F, col_offset, row_offset, weight, reg, reg_bias, fit_bias))

    def row_cost(design, target, penalty, solution):
        return np.sum((design @ solution - target) ** 2) + np.sum(penalty * solution**2)

    def joined(factors, bias, r):
        return np.append(factors[r], bias[r]) if fit_bias else factors[r]

    for r, (design, target, penalty, expected) in enumerate(dense):
        solution = joined(first, first_bias, r)
        stepped = _CG_MIN <= lengths[r] <= _CG_ROWS
        if stepped:
            before = row_cost(design, target, penalty, joined(start, start_bias, r))
            assert row_cost(design, target, penalty, solution) <= before * (1 + tolerance)
            # Two steps in d >= 4 unknowns from a random start: not yet the solution. In
            # float32 the kernel's exact solve is itself up to `tolerance` away, and two steps
            # on a well-conditioned row of 1024 ratings can come that close (9e-5, seed 3256):
            # they must be farther than that solve is.
            floor = tolerance if dtype == np.float64 else 10 * relative_error(
                joined(exact, exact_bias, r), expected)
            assert relative_error(solution, expected) > floor
        else:
            assert relative_error(solution, expected) <= (tolerance if lengths[r] else 1e-12)
        squares += np.sum((design @ solution - target) ** 2)
        penalties += np.sum(penalty * solution**2)
    scale = sum(np.sum(t**2) for _, t, _, _ in dense)
    assert abs(summary.cost - 0.5 * (squares + penalties)) <= tolerance * (1 + scale)
    # Repeated sweeps head for the exact solve's solution (restarted every 2 steps, they get
    # there geometrically, at a rate set by the row's conditioning).
    for _ in range(100):
        solve_rows(rows, Other(F, col_offset), penalty_spec, row_offset, weight,
                   Solved(out, out_bias), 2)
    for r, (_, _, _, expected) in enumerate(dense):
        error = relative_error(joined(out, out_bias, r), expected)
        assert error <= max(10 * tolerance, 1e-3 * relative_error(joined(first, first_bias, r),
                                                                   expected))
    # As many steps as unknowns: solved exactly, in one call.
    out[...], out_bias[...] = start, start_bias
    solve_rows(rows, Other(F, col_offset), penalty_spec, row_offset, weight,
               Solved(out, out_bias), d)
    for r, (_, _, _, expected) in enumerate(dense):
        assert relative_error(joined(out, out_bias, r), expected) <= tolerance


def _bfloat16_reference(values):
    """Each float32 value rounded to the nearer of the two bfloat16 numbers around it (its
    upper 16 bits, and one unit more in magnitude), a tie to the one whose last bit is 0."""
    single = np.asarray(values, dtype=np.float32)
    bits = single.view(np.uint32).astype(np.int64)
    low = bits & 0xFFFF0000
    high = low + 0x10000
    def widen(b):
        return b.astype(np.uint32).view(np.float32).astype(np.float64)

    to_low = np.abs(single.astype(np.float64) - widen(low))
    to_high = np.abs(widen(high) - single.astype(np.float64))
    even_low = (low >> 16) % 2 == 0
    pick_low = (to_low < to_high) | ((to_low == to_high) & even_low)
    return (np.where(pick_low, low, high) >> 16).astype(np.uint16)


# Finite bfloat16 numbers only: from about 3.39e38 up, float32 values round to infinity, which
# distance cannot tell.
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32)
                .filter(lambda v: abs(v) < 3e38), min_size=1, max_size=40),
       st.integers(1, 5))
@example([1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, -(1.0 + 2.0**-8), 2.0**-130, -0.0, 0.0, 1e38,
          np.float32(1.0 + 2.0**-8 + 2.0**-20)], 1)
def test_bfloat16_copies_round_to_nearest_with_ties_to_even(values, k):
    """`to_bfloat16` against rounding by distance (ties, subnormals and signs included); its
    values within 2^-8 of the float32 ones; infinities kept and NaN still NaN."""
    values = np.resize(np.asarray(values, dtype=np.float64), (len(values), k))
    out = np.empty(values.shape, np.uint16)
    to_bfloat16(values, out)
    np.testing.assert_array_equal(out, _bfloat16_reference(values))
    widened = (out.astype(np.uint32) << 16).view(np.float32)
    # Subnormal float32 values keep a spacing of 2^-133 in bfloat16: absolute there.
    assert np.all(np.abs(widened - values) <= 2.0**-8 * np.abs(values) + 2.0**-134)
    special = np.array([[np.inf, -np.inf, np.nan]])
    out = np.empty(special.shape, np.uint16)
    to_bfloat16(special, out)
    widened = (out.astype(np.uint32) << 16).view(np.float32)
    assert widened[0, 0] == np.inf and widened[0, 1] == -np.inf and np.isnan(widened[0, 2])


@settings(max_examples=25)
@given(st.integers(0, 10_000), st.sampled_from([1, 5, 8, 9, 17, 32, 33, 64, 65]), st.booleans(),
       st.lists(st.sampled_from([0, 1, 5, 11, _CG_MIN, 40, _TILE_ROWS + 3, _CG_ROWS + 1]),
                min_size=1, max_size=5),
       st.sampled_from([0, 2]))
def test_row_solves_read_bfloat16_bits_as_the_float32_values_they_widen_to(seed, k, fit_bias,
                                                                          lengths, cg_steps):
    """A fixed side given as bfloat16 bits (uint16) is read as the float32 numbers they are
    the upper halves of: every path (short rows, CG steps, tiles) gives bit for bit what the
    float32 copy of those numbers gives, for k of each of `vectors.WIDTHS` (whose rows are
    widened as vectors) and past them."""
    rng = np.random.default_rng(seed)
    rows, F, col_offset, row_offset, weight = _row_problem(rng, k, fit_bias, lengths,
                                                           np.float64)
    bits = np.empty(F.shape, np.uint16)
    to_bfloat16(F, bits)
    widened = (bits.astype(np.uint32) << 16).view(np.float32)
    assert not np.array_equal(widened, F.astype(np.float32))
    start = rng.normal(size=(len(lengths), k)), rng.normal(size=len(lengths))
    results = []
    for factors in (bits, widened):
        out, out_bias = start[0].copy(), start[1].copy()
        summary = solve_rows(rows, Other(factors, col_offset), Penalty(0.5, 0.3, fit_bias),
                             row_offset, weight, Solved(out, out_bias), cg_steps)
        results.append((out, out_bias, summary))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    assert results[0][2] == results[1][2]


@pytest.mark.parametrize("fit_bias", [False, True])
def test_as_many_ratings_as_unpenalized_factors_is_solved_without_a_penalty(fit_bias):
    """reg = 0 with exactly k ratings determines the factors (a penalized bias adds nothing
    unknown): solved, not reported singular; without a bias every rating is met exactly."""
    k = 4
    F = np.eye(k) * 2.0 + 0.1
    values = np.array([1.0, -0.5, 2.0, 0.3])
    out, out_bias = np.full((1, k), np.nan), np.full(1, np.nan)
    summary = solve_rows(
        Rows(np.array([0, k]), np.arange(k, dtype=np.int32), values, np.array([0, 1])),
        Other(F, np.zeros(k)), Penalty(0.0, 0.5, fit_bias), np.zeros(1), np.ones(1),
        Solved(out, out_bias), 0)
    design = np.hstack([F, np.ones((k, 1))]) if fit_bias else F
    penalty = np.diag([0.0] * k + ([0.5] if fit_bias else []))
    expected = np.linalg.solve(design.T @ design + penalty, design.T @ values)
    assert summary.failures == 0
    np.testing.assert_allclose(out[0], expected[:k], rtol=1e-10, atol=1e-12)
    if not fit_bias:
        np.testing.assert_allclose(F @ out[0], values, rtol=1e-10)


@settings(max_examples=_FEW_EXAMPLES if JIT_DISABLED else 20)  # as above
@given(st.integers(0, 10_000), st.sampled_from([4, 7, 16]), st.booleans(), st.integers(1, 3),
       st.sampled_from([_CG_MIN, 30, _CG_ROWS]))
@example(seed=0, k=16, fit_bias=True, steps=2, n=_CG_MIN)
def test_conjugate_gradient_steps_are_jacobi_preconditioned_cg(seed, k, fit_bias, steps, n):
    """A stepped row's result is that of `steps` iterations of conjugate gradients on its normal
    equations, preconditioned by their diagonal, from where the row was (numpy, float64); also
    with fewer ratings than unknowns (k = 16)."""
    rng = np.random.default_rng(seed)
    rows, F, col_offset, row_offset, weight = _row_problem(rng, k, fit_bias, [n], np.float64)
    reg, reg_bias = 0.2, 0.7
    start, start_bias = rng.normal(size=(1, k)), rng.normal(size=1)
    out, out_bias = start.copy(), start_bias.copy()
    solve_rows(rows, Other(F, col_offset), Penalty(reg, reg_bias, fit_bias), row_offset, weight,
               Solved(out, out_bias), steps)
    ((design, target, penalty, _),) = _dense_rows(rows, F, col_offset, row_offset, weight, reg,
                                                  reg_bias, fit_bias)
    system = design.T @ design + np.diag(penalty)
    w = np.append(start[0], start_bias[0]) if fit_bias else start[0].copy()
    inverse_diagonal = 1.0 / np.diag(system)
    r = design.T @ target - system @ w
    z = inverse_diagonal * r
    p = z.copy()
    for _ in range(steps):
        alpha = (r @ z) / (p @ system @ p)
        w = w + alpha * p
        r_next = r - alpha * system @ p
        z_next = inverse_diagonal * r_next
        p = z_next + (r_next @ z_next) / (r @ z) * p
        r, z = r_next, z_next
    assert relative_error(out[0], w[:k]) <= 1e-9
    if fit_bias:
        assert out_bias[0] == pytest.approx(w[k], rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("scale", [1e-20, 1.0, 1e20])
def test_cholesky_tells_singular_from_definite_at_any_scale(scale):
    """The pivot test is relative to the system's own diagonal: a positive definite 2 x 2
    factors and a rank-one 3 x 3 (rounding leaves its later pivots) fails, however both are
    scaled."""
    definite = scale * np.array([[4.0, 2.0], [2.0, 3.0]])
    assert _cholesky_in_place(definite, 2)
    np.testing.assert_allclose(np.tril(definite) @ np.tril(definite).T,
                               scale * np.array([[4.0, 2.0], [2.0, 3.0]]), rtol=1e-12)
    v = np.array([1 / 3, 1 / 7, 1 / 11])
    assert not _cholesky_in_place(scale * np.outer(v, v), 3)


def test_row_solve_reports_a_singular_system():
    """Singular by count (fewer ratings than unknowns, no penalty) and by value (enough ratings,
    all-zero factors): NaN, zero factors, and in a sweep's summary one failure whose ratings
    count in full in the cost (its prediction is the offsets alone)."""
    F = np.zeros((3, 2))
    out = np.ones(2)
    beta = solve_row(np.array([0], dtype=np.int32), np.array([1.0]), Other(F, np.zeros(3)), 0.0,
                     Penalty(0.0, 0.0, False), out)
    assert np.isnan(beta) and np.all(out == 0)
    values = np.array([1.0, -2.0, 0.5])
    out = np.ones((1, 2))
    summary = solve_rows(
        Rows(np.array([0, 3]), np.arange(3, dtype=np.int32), values, np.array([0, 1])),
        Other(F, np.full(3, 0.25)), Penalty(0.0, 0.0, False), np.zeros(1), np.ones(1),
        Solved(out, np.zeros(1)), 0)
    assert summary.failures == 1 and np.all(out == 0)
    assert summary.cost == pytest.approx(0.5 * np.sum((values - 0.25) ** 2), rel=1e-12)
    assert summary.penalty == 0.0


@given(st.integers(0, 10_000), st.integers(2, 6), st.booleans())
@example(13, 4, False)  # its last pivot is 5.7e-13 of its diagonal, above the pivot floor
def test_a_row_with_fewer_ratings_than_unknowns_and_no_penalty_fails(seed, k, fit_bias):
    """Its Gram matrix is singular: rounding must not let the factorization pass with a huge
    solution (it did for some factor values when pivots were compared with 0, and for about 1
    draw in 400 when compared with a fixed fraction of their diagonal)."""
    rng = np.random.default_rng(seed)
    F = rng.normal(size=(10, k))
    n = int(rng.integers(1, k))
    out = np.ones(k)
    beta = solve_row(rng.choice(10, n, replace=False).astype(np.int32), rng.normal(size=n),
                     Other(F, rng.normal(size=10)), 0.3, Penalty(0.0, 0.0, fit_bias), out)
    assert np.isnan(beta) and np.all(out == 0)


@pytest.mark.parametrize("normalize", ["item_mean", "biases", "none"])
@pytest.mark.parametrize("weighting", ["none", "count"])
def test_all_solvers_reach_the_same_cost(normalize, weighting):
    ratings = _problem()
    reg = 1.0 if weighting == "count" else 10.0
    costs = {}
    for solver in ("cg", "lbfgs", "als"):
        model = MatrixFactorization(
            3, reg=reg, reg_bias=0.1, normalize=normalize, reg_weighting=weighting, solver=solver,
            max_iter=3000, tol=1e-9, random_state=0,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(ratings)
        costs[solver] = model.history_["cost"][-1]
    assert costs["cg"] == pytest.approx(costs["als"], rel=1e-4)
    assert costs["lbfgs"] == pytest.approx(costs["als"], rel=1e-4)


def test_als_never_increases_the_cost_and_has_no_scipy_result():
    model = MatrixFactorization(4, solver="als", random_state=0).fit(_problem())
    assert model.result_ is None
    assert np.all(np.diff(model.history_["cost"]) <= 1e-9 * model.history_["cost"][0])


def test_biases_fallbacks():
    ratings = Ratings.from_arrays(["a", "a", "b"], ["x", "y", "x"], [1.0, 5.0, 3.0])
    model = MatrixFactorization(2, normalize="biases", random_state=0).fit(ratings)
    mu, bi, bu = model.global_mean_, model.item_bias_, model.user_bias_
    pred = model.predict(["new", "a", "new"], ["y", "new", "new"])
    np.testing.assert_allclose(pred, np.clip([mu + bi[1], mu + bu[0], mu], 1.0, 5.0))
    assert model.item_means_ is None


def test_clip_options():
    ratings = Ratings.from_arrays([1, 1, 2, 2], [1, 2, 1, 2], [1.0, 5.0, 5.0, 1.0])
    kwargs = dict(n_factors=2, reg=1e-4, reg_bias=1e-4, reg_weighting="none", random_state=0,
                  max_iter=2000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clipped = MatrixFactorization(**kwargs).fit(ratings)
        raw = MatrixFactorization(**kwargs, clip=False).fit(ratings)
        narrow = MatrixFactorization(**kwargs, clip=(2.0, 4.0)).fit(ratings)
    users, items = [1, 1, 2, 2], [1, 2, 1, 2]
    assert clipped.predict(users, items).min() >= 1.0 and clipped.predict(users, items).max() <= 5.0
    assert np.all((narrow.predict(users, items) >= 2.0) & (narrow.predict(users, items) <= 4.0))
    assert raw.predict(users, items).max() > 4.9
    with pytest.raises(ValueError, match="clip"):
        MatrixFactorization(clip=(5, 1)).fit(ratings)


@settings(max_examples=20)
@given(sparse_problems(max_items=12, max_users=12, max_factors=3),
       st.sampled_from(["none", "count", "sqrt"]), st.sampled_from([1e-3, 0.3, 5.0]),
       st.booleans())
def test_an_als_sweep_ends_at_the_item_blocks_minimum(problem, weighting, reg_bias, learned):
    """The item rows are solved last in a sweep against the users just solved: with exact row
    solves (no CG steps) the gradient of every item row (factors and bias) is then zero. Stale
    user biases in the item solve leave it nonzero and let a sweep raise the cost. With fixed
    offsets (item means, as ``normalize="item_mean"`` sets them, and a nonzero global offset)
    an item row's targets subtract its own offset: any other sign leaves the gradient nonzero
    too."""
    ratings, _, _, X, Theta, reg = problem
    rng = np.random.default_rng(1)
    offsets = rng.normal(size=ratings.n_items), rng.normal(size=ratings.n_users)
    if learned:
        objective = FlatObjective(ratings, X.shape[1], max(reg, 1e-3), mu=0.4, learn_biases=True,
                                  reg_bias=reg_bias, reg_weighting=weighting)
        params = objective.pack(X, Theta, *offsets)
    else:
        objective = FlatObjective(ratings, X.shape[1], max(reg, 1e-3), mu=0.4,
                                  item_bias=offsets[0], reg_weighting=weighting)
        params = objective.pack(X, Theta)
    cost0, grad0 = objective(params)
    with warnings.catch_warnings(), mock.patch.object(solvers, "CG_STEPS", 0):
        warnings.simplefilter("ignore", ConvergenceWarning)
        minimize_als(objective, params, fit_bias=learned, max_iter=1, tol=0)
    cost, grad = objective(params)
    g_items, _, g_item_bias, _ = objective.unpack(grad)
    # The sweep reads the other side through float32 copies: an item row solves its system
    # with every product of the users' factors rounded to float32, so its gradient is zero up
    # to about 1e-7 of the terms it sums (|x| |theta|^2 and |target| |theta| per rating).
    X1, Theta1, item_bias1, user_bias1 = objective.unpack(params)
    users, items, values = ratings.coo()
    fixed = np.hstack([Theta1, np.ones((ratings.n_users, 1))]) if learned else Theta1
    own = np.hstack([X1, item_bias1[:, None]]) if learned else X1
    target = values - 0.4 - user_bias1[users] - (0.0 if learned else item_bias1[items])
    size = np.max(np.abs(fixed), axis=1, initial=0.0)[users]
    terms = np.max(np.abs(own), axis=1)[items] * fixed.shape[1] * size**2 + np.abs(target) * size
    bound = 1e-5 * (1.0 + np.bincount(items, weights=terms, minlength=ratings.n_items))
    assert np.all(np.max(np.abs(g_items), axis=1, initial=0.0) <= bound)
    if learned:
        assert np.all(np.abs(g_item_bias) <= bound)
    assert cost <= cost0 + 1e-9 * abs(cost0)


def test_als_with_learned_biases_never_raises_the_cost_at_small_penalties():
    """Few ratings per row and small penalties move the biases a lot in one sweep."""
    ratings = _problem(2, n_users=40, n_items=30, density=0.25)
    model = MatrixFactorization(8, reg=0.01, reg_bias=0.01, reg_weighting="none", solver="als",
                                max_iter=40, tol=0, init_scale=0.5, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(ratings)
    cost = np.array(model.history_["cost"])
    assert model.n_iter_ == 40  # no sweep stalled: the cost kept falling
    assert np.all(np.diff(cost) <= 1e-9 * cost[0])


@pytest.mark.parametrize("patience", [1, 3])
def test_patience_stops_a_run_whose_validation_error_rises(patience):
    """Overfitting ALS: the validation RMSE is lowest at one sweep and rises after it. Training
    stops exactly ``patience`` sweeps after that best one and keeps the best sweep's model."""
    train, (users, items, values, _) = planted(seed=0, n_users=40, n_items=30, density=0.3,
                                               noise=1.0)
    validation = Ratings.from_arrays(users, items, values)
    params = dict(n_factors=8, reg=0.3, reg_bias=0.3, reg_weighting="none", solver="als",
                  max_iter=25, tol=0, random_state=0)
    model = MatrixFactorization(**params, patience=patience).fit(train, validation=validation)
    history = np.array(model.history_["val_rmse"])
    best = int(np.argmin(history)) + 1
    assert best >= 2  # the run first improves, then overfits
    assert np.all(history[best:] > history[best - 1])
    assert model.best_iteration_ == best
    assert model.n_iter_ == len(history) == best + patience
    rmse = np.sqrt(np.mean((model.predict(users, items) - values) ** 2))
    assert rmse == pytest.approx(history[best - 1], rel=1e-12)
    # Without a validation set the same run goes on: patience, not convergence, stopped it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        assert MatrixFactorization(**params).fit(train).n_iter_ > best + patience


@pytest.mark.parametrize("solver", ["cg", "lbfgs", "als"])
def test_the_gradient_tolerance_does_not_depend_on_the_ratings_scale(solver):
    """Ratings times c, with the penalty times c and initial factors times sqrt(c), is the same
    problem in other units (c a power of 4, so the scaling is exact). tol is relative to the first
    gradient, so training takes as many iterations and reaches the same model at every scale."""
    ratings = _problem(0, n_users=30, n_items=20, density=0.4)
    users, items, values = ratings.coo()
    runs = {}
    for c in (4.0**-4, 1.0, 4.0**4):
        scaled = Ratings.from_arrays(users, items, values * c, all_users=range(30),
                                     all_items=range(20))
        model = MatrixFactorization(
            3, reg=c, normalize="item_mean", reg_weighting="none", solver=solver, tol=1e-3,
            max_iter=300, init_scale=0.1 * np.sqrt(c), random_state=0,
        ).fit(scaled)
        runs[c] = (model.n_iter_, model.predict(users, items) / c)
    n_iter, pred = runs[1.0]
    for c, (n_iter_c, pred_c) in runs.items():
        assert abs(n_iter_c - n_iter) <= 0.2 * n_iter, (c, n_iter_c, n_iter)
        assert relative_error(pred_c, pred) <= 1e-3


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("normalize", ["none", "biases"])
def test_als_says_which_rows_it_could_not_solve(normalize, transposed):
    """reg = 0: user 9 has one rating for 3 factors (and a bias): its row is left at 0, with one
    warning saying so. Every item has as many ratings as unknowns. Transposed, item 9 is the
    one: the warning counts each side's rows apart, whichever side fails in a sweep."""
    users = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 9]
    items = [0, 1, 2, 3] * 4 + [0]
    values = [5, 3, 4, 1, 4, 2, 5, 1, 1, 5, 2, 4, 2, 2, 4, 5, 3.0]
    if transposed:
        ratings = Ratings.from_arrays(items, users, values, all_items=[0, 1, 2, 3, 5, 9])
    else:
        ratings = Ratings.from_arrays(users, items, values, all_users=[0, 1, 2, 3, 5, 9])
    model = MatrixFactorization(3, reg=0.0, reg_bias=0.0, normalize=normalize, solver="als",
                                max_iter=5, random_state=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(ratings)
    messages = [str(w.message) for w in caught if w.category is RuntimeWarning]
    # It names the user's fit call, not a line inside fastcofi.
    assert {w.filename for w in caught if w.category is RuntimeWarning} == {__file__}
    counts = "0 user rows and 1 item rows" if transposed else "1 user rows and 0 item rows"
    assert messages == [
        f"ALS: the least-squares systems of {counts} with ratings were not "
        "positive definite (too few ratings for their factors, with reg=0): their factors were "
        "set to 0; use reg > 0"
    ]
    factors, bias = ((model.item_factors_, model.item_bias_) if transposed
                     else (model.user_factors_, model.user_bias_))
    assert not factors[-1].any() and not factors[4].any()
    if normalize == "biases":
        assert bias[-1] == 0.0  # the failed row's bias is left at 0 too


@pytest.mark.parametrize("normalize", ["none", "biases"])
def test_als_says_nothing_of_rows_without_ratings(normalize):
    """A user or item without ratings (5) is no warning: with no penalty either it stays at 0
    silently, whether the factors' penalty or (learned biases, reg_bias = 0) the bias's is
    missing, and whether its side's other rows fail or not."""
    ratings = Ratings.from_arrays([0, 0, 1, 1, 2, 2], [0, 1, 0, 1, 0, 1],
                                  [1.0, 2.0, 3.0, 4.0, 2.0, 5.0], all_users=[0, 1, 2, 5],
                                  all_items=[0, 1, 5])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        for reg, reg_bias in ((1.0, 0.0), (0.0, 1.0), (0.0, 0.0)):
            # One factor: with a bias, two ratings a user and three an item determine a row.
            model = MatrixFactorization(1, reg=reg, reg_bias=reg_bias, reg_weighting="none",
                                        normalize=normalize, solver="als", max_iter=5,
                                        random_state=0).fit(ratings)
            assert not model.user_factors_[-1].any() and not model.item_factors_[-1].any()


@pytest.mark.parametrize("solver,precondition", [("cg", True), ("lbfgs", True), ("cg", False),
                                                  ("lbfgs", False), ("als", True), ("vb", True)])
def test_convergence_warning_names_the_users_fit_call(solver, precondition, monkeypatch):
    """The warning is shown at the user's ``fit`` line (so the default filter shows it once per
    such line), whichever path raised it: the solvers sit at different depths below ``fit``."""
    monkeypatch.setattr(MatrixFactorization, "_precondition", precondition)
    model = MatrixFactorization(2, solver=solver, max_iter=2, tol=1e-12, random_state=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = sys._getframe().f_lineno + 1
        model.fit(_problem(0, n_users=12, n_items=10, density=0.5))
    assert [(w.category, w.filename, w.lineno) for w in caught] == [
        (ConvergenceWarning, __file__, line)]


@pytest.mark.parametrize("method", ["CG", "L-BFGS-B"])
def test_scipy_solvers_run_every_iteration_at_tol_0_and_meet_a_tight_tol(method):
    """tol=0 disables the gradient test even where the gradient is tiny (ratings / 256), so a
    short budget is spent in full; a tight tol is met by the gradient itself, not cut short by
    L-BFGS-B's own cost-decrease test; the history's seconds are the run's own clock."""
    ratings = _problem(0, n_users=30, n_items=20, density=0.4)
    users, items, values = ratings.coo()
    rng = np.random.default_rng(0)
    X0, Theta0 = rng.normal(scale=0.1, size=(20, 3)), rng.normal(scale=0.1, size=(30, 3))
    tiny = FlatObjective(Ratings.from_arrays(users, items, values / 256, all_users=range(30),
                                             all_items=range(20)), 3, 1 / 256)
    start = time.perf_counter()
    with pytest.warns(ConvergenceWarning, match=f"{method} stopped after 4 iterations without "
                                                "meeting tol=0"):
        result, history = minimize_scipy(tiny, tiny.pack(X0 / 16, Theta0 / 16), method=method,
                                         max_iter=4, tol=0)
    elapsed = time.perf_counter() - start
    assert result.nit == len(history["cost"]) == 4
    assert 0 <= history["seconds"][0] and np.all(np.diff(history["seconds"]) >= 0)
    assert history["seconds"][-1] <= elapsed
    objective = FlatObjective(ratings, 3, 1.0)
    x0 = objective.pack(X0, Theta0)
    g0 = np.max(np.abs(objective(x0)[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        result, history = minimize_scipy(objective, x0, method=method, max_iter=5000, tol=1e-7)
    assert np.max(np.abs(objective(result.x)[1])) <= 1e-7 * g0
    assert result.nit == len(history["cost"])
    # Stopping on request is no warning either.
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        result, history = minimize_scipy(objective, x0, method=method, max_iter=50, tol=1e-7,
                                         on_iteration=lambda iteration, x, h: iteration == 2)
    assert len(history["cost"]) == 2


def test_als_stops_at_the_first_sweep_that_meets_tol_and_warns_when_out_of_budget():
    """The test is on each sweep's cost, as its row solves report it: the run stops at the first
    sweep that lowers it by less than ``tol`` times its value, at a point whose gradient has
    shrunk with it; a budget one sweep shorter ends unconverged, with the warning."""
    ratings = _problem(0, n_users=30, n_items=20, density=0.4)
    objective = FlatObjective(ratings, 3, 1.0, mu=3.0, learn_biases=True, reg_bias=0.5)
    rng = np.random.default_rng(0)
    x0 = objective.pack(rng.normal(scale=0.1, size=(20, 3)), rng.normal(scale=0.1, size=(30, 3)),
                        np.zeros(20), np.zeros(30))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        params, history, converged = minimize_als(objective, x0.copy(), fit_bias=True,
                                                  max_iter=500, tol=1e-5)
    cost = np.array(history["cost"])
    n = cost.shape[0]
    met = cost[:-1] - cost[1:] < 1e-5 * cost[1:]
    assert converged and 2 < n < 500
    assert met[-1] and not met[:-1].any()
    assert cost[-1] == pytest.approx(objective(params)[0], rel=1e-6)

    def norm(params):
        """The gradient's largest entry in the preconditioned parameters."""
        return np.max(np.abs(objective(params)[1]) / np.sqrt(objective.curvature(params)))

    assert norm(params) <= 1e-2 * norm(x0)
    with pytest.warns(ConvergenceWarning, match=f"ALS stopped after {n - 1} iterations without "
                                                "meeting tol=1e-05"):
        params, _, converged = minimize_als(objective, x0.copy(), fit_bias=True, max_iter=n - 1,
                                            tol=1e-5)
    assert not converged


def _one_rating(item_factor, user_factor):
    """One item, one user, one rating of 6, k = 1, no penalty: the ALS sweeps are exact in
    floating point (6 = 2 x 3, every system a perfect square), the minimum (cost 0) is met
    exactly by a sweep from item 2 and user 1, and is where item 2 and user 3 start."""
    objective = FlatObjective(Ratings.from_arrays([0], [0], [6.0]), 1, 0.0)
    return objective, objective.pack(np.array([[item_factor]]), np.array([[user_factor]]))


def test_als_at_tol_0_runs_until_a_sweep_no_longer_lowers_the_cost():
    """tol = 0: only a sweep that does not lower the cost stops the run. One that lands on the
    exact minimum (gradient 0)
    is followed by one more, which ends the run, converged, because it no longer lowers the
    cost; from the minimum itself the second sweep ends it (the first has none before it to
    compare with), and neither moves it. Neither is a convergence warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        objective, params = _one_rating(2.0, 1.0)
        params, history, converged = minimize_als(objective, params, fit_bias=False,
                                                  max_iter=50, tol=0)
        assert converged and history["cost"][-1] <= 1e-28
        assert len(history["cost"]) >= 2  # the first sweep's exact minimum did not stop it
        objective, params = _one_rating(2.0, 3.0)
        params, history, converged = minimize_als(objective, params, fit_bias=False,
                                                  max_iter=50, tol=0)
        assert converged and len(history["cost"]) == 2
        np.testing.assert_allclose(params, [2.0, 3.0], rtol=1e-15)


def test_als_stopped_by_on_iteration_is_no_warning_and_times_its_sweeps():
    ratings = _problem(0, n_users=30, n_items=20, density=0.4)
    objective = FlatObjective(ratings, 3, 1.0)
    rng = np.random.default_rng(0)
    x0 = objective.pack(rng.normal(size=(20, 3)), rng.normal(size=(30, 3)))
    seen = []

    def on_iteration(iteration, params, history):
        seen.append((iteration, len(history["cost"])))
        return iteration == 3

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        params, history, converged = minimize_als(objective, x0, fit_bias=False, max_iter=50,
                                                  tol=0, on_iteration=on_iteration)
    elapsed = time.perf_counter() - start
    assert converged and seen == [(1, 1), (2, 2), (3, 3)] and len(history["seconds"]) == 3
    assert 0 <= history["seconds"][0] and np.all(np.diff(history["seconds"]) >= 0)
    assert history["seconds"][-1] <= elapsed
    # The sweep's cost comes from its row solves, which read the factors rounded to float32.
    assert history["cost"][-1] == pytest.approx(objective(params)[0], rel=1e-6)

# -- preconditioned CG / L-BFGS -------------------------------------------------------------------
def _skewed_problem(seed=0, n_users=300, n_items=60):
    """Planted rank-3 ratings whose row counts span two orders of magnitude (a few items rated
    by nearly everyone, most by a handful): one step length does not suit every row."""
    rng = np.random.default_rng(seed)
    popularity = 0.9 * np.arange(1, n_items + 1, dtype=float) ** -1.5
    mask = rng.random((n_items, n_users)) < np.maximum(popularity, 0.02)[:, None]
    items, users = np.nonzero(mask)
    planted = 3.0 + rng.normal(size=(n_items, 3)) @ rng.normal(size=(n_users, 3)).T
    values = planted[items, users] + 0.3 * rng.normal(size=items.shape[0])
    return Ratings.from_arrays(users, items, values, all_users=range(n_users),
                               all_items=range(n_items))


@pytest.mark.parametrize("learn_biases", [True, False])
def test_curvature_is_the_exact_diagonal_when_rows_are_alike(learn_biases):
    """With every row of the other side equal, the estimate (count times the mean square) is the
    Hessian's diagonal; the biases' is exact always."""
    ratings = _skewed_problem(n_users=30, n_items=12)
    objective = FlatObjective(ratings, 3, 2.0, mu=3.0, learn_biases=learn_biases, reg_bias=0.5,
                              reg_weighting="sqrt")
    X = np.tile([0.3, -1.0, 2.0], (ratings.n_items, 1))
    Theta = np.tile([1.5, 0.2, -0.7], (ratings.n_users, 1))
    x = objective.pack(X, Theta, np.zeros(ratings.n_items), np.zeros(ratings.n_users))
    h = 1e-4
    exact = np.empty_like(x)
    for p in range(x.size):
        # The cost is quadratic in each single parameter: a central difference is exact.
        step = np.zeros_like(x)
        step[p] = h
        exact[p] = (objective(x + step)[0] - 2 * objective(x)[0] + objective(x - step)[0]) / h**2
    assert relative_error(objective.curvature(x), exact) <= 1e-5


@pytest.mark.parametrize("learn_biases", [False, True])
@pytest.mark.parametrize("block_rows, reg", [(1, 0.0), (7, 0.3), (1 << 14, 0.0), (1 << 14, 0.3)])
def test_curvature_in_blocks_is_the_estimate(
        learn_biases, block_rows, reg, monkeypatch):
    """Built block by block (rows of both sides cut anywhere), the estimate is count times the
    other side's mean square plus the weighted penalty per entry, 0 for a row without ratings
    or penalty."""
    monkeypatch.setattr(FlatObjective, "_CURVATURE_ROWS", block_rows)
    ratings = _skewed_problem(2, n_users=80, n_items=15)
    ratings = Ratings.from_arrays(*ratings.coo(), all_users=range(ratings.n_users + 2))
    objective = FlatObjective(ratings, 3, reg, mu=3.0, learn_biases=learn_biases, reg_bias=0.5,
                              reg_weighting="count")
    rng = np.random.default_rng(3)
    x = rng.normal(size=objective.size)
    X, Theta, _, _ = objective.unpack(x)
    item_counts, user_counts = (np.diff(r[0]) for r in (ratings.by_item, ratings.by_user))
    expected = [(np.outer(item_counts, np.mean(Theta**2, axis=0)) + reg * item_counts[:, None]
                 ).ravel(),
                (np.outer(user_counts, np.mean(X**2, axis=0)) + reg * user_counts[:, None]
                 ).ravel()]
    if learn_biases:
        expected += [item_counts + 0.5 * item_counts, user_counts + 0.5 * user_counts]
    expected = np.concatenate(expected)
    curvature = objective.curvature(x)
    np.testing.assert_allclose(curvature, expected, rtol=1e-12)
    assert np.count_nonzero(curvature == 0) >= 2 * 3  # the two users without ratings


def test_preconditioned_objective_passes_check_grad():
    ratings = _skewed_problem(1, n_users=40, n_items=20)
    objective = FlatObjective(ratings, 2, 1.0, mu=3.0, learn_biases=True, reg_bias=0.5)
    rng = np.random.default_rng(0)
    x = rng.normal(size=objective.size)
    scale = 1.0 / np.sqrt(objective.curvature(x))
    scaled = ScaledObjective(objective, scale)
    z = x / scale
    cost, grad = scaled(z)
    assert cost == pytest.approx(objective(x)[0], rel=1e-12)
    error = check_grad(lambda v: scaled(v)[0], lambda v: scaled(v)[1], z)
    assert error <= 1e-6 * (1 + np.linalg.norm(grad))


def _start(objective, ratings, seed=0):
    rng = np.random.default_rng(seed)
    return objective.pack(rng.normal(0, 0.1, (ratings.n_items, objective.n_factors)),
                          rng.normal(0, 0.1, (ratings.n_users, objective.n_factors)),
                          np.zeros(ratings.n_items), np.zeros(ratings.n_users))


def _minimize(objective, x0, method, precondition, tol):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result, history = minimize_scipy(objective, x0.copy(), method=method, max_iter=5000,
                                         tol=tol, precondition=precondition)
    assert len(history["cost"]) == result.nit
    return result


@pytest.mark.parametrize("precondition", ["curvature", "projected"])
@pytest.mark.parametrize("method", ["CG", "L-BFGS-B"])
def test_preconditioning_reaches_the_same_optimum(method, precondition):
    """On a well-determined problem (one minimum, which ALS also finds) both runs meet the
    gradient test at the same cost, reported for the returned parameters."""
    ratings = _problem()
    objective = FlatObjective(ratings, 3, 10.0, mu=3.0, learn_biases=True, reg_bias=0.1)
    x0 = _start(objective, ratings)
    plain = _minimize(objective, x0, method, False, 1e-7)
    pre = _minimize(objective, x0, method, precondition, 1e-7)
    assert pre.status == 0, pre.message
    assert pre.fun == pytest.approx(plain.fun, rel=1e-9)
    cost, grad = objective(pre.x)
    assert cost == pre.fun
    assert np.max(np.abs(grad)) <= 1e-7 * np.max(np.abs(objective(x0)[1]))


@pytest.mark.slow  # hundreds of iterations: seconds with the JIT, minutes without
@pytest.mark.parametrize("method", ["CG", "L-BFGS-B"])
def test_preconditioning_converges_in_fewer_iterations_when_row_counts_are_skewed(method):
    ratings = _skewed_problem()
    objective = FlatObjective(ratings, 3, 1.0, mu=3.0, learn_biases=True, reg_bias=0.5)
    x0 = _start(objective, ratings)
    plain = _minimize(objective, x0, method, False, 1e-6)
    pre = _minimize(objective, x0, method, "curvature", 1e-6)
    assert pre.status == 0, pre.message
    assert pre.nit * 1.5 <= plain.nit, (pre.nit, plain.nit)



class _RecordedObjective(FlatObjective):
    """The objective, remembering every point it was evaluated at."""

    def __call__(self, params):
        self.points = getattr(self, "points", [])
        self.points.append(np.array(params, dtype=np.float64))
        return super().__call__(params)


def _tiny_objective():
    """30 users x 20 items, ratings / 256 and factors / 16: a gradient so small that any
    absolute threshold (1, say) would stop the run at once; tol = 0 must not."""
    ratings = _problem(0, n_users=30, n_items=20, density=0.4)
    users, items, values = ratings.coo()
    rng = np.random.default_rng(0)
    objective = _RecordedObjective(Ratings.from_arrays(users, items, values / 256,
                                                       all_users=range(30), all_items=range(20)),
                                   3, 1 / 256)
    x0 = objective.pack(rng.normal(scale=0.1, size=(20, 3)) / 16,
                        rng.normal(scale=0.1, size=(30, 3)) / 16)
    return objective, x0


@pytest.mark.parametrize("method", ["CG", "L-BFGS-B"])
@pytest.mark.parametrize("max_iter, segments", [(4, 1), (18, 3)])
def test_preconditioned_runs_spend_their_budget_in_doubling_segments(method, max_iter, segments):
    """tol = 0: every iteration of the budget is run, in scipy runs of 5, 10, 20, ... iterations
    (the last cut to what is left), numbered 1, 2, ... for on_iteration, each timed on the run's
    own clock; the budget's end is status 1, no success, one warning. The gradient test reuses
    scipy's evaluation of the accepted point: the objective is evaluated twice in a row at one
    point only where a scipy run starts from where the last one ended."""
    objective, x0 = _tiny_objective()
    seen = []
    start = time.perf_counter()
    with pytest.warns(ConvergenceWarning) as caught:
        result, history = minimize_scipy(
            objective, x0, method=method, max_iter=max_iter, tol=0, precondition="curvature",
            on_iteration=lambda iteration, x, h: seen.append((iteration, len(h["cost"]))),
        )
    elapsed = time.perf_counter() - start
    assert [str(w.message) for w in caught] == [
        f"{method} stopped after {max_iter} iterations without meeting tol=0: {result.message}"]
    assert result.nit == len(history["cost"]) == len(history["seconds"]) == max_iter
    assert seen == [(i, i) for i in range(1, max_iter + 1)]
    assert result.segments == segments
    assert result.status == 1 and not result.success and "no progress" not in result.message
    assert 0 <= history["seconds"][0] and np.all(np.diff(history["seconds"]) >= 0)
    assert history["seconds"][-1] <= elapsed
    points = objective.points
    assert result.nfev == len(points)
    repeats = sum(np.array_equal(a, b) for a, b in zip(points, points[1:]))
    assert repeats <= segments
    assert result.fun == objective(result.x)[0] == history["cost"][-1]


@pytest.mark.parametrize("method", ["CG", "L-BFGS-B"])
def test_a_preconditioned_run_stops_on_request_or_on_the_gradient_test_without_warning(method):
    objective, x0 = _tiny_objective()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        result, history = minimize_scipy(objective, x0, method=method, max_iter=50, tol=0,
                                         precondition="curvature",
                                         on_iteration=lambda iteration, x, h: iteration == 7)
        assert result.nit == len(history["cost"]) == 7
        assert (result.status, result.success, result.message) == (
            99, True, "stopped by on_iteration")
        g0 = np.max(np.abs(objective(x0)[1]))
        result, history = minimize_scipy(objective, x0, method=method, max_iter=500, tol=1e-3,
                                         precondition="curvature")
    assert (result.status, result.success, result.message) == (0, True, "gradient test met")
    assert np.max(np.abs(objective(result.x)[1])) <= 1e-3 * g0
    assert result.nit == len(history["cost"]) < 500


@pytest.mark.parametrize("method", ["CG", "L-BFGS-B"])
def test_the_first_preconditioned_step_is_the_gradient_over_the_curvature(method):
    """Both methods start along the steepest descent of the rescaled problem: in the factors'
    units, along -gradient / curvature (curvatures below and above 1 here)."""
    ratings = _skewed_problem(2, n_users=40, n_items=20)
    objective = FlatObjective(ratings, 2, 0.01, mu=3.0, learn_biases=True, reg_bias=0.01,
                              reg_weighting="none")
    x0 = _start(objective, ratings)
    cost0, g0 = objective(x0)
    h0 = objective.curvature(x0)
    assert h0.min() < 1 < h0.max()
    steps = []

    def first_step(iteration, x, history):
        steps.append(x - x0)
        return True

    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        minimize_scipy(objective, x0.copy(), method=method, max_iter=10, tol=0,
                       precondition="curvature", on_iteration=first_step)
    (step,) = steps
    direction = -g0 / h0
    length = (step @ direction) / (direction @ direction)
    assert length > 0
    assert relative_error(step, length * direction) <= 1e-8


class _UphillGradient:
    """Half the squared norm, with the gradient's sign flipped: no line search can descend."""

    def __call__(self, x):
        return 0.5 * float(x @ x), -x

    def curvature(self, x):
        return np.ones_like(x)


@pytest.mark.parametrize("method", ["CG", "L-BFGS-B"])
def test_a_preconditioned_run_whose_line_search_fails_stops_with_no_progress(method):
    with pytest.warns(ConvergenceWarning, match=f"{method} stopped after 0 iterations without "
                                                "meeting tol=0: no progress: "):
        result, history = minimize_scipy(_UphillGradient(), np.ones(3), method=method,
                                         max_iter=50, tol=0, precondition=True)
    assert (result.status, result.success, result.nit, result.segments) == (2, False, 0, 1)
    assert result.message.startswith("no progress: ") and history["cost"] == []
    np.testing.assert_array_equal(result.x, np.ones(3))


@pytest.mark.filterwarnings("ignore::fastcofi.ConvergenceWarning")
@pytest.mark.parametrize("precondition", ["curvature", "projected"])
@pytest.mark.parametrize("solver", ["cg", "lbfgs"])
def test_rows_without_ratings_or_penalty_leave_the_preconditioned_solvers_finite(
    solver, precondition, monkeypatch
):
    """Count-weighted penalties give a user and an item without ratings a zero curvature (no
    ratings, weight 0): they keep their start, and the others train. The projected solvers
    solve the users (the larger side) instead, which leaves a user without ratings at 0, as
    ALS does, and without a warning."""
    monkeypatch.setattr(MatrixFactorization, "_precondition", precondition)
    ratings = _problem(3, n_users=20, n_items=12)
    users, items, values = ratings.coo()
    ratings = Ratings.from_arrays(users, items, values, all_users=range(21), all_items=range(13))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        model = MatrixFactorization(3, reg_weighting="count", solver=solver, max_iter=30, tol=0,
                                    random_state=0).fit(ratings)
    early = MatrixFactorization(3, reg_weighting="count", solver=solver, max_iter=1, tol=0,
                                random_state=0).fit(ratings)
    assert np.all(np.isfinite(model.item_factors_)) and np.all(np.isfinite(model.user_factors_))
    np.testing.assert_array_equal(model.item_factors_[12], early.item_factors_[12])
    assert model.item_factors_[12].any()
    if precondition == "curvature":
        np.testing.assert_array_equal(model.user_factors_[20], early.user_factors_[20])
        assert model.user_factors_[20].any()
    else:
        assert not model.user_factors_[20].any()
    assert model.history_["cost"][-1] < model.history_["cost"][0]

# -- divergence -----------------------------------------------------------------------------------
class _PoisonedObjective(FlatObjective):
    """The objective, with every parameter turned NaN from its ``bad_call``-th evaluation on, as
    a solver that diverged would leave them."""

    bad_call = 4

    def _poisoned(self, params):
        self.calls = getattr(self, "calls", 0) + 1
        return np.full_like(params, np.nan) if self.calls >= self.bad_call else params

    def __call__(self, params):
        return super().__call__(self._poisoned(params))



def _poison_als(monkeypatch, bad_call=_PoisonedObjective.bad_call):
    """ALS and the projected solvers reach the factors through row solves: from their
    ``bad_call``-th call on, these read the fixed side as NaN instead, as after an overflow."""
    real, calls = flat_objective.solve_rows, []

    def poisoned(rows, other, *args):
        calls.append(1)
        if len(calls) >= bad_call:
            other = Other(np.full_like(other.factors, np.nan), other.offset)
        return real(rows, other, *args)

    monkeypatch.setattr(flat_objective, "solve_rows", poisoned)


@pytest.mark.parametrize("solver, name", [("cg", "CG"), ("lbfgs", "L-BFGS-B"), ("als", "ALS")])
@pytest.mark.parametrize("precondition", [True, False])
def test_a_diverging_solver_stops_with_an_error_naming_it_and_the_iteration(
    solver, name, precondition, tmp_path, monkeypatch
):
    monkeypatch.setattr(MatrixFactorization, "_precondition", precondition)
    if solver == "als" or precondition:
        _poison_als(monkeypatch)
    model = MatrixFactorization(3, solver=solver, max_iter=50, tol=0, random_state=0)
    checkpoint = tmp_path / "run.npz"
    expected = rf"^{name} diverged at iteration \d+: the cost is nan"
    with pytest.raises(DivergenceError, match=expected):
        model.fit(_problem(), make_objective=_PoisonedObjective, checkpoint=checkpoint,
                  checkpoint_every=1)
    assert not hasattr(model, "item_factors_") or np.all(np.isfinite(model.item_factors_))
    if checkpoint.exists():
        # What was saved before the divergence is finite.
        with np.load(checkpoint) as saved:
            assert all(np.all(np.isfinite(saved[key])) for key in saved.files
                       if saved[key].dtype.kind == "f")


@pytest.mark.parametrize("solver, name", [("cg", "CG"), ("lbfgs", "L-BFGS-B"), ("als", "ALS")])
@pytest.mark.parametrize("precondition", [True, False])
def test_an_overflowing_cost_is_a_divergence_at_iteration_0(solver, name, precondition,
                                                             monkeypatch):
    """The scipy solvers evaluate the start; ALS learns its cost from its first sweep."""
    monkeypatch.setattr(MatrixFactorization, "_precondition", precondition)
    ratings = Ratings.from_arrays([0, 1], [0, 1], [1e200, -1e200])
    # The projected solvers' first evaluation solves rows on ratings of 1e200: NaN, not inf.
    message = ("^ALS diverged at iteration 1: the cost is (nan|inf)" if solver == "als"
               else f"^{name} diverged at iteration 0: the cost is "
               + ("(nan|inf)" if precondition else "inf"))
    with pytest.raises(DivergenceError, match=message):
        MatrixFactorization(1, solver=solver, normalize="none").fit(ratings)


@nb.njit
def _compiled_muladd(a, b, c):
    return muladd(a, b, c)


def _cpu_fuses():
    """Whether this CPU has fused multiply-add instructions (every ARM64 core has)."""
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    return "+fma" in llvm.get_host_cpu_features().flatten().split(",") or \
        platform.machine().lower() in ("aarch64", "arm64")


@pytest.mark.parametrize("dtype, eps", [(np.float32, 2.0**-13), (np.float64, 2.0**-30)])
def test_muladd_rounds_once_compiled_and_twice_with_the_jit_off(dtype, eps):
    """``(1 + e)(1 - e) - 1`` is ``-e^2``, which rounding the product first loses: compiled on a
    CPU with FMA, `muladd` gives it exactly; with the JIT off, 0."""
    one = dtype(1.0)
    result = _compiled_muladd(one + dtype(eps), one - dtype(eps), -one)
    # Rounded to the arguments' type: (1 + e)^2 = 1 + 2e + e^2 loses its e^2.
    assert _compiled_muladd(one + dtype(eps), one + dtype(eps), dtype(0.0)) == 1.0 + 2.0 * eps
    if JIT_DISABLED:
        assert result == 0.0
    elif _cpu_fuses():
        assert result == -dtype(eps) ** 2
    else:
        assert result in (0.0, -dtype(eps) ** 2)
    assert _compiled_muladd(dtype(3.0), dtype(-2.0), dtype(0.5)) == -5.5


@nb.njit
def _compiled_normal_products(part, k, x, x_bias, x_target, product, out, squares):
    return _normal_products(part, k, x, x_bias, x_target, product, out, squares)


@nb.njit
def _compiled_normal_products_only(part, k, x, x_bias, x_target, product, out):
    return _normal_products(part, k, x, x_bias, x_target, product, out)


@given(st.integers(0, 10_000), st.integers(0, 11), st.integers(1, 70), st.booleans(),
       st.sampled_from([np.float32, np.float64]))
def test_normal_products_of_a_tile_match_numpy(seed, n, k, ones_column, dtype):
    """A conjugate-gradient pass over a gathered tile ``[T 1 t]`` (or ``[T t]``):
    ``product = T @ x + x_bias + x_target * t``, ``T.T @ product``, ``product``'s sum and the
    factor columns' sums of squares, compiled (four ratings at a time, then the rest one by
    one: every remainder from 0 to 3; float32 tiles of up to 64 columns two at a time in
    registers, every width of `vectors.WIDTHS` and past it) against float64 numpy; with and
    without the squares asked for. The column of ones is not read (NaN here): the bias enters
    as ``x_bias``. Nothing is written past ``out`` and the squares, which are views of longer
    arrays here (the vectors' stores are masked to k)."""
    rng = np.random.default_rng(seed)
    part = rng.normal(size=(n, k + 2 if ones_column else k + 1)).astype(dtype)
    if ones_column:
        part[:, k] = np.nan
    x = rng.normal(size=k).astype(dtype)
    x_bias, x_target = rng.normal(), rng.normal()
    wide = part[:, :k].astype(np.float64)
    targets = part[:, -1].astype(np.float64)
    expected_product = wide @ x.astype(np.float64) + x_bias + x_target * targets
    expected_out = wide.T @ expected_product
    tolerance = 1e-12 if dtype == np.float64 else 1e-5
    size = 1 + np.abs(wide) @ np.abs(x) + abs(x_bias) + abs(x_target) * np.abs(targets)
    scale = 1.0 + np.abs(wide).sum(axis=0) * size.max(initial=0.0)
    for with_squares in (True, False):
        product = np.full(n, np.nan, dtype)
        out_buffer = np.full(k + 8, np.nan, dtype)
        squares_buffer = np.full(k + 8, np.nan, dtype)
        out, squares = out_buffer[:k], squares_buffer[:k]
        if with_squares:
            total = _compiled_normal_products(part, k, x, x_bias, x_target, product, out,
                                              squares)
            np.testing.assert_allclose(squares, (wide**2).sum(axis=0), rtol=tolerance,
                                       atol=tolerance)
        else:
            total = _compiled_normal_products_only(part, k, x, x_bias, x_target, product, out)
            assert np.isnan(squares).all()
        np.testing.assert_allclose(product, expected_product, rtol=0,
                                   atol=tolerance * size.max(initial=1))
        assert np.all(np.abs(out - expected_out) <= tolerance * scale)
        assert abs(total - expected_product.sum()) <= tolerance * size.sum()
        assert np.isnan(out_buffer[k:]).all() and np.isnan(squares_buffer[k:]).all()


@pytest.mark.parametrize("large_sides", [False, True])
@pytest.mark.parametrize(
    "reg, reg_bias, learned, precision",
    [(0.5, 0.5, True, np.float32), (0.5, 0.0, True, np.float64), (0.0, 0.5, True, np.float64),
     (0.5, 0.0, False, np.float32), (0.0, 0.0, False, np.float64)],
)
def test_als_reads_a_float32_copy_only_when_every_penalty_is_positive(reg, reg_bias, learned,
                                                                       precision, large_sides,
                                                                       monkeypatch):
    """The documented rule: with every penalty that applies positive, the row solves read the
    fixed side as float32 (bounded conditioning), or as bfloat16 when its float32 copy would
    be larger than `_HALF_READS_BYTES`; with any zero, as float64, so that a row with too few
    ratings fails its factorization instead of passing it on float32 rounding."""
    if large_sides:
        monkeypatch.setattr(flat_objective, "_HALF_READS_BYTES", 0)
        if precision == np.float32:
            precision = np.uint16
    seen = []
    real = flat_objective.solve_rows

    def recording(rows, other, *args):
        seen.append(other.factors.dtype)
        # Copies start on a cache line: a 64-byte row is then one line, not two.
        assert other.factors.ctypes.data % 64 == 0
        return real(rows, other, *args)

    monkeypatch.setattr(flat_objective, "solve_rows", recording)
    ratings = _problem(0)
    objective = FlatObjective(ratings, 3, reg, learn_biases=learned, reg_bias=reg_bias, mu=3.0)
    rng = np.random.default_rng(0)
    params = objective.pack(rng.normal(size=(40, 3)), rng.normal(size=(60, 3)), np.zeros(40),
                            np.zeros(60))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minimize_als(objective, params, fit_bias=learned, max_iter=2, tol=0)
    assert seen == [np.dtype(precision)] * 4


@pytest.mark.parametrize("half_reads", [False, True])
def test_only_a_fixed_side_beyond_the_cache_is_read_through_bfloat16(half_reads, monkeypatch):
    """`RowSolves(half_reads=True)` (ALS) rounds a fixed side to bfloat16 when its float32 copy
    is larger than `_HALF_READS_BYTES`, and only then; without ``half_reads`` (the projected
    solvers' solves) never. The items are solved reading the users' copy, and the other way
    round."""
    ratings = _problem(0)  # 40 items, 60 users: 480 and 720 bytes at k = 3 in float32
    monkeypatch.setattr(flat_objective, "_HALF_READS_BYTES", 600)
    objective = FlatObjective(ratings, 3, 0.5, learn_biases=True, reg_bias=0.5, mu=3.0)
    params = objective.pack(np.ones((40, 3)), np.ones((60, 3)), np.zeros(40), np.zeros(60))
    solves = flat_objective.RowSolves(objective, params, half_reads=half_reads)
    read_by_items = solves.fixed("items")[0].factors
    read_by_users = solves.fixed("users")[0].factors
    assert read_by_users.dtype == np.float32
    assert read_by_items.dtype == (np.uint16 if half_reads else np.float32)
    assert solves.single


def test_als_through_bfloat16_copies_reaches_the_float32_copies_minimum(monkeypatch):
    """ALS reading both sides as bfloat16 ends where it ends reading float32, to the rounding of
    the copies, and the cost it reports is the objective at its result to that rounding."""
    ratings = _problem(1)
    results = {}
    for threshold in (1 << 40, 0):
        monkeypatch.setattr(flat_objective, "_HALF_READS_BYTES", threshold)
        objective = FlatObjective(ratings, 3, 0.5, learn_biases=True, reg_bias=0.5, mu=3.0)
        rng = np.random.default_rng(0)
        params = objective.pack(rng.normal(size=(40, 3)), rng.normal(size=(60, 3)),
                                np.zeros(40), np.zeros(60))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            _, history, _ = minimize_als(objective, params, fit_bias=True, max_iter=60, tol=0)
        results[threshold] = (history["cost"][-1], objective(params)[0], params)
    (f32_cost, f32_exact, f32_params), (half_cost, half_exact, half_params) = results.values()
    assert not np.array_equal(f32_params, half_params)
    assert half_exact == pytest.approx(f32_exact, rel=1e-4)
    assert half_cost == pytest.approx(half_exact, rel=2e-4)
    assert f32_cost == pytest.approx(f32_exact, rel=1e-7)


@nb.njit(parallel=True)
def _numbers_taken(total, n_tasks):
    """``n_tasks`` parallel tasks each take numbers with `take_next` until one is ``total`` or
    more: how often each number below ``total`` was taken and how many each task took."""
    counter = np.zeros(1, dtype=np.int64)
    times = np.zeros(total, dtype=np.int64)
    per_task = np.zeros(n_tasks, dtype=np.int64)
    for task in nb.prange(n_tasks):
        while True:
            number = take_next(counter)
            if number >= total:
                break
            times[number] += 1
            per_task[task] += 1
    return times, per_task


def test_take_next_gives_every_number_to_exactly_one_task():
    """Two threads taking a million numbers as fast as they can: an increment that is not
    atomic hands some number to both (and the tasks' counts then add up to more)."""
    total = 10_000 if JIT_DISABLED else 1_000_000
    with threads(2):
        times, per_task = _numbers_taken(total, 2)
    assert np.all(times == 1)
    assert per_task.sum() == total


@pytest.mark.skipif(nb.config.NUMBA_NUM_THREADS < 2 or JIT_DISABLED,
                    reason="needs 2 numba threads, and the JIT (without it nothing is parallel)")
def test_a_sweep_does_not_depend_on_which_thread_solves_which_chunk():
    """Threads take a side's chunks as they come free (`solve_rows`): the rows, exact and
    conjugate-gradient ones, and the summary are the same bits on one thread and on two."""
    rng = np.random.default_rng(5)
    lengths = rng.choice([0, 1, 3, _CG_MIN - 1, _CG_MIN, 40, 300], size=400)
    rows, F, col_offset, row_offset, weight = _row_problem(rng, 6, True, lengths, np.float32)
    rows = rows._replace(chunks=np.arange(0, len(lengths) + 1, 4, dtype=np.int64))
    start, start_bias = rng.normal(size=(len(lengths), 6)), rng.normal(size=len(lengths))
    results = []
    for n_threads in (1, 2):
        out, out_bias = start.copy(), start_bias.copy()
        with threads(n_threads):
            summary = solve_rows(rows, Other(F, col_offset), Penalty(0.5, 0.3, True), row_offset,
                                 weight, Solved(out, out_bias), 3)
        results.append((out, out_bias, summary))
    (one, one_bias, one_summary), (two, two_bias, two_summary) = results
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(one_bias, two_bias)
    assert one_summary == two_summary
    assert not np.array_equal(one, start)
