import numpy as np
import pytest

from fastcofi import MatrixFactorization, Ratings
from fastcofi.app.plotting import plot_convergence


def test_plot_convergence_draws_cost_and_validation(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 30, 400), rng.integers(0, 20, 400)
    ratings = Ratings.from_arrays(users, items, rng.integers(1, 6, 400), duplicates="last")
    model = MatrixFactorization(3, max_iter=15, random_state=0)
    with pytest.warns(Warning):
        model.fit(ratings, validation=ratings)
    ax = plot_convergence(model)
    assert len(ax.lines) == 1 and len(ax.lines[0].get_xdata()) == model.n_iter_
    ax.figure.savefig(tmp_path / "convergence.png")
    assert (tmp_path / "convergence.png").stat().st_size > 1000
    with pytest.raises(AttributeError, match="not fitted"):
        plot_convergence(MatrixFactorization())
