import numpy as np
import pytest
from hypothesis import given, settings
from scipy.optimize import check_grad

from fastcofi import Ratings, reference
from fastcofi._parallel import threads
from fastcofi.train.objective import FlatObjective, _evaluate, column_blocks, cost_and_grad

from .conftest import JIT_DISABLED
from .strategies import relative_error, sparse_problems


@given(sparse_problems())
def test_cost_and_grad_equals_dense_reference(problem):
    ratings, dense, mask, X, Theta, reg = problem
    cost, item_grad, user_grad = cost_and_grad(X, Theta, ratings, reg)
    ref_cost = reference.cost(X, Theta, dense, mask, reg)
    ref_x, ref_theta = reference.gradient(X, Theta, dense, mask, reg)
    assert abs(cost - ref_cost) / (1 + abs(ref_cost)) <= 1e-9
    assert relative_error(item_grad, ref_x) <= 1e-9
    assert relative_error(user_grad, ref_theta) <= 1e-9
    assert item_grad.dtype == np.float64 and user_grad.dtype == np.float64


def _dense_biased_objective(X, Theta, item_bias, user_bias, mu, dense, mask, reg, reg_bias, w):
    """The full objective (biases, per-row penalty weights) in dense numpy, as an oracle."""
    item_w, user_w = w
    err = np.where(mask, X @ Theta.T + mu + item_bias[:, None] + user_bias[None, :] - dense, 0.0)
    cost = 0.5 * np.sum(err**2) + 0.5 * (
        reg * (item_w @ np.sum(X**2, axis=1) + user_w @ np.sum(Theta**2, axis=1))
        + reg_bias * (item_w @ item_bias**2 + user_w @ user_bias**2)
    )
    return cost, (
        err @ Theta + reg * item_w[:, None] * X,
        err.T @ X + reg * user_w[:, None] * Theta,
        err.sum(axis=1) + reg_bias * item_w * item_bias,
        err.sum(axis=0) + reg_bias * user_w * user_bias,
    )


# block_bytes=1: a column block per column, the most the one-pass kernel's blocking can cut.
KERNELS = pytest.mark.parametrize(
    "kernel", [{"buffered": True}, {"buffered": True, "block_bytes": 1}, {"buffered": False}],
    ids=["one-pass", "one-pass, column blocks", "two-pass"],
)


def _assert_biased_objective_matches_dense(ratings, dense, mask, X, Theta, reg, kernel):
    """The kernel's cost and four gradients, with random biases and row weights, against the
    dense formulas at 1e-9."""
    rng = np.random.default_rng(ratings.nnz)
    item_bias, user_bias = rng.normal(size=ratings.n_items), rng.normal(size=ratings.n_users)
    weights = (rng.random(ratings.n_items) * 3, rng.random(ratings.n_users) * 3)
    grads = (np.empty_like(X), np.empty_like(Theta), np.empty(ratings.n_items),
             np.empty(ratings.n_users))
    cost = _evaluate(X, Theta, item_bias, user_bias, 0.4, ratings, reg, 0.7, weights, grads,
                     **kernel)
    ref_cost, ref_grads = _dense_biased_objective(
        X, Theta, item_bias, user_bias, 0.4, dense, mask, reg, 0.7, weights
    )
    assert abs(cost - ref_cost) / (1 + abs(ref_cost)) <= 1e-9
    for got, want in zip(grads, ref_grads):
        assert relative_error(got, want) <= 1e-9


@KERNELS
@given(problem=sparse_problems())
def test_both_kernels_equal_dense_objective_with_biases_and_weights(problem, kernel):
    ratings, dense, mask, X, Theta, reg = problem
    _assert_biased_objective_matches_dense(ratings, dense, mask, X, Theta, reg, kernel)


@pytest.mark.skipif(not JIT_DISABLED, reason="compiled kernels do not call numpy.empty")
@KERNELS
@given(problem=sparse_problems(max_items=15, max_users=15, max_factors=3))
def test_kernels_never_read_uninitialized_memory(problem, kernel):
    """Run as Python, every scratch array a kernel makes with np.empty is filled with NaN first:
    a buffer entry the kernel forgets to clear then shows in the result, where fresh memory
    that happens to be zero would hide it."""
    ratings, dense, mask, X, Theta, reg = problem
    rng = np.random.default_rng(0)
    item_bias, user_bias = rng.normal(size=ratings.n_items), rng.normal(size=ratings.n_users)
    weights = (np.ones(ratings.n_items), np.ones(ratings.n_users))
    empty = np.empty

    def poisoned(shape, dtype=np.float64, **kwargs):
        out = empty(shape, dtype=dtype, **kwargs)
        out[...] = np.nan if np.dtype(dtype).kind == "f" else -(2**30)
        return out

    grads = (np.full_like(X, np.nan), np.full_like(Theta, np.nan), np.full(ratings.n_items, np.nan),
             np.full(ratings.n_users, np.nan))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(np, "empty", poisoned)
        cost = _evaluate(X, Theta, item_bias, user_bias, 0.4, ratings, reg, 0.7, weights, grads,
                         **kernel)
    ref_cost, ref_grads = _dense_biased_objective(
        X, Theta, item_bias, user_bias, 0.4, dense, mask, reg, 0.7, weights
    )
    assert abs(cost - ref_cost) / (1 + abs(ref_cost)) <= 1e-9
    for got, want in zip(grads, ref_grads):
        assert relative_error(got, want) <= 1e-9


@given(sparse_problems(max_items=12, max_users=12, max_factors=4))
def test_gradient_matches_finite_differences(problem):
    ratings, _, _, X, Theta, reg = problem
    objective = FlatObjective(ratings, X.shape[1], reg)
    x0 = objective.pack(X, Theta)
    error = check_grad(lambda v: objective(v)[0], lambda v: objective(v)[1], x0)
    assert error <= 1e-5 * (1 + np.linalg.norm(objective(x0)[1]))


@KERNELS
@settings(max_examples=12)  # chunk launches are what costs here: a few problems suffice
@given(problem=sparse_problems(max_items=15, max_users=15, max_factors=3, large=False))
def test_many_chunks_equal_dense_objective(problem, kernel):
    """Chunks of a handful of ratings (a chunk holds 2048 by default, so small problems have
    one): every chunk's rows and partial sums count once, in both kernels."""
    import fastcofi.data.ratings

    ratings, dense, mask, X, Theta, reg = problem
    users, items, values = ratings.coo()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fastcofi.data.ratings, "_RATINGS_PER_CHUNK", 3)
        ratings = Ratings.from_arrays(ratings.user_ids[users], ratings.item_ids[items], values,
                                      all_users=ratings.user_ids, all_items=ratings.item_ids)
    _assert_biased_objective_matches_dense(ratings, dense, mask, X, Theta, reg, kernel)


def _random_problem(seed, n_items=300, n_users=200, nnz=6000, k=7):
    rng = np.random.default_rng(seed)
    flat = rng.choice(n_items * n_users, size=nnz, replace=False)
    ratings = Ratings.from_arrays(
        flat % n_users, flat // n_users, rng.integers(1, 6, nnz),
        all_users=np.arange(n_users), all_items=np.arange(n_items),
    )
    X = rng.normal(size=(ratings.n_items, k))
    Theta = rng.normal(size=(ratings.n_users, k))
    return ratings, X, Theta


@pytest.mark.parametrize("n_items, n_users", [(300, 200), (200, 300)])
@KERNELS
def test_parallel_equals_serial_bit_for_bit(n_items, n_users, kernel):
    ratings, X, Theta = _random_problem(1, n_items=n_items, n_users=n_users, nnz=20000)
    assert ratings._item_chunks.shape[0] > 3  # several chunks, so threads really split the work
    args = (np.zeros(n_items), np.zeros(n_users), 0.0, ratings, 0.7, 0.0,
            (np.ones(n_items), np.ones(n_users)))

    def run(n_threads):
        grads = (np.empty_like(X), np.empty_like(Theta), np.empty(n_items), np.empty(n_users))
        with threads(n_threads):
            cost = _evaluate(X, Theta, *args, grads, **kernel)
        return cost, grads

    serial, parallel = run(1), run(2)
    assert serial[0] == parallel[0]
    for a, b in zip(serial[1], parallel[1]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("n_items, n_users", [(300, 200), (200, 300)])
def test_column_blocks_leave_the_gradients_unchanged_bit_for_bit(n_items, n_users):
    ratings, X, Theta = _random_problem(2, n_items=n_items, n_users=n_users, nnz=20000)
    rng = np.random.default_rng(3)
    args = (rng.normal(size=n_items), rng.normal(size=n_users), 0.3, ratings, 0.7, 0.2,
            (rng.random(n_items) + 0.5, rng.random(n_users) + 0.5))

    def run(block_bytes):
        grads = (np.empty_like(X), np.empty_like(Theta), np.empty(n_items), np.empty(n_users))
        cost = _evaluate(X, Theta, *args, grads, buffered=True, block_bytes=block_bytes)
        return cost, grads

    whole = run(1 << 40)
    for block_bytes in (1, 1000, 5000):
        blocked = run(block_bytes)
        assert blocked[0] == pytest.approx(whole[0], rel=1e-12)
        for a, b in zip(blocked[1], whole[1]):
            np.testing.assert_array_equal(a, b)


def test_column_blocks_cut_by_size():
    np.testing.assert_array_equal(column_blocks(10, 4, block_bytes=1 << 20), [0, 10])
    # 10 columns x (2 * 4 + 1) floats = 720 bytes: 3 blocks of at most 300 bytes
    np.testing.assert_array_equal(column_blocks(10, 4, block_bytes=300), [0, 3, 6, 10])
    np.testing.assert_array_equal(column_blocks(3, 4, block_bytes=1), [0, 1, 2, 3])
    np.testing.assert_array_equal(column_blocks(0, 4), [0, 0])


@pytest.mark.parametrize("n_items, n_users", [(300, 200), (200, 300)])
def test_flat_objective_plans_once_and_replans_for_other_ratings(n_items, n_users):
    ratings, X, Theta = _random_problem(4, n_items=n_items, n_users=n_users, nnz=5000)
    objective = FlatObjective(ratings, X.shape[1], 0.7)
    _, grad = objective(objective.pack(X, Theta))
    plan = objective._plan
    objective(objective.pack(X, Theta))
    assert objective._plan is plan  # made once

    expected = (np.empty_like(X), np.empty_like(Theta), np.empty(n_items), np.empty(n_users))
    args = (np.zeros(n_items), np.zeros(n_users), 0.0, ratings, 0.7, 0.0, objective.weights)
    cost = _evaluate(X, Theta, *args, expected)
    np.testing.assert_array_equal(grad, objective.pack(*expected[:2]))

    # A plan made for other ratings (here the transposed shape, whose walk would run past the
    # arrays' ends) is not used.
    other, X2, Theta2 = _random_problem(5, n_items=n_users, n_users=n_items, nnz=5000)
    grads = (np.empty_like(X2), np.empty_like(Theta2), np.empty(n_users), np.empty(n_items))
    ones = (np.ones(n_users), np.ones(n_items))
    cost2 = _evaluate(X2, Theta2, np.zeros(n_users), np.zeros(n_items), 0.0, other, 0.7, 0.0,
                      ones, grads, plan=plan)
    want_cost, want_X, want_Theta = cost_and_grad(X2, Theta2, other, 0.7)
    assert cost2 == pytest.approx(want_cost, rel=1e-12)
    np.testing.assert_allclose(grads[0], want_X, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grads[1], want_Theta, rtol=1e-12, atol=1e-12)
    assert cost == pytest.approx(objective(objective.pack(X, Theta))[0], rel=0)


def test_flat_objective_returns_fresh_gradient_each_call():
    ratings, X, Theta = _random_problem(2)
    objective = FlatObjective(ratings, X.shape[1], 1.0)
    x = objective.pack(X, Theta)
    _, g1 = objective(x)
    kept = g1.copy()
    _, g2 = objective(x * 0.5)
    assert g1 is not g2
    np.testing.assert_array_equal(g1, kept)  # the first gradient was not overwritten


def test_item_offset_shifts_every_prediction():
    ratings, X, Theta = _random_problem(3, nnz=500)
    offset = np.linspace(-1, 1, ratings.n_items)
    users, items, values = ratings.coo()
    shifted = Ratings.from_arrays(
        ratings.user_ids[users], ratings.item_ids[items], values - offset[items],
        all_users=ratings.user_ids, all_items=ratings.item_ids,
    )
    objective = FlatObjective(ratings, X.shape[1], 0.3, item_bias=offset)
    cost, grad = objective(objective.pack(X, Theta))
    ref_cost, ref_x, ref_theta = cost_and_grad(X, Theta, shifted, 0.3)
    assert abs(cost - ref_cost) <= 1e-9 * (1 + abs(ref_cost))
    assert relative_error(grad, np.concatenate([ref_x.ravel(), ref_theta.ravel()])) <= 1e-9


def test_accepts_read_only_and_non_contiguous_factors():
    ratings, X, Theta = _random_problem(4, nnz=800)
    expected = cost_and_grad(X, Theta, ratings, 1.0)
    X_ro = X.copy()
    X_ro.flags.writeable = False
    Theta_f = np.asfortranarray(Theta)
    got = cost_and_grad(X_ro, Theta_f, ratings, 1.0)
    assert got[0] == expected[0]
    np.testing.assert_array_equal(got[1], expected[1])


@pytest.mark.parametrize(
    "x_shape, theta_shape, match",
    [((5, 3), (200, 3), "rows"), ((300, 3), (200, 4), "same number of columns"),
     ((300,), (200, 3), "2-dimensional")],
)
def test_bad_shapes_raise_clear_errors(x_shape, theta_shape, match):
    ratings, _, _ = _random_problem(5, nnz=500)
    with pytest.raises(ValueError, match=match):
        cost_and_grad(np.zeros(x_shape), np.zeros(theta_shape), ratings, 1.0)


def test_rejects_non_ratings_and_bad_thread_counts():
    ratings, X, Theta = _random_problem(6, nnz=300)
    with pytest.raises(TypeError, match="fastcofi.Ratings"):
        cost_and_grad(X, Theta, np.ones((3, 3)), 1.0)
    with pytest.raises(ValueError, match="n_threads"):
        cost_and_grad(X, Theta, ratings, 1.0, n_threads=0)


def test_float32_ratings_match_float64_at_float32_tolerance():
    rng = np.random.default_rng(7)
    flat = rng.choice(300 * 200, size=5000, replace=False)
    values = rng.normal(3.0, 1.0, 5000)  # not exactly representable in float32
    args = (flat % 200, flat // 200, values)
    r64 = Ratings.from_arrays(*args)
    r32 = Ratings.from_arrays(*args, dtype=np.float32)
    assert r32.values.dtype == np.float32
    X = rng.normal(size=(r64.n_items, 6))
    Theta = rng.normal(size=(r64.n_users, 6))
    c64, x64, t64 = cost_and_grad(X, Theta, r64, 0.5)
    c32, x32, t32 = cost_and_grad(X, Theta, r32, 0.5)
    assert x32.dtype == np.float64  # accumulation stays in float64
    assert abs(c32 - c64) / abs(c64) <= 1e-6
    assert relative_error(x32, x64) <= 1e-6 and relative_error(t32, t64) <= 1e-6
