import warnings

import matplotlib
import numpy as np
import pytest

from fastcofi import ConvergenceWarning, MatrixFactorization, Ratings
from fastcofi.app.plotting import plot_convergence

matplotlib.use("Agg")  # draw without a display


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 30, 400), rng.integers(0, 20, 400)
    ratings = Ratings.from_arrays(users, items, rng.integers(1, 6, 400), duplicates="last")
    model = MatrixFactorization(3, max_iter=15, random_state=0)
    with pytest.warns(Warning):
        model.fit(ratings, validation=ratings)
    return model


def test_plot_convergence_draws_cost_and_validation(fitted, tmp_path):
    ax = plot_convergence(fitted)
    iterations = np.arange(1, fitted.n_iter_ + 1)
    (cost,) = ax.lines
    np.testing.assert_array_equal(cost.get_xdata(), iterations)
    np.testing.assert_array_equal(cost.get_ydata(), fitted.history_["cost"])
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "iteration"
    assert ax.get_title() == "MatrixFactorization: cg, k=3"
    (twin,) = [other for other in ax.figure.axes if other is not ax]
    val_rmse, kept = twin.lines
    np.testing.assert_array_equal(val_rmse.get_ydata(), fitted.history_["val_rmse"])
    assert list(kept.get_xdata()) == [fitted.best_iteration_] * 2
    assert twin.get_ylabel() == "validation RMSE"
    ax.figure.savefig(tmp_path / "convergence.png")
    assert (tmp_path / "convergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    matplotlib.pyplot.close(ax.figure)


def test_plot_convergence_into_given_axes_without_validation():
    import matplotlib.pyplot as plt

    ratings = Ratings.from_arrays([0, 0, 1, 1, 2], [0, 1, 0, 2, 1], [1.0, 4.0, 5.0, 2.0, 3.0])
    model = MatrixFactorization(2, solver="als", max_iter=5, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # whether 5 sweeps meet tol or not
        model.fit(ratings)
    figure, ax = plt.subplots()
    assert plot_convergence(model, ax=ax) is ax
    assert len(ax.lines) == 1 and figure.axes == [ax]  # no validation axis
    plt.close(figure)
    with pytest.raises(AttributeError, match="not fitted"):
        plot_convergence(MatrixFactorization())
