import logging
import re
import warnings

import numpy as np
import pytest

import fastcofi._params
from fastcofi import ConvergenceWarning, MatrixFactorization, Ratings, load_model, reference
from fastcofi._params import LARGE, default_penalties, resolve_auto
from fastcofi.app.demo import toy_ratings_with_new_user
from fastcofi.data.synthetic import planted
from fastcofi.train.observers import progress_line

# The tutorial's model: item-mean normalization and a plain penalty on the summed cost.
TUTORIAL = dict(normalize="item_mean", reg_weighting="none")


def _planted(**kwargs):
    """The tests' planted problem without biases, its interaction of variance 3."""
    kwargs = {"n_users": 120, "n_items": 80, "noise": 0.1, "density": 0.4, "signal": np.sqrt(3),
              "item_bias": 0.0, "user_bias": 0.0, "held_out": 0.1, **kwargs}
    train, (users, items, values, _) = planted(**kwargs)
    return train, (users, items, values)


def test_fit_returns_self_and_init_only_stores_params():
    model = MatrixFactorization(4, reg=2.0, random_state=1)
    assert not hasattr(model, "item_factors_")
    assert model.get_params()["reg"] == 2.0
    ratings, _ = toy_ratings_with_new_user()
    assert model.fit(ratings) is model
    assert model.item_factors_.shape == (10, 4) and model.user_factors_.shape == (6, 4)
    assert len(model.history_["cost"]) == len(model.history_["seconds"]) == model.n_iter_


def test_toy_solution_is_a_stationary_point_of_the_dense_reference():
    """The tutorial's known answer: CG ends where the dense objective's gradient vanishes."""
    ratings, _ = toy_ratings_with_new_user()
    model = MatrixFactorization(3, reg=1.0, max_iter=2000, tol=1e-8, random_state=0, **TUTORIAL)
    with warnings.catch_warnings():
        # at this tol scipy may end on "precision loss", which is the stationary point we want
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(ratings)
    dense = np.zeros((10, 6))
    users, items, values = ratings.coo()
    dense[items, users] = values
    did_rate = dense != 0
    norm, mean = reference.normalize_ratings(dense, did_rate)
    np.testing.assert_allclose(model.item_means_, mean.ravel())
    X, Theta = model.item_factors_, model.user_factors_
    assert model.result_.fun == pytest.approx(reference.cost(X, Theta, norm, did_rate, 1.0))
    gx, gt = reference.gradient(X, Theta, norm, did_rate, 1.0)
    assert max(np.abs(gx).max(), np.abs(gt).max()) < 1e-6
    # and the fit explains the ratings better than the item means alone
    pred = X @ Theta.T + mean
    assert np.sum(((pred - dense) * did_rate) ** 2) < 0.5 * np.sum((norm * did_rate) ** 2)


def test_strong_regularization_gives_the_item_means():
    ratings, _ = toy_ratings_with_new_user()
    model = MatrixFactorization(3, reg=30.0, random_state=0, **TUTORIAL).fit(ratings)
    assert np.abs(model.item_factors_ @ model.user_factors_.T).max() < 1e-3


def test_refit_with_same_seed_is_identical_and_other_seed_differs():
    train, _ = _planted()
    a = MatrixFactorization(5, reg=1.0, max_iter=10, random_state=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a.fit(train)
        first = a.item_factors_.copy()
        a.fit(train)
        b = MatrixFactorization(5, reg=1.0, max_iter=10, random_state=7).fit(train)
        c = MatrixFactorization(5, reg=1.0, max_iter=10, random_state=8).fit(train)
    np.testing.assert_array_equal(first, a.item_factors_)
    np.testing.assert_array_equal(a.user_factors_, b.user_factors_)
    assert not np.array_equal(a.item_factors_, c.item_factors_)


@pytest.mark.slow  # up to 1000 CG iterations: about 50 s with the JIT off
def test_planted_low_rank_problem_is_recovered_near_the_noise_level():
    train, (u, i, y) = _planted(rank=3, noise=0.1)
    # Two factors more than the planted rank: item means estimated from ~50 ratings each leave an
    # item-specific offset that one absorbs, and the spare one keeps CG out of the spurious
    # minima a tight rank can reach (with 4 factors 2 of 12 data seeds stopped at RMSE 0.5-0.8;
    # with 5, none of the 12 went above 0.14).
    model = MatrixFactorization(5, reg=0.1, max_iter=1000, tol=1e-6, random_state=0, **TUTORIAL)
    model.fit(train)
    rmse = np.sqrt(np.mean((model.predict(u, i) - y) ** 2))
    baseline = np.sqrt(np.mean((model.item_means_[i] - y) ** 2))
    assert rmse < 0.15 and baseline > 1.0


def test_thread_count_does_not_change_the_model():
    train, _ = _planted()
    kwargs = dict(n_factors=4, reg=1.0, max_iter=20, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        one = MatrixFactorization(**kwargs, n_threads=1).fit(train)
        two = MatrixFactorization(**kwargs, n_threads=2).fit(train)
    np.testing.assert_array_equal(one.item_factors_, two.item_factors_)


def test_convergence_warning_names_scipys_reason():
    train, _ = _planted()
    with pytest.warns(ConvergenceWarning, match="Maximum number of iterations"):
        MatrixFactorization(3, max_iter=2, random_state=0).fit(train)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        MatrixFactorization(3, reg=10.0, max_iter=1000, random_state=0).fit(train)


def test_tol_zero_disables_the_gradient_test():
    train, _ = _planted()
    with pytest.warns(ConvergenceWarning):
        model = MatrixFactorization(3, reg=10.0, max_iter=60, tol=0, random_state=0).fit(train)
    converged = MatrixFactorization(3, reg=10.0, max_iter=60, random_state=0).fit(train)
    assert model.n_iter_ > converged.n_iter_


def test_callback_can_stop_and_validation_history_is_recorded():
    train, (u, i, y) = _planted()
    validation = Ratings.from_arrays(u, i, y)
    seen = []

    def callback(iteration, info):
        seen.append((iteration, info["cost"], info["val_rmse"]))
        return iteration == 5

    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # stopping on request is no warning
        model = MatrixFactorization(3, random_state=0).fit(
            train, validation=validation, callback=callback
        )
    assert model.n_iter_ == 5 and [s[0] for s in seen] == [1, 2, 3, 4, 5]
    assert model.history_["val_rmse"] == [s[2] for s in seen]
    assert model.history_["val_rmse"][-1] < model.history_["val_rmse"][0]
    assert np.all(np.diff(model.history_["cost"]) <= 0)


def test_predict_fallbacks_and_clipping():
    ratings = Ratings.from_arrays(["a", "a", "b"], ["x", "y", "x"], [1.0, 5.0, 3.0])
    model = MatrixFactorization(2, reg=0.1, random_state=0, **TUTORIAL).fit(ratings)
    assert model.global_mean_ == 3.0 and model.rating_range_ == (1.0, 5.0)
    pred = model.predict(["a", "zz", "zz", "a"], ["x", "x", "nope", "nope"])
    assert pred.shape == (4,)
    assert pred[1] == model.item_means_[0] == 2.0  # unknown user, known item: item mean
    assert pred[2] == pred[3] == 3.0  # unknown item: global mean
    assert np.all((pred >= 1.0) & (pred <= 5.0))
    assert isinstance(model.predict("a", "y"), float)
    grid = model.predict(np.array([["a"], ["b"]]), np.array(["x", "y"]))
    assert grid.shape == (2, 2)


def test_recommend_checkerboard():
    """Two taste groups: each user should be offered the unseen items of their own group."""
    n = 20
    users, items, values = [], [], []
    rng = np.random.default_rng(0)
    for u in range(n):
        for i in range(n):
            if rng.random() < 0.6:
                users.append(u)
                items.append(i)
                values.append(5.0 if (u % 2) == (i % 2) else 1.0)
    ratings = Ratings.from_arrays(users, items, values, all_users=range(n), all_items=range(n))
    model = MatrixFactorization(2, reg=0.1, max_iter=500, random_state=0).fit(ratings)
    rated = {(u, i) for u, i in zip(users, items)}
    for u in range(n):
        unseen_own = {i for i in range(n) if i % 2 == u % 2 and (u, i) not in rated}
        ids, scores = model.recommend(u, n=len(unseen_own))
        assert set(ids.tolist()) == unseen_own
        assert np.all(np.diff(scores) <= 0)


def test_recommend_options_and_batch_padding():
    ratings = Ratings.from_arrays([1, 1, 2], [10, 20, 10], [4.0, 2.0, 5.0], all_items=[10, 20, 30])
    model = MatrixFactorization(2, reg=0.1, random_state=0).fit(ratings)
    ids, scores = model.recommend(1, n=5)
    assert list(ids) == [30] and scores.shape == (1,)
    ids, _ = model.recommend(1, n=5, exclude_seen=False, filter_items=[20])
    assert sorted(ids) == [10, 30]
    ids, _ = model.recommend(2, n=5, items=[20, 99])
    assert list(ids) == [20]
    ids, scores = model.recommend([1, 2], n=3)
    assert ids.shape == scores.shape == (2, 3)
    assert list(ids[0]) == [30, -1, -1] and np.isneginf(scores[0, 1:]).all()
    with pytest.raises(KeyError, match="unknown user 7"):
        model.recommend(7)
    assert model.recommend("2", n=1)[0].shape == (1,)


def test_recommend_string_ids_pad_with_empty_string():
    ratings = Ratings.from_arrays(["u", "v"], ["a", "b"], [4.0, 2.0])
    model = MatrixFactorization(2, random_state=0).fit(ratings)
    ids, _ = model.recommend(["u"], n=3)
    assert list(ids[0]) == ["b", "", ""]


@pytest.mark.parametrize(
    "params, match",
    [
        ({"n_factors": 0}, "n_factors"),
        ({"reg": -1.0}, "reg"),
        ({"max_iter": 1.5}, "max_iter"),
        ({"tol": float("nan")}, "tol"),
        ({"normalize": "z"}, "normalize"),
        ({"solver": "adam"}, "solver"),
        ({"n_threads": 0}, "n_threads"),
    ],
)
def test_bad_params_are_reported_at_fit(params, match):
    ratings, _ = toy_ratings_with_new_user()
    with pytest.raises(ValueError, match=match):
        MatrixFactorization(**params).fit(ratings)


def test_unfitted_model_and_wrong_input_type():
    with pytest.raises(AttributeError, match="not fitted"):
        MatrixFactorization().predict([1], [1])
    with pytest.raises(TypeError, match="fastcofi.Ratings"):
        MatrixFactorization().fit(np.ones((3, 3)))


def test_normalize_none_trains_on_raw_ratings():
    train, (u, i, y) = _planted()
    model = MatrixFactorization(
        4, reg=1.0, normalize="none", reg_weighting="none", max_iter=500, random_state=0
    )
    model.fit(train)
    assert model.item_means_ is None and model.item_bias_ is None
    assert np.sqrt(np.mean((model.predict(u, i) - y) ** 2)) < 0.6


def test_float32_ratings_train_to_the_float64_model():
    train, (u, i, y) = _planted()
    users, items, values = train.coo()
    train32 = Ratings.from_arrays(users, items, values, dtype=np.float32,
                                  all_users=train.user_ids, all_items=train.item_ids)
    kwargs = dict(n_factors=4, solver="als", max_iter=500, tol=1e-4, random_state=0)
    m64 = MatrixFactorization(**kwargs).fit(train)
    m32 = MatrixFactorization(**kwargs).fit(train32)
    assert m32.history_["cost"][-1] == pytest.approx(m64.history_["cost"][-1], rel=1e-5)
    np.testing.assert_allclose(m32.predict(u, i), m64.predict(u, i), atol=1e-4)


@pytest.mark.slow  # three fits of 10k ratings: about 50 s with the JIT off
def test_default_penalty_follows_the_ratings_units():
    """Ratings in other units (0-1, -10..10) get the same model, scaled, from the defaults."""
    from fastcofi.data.synthetic import synthetic
    from fastcofi.evaluate.split import random_split

    ratings = synthetic(300, 200, 12_000, rank=3, noise=0.6, seed=0, step=None,
                        rating_scale=(-100, 100))
    train, test = random_split(ratings, 0.2, random_state=0)
    users, items, values = train.coo()
    t_users, t_items, t_values = test.coo()
    rmse = {}
    for c in (0.25, 1.0, 4.0):
        scaled = Ratings.from_arrays(users, items, values * c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = MatrixFactorization(random_state=0).fit(scaled)
        assert model.reg_ == pytest.approx(1.15 * c * np.std(values))
        assert model.reg_bias_ == 0.8  # biases scale like the noise: no change needed
        pred = model.predict(train.user_ids[t_users], train.item_ids[t_items]) / c
        rmse[c] = np.sqrt(np.mean((pred - t_values) ** 2))
    # A fixed penalty gave 1.14 at c = 0.25 against 0.70 at c = 1 on a set like this one.
    assert rmse[0.25] == pytest.approx(rmse[1.0], rel=0.01)
    assert rmse[4.0] == pytest.approx(rmse[1.0], rel=0.01)


@pytest.mark.parametrize("weighting, reg_bias", [("sqrt", 0.8), ("none", 0.8), ("count", 2.5)])
def test_numeric_penalties_are_used_as_given(weighting, reg_bias):
    """reg as given; reg_bias=None is 0.8, or reg under count weighting."""
    ratings, _ = toy_ratings_with_new_user()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = MatrixFactorization(3, reg=2.5, reg_bias=None, reg_weighting=weighting,
                                    max_iter=5, random_state=0)
        model.fit(ratings)
    assert (model.reg_, model.reg_bias_) == (2.5, reg_bias)
    assert (model.solver_, model.reg_weighting_) == ("cg", weighting)


def test_auto_rule_switches_at_the_documented_size():
    assert resolve_auto("auto", "auto", LARGE - 1) == ("cg", "sqrt")
    assert resolve_auto("auto", "auto", LARGE) == ("sgd", "count")
    assert resolve_auto("auto", "auto", LARGE, scipy_only=True) == ("cg", "count")
    assert resolve_auto("lbfgs", "none", LARGE) == ("lbfgs", "none")
    assert resolve_auto("auto", "none", 10) == ("cg", "none")
    assert default_penalties(None, None, "count", 2.0) == (0.07, 0.07)
    assert default_penalties(None, None, "sqrt", 2.0) == (2.3, 0.8)
    assert default_penalties(None, 0.3, "count", 2.0) == (0.07, 0.3)
    assert default_penalties(None, None, "count", 2.0, "sgd") == (0.04, 0.04)
    assert default_penalties(None, None, "sqrt", 2.0, "sgd") == (2.3, 0.8)


def test_defaults_on_large_data_train_sgd_with_count_weighting(monkeypatch, tmp_path):
    """From `LARGE` ratings (lowered here) the defaults are SGD with count-weighted penalties
    of 0.02 std from factors of 0.01: the same model as those settings given explicitly, folding
    new users in with the same weighting, and a model file that names what training used."""
    monkeypatch.setattr(fastcofi._params, "LARGE", 20)
    ratings, _ = toy_ratings_with_new_user()
    items, values = [1, 2, 5], [5.0, 1.0, 4.0]
    std = float(np.std(ratings.values))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        auto = MatrixFactorization(3, max_iter=5, random_state=0).fit(ratings)
        explicit = MatrixFactorization(3, solver="sgd", reg_weighting="count", reg=0.02 * std,
                                       reg_bias=0.02 * std, init_scale=0.01, max_iter=5,
                                       random_state=0).fit(ratings)
    assert (auto.solver_, auto.reg_weighting_) == ("sgd", "count")
    assert auto.reg_ == pytest.approx(0.02 * std) and auto.reg_bias_ == auto.reg_
    assert (auto.solver, auto.reg_weighting) == ("auto", "auto")
    np.testing.assert_array_equal(auto.user_factors_, explicit.user_factors_)
    np.testing.assert_array_equal(auto.item_factors_, explicit.item_factors_)
    np.testing.assert_allclose(auto.fold_in(items, values)[0], explicit.fold_in(items, values)[0],
                               rtol=1e-12)
    auto.save(tmp_path / "m.npz")
    loaded = load_model(tmp_path / "m.npz")
    assert (loaded.solver, loaded.reg_weighting) == ("sgd", "count")
    assert (loaded.solver_, loaded.reg_weighting_) == ("sgd", "count")
    np.testing.assert_allclose(loaded.fold_in(items, values)[0], explicit.fold_in(items, values)[0],
                               rtol=1e-12)


@pytest.mark.parametrize("solver", ["cg", "als"])
def test_verbose_prints_one_line_per_iteration(solver, capsys):
    train, (u, i, y) = _planted()
    validation = Ratings.from_arrays(u, i, y)
    model = MatrixFactorization(3, solver=solver, max_iter=4, tol=0, verbose=True,
                                random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(train, validation=validation)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == model.n_iter_ == 4
    pattern = re.compile(r"iter +(\d+)/4  cost (\S+)  \S+s/iter  elapsed \S+s  "
                         r"val_rmse (\S+)  eta <= (\S+)$")
    fields = [pattern.match(line).groups() for line in lines]
    assert [int(f[0]) for f in fields] == [1, 2, 3, 4]
    assert [float(f[1]) for f in fields] == pytest.approx(model.history_["cost"], rel=1e-5)
    assert [float(f[2]) for f in fields] == pytest.approx(model.history_["val_rmse"], abs=1e-4)
    assert fields[-1][3] == "0.0s"


def test_progress_line_times_and_eta():
    line = progress_line(3, 10, 12.5, 9.0, 7.5, val_rmse=0.81234)
    # 3 s per iteration so far, 7 iterations left
    assert line == ("iter    3/10  cost 12.5  1.5s/iter  elapsed 9.0s  val_rmse 0.8123  "
                    "eta <= 21.0s")
    resumed = progress_line(12, 100, 1.0, 130.0, 125.0, start_iteration=10, start_seconds=120.0)
    assert resumed.endswith("elapsed 2m10s  eta <= 7m20s")  # 5 s per iteration since resuming
    assert progress_line(1, 3000, 1.0, 3.0, 0.0).endswith("eta <= 2h29m")


def test_debug_logging_records_each_iteration(caplog):
    train, _ = _planted()
    caplog.set_level(logging.DEBUG, logger="fastcofi")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = MatrixFactorization(3, max_iter=3, tol=0, random_state=0).fit(train)
    records = [r for r in caplog.records if r.name == "fastcofi" and "iteration" in r.message]
    assert len(records) == model.n_iter_ == 3
    assert all("'cost'" in r.getMessage() for r in records)
