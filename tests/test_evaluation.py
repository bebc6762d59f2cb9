import warnings

import numpy as np
import pytest

from fastcofi import MatrixFactorization
from fastcofi.evaluate.cross_validation import cross_validate
from fastcofi.evaluate.metrics import rmse
from fastcofi.evaluate.split import kfold
from fastcofi.train.solvers import ConvergenceWarning


def _data(seed=0, n_users=20, n_items=12):
    rng = np.random.default_rng(seed)
    mask = rng.random((n_users, n_items)) < 0.5
    uu, ii = np.nonzero(mask)
    return uu, ii, rng.integers(1, 6, size=uu.shape[0]).astype(np.float64)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def test_cross_validate_reports_each_fold_and_the_means():
    data = _data()
    model = MatrixFactorization(2, random_state=0, max_iter=20)
    res = cross_validate(model, data, cv=3, random_state=1, metrics=("rmse", "mae", "ndcg_at_k"))
    for key in ("rmse", "mae", "ndcg_at_k", "fit_time", "score_time", "n_train", "n_test"):
        assert len(res[key]) == 3
        assert res[f"mean_{key}"] == pytest.approx(np.mean(res[key]))
    assert sum(res["n_test"]) == data[0].shape[0]
    assert all(t >= 0 for t in res["fit_time"])
    assert not hasattr(model, "item_factors_")  # the given model is never fitted
    # fold 0 by hand: the same clone on the same fold gives the same RMSE
    train, test = next(kfold(data, 3, shuffle=True, random_state=1))
    clone = MatrixFactorization(**model.get_params()).fit(train)
    u, i, v = test.coo()
    pred = clone.predict(test.user_ids[u], test.item_ids[i])
    assert res["rmse"][0] == pytest.approx(rmse(v, pred))


def test_cross_validate_takes_an_iterable_of_folds():
    data = _data(1)
    folds = list(kfold(data, 2, random_state=0))
    res = cross_validate(MatrixFactorization(2, random_state=0, max_iter=10), None, cv=folds)
    assert len(res["rmse"]) == 2 and set(res) >= {"rmse", "mae", "mean_rmse", "mean_fit_time"}


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"metrics": ("rmse", "auc")}, ValueError, "metrics must be a non-empty sequence"),
        ({"metrics": ()}, ValueError, "metrics must be a non-empty sequence"),
        ({"cv": "five"}, ValueError, "cv must be an int >= 2 or an iterable"),
        ({"cv": [1, 2]}, ValueError, "cv must yield"),
        ({"cv": []}, ValueError, "cv yielded no fold"),
    ],
)
def test_cross_validate_argument_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        cross_validate(MatrixFactorization(2, max_iter=5), _data(), **kwargs)


def test_cross_validate_needs_get_params():
    with pytest.raises(TypeError, match="get_params"):
        cross_validate(object(), _data())
