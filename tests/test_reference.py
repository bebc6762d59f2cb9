import numpy as np
from scipy.optimize import check_grad

from fastcofi import reference


def test_normalize_known_answer_and_unrated_item_gets_zero_mean():
    ratings = np.array([[5.0, 0.0, 3.0], [0.0, 0.0, 0.0], [1.0, 2.0, 0.0]])
    did_rate = ratings != 0
    norm, mean = reference.normalize_ratings(ratings, did_rate)
    np.testing.assert_allclose(mean, [[4.0], [0.0], [1.5]])
    np.testing.assert_allclose(norm, [[1.0, 0.0, -1.0], [0.0, 0.0, 0.0], [-0.5, 0.5, 0.0]])
    assert np.all(np.isfinite(norm))


def test_cost_known_answer():
    X = np.array([[1.0, 0.0], [0.0, 2.0]])
    Theta = np.array([[1.0, 1.0]])
    ratings = np.array([[2.0], [5.0]])
    # residuals: 1 - 2 = -1 and 2 - 5 = -3 -> 1/2 (1 + 9) = 5; reg/2 (5 + 2) with reg 2 -> 7
    assert reference.cost(X, Theta, ratings, np.ones((2, 1)), 2.0) == 12.0
    assert reference.cost(X, Theta, ratings, np.array([[1], [0]]), 0.0) == 0.5


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    ratings = rng.integers(1, 6, (7, 5)).astype(float)
    did_rate = rng.random((7, 5)) < 0.5
    shapes = [(7, 3), (5, 3)]

    def unpack(v):
        return v[:21].reshape(shapes[0]), v[21:].reshape(shapes[1])

    def f(v):
        return reference.cost(*unpack(v), ratings, did_rate, 1.5)

    def g(v):
        gx, gt = reference.gradient(*unpack(v), ratings, did_rate, 1.5)
        return np.concatenate([gx.ravel(), gt.ravel()])

    v0 = rng.normal(size=36)
    assert check_grad(f, g, v0) < 1e-5 * (1 + np.linalg.norm(g(v0)))


def test_cost_and_gradient_equals_the_two_functions():
    rng = np.random.default_rng(4)
    X, Theta = rng.normal(size=(6, 3)), rng.normal(size=(5, 3))
    ratings = rng.integers(1, 6, size=(6, 5)).astype(float)
    did_rate = rng.random((6, 5)) < 0.5
    cost, x_grad, theta_grad = reference.cost_and_gradient(X, Theta, ratings, did_rate, 0.7)
    assert cost == reference.cost(X, Theta, ratings, did_rate, 0.7)
    want = reference.gradient(X, Theta, ratings, did_rate, 0.7)
    np.testing.assert_array_equal(x_grad, want[0])
    np.testing.assert_array_equal(theta_grad, want[1])
