"""Checks on MovieLens 100K from the shared data folder; skipped when it is absent."""

import numpy as np
import pytest

from fastcofi import MatrixFactorization, read_ratings

pytestmark = [
    pytest.mark.slow,
    pytest.mark.realdata,
    pytest.mark.filterwarnings("ignore::fastcofi.ConvergenceWarning"),
]


def _rmse(model, test):
    users, items, values = test.coo()
    pred = model.predict(test.user_ids[users], test.item_ids[items])
    return float(np.sqrt(np.mean((pred - values) ** 2)))


def test_u1_with_defaults_beats_mean_normalization(ml100k):
    train = read_ratings(ml100k / "u1.base")
    test = read_ratings(ml100k / "u1.test")
    assert (train.nnz, test.nnz) == (80_000, 20_000)
    model = MatrixFactorization(random_state=0).fit(train)
    rmse = _rmse(model, test)
    baseline = _rmse(
        MatrixFactorization(normalize="item_mean", reg=1e9, max_iter=1).fit(train), test
    )
    assert baseline == pytest.approx(1.033, abs=0.002)  # the figure for the item means
    assert rmse <= 0.96


def test_u1_variational_bayes_needs_no_tuning(ml100k):
    """VB learns its regularization: on u1 it does at least as well as the tuned defaults."""
    train = read_ratings(ml100k / "u1.base")
    test = read_ratings(ml100k / "u1.test")
    model = MatrixFactorization(solver="vb", random_state=0).fit(train)
    assert _rmse(model, test) <= 0.92
    assert 0.5 < model.noise_variance_ < 0.9
