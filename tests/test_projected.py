"""The projected scipy solvers: the smaller side's rows, the other side solved exactly at each
evaluation (`ProjectedObjective`), each row's parameters changed by its inverse Cholesky factor
(`row_preconditioners`)."""

import warnings

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy.optimize import check_grad

from fastcofi import ConvergenceWarning, Ratings
from fastcofi._parallel import threads
from fastcofi.kernels.rowsolve import _TILE_ROWS, Other, Penalty, row_preconditioners
from fastcofi.kernels.sparse import Rows
from fastcofi.train import objective as flat_objective
from fastcofi.train.objective import FlatObjective, ProjectedObjective
from fastcofi.train.solvers import minimize_scipy

from .test_solvers import _problem, _skewed_problem, _start


# -- the kernel ---------------------------------------------------------------------------------
def _rows_of(counts, n_other, rng):
    """A side whose rows rate ``counts[r]`` distinct rows of the other side (of ``n_other``),
    cut into chunks of one or two rows (parts of several chunks each)."""
    users = np.concatenate([np.full(c, r) for r, c in enumerate(counts)]).astype(np.int64)
    items = np.concatenate([rng.choice(n_other, c, replace=False) for c in counts])
    ratings = Ratings.from_arrays(users, items, rng.normal(size=users.shape[0]),
                                  all_users=range(len(counts)), all_items=range(n_other))
    chunks = np.unique(np.r_[0, rng.choice(np.arange(1, len(counts)), len(counts) // 2),
                             len(counts)]).astype(np.int64)
    return Rows(*ratings.by_user, chunks)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(1, 6), fit_bias=st.booleans(),
       reg=st.sampled_from([0.0, 0.05, 1.0]), reg_bias=st.sampled_from([0.0, 0.3]),
       single=st.booleans())
# Two ratings, k = 3, no penalty: rounding left the last pivot at 1.02e-13 of its diagonal,
# past the floor (1e-13); singular by count, the row must fall back.
@example(seed=51736276, k=3, fit_bias=False, reg=0.0, reg_bias=0.0, single=False)
def test_row_preconditioners_invert_each_rows_curvature_block(seed, k, fit_bias, reg, reg_bias,
                                                              single):
    """``out[r] out[r]' = (T'T + P)^-1`` for the dense block of every row (0, 1, k and more
    ratings than one gathered tile), upper triangular; a block that is not positive definite
    gets the inverse square root of its diagonal (1 where it is 0). float32 reads only with
    positive penalties, as training uses them."""
    if single and not (reg > 0 and (reg_bias > 0 or not fit_bias)):
        single = False
    rng = np.random.default_rng(seed)
    n_other = _TILE_ROWS + 40
    counts = [0, 1, 2, k, k + 1, _TILE_ROWS + 30, int(rng.integers(3, 20))]
    rows = _rows_of(counts, n_other, rng)
    F = rng.normal(size=(n_other, k))
    weight = rng.uniform(0.5, 2.0, size=len(counts))
    if not single:
        # A row whose penalty is off (float32 rounding could pass its singular block: training
        # reads float32 only where every row with ratings has a penalty).
        weight[-1] = 0.0
    d = k + 1 if fit_bias else k
    out = np.full((len(counts), d, d), np.nan)
    other = Other(F.astype(np.float32) if single else F, rng.normal(size=n_other))
    fallbacks = row_preconditioners(rows, other, Penalty(reg, reg_bias, fit_bias), weight, out)
    expected_fallbacks = 0
    for r in range(len(counts)):
        cols = rows.indices[rows.indptr[r]:rows.indptr[r + 1]]
        T = other.factors[cols].astype(np.float64)
        if fit_bias:
            T = np.hstack([T, np.ones((T.shape[0], 1))])
        penalty = np.r_[np.full(k, reg), [reg_bias] * fit_bias] * weight[r]
        H = T.T @ T + np.diag(penalty)
        free = penalty == 0
        singular = np.linalg.matrix_rank(T[:, free]) < np.count_nonzero(free)
        assert np.array_equal(np.tril(out[r], -1), np.zeros((d, d))), r
        if singular:
            expected_fallbacks += 1
            diagonal = np.diag(H)
            expected = np.where(diagonal > 0, 1 / np.sqrt(np.where(diagonal > 0, diagonal, 1)), 1)
            np.testing.assert_allclose(out[r], np.diag(expected), rtol=1e-5 if single else 1e-12)
        else:
            # The block made the identity: out' H out = I.
            np.testing.assert_allclose(out[r].T @ H @ out[r], np.eye(d),
                                       atol=1e-4 if single else 1e-9)
    assert fallbacks == expected_fallbacks


# -- the objective ------------------------------------------------------------------------------
def _objectives(learned):
    """The objective on a problem with more users than items and one with more items, with
    learned biases or fixed item means (``mu`` 0, as mean normalization trains)."""
    for n_users, n_items in ((60, 40), (30, 50)):
        ratings = _problem(1, n_users=n_users, n_items=n_items)
        if learned:
            yield FlatObjective(ratings, 3, 0.7, mu=3.0, learn_biases=True, reg_bias=0.2,
                                reg_weighting="sqrt")
        else:
            means = np.random.default_rng(2).normal(3.0, 0.5, n_items)
            yield FlatObjective(ratings, 3, 0.7, item_bias=means, reg_weighting="count")


@pytest.mark.parametrize("learned", [True, False])
def test_the_projected_objective_is_the_objective_at_the_solved_sides_minimum(learned):
    for objective in _objectives(learned):
        ratings = objective.ratings
        params = _start(objective, ratings, seed=3)
        projected = ProjectedObjective(objective, params)
        assert projected.free == ("items" if ratings.n_items <= ratings.n_users else "users")
        projected.solves.read_float64()
        v = projected.values() + np.random.default_rng(4).normal(0, 0.3, projected.shape)
        cost, grad = projected(v)
        np.testing.assert_array_equal(projected.values(), v)
        full_cost, full_grad = objective(params)
        assert cost == pytest.approx(full_cost, rel=1e-12)
        X, Theta, item_bias, user_bias = objective.unpack(full_grad)
        free, solved = ((X, item_bias), (Theta, user_bias)) if projected.free == "items" else (
            (Theta, user_bias), (X, item_bias))
        np.testing.assert_allclose(grad[:, :3], free[0], rtol=1e-10, atol=1e-12)
        if learned:
            np.testing.assert_allclose(grad[:, 3], free[1], rtol=1e-10, atol=1e-12)
        # The solved side sits at its minimum: its gradient vanishes.
        assert np.max(np.abs(solved[0])) <= 1e-9 * np.max(np.abs(grad))
        if learned:
            assert np.max(np.abs(solved[1])) <= 1e-9 * np.max(np.abs(grad))
        error = check_grad(lambda z, p=projected: p(z.reshape(p.shape))[0],
                           lambda z, p=projected: p(z.reshape(p.shape))[1].ravel(), v.ravel())
        assert error <= 1e-5 * np.linalg.norm(grad)


def test_float32_reads_leave_a_solved_gradient_of_about_1e_7():
    """What `_FLOAT32_GRADIENT` (1e-4) leaves room for."""
    objective = next(_objectives(True))
    params = _start(objective, objective.ratings)
    projected = ProjectedObjective(objective, params)
    assert projected.solves.single
    _, grad = projected(projected.values())
    _, Theta, _, user_bias = objective.unpack(objective(params)[1])
    largest = max(np.max(np.abs(Theta)), np.max(np.abs(user_bias)))
    assert 0 < largest <= 1e-6 * np.max(np.abs(grad))


def test_projected_evaluations_do_not_depend_on_the_threads():
    objective = FlatObjective(_skewed_problem(1), 3, 0.5, mu=3.0, learn_biases=True,
                              reg_bias=0.5)
    results = []
    for n in (1, 2):
        params = _start(objective, objective.ratings)
        projected = ProjectedObjective(objective, params)
        with threads(n):
            cost, grad = projected(projected.values())
            blocks = projected.preconditioners().copy()
        results.append((cost, grad, blocks, params))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


# -- the solver ---------------------------------------------------------------------------------
def _run(objective, x0, method, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return minimize_scipy(objective, x0.copy(), method=method, precondition="projected",
                              **kwargs)


@pytest.mark.parametrize("method", ["CG", "L-BFGS-B"])
def test_the_first_projected_step_is_the_block_newton_step(method):
    """Both methods start along the steepest descent of the changed variables: in the free
    rows' units, along -H^-1 g, H each row's curvature block (not a diagonal: k = 3 and biases,
    rows of 1 to 60 ratings)."""
    objective = FlatObjective(_skewed_problem(2, n_users=80, n_items=30), 3, 0.3, mu=3.0,
                              learn_biases=True, reg_bias=0.1)
    x0 = _start(objective, objective.ratings)
    start = ProjectedObjective(objective, x0.copy())
    v0 = start.values()
    _, g0 = start(v0)
    blocks = start.preconditioners()
    direction = -np.einsum("nij,nkj,nk->ni", blocks, blocks, g0)
    steps = []

    def first_step(iteration, x, history):
        X, _, item_bias, _ = objective.unpack(x)
        steps.append(np.column_stack([X, item_bias]) - v0)
        return True

    _run(objective, x0, method, max_iter=10, tol=0, on_iteration=first_step)
    (step,) = steps
    length = np.sum(step * direction) / np.sum(direction * direction)
    assert length > 0.1
    np.testing.assert_allclose(step, length * direction, rtol=1e-6, atol=1e-9 * length)


@pytest.mark.parametrize("method", ["CG", "L-BFGS-B"])
def test_projected_runs_report_each_iterate_with_its_cost(method, monkeypatch):
    """tol = 0: the budget is spent in segments of 5, 10, ... iterations; ``on_iteration`` sees
    the whole parameter vector at the accepted iterate (its cost is the one recorded, read in
    the precision the run read it in), and the result is the last of them, with its count of
    evaluations."""
    objective = FlatObjective(_problem(5), 3, 1.0, mu=3.0, learn_biases=True, reg_bias=0.5)
    x0 = _start(objective, objective.ratings)
    seen, calls, single = [], [], []
    real = ProjectedObjective.__call__

    def counted(self, v):
        calls.append(1)
        single.append(self.solves.single)
        return real(self, v)

    monkeypatch.setattr(ProjectedObjective, "__call__", counted)

    def cost_at(x, single):
        grads = [np.empty_like(part) for part in objective.unpack(x)]
        return objective._evaluate_into(*objective.unpack(x), grads, single=single)

    def record(iteration, x, history):
        seen.append((iteration, cost_at(x, single[-1]), history["cost"][-1]))

    result, history = _run(objective, x0, method, max_iter=12, tol=0, on_iteration=record)
    assert result.nit == len(history["cost"]) == len(history["seconds"]) == 12
    assert result.nfev == len(calls) > 12
    assert [i for i, _, _ in seen] == list(range(1, 13))
    for _, cost, recorded in seen:
        assert cost == pytest.approx(recorded, rel=1e-12)
    assert result.segments == 2 and result.status == 1
    assert result.fun == history["cost"][-1] == pytest.approx(cost_at(result.x, single[-1]),
                                                              rel=1e-12)
    assert np.all(np.diff(history["cost"]) <= 1e-9 * history["cost"][0])
    result, history = _run(objective, x0, method, max_iter=1, tol=0)
    assert result.nit == len(history["cost"]) == 1 and result.segments == 1


@pytest.mark.parametrize("method", ["CG", "L-BFGS-B"])
def test_a_projected_run_stops_on_request_or_on_the_gradient_test(method):
    objective = FlatObjective(_problem(6), 3, 1.0, mu=3.0, learn_biases=True, reg_bias=0.5)
    x0 = _start(objective, objective.ratings)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        result, history = minimize_scipy(objective, x0.copy(), method=method, max_iter=50,
                                         tol=0, precondition="projected",
                                         on_iteration=lambda iteration, x, h: iteration == 3)
        assert (result.nit, result.status, result.message) == (3, 99, "stopped by on_iteration")
        start = ProjectedObjective(objective, x0.copy())
        g0 = np.max(np.abs(start(start.values())[1]))
        result, history = minimize_scipy(objective, x0.copy(), method=method, max_iter=500,
                                         tol=1e-6, precondition="projected")
    assert (result.status, result.success, result.message) == (0, True, "gradient test met")
    # Past 1e-4 of the start the solves read float64: the whole gradient meets the test.
    assert np.max(np.abs(objective(result.x)[1])) <= 1e-6 * g0
    assert result.nit == len(history["cost"]) < 500


@pytest.mark.parametrize("method", ["CG", "L-BFGS-B"])
def test_a_projected_run_whose_line_search_fails_retries_on_float64_then_stops(method,
                                                                              monkeypatch):
    reads = []

    def uphill(self, v):
        """Half the squared norm, with the gradient's sign flipped: no line search descends."""
        reads.append(self.solves.single)
        return 0.5 * float(np.sum(v * v)), -v

    monkeypatch.setattr(ProjectedObjective, "__call__", uphill)
    objective = FlatObjective(_problem(), 3, 1.0, mu=3.0, learn_biases=True, reg_bias=0.5)
    x0 = _start(objective, objective.ratings)
    with pytest.warns(ConvergenceWarning, match=f"{method} stopped after 0 iterations without "
                                                "meeting tol=0: no progress: "):
        result, history = minimize_scipy(objective, x0.copy(), method=method, max_iter=50,
                                         tol=0, precondition="projected")
    assert (result.status, result.nit, result.segments) == (2, 0, 2) and history["cost"] == []
    assert reads[0] and not reads[-1]
    np.testing.assert_array_equal(objective.unpack(result.x)[0], objective.unpack(x0)[0])


class _Counted(FlatObjective):
    def __call__(self, params):
        self.calls = getattr(self, "calls", 0) + 1
        return super().__call__(params)


def test_precondition_true_projects_only_where_it_applies(monkeypatch):
    """Projected with positive penalties and blocks within the allowance; else the curvature
    path, which evaluates through ``objective(params)``."""
    ratings = _problem()
    for reg, reg_bias, projects in ((1.0, 0.5, True), (0.0, 0.5, False), (1.0, 0.0, False)):
        objective = _Counted(ratings, 3, reg, mu=3.0, learn_biases=True, reg_bias=reg_bias)
        assert objective.projectable == projects
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            minimize_scipy(objective, _start(objective, ratings), method="CG", max_iter=3,
                           tol=0, precondition=True)
        assert (getattr(objective, "calls", 0) == 0) == projects
    # 40 items x 4 x 4 float64 blocks: 5 KB, against 8 bytes per rating (about 5.8 KB).
    monkeypatch.setattr(flat_objective, "_BLOCK_ALLOWANCE", 0)
    objective = FlatObjective(ratings, 3, 1.0, mu=3.0, learn_biases=True, reg_bias=0.5)
    assert objective.projectable
    objective = FlatObjective(ratings, 4, 1.0, mu=3.0, learn_biases=True, reg_bias=0.5)
    assert ratings.n_items * 25 * 8 > 8 * ratings.nnz and not objective.projectable
