"""The Gibbs sampler: random streams, the row draw against numpy, exact conjugate posteriors,
thread-count independence, and the sampled model end to end."""

import json
import re

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastcofi import MatrixFactorization, Ratings
from fastcofi.kernels import gibbs as gk
from fastcofi.train.gibbs import (
    _SCALE_SHAPES,
    GibbsState,
    _sample_normal_gamma,
    _sample_normal_wishart,
    _sample_prior,
    _sample_scale_shape,
    _sample_scales,
    kept_sweeps,
    predictive,
    run_chain,
    schedule,
    stack_samples,
)

from .conftest import JIT_DISABLED


# -- streams -------------------------------------------------------------------------------------
def _mix_reference(z):
    m = 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % m
    return z ^ (z >> 31)


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_64_bit_arithmetic_matches_python_integers(a, b):
    assert int(gk._add64(np.uint64(a), np.uint64(b))) == (a + b) % 2**64
    assert int(gk._mul64(np.uint64(a), np.uint64(b))) == (a * b) % 2**64
    assert int(gk._mix64(np.uint64(a))) == _mix_reference(a)


def test_streams_are_standard_normal_and_distinct_per_row_sweep_side():
    n = 4000 if JIT_DISABLED else 40000
    key = gk.stream_key(np.uint64(11), 3, 1)
    z = np.empty(n)
    gk.row_normals(key, 7, z)
    assert abs(z.mean()) < 4 / np.sqrt(n) and abs(z.std() - 1) < 4 / np.sqrt(2 * n)
    # Tail mass of a normal: P(|z| > 1.96) = 0.05.
    assert abs(np.mean(np.abs(z) > 1.96) - 0.05) < 4 * np.sqrt(0.05 * 0.95 / n)
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < 4 / np.sqrt(n)
    firsts = set()
    for sweep in range(3):
        for side in range(2):
            k = gk.stream_key(np.uint64(11), sweep, side)
            for row in range(5):
                out = np.empty(2)
                gk.row_normals(k, row, out)
                firsts.add(tuple(out))
    assert len(firsts) == 30
    # Across rows (the way a half-sweep reads them), each position is standard normal too.
    rows = 1000 if JIT_DISABLED else 10000
    Z = np.empty((rows, 3))
    for row in range(rows):
        gk.row_normals(key, row, Z[row])
    assert np.all(np.abs(Z.mean(axis=0)) < 4 / np.sqrt(rows))
    assert np.all(np.abs(Z.std(axis=0) - 1) < 4 / np.sqrt(2 * rows))
    u = gk.uniforms(key, n)
    assert 0 < u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 4 * np.sqrt(1 / 12 / n)


# -- one conditional draw against numpy ----------------------------------------------------------
def _reference_draw(cols, values, F, col_offset, col_scale, row_offset, prior_mean,
                    prior_precision, tau, z):
    f = np.column_stack([F[cols], np.ones(len(cols))])
    weighted = tau * col_scale[cols][:, None] * f
    A = prior_precision + weighted.T @ f
    b = prior_precision @ prior_mean + weighted.T @ (values - col_offset[cols] - row_offset)
    L = np.linalg.cholesky(A)
    return np.linalg.solve(A, b) + np.linalg.solve(L.T, z)


def _spd(rng, d):
    """A random symmetric positive definite d x d matrix with correlated dimensions."""
    B = rng.normal(size=(d, d))
    P = B @ B.T + np.diag(rng.uniform(0.5, 2, size=d))
    return 0.5 * (P + P.T)


@given(st.integers(0, 2**32 - 1), st.integers(1, 4), st.integers(0, 6))
def test_sample_row_matches_numpy_with_the_same_normals(seed, k, m):
    rng = np.random.default_rng(seed)
    n_cols = 8
    cols = rng.choice(n_cols, size=m, replace=False).astype(np.int32)
    values = rng.normal(3, 1, size=m)
    F = rng.normal(0, 1, size=(n_cols, k))
    col_offset = rng.normal(0, 0.5, size=n_cols)
    col_scale = rng.uniform(0.2, 3, size=n_cols)
    prior_mean = rng.normal(0, 0.3, size=k + 1)
    prior_precision = _spd(rng, k + 1)
    tau = float(rng.uniform(0.5, 3))
    z = rng.normal(size=k + 1)
    out = np.empty(k + 1)
    ok = gk.sample_row(cols, values, F, col_offset, col_scale, 0.7, prior_mean, prior_precision,
                       tau, z, np.empty((k + 1, k + 1)), np.empty(k + 1), out)
    assert ok
    expected = _reference_draw(cols, values, F, col_offset, col_scale, 0.7, prior_mean,
                               prior_precision, tau, z)
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)


def _csr(rows, cols, values, n_rows):
    order = np.lexsort((cols, rows))
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.add.at(indptr, rows + 1, 1)
    return np.cumsum(indptr), cols[order].astype(np.int32), values[order].astype(np.float64)


def test_sample_rows_uses_each_rows_own_stream():
    rng = np.random.default_rng(5)
    n_rows, n_cols, k = 6, 5, 2
    rows = np.repeat(np.arange(n_rows), 3)
    cols = np.concatenate([rng.choice(n_cols, 3, replace=False) for _ in range(n_rows)])
    indptr, cols, values = _csr(rows, cols, rng.normal(3, 1, rows.size), n_rows)
    F = rng.normal(size=(n_cols, k))
    col_bias = rng.normal(size=n_cols)
    col_scale, row_scale = rng.uniform(0.2, 3, size=n_cols), rng.uniform(0.2, 3, size=n_rows)
    prior = (rng.normal(size=k + 1), _spd(rng, k + 1))
    key = gk.stream_key(np.uint64(9), 4, 0)
    out, out_bias = np.zeros((n_rows, k)), np.zeros(n_rows)
    sse, scaled_sse = np.zeros(n_rows), np.zeros(n_rows)
    chunks = np.array([0, 2, 6], dtype=np.int64)
    assert gk.sample_rows(gk.Rows(indptr, cols, values, chunks),
                          gk.Other(F, col_bias, col_scale), 3.0, gk.Prior(*prior),
                          gk.Noise(1.5, row_scale), key,
                          gk.Draws(out, out_bias, sse, scaled_sse)) == 0
    for r in range(n_rows):
        z = np.empty(k + 1)
        gk.row_normals(key, r, z)
        s, e = indptr[r], indptr[r + 1]
        expected = _reference_draw(cols[s:e], values[s:e], F, col_bias, col_scale, 3.0, *prior,
                                   1.5 * row_scale[r], z)
        np.testing.assert_allclose(np.append(out[r], out_bias[r]), expected, rtol=1e-10)
        resid = values[s:e] - 3.0 - col_bias[cols[s:e]] - out_bias[r] - F[cols[s:e]] @ out[r]
        np.testing.assert_allclose(sse[r], np.sum(resid**2), rtol=1e-10)
        np.testing.assert_allclose(scaled_sse[r], np.sum(col_scale[cols[s:e]] * resid**2),
                                   rtol=1e-10)


# -- exact posterior of a conjugate case ---------------------------------------------------------
def test_many_draws_match_the_exact_gaussian_posterior():
    # One row's conditional, repeated as many identical rows: each row has its own stream, so
    # one half-sweep gives many independent draws of the same Gaussian.
    rng = np.random.default_rng(2)
    k, m = 2, 4
    n_rows = 3000 if JIT_DISABLED else 20000
    F = rng.normal(size=(m, k))
    col_bias = rng.normal(0, 0.3, size=m)
    col_scale = np.array([0.3, 2.0, 1.0, 0.7])
    y = rng.normal(3, 1, size=m)
    prior_mean, tau, row_scale = np.array([0.2, -0.1, 0.3]), 2.5, 0.8
    # Correlated prior dimensions, as the Normal-Wishart prior gives.
    prior_precision = np.array([[2.0, 0.8, 0.0], [0.8, 1.0, 0.0], [0.0, 0.0, 4.0]])
    indptr = np.arange(n_rows + 1, dtype=np.int64) * m
    cols = np.tile(np.arange(m, dtype=np.int32), n_rows)
    values = np.tile(y, n_rows)
    chunks = np.linspace(0, n_rows, 5).astype(np.int64)
    out, out_bias = np.zeros((n_rows, k)), np.zeros(n_rows)
    gk.sample_rows(gk.Rows(indptr, cols, values, chunks), gk.Other(F, col_bias, col_scale), 3.0,
                   gk.Prior(prior_mean, prior_precision),
                   gk.Noise(tau, np.full(n_rows, row_scale)), gk.stream_key(np.uint64(1), 1, 0),
                   gk.Draws(out, out_bias, np.zeros(n_rows), np.zeros(n_rows)))
    draws = np.column_stack([out, out_bias])
    # Each rating's noise precision is tau * row_scale * col_scale[c].
    f = np.column_stack([F, np.ones(m)])
    noise_precision = tau * row_scale * col_scale
    precision = prior_precision + f.T @ (noise_precision[:, None] * f)
    cov = np.linalg.inv(precision)
    mean = cov @ (prior_precision @ prior_mean + f.T @ (noise_precision * (y - 3.0 - col_bias)))
    se = np.sqrt(np.diag(cov) / n_rows)
    assert np.all(np.abs(draws.mean(axis=0) - mean) < 4 * se)
    sample_cov = np.cov(draws.T)
    # Standard error of a covariance entry: sqrt((s_aa s_bb + s_ab^2) / n).
    cov_se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n_rows)
    assert np.all(np.abs(sample_cov - cov) < 4.5 * cov_se)


def test_bias_hyperparameter_draws_match_the_normal_gamma_posterior():
    rng = np.random.default_rng(0)
    rows = rng.normal(0.5, 0.7, size=12)
    n_draws = 4000
    draws = np.array([_sample_normal_gamma(rows, rng) for _ in range(n_draws)])
    n, mean = 12, rows.mean()
    shape = 1.0 + n / 2
    rate = 1.0 + 0.5 * (((rows - mean) ** 2).sum() + n * mean**2 / (1 + n))
    # lambda ~ Gamma(shape, rate): mean shape / rate; m | lambda ~ N(n mean / (1 + n), ...).
    assert abs(draws[:, 1].mean() - shape / rate) < 4 * np.sqrt(shape) / rate / np.sqrt(n_draws)
    # m's marginal is a Student t around n mean / (1 + n) whose spread is about
    # sqrt(rate / shape / (1 + n)).
    spread = np.sqrt(rate / shape / (1 + n))
    assert abs(draws[:, 0].mean() - n * mean / (1 + n)) < 5 * spread / np.sqrt(n_draws)
    assert abs(draws[:, 0].std() / spread - 1) < 0.15


def test_factor_hyperparameter_draws_match_the_normal_wishart_posterior():
    # Rows with a mean far from 0 and correlated columns, so that every term of the posterior
    # (beta0's pull of the mean, the scatter, nu0 + n) shows in the moments.
    rng = np.random.default_rng(1)
    n, k, beta0 = 15, 2, 2.0
    rows = rng.multivariate_normal([1.0, -0.5], [[0.5, 0.3], [0.3, 0.4]], size=n)
    xbar = rows.mean(axis=0)
    c = rows - xbar
    W = np.linalg.inv(np.eye(k) + c.T @ c + beta0 * n / (beta0 + n) * np.outer(xbar, xbar))
    nu = k + n
    n_draws = 4000 if JIT_DISABLED else 20000
    centres, precisions = zip(*(_sample_normal_wishart(rows, rng) for _ in range(n_draws)))
    centres, precisions = np.array(centres), np.array(precisions)
    # Lambda ~ Wishart(W, nu): mean nu W, Var(Lambda_ij) = nu (W_ij^2 + W_ii W_jj).
    sd = np.sqrt(nu * (W**2 + np.outer(np.diag(W), np.diag(W))))
    assert np.all(np.abs(precisions.mean(axis=0) - nu * W) < 4 * sd / np.sqrt(n_draws))
    assert np.all(np.abs(precisions.std(axis=0) / sd - 1) < 0.05)
    # m | Lambda ~ N(n xbar / (beta0 + n), (beta_n Lambda)^-1); marginally its covariance is
    # E[Lambda^-1] / beta_n = W^-1 / ((nu - k - 1) beta_n).
    beta_n = beta0 + n
    cov = np.linalg.inv(W) / ((nu - k - 1) * beta_n)
    se = np.sqrt(np.diag(cov) / n_draws)
    assert np.all(np.abs(centres.mean(axis=0) - n * xbar / beta_n) < 4 * se)
    np.testing.assert_allclose(np.cov(centres.T), cov, rtol=0.06, atol=0.06 * cov[0, 0])


def test_noise_scale_draws_match_their_gamma_conditional():
    # scale_r | rest ~ Gamma(a + n_r / 2, rate a + tau sse_r / 2): mean shape / rate, variance
    # shape / rate^2, per row.
    rng = np.random.default_rng(3)
    counts, sse = np.array([0.0, 3.0, 40.0]), np.array([0.0, 2.5, 10.0])
    a, tau, n_draws = 6.0, 1.7, 20000
    draws = np.array([_sample_scales(a, counts, sse, tau, rng) for _ in range(n_draws)])
    shape, rate = a + counts / 2, a + tau * sse / 2
    mean, var = shape / rate, shape / rate**2
    assert np.all(np.abs(draws.mean(axis=0) - mean) < 4 * np.sqrt(var / n_draws))
    np.testing.assert_allclose(draws.var(axis=0), var, rtol=0.05)


def test_noise_scale_shape_draws_match_the_grid_posterior():
    from scipy import stats

    # The posterior of the shape a on its grid, p(a) prod_r Gamma(scale_r; a, rate a), with a
    # uniform prior over the grid, computed term by term with scipy.
    rng = np.random.default_rng(4)
    scales = rng.gamma(8.0, 1 / 8.0, size=60)
    log_post = np.array([stats.gamma.logpdf(scales, a, scale=1 / a).sum()
                         for a in _SCALE_SHAPES])
    exact = np.exp(log_post - log_post.max())
    exact /= exact.sum()
    n_draws = 20000
    draws = np.array([_sample_scale_shape(scales, rng) for _ in range(n_draws)])
    freq = np.array([(draws == a).mean() for a in _SCALE_SHAPES])
    assert freq.sum() == 1.0  # every draw is a grid point
    assert np.all(np.abs(freq - exact) < 4 * np.sqrt(exact * (1 - exact) / n_draws) + 1e-3)
    # The data decide: scales spread as Gamma(8, 8) put the mode near 8, not at the grid's ends.
    assert 4 < _SCALE_SHAPES[np.argmax(exact)] < 16


def test_row_prior_is_normal_wishart_on_factors_and_normal_gamma_on_the_bias():
    rows = np.random.default_rng(2).normal(size=(30, 4))
    mean, precision = _sample_prior(rows, np.random.default_rng(5))
    again = np.random.default_rng(5)
    centre, factor_precision = _sample_normal_wishart(rows[:, :3], again)
    bias_centre, bias_precision = _sample_normal_gamma(rows[:, 3], again)
    np.testing.assert_array_equal(mean, np.append(centre, bias_centre))
    np.testing.assert_array_equal(precision[:3, :3], factor_precision)
    assert precision[3, 3] == bias_precision
    assert not precision[3, :3].any() and not precision[:3, 3].any()
    assert np.array_equal(precision, precision.T)


# -- the chain ------------------------------------------------------------------------------------
def _planted(n_users=60, n_items=40, k=2, density=0.5, noise=0.3, seed=0):
    rng = np.random.default_rng(seed)
    U = rng.normal(size=(n_users, k))
    V = rng.normal(size=(n_items, k))
    mask = rng.random((n_users, n_items)) < density
    users, items = np.nonzero(mask)
    truth = 3.0 + (U @ V.T)[users, items]
    values = truth + rng.normal(0, noise, size=users.size)
    return users, items, values, truth


def _fit(users, items, values, **params):
    params = {"n_factors": 2, "solver": "gibbs", "max_iter": 30, "random_state": 0, **params}
    return MatrixFactorization(**params).fit(Ratings.from_arrays(users, items, values))


def test_one_sweep_draws_scales_and_noise_from_their_conditionals():
    # Replays sweep 1 of run_chain step by step, from the conditionals' definitions: each side's
    # rows (the kernel, checked above), then its shape given its old scales and its scales given
    # the new residuals, then tau given every residual weighted by both rows' scales.
    users, items, values, _ = _planted(n_users=14, n_items=9, k=2, density=0.6, seed=2)
    ratings = Ratings.from_arrays(users, items, values)
    rng0 = np.random.default_rng(7)
    start = GibbsState(rng0.normal(0, 0.5, (9, 3)), rng0.normal(0, 0.5, (14, 3)), 1.3, 11, 1)
    start.item_scale = rng0.uniform(0.5, 2, 9)
    start.user_scale = rng0.uniform(0.5, 2, 14)
    state = GibbsState.from_arrays(start.to_arrays())
    run_chain(ratings, 3.0, state, max_iter=1, keep=[])

    rng = np.random.default_rng([11, 1])
    u, i, y = ratings.coo()

    def side(rows, other, own_scale, other_scale, index, other_index, counts, side_id):
        prior = _sample_prior(rows, rng)
        # The kernel's draw (tested against numpy above), on the same streams.
        F = other[:, :2].copy()
        indptr, cols, vals = ratings.by_item if side_id == 0 else ratings.by_user
        out = np.zeros((rows.shape[0], 2)), np.zeros(rows.shape[0])
        gk.sample_rows(gk.Rows(indptr, cols, vals, (ratings._item_chunks if side_id == 0
                                                    else ratings._user_chunks)),
                       gk.Other(F, other[:, 2].copy(), other_scale), 3.0, gk.Prior(*prior),
                       gk.Noise(1.3, own_scale), gk.stream_key(np.uint64(11), 1, side_id),
                       gk.Draws(*out, np.zeros(rows.shape[0]), np.zeros(rows.shape[0])))
        new = np.column_stack([*out[:1], out[1]])
        resid = y - 3.0 - new[index, 2] - other[other_index, 2] - np.einsum(
            "ij,ij->i", new[index, :2], other[other_index, :2])
        scaled_sse = np.bincount(index, weights=other_scale[other_index] * resid**2,
                                 minlength=rows.shape[0])
        shape = _sample_scale_shape(own_scale, rng)
        scale = rng.gamma(shape + counts / 2, 1 / (shape + 1.3 * scaled_sse / 2))
        return new, shape, scale, resid

    X, item_shape, item_scale, _ = side(start.item_rows, start.user_rows, start.item_scale,
                                        start.user_scale, i, u, np.bincount(i), 0)
    T, user_shape, user_scale, resid = side(start.user_rows, X, start.user_scale, item_scale,
                                            u, i, np.bincount(u), 1)
    weighted = np.sum(user_scale[u] * item_scale[i] * resid**2)
    tau = rng.gamma(1 + len(y) / 2, 1 / (1 + weighted / 2))
    np.testing.assert_allclose(state.item_rows, X, rtol=1e-12)
    np.testing.assert_allclose(state.user_rows, T, rtol=1e-12)
    assert (state.item_shape, state.user_shape) == (item_shape, user_shape)
    np.testing.assert_allclose(state.item_scale, item_scale, rtol=1e-10)
    np.testing.assert_allclose(state.user_scale, user_scale, rtol=1e-10)
    np.testing.assert_allclose(state.tau, tau, rtol=1e-10)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2 or JIT_DISABLED,
                    reason="needs 2 numba threads, and the JIT (without it nothing is parallel)")
def test_chain_is_bit_identical_for_one_and_two_threads():
    # Enough ratings for several chunks of rows per side, so two threads share the work.
    users, items, values, _ = _planted(n_users=200, n_items=100, density=0.5)
    assert Ratings.from_arrays(users, items, values)._user_chunks.shape[0] > 3
    one = _fit(users, items, values, max_iter=4, n_threads=1)
    two = _fit(users, items, values, max_iter=4, n_threads=2)
    assert np.array_equal(one.item_factors_, two.item_factors_)
    assert np.array_equal(one.user_factors_, two.user_factors_)
    assert np.array_equal(one.user_bias_, two.user_bias_)


def test_kept_sweeps_schedule():
    assert kept_sweeps(10, 3, 2, 2).tolist() == [6, 8, 10]
    assert kept_sweeps(10, 10, 5, 2).tolist() == [6, 8, 10]
    assert kept_sweeps(5, 4, 0, 1).tolist() == [2, 3, 4, 5]


def test_state_round_trips_through_arrays():
    state = GibbsState(np.ones((3, 3)), np.zeros((2, 3)), 2.0, 2**64 - 5, 4)
    state.sweep, state.n_kept = 7, 2
    again = GibbsState.from_arrays(state.to_arrays())
    assert (again.seed, again.sweep, again.n_kept, again.tau) == (2**64 - 5, 7, 2, 2.0)
    assert np.array_equal(again.kept_items, state.kept_items)


# -- the model -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    """A tiny planted problem and a short chain on it (tiny: the JIT-off pass runs it too)."""
    users, items, values, _ = _planted(n_users=30, n_items=20, k=2, density=0.5)
    ratings = Ratings.from_arrays(users, items, values)
    model = MatrixFactorization(2, solver="gibbs", max_iter=30, n_samples=5, random_state=0)
    return ratings, model.fit(ratings)


def test_fit_stores_the_kept_draws_stacked_and_predicts_their_average(small):
    ratings, model = small
    assert model.n_samples_ == 5 and model.item_factors_.shape == (20, 10)
    assert model.user_factors_.shape == (30, 10) and model.n_iter_ == 30
    assert model.noise_variance_ > 0 and len(model.history_["noise_precision"]) == 30
    # The stacked dot product is the draws' average: rebuild it from the per-draw pieces.
    post = model._posterior
    # Index 0 of each side among them: a known row, not a missing one (-1).
    users, items = ratings.user_ids[[0, 3, 7]], ratings.item_ids[[1, 0, 5]]
    X = model.item_factors_[[1, 0, 5]].reshape(3, 5, 2)
    T = model.user_factors_[[0, 3, 7]].reshape(3, 5, 2)
    draws = (model.global_mean_ + post["item_bias_samples"][[1, 0, 5]]
             + post["user_bias_samples"][[0, 3, 7]] + 5 * np.einsum("nsk,nsk->ns", X, T))
    expected = np.clip(draws.mean(axis=1), *model.rating_range_)
    np.testing.assert_allclose(model.predict(users, items), expected, rtol=1e-12)
    pred, std = model.predict(users, items, return_std=True)
    np.testing.assert_allclose(pred, expected, rtol=1e-12)
    # The noise of each pair: the draws' 1 / (tau alpha_user beta_item), averaged.
    noise = post["noise_variances"] / (post["item_noise_scales"][[1, 0, 5]]
                                       * post["user_noise_scales"][[0, 3, 7]])
    np.testing.assert_allclose(std, np.sqrt(draws.var(axis=1) + noise.mean(axis=1)), rtol=1e-12)
    # Scalars give floats; unknown ids a fallback with a larger spread.
    one = model.predict(users[0], items[0], return_std=True)
    assert isinstance(one[0], float) and isinstance(one[1], float)
    _, unknown_std = model.predict([users[0], -5], [-5, items[0]], return_std=True)
    assert np.all(unknown_std > np.sqrt(model.noise_variance_))


def test_stacked_factors_average_the_kept_draws():
    users, items, values, _ = _planted(n_users=12, n_items=9, k=2)
    ratings = Ratings.from_arrays(users, items, values)
    rng = np.random.default_rng(0)
    state = GibbsState(rng.normal(0, 0.1, (9, 3)), rng.normal(0, 0.1, (12, 3)), 1.0, 7, 4)
    run_chain(ratings, 3.0, state, max_iter=10, keep=kept_sweeps(10, 4, 2, 2))
    assert state.n_kept == 4
    stacked = stack_samples(state)
    X, T = state.kept_items, state.kept_users
    average = np.mean(np.einsum("sik,suk->siu", X[:, :, :2], T[:, :, :2]), axis=0)
    np.testing.assert_allclose(stacked["item_factors"] @ stacked["user_factors"].T, average,
                               rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(stacked["item_bias"], X[:, :, 2].mean(axis=0), rtol=1e-12)
    # Fold-in's bias penalty: the user bias's prior variance, averaged over the draws.
    assert stacked["user_bias_variance"] == pytest.approx(
        np.mean(1 / state.kept_user_precision[:, 2, 2]), rel=1e-12)
    assert not np.allclose(state.kept_user_precision[:, 2, 2], state.kept_item_precision[:, 2, 2])
    # User columns: each draw's factors whitened by its prior (L^T theta, L L^T the factor
    # block of the precision), split S ways: theta = L^-T (sqrt(S) block).
    precision = state.kept_user_precision[:, :2, :2]
    assert np.any(precision[:, 0, 1] != 0)  # a full matrix, not just a scaling
    chol = np.linalg.cholesky(precision)
    blocks = stacked["user_factors"].reshape(12, 4, 2)
    for s in range(4):
        np.testing.assert_allclose(np.linalg.solve(chol[s].T, 2 * blocks[:, s].T).T,
                                   T[s, :, :2], rtol=1e-10, atol=1e-12)


def test_predictive_variance_of_unknown_sides_from_the_raw_draws():
    # predictive() works on the whitened stacked factors; rebuild each case from the unstacked
    # draws and their full prior covariances.
    users, items, values, _ = _planted(n_users=12, n_items=9, k=2)
    ratings = Ratings.from_arrays(users, items, values)
    rng = np.random.default_rng(1)
    state = GibbsState(rng.normal(0, 0.1, (9, 3)), rng.normal(0, 0.1, (12, 3)), 1.0, 3, 4)
    run_chain(ratings, 3.0, state, max_iter=10, keep=kept_sweeps(10, 4, 2, 2))
    post = stack_samples(state)
    X, T = state.kept_items[:, :, :2], state.kept_users[:, :, :2]
    item_cov = np.linalg.inv(state.kept_item_precision[:, :2, :2])
    user_cov = np.linalg.inv(state.kept_user_precision[:, :2, :2])
    item_bias_var = 1 / state.kept_item_precision[:, 2, 2]
    user_bias_var = 1 / state.kept_user_precision[:, 2, 2]
    # An unknown row's noise scale enters by its prior E[1 / scale] = a / (a - 1).
    new_item, new_user = (state.kept_shapes / (state.kept_shapes - 1)).T
    noise_item_only = np.mean(new_user / (state.kept_tau * state.kept_item_scale[:, 6]))
    noise_user_only = np.mean(new_item / (state.kept_tau * state.kept_user_scale[:, 4]))
    noise_neither = np.mean(new_item * new_user / state.kept_tau)
    u_index, i_index = np.array([-1, 4, -1]), np.array([6, -1, -1])
    mean, variance = predictive(post, post["item_factors"], post["user_factors"], 3.0, u_index,
                                i_index)
    item_only = 3.0 + state.kept_items[:, 6, 2]
    user_only = 3.0 + state.kept_users[:, 4, 2]
    np.testing.assert_allclose(mean, [item_only.mean(), user_only.mean(), 3.0], rtol=1e-12)
    expected = [
        item_only.var() + noise_item_only + np.mean(
            np.einsum("sa,sab,sb->s", X[:, 6], user_cov, X[:, 6]) + user_bias_var),
        user_only.var() + noise_user_only + np.mean(
            np.einsum("sa,sab,sb->s", T[:, 4], item_cov, T[:, 4]) + item_bias_var),
        noise_neither + np.mean(np.einsum("sab,sba->s", item_cov, user_cov) + item_bias_var
                                + user_bias_var),
    ]
    np.testing.assert_allclose(variance, expected, rtol=1e-10)


def test_same_seed_same_chain_and_seed_matters(small):
    ratings, model = small
    again = MatrixFactorization(2, solver="gibbs", max_iter=30, n_samples=5, random_state=0)
    other = MatrixFactorization(2, solver="gibbs", max_iter=30, n_samples=5, random_state=1)
    assert np.array_equal(again.fit(ratings).user_factors_, model.user_factors_)
    assert not np.array_equal(other.fit(ratings).user_factors_, model.user_factors_)


@pytest.mark.filterwarnings("ignore::fastcofi.train.solvers.ConvergenceWarning")
def test_return_std_is_refused_without_a_posterior(small):
    ratings, _ = small
    model = MatrixFactorization(2, max_iter=5, random_state=0).fit(ratings)
    with pytest.raises(ValueError, match="solver 'cg'.*no posterior"):
        model.predict(ratings.user_ids[:2], ratings.item_ids[:2], return_std=True)
    assert model.predict(ratings.user_ids[:2], ratings.item_ids[:2]).shape == (2,)


def test_gibbs_parameters_are_checked():
    ratings = Ratings.from_arrays([0, 1], [0, 1], [1.0, 2.0])
    with pytest.raises(ValueError, match="normalize='biases'"):
        MatrixFactorization(solver="gibbs", normalize="item_mean").fit(ratings)
    with pytest.raises(ValueError, match="burn_in"):
        MatrixFactorization(solver="gibbs", max_iter=5, burn_in=5).fit(ratings)
    with pytest.raises(ValueError, match="n_samples"):
        MatrixFactorization(solver="gibbs", n_samples=0).fit(ratings)
    with pytest.raises(ValueError, match="thin"):
        MatrixFactorization(solver="gibbs", thin=0).fit(ratings)
    with pytest.raises(ValueError, match="make_objective"):
        MatrixFactorization(solver="gibbs").fit(ratings, make_objective=lambda *a, **k: None)
    assert schedule(300, 100, None, None) == (30, 2)


def test_serving_paths_work_for_a_sampled_model(small, tmp_path):
    from fastcofi import load_model

    ratings, model = small
    user = ratings.user_ids[0]
    ids, scores = model.recommend(user, n=5)
    assert ids.shape == (5,) and np.all(np.diff(scores) <= 0)
    # A raw score is the unclipped average prediction.
    i = np.searchsorted(model.item_ids_, ids[0])
    np.testing.assert_allclose(
        scores[0], model.global_mean_ + model.item_bias_[i] + model.user_bias_[0]
        + model.item_factors_[i] @ model.user_factors_[0])
    batch_ids, _ = model.recommend(ratings.user_ids[:3], n=4)
    assert batch_ids.shape == (3, 4) and np.array_equal(batch_ids[0], ids[:4])
    similar, sims = model.similar_items(ratings.item_ids[0], n=3)
    assert similar.shape == (3,) and ratings.item_ids[0] not in similar
    assert np.all(np.abs(sims) <= 1 + 1e-12)
    # Fold-in of a training user's own ratings predicts close to the model's own predictions.
    indptr, cols, values = ratings.by_user
    own_items = ratings.item_ids[cols[indptr[0]:indptr[1]]]
    vector, _ = model.fold_in(own_items, values[indptr[0]:indptr[1]])
    assert vector.shape == (10,)
    # The median over users: a 30-sweep chain's average and a fold-in point estimate may part
    # for a user or two (user 0 here: 0.46, the other nine 0.95-1.0).
    correlations = []
    for row in range(10):
        own = ratings.item_ids[cols[indptr[row]:indptr[row + 1]]]
        folded = model.predict_new_user(own, values[indptr[row]:indptr[row + 1]],
                                        ratings.item_ids)
        trained = model.predict(np.full(20, ratings.user_ids[row]), ratings.item_ids)
        correlations.append(np.corrcoef(folded, trained)[0, 1])
    assert np.median(correlations) > 0.95, correlations
    # A new user whose id sorts first: the old users' draws must stay with them.
    grown = model.add_users(Ratings.from_arrays([-7, -7], own_items[:2], [4.0, 2.0]))
    _, std = grown.predict([-7, -7], own_items[:2], return_std=True)
    assert np.all(np.isfinite(std)) and np.all(std >= np.sqrt(model.noise_variance_))
    # Nor does it have a noise scale of its own: each draw's prior E[1 / scale], a / (a - 1).
    shapes = model._posterior["user_noise_shapes"]
    new_row = np.searchsorted(grown.user_ids_, -7)
    np.testing.assert_allclose(1 / grown._posterior["user_noise_scales"][new_row],
                               shapes / (shapes - 1), rtol=1e-12)
    old_pairs = (ratings.user_ids[:6], np.resize(ratings.item_ids[:4], 6))
    for a, b in zip(model.predict(*old_pairs, return_std=True),
                    grown.predict(*old_pairs, return_std=True)):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    # The model file: version 5, the posterior kept, return_std the same after loading.
    path = tmp_path / "gibbs.npz"
    model.save(path)
    loaded = load_model(path)
    with np.load(path) as arrays:
        assert int(arrays["format_version"]) == 5
    pairs = (ratings.user_ids[[0, 1, 2]], ratings.item_ids[[3, 4, 0]])
    for a, b in zip(model.predict(*pairs, return_std=True),
                    loaded.predict(*pairs, return_std=True)):
        np.testing.assert_array_equal(a, b)
    assert loaded.n_samples_ == 5
    np.testing.assert_array_equal(loaded.fold_in(own_items, values[indptr[0]:indptr[1]])[0],
                                  vector)


def test_model_file_of_a_sampled_model_is_checked(small, tmp_path):
    from fastcofi.model_file import ModelFileError, load_model

    _, model = small
    path = tmp_path / "gibbs.npz"
    model.save(path)
    with np.load(path) as data:
        arrays = dict(data)
    broken = dict(arrays, posterior_noise_variances=np.array([1.0, 2.0]))
    np.savez(tmp_path / "broken.npz", **broken)
    with pytest.raises(ModelFileError, match="do not divide|shape"):
        load_model(tmp_path / "broken.npz")
    old = dict(arrays, format_version=np.array(2))
    np.savez(tmp_path / "old.npz", **old)
    with pytest.raises(ModelFileError, match="version 3"):
        load_model(tmp_path / "old.npz")
    skew = arrays["posterior_user_prior_precision"].copy()
    skew[0, 0, 1] += 0.5
    np.savez(tmp_path / "skew.npz", **dict(arrays, posterior_user_prior_precision=skew))
    with pytest.raises(ModelFileError, match="symmetric positive definite"):
        load_model(tmp_path / "skew.npz")
    for name, bad in (("posterior_user_noise_scales", 0.0), ("posterior_item_noise_shapes", 1.0)):
        np.savez(tmp_path / "scales.npz", **dict(arrays, **{name: np.full_like(arrays[name], bad)}))
        with pytest.raises(ModelFileError, match=f"{name} must be > {bad:g}"):
            load_model(tmp_path / "scales.npz")
    # Version 4 had one noise level for all ratings: its files load with unit scales.
    v4 = {key: value for key, value in arrays.items() if "noise_s" not in key}
    np.savez(tmp_path / "v4.npz", **dict(v4, format_version=np.array(4)))
    loaded = load_model(tmp_path / "v4.npz")
    assert "user_noise_scales" not in loaded._posterior
    pairs = (model.user_ids_[[0, 1]], model.item_ids_[[3, 4]])
    _, std = loaded.predict(*pairs, return_std=True)
    post = loaded._posterior
    S = loaded.n_samples_
    draws = (model.global_mean_ + post["item_bias_samples"][[3, 4]]
             + post["user_bias_samples"][[0, 1]] + S * np.einsum(
                 "nsk,nsk->ns", loaded.item_factors_[[3, 4]].reshape(2, S, -1),
                 loaded.user_factors_[[0, 1]].reshape(2, S, -1)))
    np.testing.assert_allclose(std**2, draws.var(axis=1) + post["noise_variances"].mean(),
                               rtol=1e-12)
    indefinite = -arrays["posterior_item_prior_precision"]
    np.savez(tmp_path / "indefinite.npz",
             **dict(arrays, posterior_item_prior_precision=indefinite))
    with pytest.raises(ModelFileError, match="symmetric positive definite"):
        load_model(tmp_path / "indefinite.npz")


def test_version_3_file_with_per_dimension_precisions_still_loads(small, tmp_path):
    from fastcofi.model_file import ModelFileError, load_model

    ratings, model = small
    path = tmp_path / "gibbs.npz"
    model.save(path)
    with np.load(path) as data:
        arrays = dict(data)
    # Version 3 stored each draw's precisions per dimension, (S, k + 1).
    diagonals = {name: np.diagonal(arrays[name], axis1=1, axis2=2).copy()
                 for name in ("posterior_item_prior_precision", "posterior_user_prior_precision")}
    np.savez(tmp_path / "v3.npz", **dict(arrays, format_version=np.array(3), **diagonals))
    loaded = load_model(tmp_path / "v3.npz")
    for side in ("item", "user"):
        diag = diagonals[f"posterior_{side}_prior_precision"]
        np.testing.assert_array_equal(loaded._posterior[f"{side}_prior_precision"],
                                      diag[:, :, None] * np.eye(3))
    pairs = (ratings.user_ids[[0, 1]], ratings.item_ids[[3, 4]])
    np.testing.assert_array_equal(loaded.predict(*pairs), model.predict(*pairs))
    # An unknown user under the diagonal prior: S |x''|^2 plus the bias variance, on average.
    _, std = loaded.predict([-5], ratings.item_ids[[3]], return_std=True)
    post, S = loaded._posterior, loaded.n_samples_
    x = loaded.item_factors_[3].reshape(S, 2)
    draws = model.global_mean_ + post["item_bias_samples"][3]
    expected = (draws.var() + post["noise_variances"].mean()
                + np.mean(S * np.sum(x**2, axis=1) + 1 / diagonals[
                    "posterior_user_prior_precision"][:, 2]))
    np.testing.assert_allclose(std[0] ** 2, expected, rtol=1e-12)
    negative = dict(diagonals, posterior_user_prior_precision=-diagonals[
        "posterior_user_prior_precision"])
    np.savez(tmp_path / "v3neg.npz", **dict(arrays, format_version=np.array(3), **negative))
    with pytest.raises(ModelFileError, match="must be > 0"):
        load_model(tmp_path / "v3neg.npz")


def test_observers_verbose_callback_validation(small, capsys):
    ratings, _ = small
    seen = []

    def callback(sweep, info):
        seen.append((sweep, dict(info)))
        return sweep == 5

    model = MatrixFactorization(2, solver="gibbs", max_iter=30, n_samples=5, random_state=0,
                                verbose=True)
    model.fit(ratings, validation=ratings, callback=callback)
    lines = capsys.readouterr().err.strip().splitlines()
    pattern = re.compile(r"sweep +(\d+)/30  train_rmse (\S+)  noise_precision (\S+)  kept (\d+)  "
                         r"\S+s/sweep  elapsed \S+s  val_rmse (\S+)  eta <= \S+$")
    fields = [pattern.match(line).groups() for line in lines]
    assert [int(f[0]) for f in fields] == [1, 2, 3, 4, 5] and {f[3] for f in fields} == {"0"}
    history = model.history_
    assert [float(f[1]) for f in fields] == pytest.approx(history["train_rmse"], abs=1e-4)
    assert [float(f[2]) for f in fields] == pytest.approx(history["noise_precision"], rel=1e-3)
    assert [float(f[4]) for f in fields] == pytest.approx(history["val_rmse"], abs=1e-4)
    assert [s for s, _ in seen] == [1, 2, 3, 4, 5]
    for s, info in seen:
        assert sorted(info) == ["cost", "kept", "noise_precision", "seconds", "train_rmse",
                                "val_rmse"]
        for key in ("cost", "seconds", "train_rmse", "noise_precision", "val_rmse"):
            assert info[key] == history[key][s - 1]
    # The training RMSE is the cost's: half the sum of squared residuals over the ratings.
    np.testing.assert_allclose(np.sqrt(2 * np.array(history["cost"]) / ratings.nnz),
                               history["train_rmse"], rtol=1e-12)
    # Stopped before any kept sweep (10, 15, ..., 30): the last draw is served.
    assert model.n_iter_ == 5 and model.n_samples_ == 1
    assert {len(v) for v in history.values()} == {5}
    # The validation RMSE of the last sweep is that of the model served.
    err = model.predict(*_pairs(ratings)) - ratings.coo()[2]
    assert abs(np.sqrt(np.mean(err**2)) - model.history_["val_rmse"][-1]) < 1e-12


def _pairs(ratings):
    u, i, _ = ratings.coo()
    return ratings.user_ids[u], ratings.item_ids[i]


def test_validation_tracks_the_running_average_of_kept_draws(small):
    ratings, model = small
    again = MatrixFactorization(2, solver="gibbs", max_iter=30, n_samples=5, random_state=0)
    again.fit(ratings, validation=ratings)
    assert np.array_equal(again.user_factors_, model.user_factors_)  # observing changes nothing
    err = again.predict(*_pairs(ratings)) - ratings.coo()[2]
    assert abs(np.sqrt(np.mean(err**2)) - again.history_["val_rmse"][-1]) < 1e-12


def test_resume_continues_the_chain_bit_identically(small, tmp_path):
    ratings, model = small
    path = tmp_path / "chain.npz"
    params = {"n_factors": 2, "solver": "gibbs", "max_iter": 30, "n_samples": 5,
              "random_state": 0}
    # Interrupted after sweep 27 (four kept draws made), then resumed with another seed: the
    # checkpoint's seed and stream position win.
    MatrixFactorization(**params).fit(
        ratings, checkpoint=path, checkpoint_every=1, callback=lambda s, info: s == 27)
    seen = []
    resumed = MatrixFactorization(**{**params, "random_state": 5}).fit(
        ratings, checkpoint=path, resume=True, callback=lambda s, info: seen.append(s))
    assert resumed.n_iter_ == 30 and len(resumed.history_["cost"]) == 30
    assert seen == [28, 29, 30]  # the chain's sweeps, counted on from the checkpoint
    assert np.array_equal(resumed.item_factors_, model.item_factors_)
    assert np.array_equal(resumed.user_bias_, model.user_bias_)
    assert resumed.history_["cost"] == model.history_["cost"]
    assert resumed.history_["noise_precision"] == model.history_["noise_precision"]
    with pytest.raises(ValueError, match="other data or settings"):
        MatrixFactorization(**{**params, "n_samples": 4}).fit(
            ratings, checkpoint=path, resume=True)
    # A chain of the earlier per-dimension prior holds other state: refused, not misread.
    with np.load(path) as data:
        arrays = dict(data)
    fingerprint = json.loads(str(arrays["fingerprint"]))
    del fingerprint["factor_prior"]
    arrays["fingerprint"] = np.array(json.dumps(fingerprint, sort_keys=True))
    np.savez(tmp_path / "older.npz", **arrays)
    with pytest.raises(ValueError, match="differs in factor_prior"):
        MatrixFactorization(**params).fit(ratings, checkpoint=tmp_path / "older.npz",
                                          resume=True)
    # So does a chain of one noise level for all ratings.
    del fingerprint["noise"]
    fingerprint["factor_prior"] = "normal-wishart"
    arrays["fingerprint"] = np.array(json.dumps(fingerprint, sort_keys=True))
    np.savez(tmp_path / "one_noise.npz", **arrays)
    with pytest.raises(ValueError, match="differs in noise"):
        MatrixFactorization(**params).fit(ratings, checkpoint=tmp_path / "one_noise.npz",
                                          resume=True)


def test_resumed_validation_averages_the_draws_kept_before(small, tmp_path):
    ratings, _ = small
    path = tmp_path / "chain.npz"
    params = {"n_factors": 2, "solver": "gibbs", "max_iter": 30, "n_samples": 5,
              "random_state": 0}
    whole = MatrixFactorization(**params).fit(ratings, validation=ratings)
    # Interrupted with three draws kept (sweeps 10, 15, 20), resumed: the running average goes on
    # from their sum, and the validation history is the uninterrupted chain's.
    MatrixFactorization(**params).fit(ratings, validation=ratings, checkpoint=path,
                                      callback=lambda s, info: s == 23)
    resumed = MatrixFactorization(**params).fit(ratings, validation=ratings, checkpoint=path,
                                                resume=True)
    np.testing.assert_allclose(resumed.history_["val_rmse"], whole.history_["val_rmse"],
                               rtol=1e-12)
    assert len(resumed.history_["val_rmse"]) == 30


@pytest.mark.slow
def test_predictive_intervals_cover_held_out_ratings():
    # Planted continuous ratings with known noise: 90 % intervals should hold 90 % of new ones.
    users, items, values, _ = _planted(n_users=400, n_items=300, k=3, density=0.25, noise=0.5,
                                       seed=3)
    test = np.random.default_rng(4).random(users.size) < 0.2
    model = MatrixFactorization(3, solver="gibbs", max_iter=150, clip=False, random_state=0)
    model.fit(Ratings.from_arrays(users[~test], items[~test], values[~test]))
    assert abs(model.noise_variance_ - 0.25) < 0.02
    pred, std = model.predict(users[test], items[test], return_std=True)
    inside = np.abs(values[test] - pred) <= 1.6448536 * std
    assert 0.88 <= inside.mean() <= 0.92, inside.mean()


@pytest.mark.slow
def test_noise_scales_learn_which_users_and_items_are_noisy():
    # Planted ratings whose noise depends on the user (sd 0.2 or 0.6) and the item (times 1 or
    # 2). One noise level for all would cover far more than 90 % of the quiet pairs and far
    # less of the noisy ones; the learned scales give each group its own level.
    rng = np.random.default_rng(5)
    n_users, n_items, k = 300, 200, 3
    U, V = rng.normal(size=(n_users, k)), rng.normal(size=(n_items, k))
    users, items = np.nonzero(rng.random((n_users, n_items)) < 0.3)
    user_sd = np.where(np.arange(n_users) % 2 == 0, 0.2, 0.6)
    item_sd = np.where(np.arange(n_items) % 2 == 0, 1.0, 2.0)
    sd = user_sd[users] * item_sd[items]
    values = 3.0 + (U @ V.T)[users, items] + rng.normal(size=users.size) * sd
    test = np.random.default_rng(6).random(users.size) < 0.2
    model = MatrixFactorization(3, solver="gibbs", max_iter=100, n_samples=50, clip=False,
                                random_state=0)
    model.fit(Ratings.from_arrays(users[~test], items[~test], values[~test]))
    pred, std = model.predict(users[test], items[test], return_std=True)
    inside = np.abs(values[test] - pred) <= 1.6448536 * std
    for level in np.unique(sd):
        assert 0.85 <= inside[sd[test] == level].mean() <= 0.95, level
    # Noise variance ratios, noisy over quiet: 9 for the users, 4 for the items.
    post = model._posterior
    user_var = np.mean(post["noise_variances"] / post["user_noise_scales"], axis=1)
    item_var = np.mean(1 / post["item_noise_scales"], axis=1)
    assert 5 < user_var[1::2].mean() / user_var[0::2].mean() < 13
    assert 2.5 < item_var[1::2].mean() / item_var[0::2].mean() < 6


@pytest.mark.slow
def test_u1_smallest_std_fifth_is_more_accurate_than_largest(ml100k):
    from fastcofi import read_ratings

    train, test = read_ratings(ml100k / "u1.base"), read_ratings(ml100k / "u1.test")
    model = MatrixFactorization(10, solver="gibbs", max_iter=40, n_samples=10, random_state=0)
    model.fit(train)
    users, items, values = test.coo()
    pred, std = model.predict(test.user_ids[users], test.item_ids[items], return_std=True)
    order = np.argsort(std, kind="stable")
    fifth = len(order) // 5
    sq = (pred - values) ** 2
    low, high = np.sqrt(sq[order[:fifth]].mean()), np.sqrt(sq[order[-fifth:]].mean())
    assert low < 0.9 * high, (low, high)
