"""The variational-Bayes solver: its row update against a dense derivation, the free energy, a
planted noise level recovered, fold-in and model files."""

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastcofi import MatrixFactorization, ModelFileError, Ratings, load_model
from fastcofi._parallel import threads
from fastcofi.data.synthetic import planted as planted_problem
from fastcofi.kernels.vb import Posterior, vb_update_rows
from fastcofi.train import vb as vb_solver
from fastcofi.train.objective import FlatObjective
from fastcofi.train.solvers import ConvergenceWarning
from fastcofi.train.vb import _moments

from .conftest import JIT_DISABLED
from .strategies import relative_error, sparse_problems

pytestmark = pytest.mark.filterwarnings("ignore::fastcofi.ConvergenceWarning")


def _posteriors(rng, n, d):
    """Random means and symmetric positive definite covariances of ``n`` rows."""
    mean = rng.normal(scale=0.5, size=(n, d))
    root = rng.normal(scale=0.3, size=(n, d, d))
    cov = np.einsum("nab,ncb->nac", root, root) + 0.05 * np.eye(d)
    return mean, cov


def _dense_update(values, mask, mu, other_mean, other_cov, precision, tau):
    """The mean-field update of each row of ``mask`` (rows x columns) from the textbook form:
    normal equations over E[(w, 1)(w, 1)^T] and, for the expected squared error, the squared
    error of the mean prediction plus the prediction's variance, rating by rating."""
    n_rows, d = mask.shape[0], other_mean.shape[1]
    k = d - 1
    mean = np.zeros((n_rows, d))
    cov = np.zeros((n_rows, d, d))
    sse = np.zeros(n_rows)
    for r in range(n_rows):
        system = np.diag(precision).astype(float)
        rhs = np.zeros(d)
        cols = np.flatnonzero(mask[r])
        for c in cols:
            w = np.append(other_mean[c, :k], 1.0)
            second = np.outer(w, w)
            second[:k, :k] += other_cov[c, :k, :k]
            cross = w * other_mean[c, k]
            cross[:k] += other_cov[c, :k, k]
            system += tau * second
            rhs += tau * (w * (values[r, c] - mu) - cross)
        cov[r] = np.linalg.inv(system)
        mean[r] = cov[r] @ rhs
        m, P = mean[r], cov[r]
        for c in cols:
            n, Q = other_mean[c], other_cov[c]
            prediction = m[:k] @ n[:k] + m[k] + n[k]
            variance = (
                m[:k] @ Q[:k, :k] @ m[:k] + 2 * m[:k] @ Q[:k, k] + Q[k, k]
                + n[:k] @ P[:k, :k] @ n[:k] + 2 * n[:k] @ P[:k, k] + P[k, k]
                + np.trace(P[:k, :k] @ Q[:k, :k])
            )
            sse[r] += (values[r, c] - mu - prediction) ** 2 + variance
    return mean, cov, sse


@given(sparse_problems(max_items=12, max_users=12, max_factors=4), st.integers(0, 2**31))
def test_row_update_matches_the_dense_derivation(problem, seed):
    ratings, dense, mask, _, _, _ = problem
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 5))
    d = k + 1
    user_mean, user_cov = _posteriors(rng, ratings.n_users, d)
    precision = rng.uniform(0.5, 5.0, size=d)
    tau, mu = float(rng.uniform(0.5, 3.0)), float(rng.normal())
    mean = np.zeros((ratings.n_items, d))
    cov = np.zeros((ratings.n_items, d, d))
    sse, logdet = np.zeros(ratings.n_items), np.zeros(ratings.n_items)
    failed = vb_update_rows(
        ratings.item_rows, _moments(user_mean, user_cov), mu, tau,
        precision, Posterior(mean, cov, sse, logdet),
    )
    want_mean, want_cov, want_sse = _dense_update(
        dense, mask, mu, user_mean, user_cov, precision, tau
    )
    assert failed == 0
    assert relative_error(mean, want_mean) < 1e-9
    assert relative_error(cov, want_cov) < 1e-9
    assert relative_error(sse, want_sse) < 1e-9
    assert relative_error(logdet, np.linalg.slogdet(want_cov)[1]) < 1e-9


@pytest.fixture(scope="module")
def planted():
    return planted_problem()


# With the JIT off a fit to convergence (30 sweeps, each start) took 55-80 s; the free energy's
# climb shows in a few sweeps, and the converged model's claims are the JIT-on pass's.
_FEW_SWEEPS = {"max_iter": 6} if JIT_DISABLED else {}


@pytest.fixture(scope="module")
def vb_model(planted):
    train, _ = planted
    return MatrixFactorization(n_factors=8, solver="vb", random_state=0,
                               **_FEW_SWEEPS).fit(train)


def test_free_energy_never_decreases(vb_model):
    costs = np.asarray(vb_model.history_["cost"])  # the negative free energy
    assert costs.shape[0] >= 3
    assert np.all(np.diff(costs) <= 1e-9 * np.abs(costs[:-1]))


@pytest.mark.slow  # needs the fit run to convergence (see _FEW_SWEEPS)
def test_learns_the_planted_noise_and_predicts_near_it(planted, vb_model):
    """No regularization given, yet the noise variance is found and the test error is close to
    the noise floor, where a fixed default penalty (tuned for MovieLens) lands further off."""
    train, (users, items, values, truth) = planted
    assert vb_model.noise_variance_ == pytest.approx(0.3**2, rel=0.25)
    rmse = np.sqrt(np.mean((vb_model.predict(users, items) - values) ** 2))
    floor = np.sqrt(np.mean((truth - values) ** 2))
    assert rmse < 1.15 * floor
    cg = MatrixFactorization(n_factors=8, random_state=0).fit(train)
    assert rmse < np.sqrt(np.mean((cg.predict(users, items) - values) ** 2))


@pytest.mark.slow  # two k=10 VB fits: 40 s with the JIT off
@pytest.mark.parametrize("noise", [1.0, 1.5])
def test_keeps_its_factors_when_signal_and_noise_are_alike(noise):
    """Noise as large as the planted signal or larger: from the first start alone VB took the
    signal for noise, switched every factor off and predicted little better than the biases
    (1.43x and 1.22x the floor here); the start that assumes little noise has the higher free
    energy, and is kept."""
    train, (users, items, values, truth) = planted_problem(noise=noise)
    vb = MatrixFactorization(solver="vb", random_state=0).fit(train)
    cg = MatrixFactorization(random_state=0).fit(train)
    floor = np.sqrt(np.mean((truth - values) ** 2))
    rmse = {name: np.sqrt(np.mean((m.predict(users, items) - values) ** 2)) / floor
            for name, m in (("vb", vb), ("cg", cg))}
    assert rmse["vb"] < 1.12
    assert rmse["vb"] < rmse["cg"]


def _vb_from(train, init_noise, on_iteration=None, k=4):
    objective = FlatObjective(train, k, 0.0, mu=float(train.values.mean()), learn_biases=True)
    rng = np.random.default_rng(3)
    params = objective.pack(rng.normal(0, 0.1, (train.n_items, k)),
                            rng.normal(0, 0.1, (train.n_users, k)),
                            np.zeros(train.n_items), np.zeros(train.n_users))
    return vb_solver.minimize_vb(objective, params, max_iter=200, tol=3e-3, init_noise=init_noise,
                               on_iteration=on_iteration)


@pytest.mark.parametrize("noise", [0.3, 1.0])
def test_keeps_the_start_with_the_higher_free_energy(noise):
    train, _ = planted_problem(noise=noise, n_users=120, n_items=80, density=0.4)
    singles = [_vb_from(train, start) for start in (1.0, 1.0 / 16)]
    both = _vb_from(train, (1.0, 1.0 / 16))
    kept = singles[int(np.argmax([state["free_energy"] for _, _, state in singles]))]
    np.testing.assert_array_equal(both[0], kept[0])
    assert both[2]["free_energy"] == max(state["free_energy"] for _, _, state in singles)
    # With a hook, the kept start is run again: the hook sees that run, and the result is the same.
    seen = []
    hooked = _vb_from(train, (1.0, 1.0 / 16), lambda it, params, history: seen.append(it) or False)
    np.testing.assert_array_equal(hooked[0], kept[0])
    assert seen == list(range(1, len(kept[1]["cost"]) + 1))


@pytest.mark.slow  # k=10 VB runs: 30-50 s each with the JIT off
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_start_that_fails_is_dropped(seed):
    # Noiseless ratings: the start that assumes little noise loses positive definiteness.
    train, (users, items, values, _) = planted_problem(seed=seed, noise=0.0, n_users=60,
                                                       n_items=40, density=0.5)
    with pytest.raises(FloatingPointError, match="not positive definite"):
        _vb_from(train, 1.0 / 16, k=10)
    kept = _vb_from(train, (1.0, 1.0 / 16), k=10)
    np.testing.assert_array_equal(kept[0], _vb_from(train, 1.0, k=10)[0])


def test_replay_and_warning_happen_once(planted, monkeypatch):
    train, _ = planted_problem(noise=1.0, n_users=120, n_items=80, density=0.4)
    runs = []
    real_run = vb_solver._vb_run
    monkeypatch.setattr(vb_solver, "_vb_run", lambda *a: runs.append(a[6]) or real_run(*a))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        MatrixFactorization(n_factors=4, solver="vb", max_iter=3, tol=0).fit(train)
    assert [w.category for w in caught] == [ConvergenceWarning]
    assert runs == [None, None]  # two starts, no replay: nothing observes the run
    runs.clear()
    # A callback asking to stop ends the replayed run.
    model = MatrixFactorization(n_factors=4, solver="vb", random_state=0).fit(
        train, callback=lambda iteration, info: iteration == 2)
    assert len(runs) == 3 and runs[2] is not None
    assert model.n_iter_ == 2 and len(model.history_["cost"]) == 2


def test_init_noise_is_checked(planted):
    train, _ = planted
    for bad in ((), 0.0, -1.0, float("nan"), [[1.0, 0.5]]):
        with pytest.raises(ValueError, match="init_noise must be a number > 0"):
            _vb_from(train, bad)


def test_results_do_not_depend_on_the_thread_count(planted):
    train, _ = planted
    fits = []
    for n in (1, 2):
        with threads(n):
            fits.append(MatrixFactorization(n_factors=4, solver="vb", max_iter=5,
                                            random_state=1, n_threads=n).fit(train))
    np.testing.assert_array_equal(fits[0].item_factors_, fits[1].item_factors_)
    np.testing.assert_array_equal(fits[0].user_bias_, fits[1].user_bias_)


def test_fold_in_is_the_ridge_solve_with_the_learned_variances(planted, vb_model):
    """A new user's vector: least squares on the item factors as stored, penalized by the noise
    variance (unit prior after the stored scaling) and the bias by noise / bias variance."""
    train, _ = planted
    ptr, cols, vals = train.by_user
    user = 7
    items = train.item_ids[cols[ptr[user] : ptr[user + 1]]]
    values = vals[ptr[user] : ptr[user + 1]]
    w, beta = vb_model.fold_in(items, values)
    k = vb_model.n_factors
    F = np.column_stack([vb_model.item_factors_[items], np.ones(len(items))])
    penalty = np.diag([vb_model.noise_variance_] * k
                      + [vb_model.noise_variance_ / vb_model.user_bias_variance_])
    target = values - vb_model.global_mean_ - vb_model.item_bias_[items]
    want = np.linalg.solve(F.T @ F + penalty, F.T @ target)
    assert relative_error(np.append(w, beta), want) < 1e-9
    # Close to the trained posterior mean (which also counts the items' uncertainty).
    assert np.corrcoef(w, vb_model.user_factors_[user])[0, 1] > 0.95


def test_model_file_keeps_what_fold_in_needs(tmp_path, planted, vb_model):
    train, (users, items, _, _) = planted
    path = tmp_path / "vb.npz"
    vb_model.save(path)
    loaded = load_model(path)
    assert loaded.noise_variance_ == vb_model.noise_variance_
    assert loaded.user_bias_variance_ == vb_model.user_bias_variance_
    np.testing.assert_array_equal(loaded.predict(users, items), vb_model.predict(users, items))
    np.testing.assert_array_equal(loaded.fold_in([1, 2, 3], [5.0, 1.0, 4.0])[0],
                                  vb_model.fold_in([1, 2, 3], [5.0, 1.0, 4.0])[0])
    with np.load(path) as npz:
        members = {name: npz[name] for name in npz.files if name != "noise_variance"}
    np.savez(tmp_path / "cut.npz", **members)
    with pytest.raises(ModelFileError, match="noise_variance.*missing"):
        load_model(tmp_path / "cut.npz")


def test_refuses_what_it_cannot_do(planted, tmp_path):
    train, _ = planted
    with pytest.raises(ValueError, match="needs normalize='biases', found normalize='item_mean'"):
        MatrixFactorization(solver="vb", normalize="item_mean").fit(train)
    with pytest.raises(ValueError, match="does not checkpoint"):
        MatrixFactorization(solver="vb").fit(train, checkpoint=tmp_path / "c.npz")


def test_validation_history_and_callback(planted):
    train, (users, items, values, _) = planted
    validation = Ratings.from_arrays(users, items, values)
    seen = []
    model = MatrixFactorization(n_factors=4, solver="vb", max_iter=6, tol=0, random_state=0).fit(
        train, validation=validation, callback=lambda it, info: seen.append(it) or False
    )
    assert seen == list(range(1, 7))
    assert len(model.history_["val_rmse"]) == 6
    assert model.best_iteration_ == 1 + int(np.argmin(model.history_["val_rmse"]))


def test_verbose_alone_replays_the_kept_start(monkeypatch, capsys):
    train, _ = planted_problem(noise=1.0, n_users=120, n_items=80, density=0.4)
    runs = []
    real_run = vb_solver._vb_run
    monkeypatch.setattr(vb_solver, "_vb_run", lambda *a: runs.append(a[6]) or real_run(*a))
    model = MatrixFactorization(n_factors=4, solver="vb", max_iter=3, tol=0, verbose=True,
                                random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(train)
    assert len(runs) == 3 and runs[2] is not None  # two starts, then the kept one observed
    assert len(capsys.readouterr().err.splitlines()) == model.n_iter_

