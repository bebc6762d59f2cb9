"""SGD: one epoch against a sequential numpy reference, race-free blocks, convergence to the
count-weighted minimum, and the solver in the estimator."""

import itertools
import warnings

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastcofi import MatrixFactorization, Ratings
from fastcofi._params import initial_scale, resolve_auto
from fastcofi.data.ratings import balanced_bounds
from fastcofi.kernels.sgd import Side, rows_sorted, sgd_epoch
from fastcofi.train.objective import FlatObjective
from fastcofi.train.sgd import ETA, _per_rating, blocks_of, minimize_sgd, n_blocks
from fastcofi.train.solvers import ConvergenceWarning, DivergenceError, minimize_als

from .conftest import JIT_DISABLED


def _problem(seed, n_users, n_items, density, k, n_blocks_):
    rng = np.random.default_rng(seed)
    mask = rng.random((n_users, n_items)) < density
    users, items = np.nonzero(mask)
    ratings = Ratings.from_arrays(users, items, rng.integers(1, 6, users.size).astype(float),
                                  all_users=np.arange(n_users), all_items=np.arange(n_items))
    blocks = blocks_of(ratings, n_blocks_)

    def side(n):
        return Side(rng.normal(0, 0.3, (n, k)).astype(np.float32),
                    rng.normal(0, 0.1, n).astype(np.float32),
                    rng.uniform(0, 0.2, n).astype(np.float32),
                    rng.uniform(0, 0.2, n).astype(np.float32),
                    rng.uniform(1, 2, n).astype(np.float32))

    return ratings, blocks, side(n_users), side(n_items)


def _reference_epoch(ratings, blocks, users, items, mu, eta, fit_bias, shift):
    """The documented order, one update at a time in float32: diagonal d, row block b (any
    order: blocks of a diagonal share no row or column), its users ascending, each user's ratings
    of column block (b + d + shift) mod B ascending."""
    indptr, indices, values = ratings.by_user
    P, bu, pen_u, bpen_u, G_u = (a.copy() for a in users)
    Q, bi, pen_i, bpen_i, G_i = (a.copy() for a in items)
    f32 = np.float32
    B = blocks.row_bounds.shape[0] - 1
    sse = 0.0
    for d in range(B):
        for b in range(B):
            c = (b + d + shift) % B
            lo, hi = blocks.col_bounds[c], blocks.col_bounds[c + 1]
            for u in range(blocks.row_bounds[b], blocks.row_bounds[b + 1]):
                for p in range(indptr[u], indptr[u + 1]):
                    i = indices[p]
                    if not lo <= i < hi:
                        continue
                    error = f32(values[p] - mu) - bu[u] - bi[i] - f32(P[u] @ Q[i])
                    sse += float(error) ** 2
                    su, si = f32(eta) / np.sqrt(G_u[u]), f32(eta) / np.sqrt(G_i[i])
                    gu = error * Q[i] - pen_u[u] * P[u]
                    gi = error * P[u] - pen_i[i] * Q[i]
                    P[u] += su * gu
                    Q[i] += si * gi
                    if fit_bias:
                        bu[u] += su * (error - bpen_u[u] * bu[u])
                        bi[i] += si * (error - bpen_i[i] * bi[i])
                    G_u[u] += f32(np.mean(gu * gu))
                    G_i[i] += f32(np.mean(gi * gi))
    return (P, bu, G_u), (Q, bi, G_i), sse


@given(st.integers(0, 2**32 - 1), st.integers(1, 4), st.integers(1, 3), st.booleans(),
       st.integers(0, 5))
def test_epoch_matches_a_sequential_reference(seed, k, n_blocks_, fit_bias, shift):
    ratings, blocks, users, items = _problem(seed, 9, 7, 0.5, k, n_blocks_)
    (P, bu, G_u), (Q, bi, G_i), sse = _reference_epoch(ratings, blocks, users, items, 3.0,
                                                       ETA, fit_bias, shift)
    got = sgd_epoch(ratings.user_rows, blocks, users, items, 3.0,
                    np.float32(ETA), fit_bias, shift)
    # float32 arithmetic, the k-long dot products summed in another order (fastmath).
    for actual, expected in ((users.factors, P), (items.factors, Q), (users.bias, bu),
                             (items.bias, bi), (users.steps, G_u), (items.steps, G_i)):
        np.testing.assert_allclose(actual, expected, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(got, sse, rtol=1e-4)


def test_blocks_balance_ratings_and_cover_every_row():
    # The blocks are `balanced_bounds`' runs of rows.
    counts = np.array([0, 5, 1, 1, 1, 1, 9, 0, 2])
    bounds = balanced_bounds(np.concatenate([[0], np.cumsum(counts)]), 3)
    assert bounds[0] == 0 and bounds[-1] == counts.size and np.all(np.diff(bounds) >= 0)
    per_block = [counts[a:b].sum() for a, b in itertools.pairwise(bounds)]
    # A block passes its share by less than one row (rows are not split).
    assert sum(per_block) == counts.sum() and max(per_block) < counts.sum() / 3 + counts.max()
    # More blocks than rows: empty blocks, still a cover.
    assert balanced_bounds(np.array([0, 3, 4]), 4).tolist()[-1] == 2
    assert n_blocks(1) == n_blocks(8) == 8 and n_blocks(9) == 16


def test_blocks_of_a_rating_set_hold_about_equal_ratings():
    ratings = _planted(n_users=300, n_items=200, density=0.1)
    blocks = blocks_of(ratings, 4)
    for bounds, indptr in ((blocks.row_bounds, ratings.by_user[0]),
                           (blocks.col_bounds, ratings.by_item[0])):
        counts = np.diff(indptr)
        per_block = np.add.reduceat(counts, bounds[:-1]) if bounds[-1] else counts
        assert bounds[0] == 0 and bounds[-1] == counts.size
        assert np.all(np.abs(per_block - counts.sum() / 4) <= counts.max())


def test_a_rows_penalty_is_spread_over_its_ratings():
    np.testing.assert_allclose(_per_rating(np.array([6.0, 6.0, 6.0]), np.array([0, 1, 3])),
                               [6.0, 6.0, 2.0])


def test_rows_must_list_their_columns_in_order():
    indptr = np.array([0, 2, 4])
    assert rows_sorted(indptr, np.array([0, 3, 1, 2], dtype=np.int32))
    assert not rows_sorted(indptr, np.array([0, 3, 2, 1], dtype=np.int32))


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2 or JIT_DISABLED,
                    reason="needs 2 numba threads, and the JIT (without it nothing is parallel)")
def test_epoch_is_bit_identical_on_one_and_two_threads():
    results = []
    for n_threads in (1, 2):
        ratings, blocks, users, items = _problem(3, 300, 200, 0.2, 4, 8)
        numba.set_num_threads(n_threads)
        try:
            for epoch in range(3):
                sgd_epoch(ratings.user_rows, blocks, users, items,
                          3.0, np.float32(ETA), True, epoch)
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        results.append((users.factors.copy(), items.factors.copy(), users.bias.copy()))
    for one, two in zip(*results):
        assert np.array_equal(one, two)


def _planted(n_users=80, n_items=60, k=3, density=0.3, seed=0):
    rng = np.random.default_rng(seed)
    U, V = rng.normal(size=(n_users, k)), rng.normal(size=(n_items, k))
    user_bias, item_bias = rng.normal(0, 0.5, n_users), rng.normal(0, 0.5, n_items)
    users, items = np.nonzero(rng.random((n_users, n_items)) < density)
    values = (3.0 + user_bias[users] + item_bias[items] + 0.5 * (U @ V.T)[users, items]
              + rng.normal(0, 0.3, users.size))
    return Ratings.from_arrays(users, items, values)


@pytest.mark.parametrize("weighting", ["count", "sqrt"])
def test_sgd_descends_to_the_minimum_of_the_weighted_objective(weighting):
    # The expected epoch step is the gradient of the objective with each row's penalty spread
    # over its ratings, so with decaying steps SGD ends near the exact minimum that ALS finds
    # (with a base step large enough to get there: the default's slow approach is on purpose).
    ratings = _planted()
    reg = 0.05 if weighting == "count" else 0.5

    def objective():
        return FlatObjective(ratings, 3, reg, mu=3.0, learn_biases=True, reg_bias=reg,
                             reg_weighting=weighting)

    rng = np.random.default_rng(1)
    start = objective().pack(rng.normal(0, 0.1, (60, 3)), rng.normal(0, 0.1, (80, 3)),
                             np.zeros(60), np.zeros(80))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        als, _, _ = minimize_als(objective(), start.copy(), fit_bias=True, max_iter=200, tol=0)
        sgd, history, _ = minimize_sgd(objective(), start.copy(), fit_bias=True, max_iter=400,
                                       tol=0, eta=0.2)
    best = objective()(als)[0]
    reached = objective()(sgd)[0]
    assert best <= reached < 1.01 * best, (best, reached)
    # Each epoch's reported cost ends near the true one, above it: its errors are each taken
    # before their update (+1.6 % and +1.2 % here).
    assert reached <= history["cost"][-1] < 1.03 * reached
    # A budget too short for tol is reported.
    with pytest.warns(ConvergenceWarning, match="SGD stopped after 3 iterations"):
        minimize_sgd(objective(), start.copy(), fit_bias=True, max_iter=3, tol=1e-9)


def test_the_estimator_trains_with_sgd_and_serves():
    ratings = _planted()
    model = MatrixFactorization(3, solver="sgd", random_state=0).fit(ratings)
    assert model.solver_ == "sgd" and model.reg_weighting_ == "count"
    # reg=None: 0.02 standard deviations of the ratings, count-weighted.
    np.testing.assert_allclose(model.reg_, 0.02 * np.std(ratings.values), rtol=1e-9)
    users, items, values = ratings.coo()
    rmse = np.sqrt(np.mean((model.predict(ratings.user_ids[users], ratings.item_ids[items])
                            - values) ** 2))
    assert rmse < 0.45
    assert len(model.history_["cost"]) == model.n_iter_ <= model.max_iter
    seconds = model.history_["seconds"]
    assert 0 <= seconds[0] <= seconds[-1] < 60 and np.all(np.diff(seconds) >= 0)
    # The stopping test waits out the warm-up, then stops at the first epoch it may.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        eager = MatrixFactorization(3, solver="sgd", tol=1.0, random_state=0).fit(ratings)
        assert eager.n_iter_ == 10
        # A callback's stop is no failure to converge: no warning either.
        MatrixFactorization(3, solver="sgd", max_iter=5, tol=1e-9, random_state=0).fit(
            ratings, callback=lambda it, info: it == 2)
    same = MatrixFactorization(3, solver="sgd", random_state=0).fit(ratings)
    assert np.array_equal(same.user_factors_, model.user_factors_)
    # Fold-in solves the same count-weighted objective for a new user.
    row = 5
    indptr, cols, vals = ratings.by_user
    own = ratings.item_ids[cols[indptr[row]:indptr[row + 1]]]
    folded = model.predict_new_user(own, vals[indptr[row]:indptr[row + 1]], ratings.item_ids)
    trained = model.predict(np.full(60, ratings.user_ids[row]), ratings.item_ids)
    assert np.corrcoef(folded, trained)[0, 1] > 0.9


@pytest.mark.filterwarnings("ignore::fastcofi.train.solvers.ConvergenceWarning")
def test_sgd_starts_small_and_stops_on_validation():
    ratings = _planted()
    seen = []
    model = MatrixFactorization(3, solver="sgd", max_iter=30, tol=0, patience=3,
                                random_state=0)
    model.fit(ratings, validation=ratings, callback=lambda it, info: seen.append(it))
    assert seen == list(range(1, model.n_iter_ + 1))
    assert len(model.history_["val_rmse"]) == model.n_iter_
    assert model.best_iteration_ == 1 + int(np.argmin(model.history_["val_rmse"]))
    # init_scale=None starts SGD at 0.01 (the other solvers at 0.1): one epoch's small steps
    # leave it near there.
    assert initial_scale(None, "sgd") == 0.01 and initial_scale(None, "als") == 0.1
    assert initial_scale(0.3, "sgd") == 0.3
    first = MatrixFactorization(3, solver="sgd", max_iter=1, tol=0, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first.fit(ratings)
    assert 0.005 < first.item_factors_.std() < 0.03


def test_auto_picks_sgd_for_large_sets_and_sgd_rejects_a_remote_objective():
    assert resolve_auto("auto", "auto", 500_000) == ("sgd", "count")
    assert resolve_auto("auto", "auto", 499_999) == ("cg", "sqrt")
    assert resolve_auto("sgd", "auto", 10) == ("sgd", "count")
    assert resolve_auto("auto", "auto", 10**7, scipy_only=True)[0] == "cg"
    with pytest.raises(ValueError, match="solver='sgd'.*make_objective"):
        MatrixFactorization(2, solver="sgd").fit(_planted(), make_objective=lambda *a, **k: None)


def test_a_diverging_epoch_names_sgd_and_the_epoch():
    ratings = Ratings.from_arrays([0, 0, 1, 1], [0, 1, 0, 1], [1e38, -1e38, 3e38, -3e38])
    with pytest.raises(DivergenceError, match="SGD diverged at iteration 1"):
        MatrixFactorization(2, solver="sgd", normalize="none", reg=0.0, init_scale=1.0,
                            random_state=0).fit(ratings)


def test_an_interrupted_run_resumes_bit_for_bit(tmp_path):
    ratings = _planted()
    path = tmp_path / "sgd.npz"
    params = {"n_factors": 3, "solver": "sgd", "max_iter": 25, "tol": 0, "random_state": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = MatrixFactorization(**params).fit(ratings)
        # Stopped after epoch 13 (its checkpoint: parameters and every row's step size), then
        # resumed from the file alone. 13: the blocks' order repeats every 8 epochs, so a resume
        # that lost count of the epochs would still pass at a multiple of 8 (or of 4).
        MatrixFactorization(**params).fit(ratings, checkpoint=path, checkpoint_every=4,
                                          callback=lambda it, info: it == 13)
        with np.load(path) as data:
            assert int(data["iteration"]) == 13 and data["state_user_steps"].shape == (80,)
        resumed = MatrixFactorization(**params).fit(ratings, checkpoint=path, resume=True)
    assert resumed.n_iter_ == 25
    assert np.array_equal(resumed.user_factors_, whole.user_factors_)
    assert np.array_equal(resumed.item_bias_, whole.item_bias_)
    assert resumed.history_["cost"] == whole.history_["cost"]
