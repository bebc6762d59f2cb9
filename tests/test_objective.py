import numpy as np
import pytest
from hypothesis import given, settings

import fastcofi.kernels._jit as jit_helpers
import fastcofi.kernels.objective as objective_kernels
from fastcofi import Ratings, reference
from fastcofi._parallel import threads
from fastcofi.kernels.objective import Gradient, Side
from fastcofi.train.objective import FlatObjective, _evaluate, column_blocks, cost_and_grad

from .conftest import JIT_DISABLED
from .strategies import finite_difference_error, relative_error, sparse_problems


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


def _assert_biased_objective_matches_dense(ratings, dense, mask, X, Theta, reg, kernel,
                                           tolerance=1e-9):
    """The kernel's cost and four gradients, with random biases and row weights, against the
    dense formulas at ``tolerance``."""
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
    assert abs(cost - ref_cost) / (1 + abs(ref_cost)) <= tolerance
    for got, want in zip(grads, ref_grads):
        assert relative_error(got, want) <= tolerance


@KERNELS
@given(problem=sparse_problems())
def test_both_kernels_equal_dense_objective_with_biases_and_weights(problem, kernel):
    ratings, dense, mask, X, Theta, reg = problem
    _assert_biased_objective_matches_dense(ratings, dense, mask, X, Theta, reg, kernel)


@pytest.mark.parametrize("block_bytes", [1 << 40, 1], ids=["one block", "column blocks"])
@given(problem=sparse_problems())
def test_float32_reads_equal_dense_objective_to_float32_rounding(problem, block_bytes):
    """``single``: the one-pass kernel reads the randomly read side through a float32 copy;
    cost and gradients hold to float32 rounding of the products (1e-5 of the largest entry
    here), whichever side it walks."""
    ratings, dense, mask, X, Theta, reg = problem
    kernel = {"buffered": True, "block_bytes": block_bytes, "single": True}
    _assert_biased_objective_matches_dense(ratings, dense, mask, X, Theta, reg, kernel,
                                           tolerance=1e-5)


def test_float32_reads_round_like_float32_not_worse():
    """At 60,000 ratings the float32 reads' cost and gradients stay within 1e-6 of the float64
    evaluation's (relative to their largest entries), and are not that evaluation: the copy
    is read."""
    ratings, X, Theta = _random_problem(7, n_items=400, n_users=3000, nnz=60_000)
    rng = np.random.default_rng(8)
    args = (rng.normal(size=400), rng.normal(size=3000), 0.3, ratings, 0.7, 0.2,
            (rng.random(400) + 0.5, rng.random(3000) + 0.5))

    def run(single):
        grads = (np.empty_like(X), np.empty_like(Theta), np.empty(400), np.empty(3000))
        return _evaluate(X, Theta, *args, grads, buffered=True, single=single), grads

    (cost, grads), (cost64, grads64) = run(True), run(False)
    assert abs(cost - cost64) <= 1e-6 * abs(cost64) and cost != cost64
    for got, want in zip(grads, grads64):
        assert 0 < relative_error(got, want) <= 1e-6


def test_float32_reads_are_a_copy_on_cache_lines(monkeypatch):
    """The float32 copy that the one-pass kernel reads at random is made on a cache line (its
    rows at k = 32 then take two lines each, not three) and holds the other side's factors. A
    plain copy lands on a line by chance only, so where it was made is checked too."""
    import fastcofi.train.objective as train_objective

    ratings, X, Theta = _random_problem(3, n_items=60, n_users=50, nnz=600, k=32)
    seen = {"lined": []}

    def record(walked, other, walked_grad, other_grad, groups, blocks, mu, reg, reg_bias, reads):
        seen["reads"], seen["other"] = reads, other.factors
        return 0.0

    def lined(shape, dtype, made=train_objective._line_aligned_empty):
        seen["lined"].append(made(shape, dtype))
        return seen["lined"][-1]

    monkeypatch.setattr(train_objective, "cost_and_grad_buffered", record)
    monkeypatch.setattr(train_objective, "_line_aligned_empty", lined)
    grads = tuple(np.empty_like(a) for a in (X, Theta, X[:, 0], Theta[:, 0]))
    _evaluate(X, Theta, np.zeros(60), np.zeros(50), 0.0, ratings, 0.1, 0.1,
              (np.ones(60), np.ones(50)), grads, buffered=True, single=True)
    reads = seen["reads"]
    assert reads.dtype == np.float32 and reads.ctypes.data % 64 == 0
    assert any(reads is made for made in seen["lined"])
    np.testing.assert_array_equal(reads, seen["other"].astype(np.float32))


def _poisoned_empty(empty):
    """``np.empty`` whose memory is filled first (NaN, or -2**30 for integers), so that a kernel
    run as Python that reads what it never wrote shows it in its result."""

    def poisoned(shape, dtype=np.float64, **kwargs):
        out = empty(shape, dtype=dtype, **kwargs)
        out[...] = np.nan if np.dtype(dtype).kind == "f" else -(2**30)
        return out

    return poisoned


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
    grads = (np.full_like(X, np.nan), np.full_like(Theta, np.nan), np.full(ratings.n_items, np.nan),
             np.full(ratings.n_users, np.nan))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(np, "empty", _poisoned_empty(np.empty))
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
    error = finite_difference_error(objective, x0)
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


def _changed_rows(before, after):
    """Rows whose bits differ (NaN to NaN is no change)."""
    differ = before.view(np.uint64) != after.view(np.uint64)
    return set(np.flatnonzero(differ.reshape(differ.shape[0], -1).any(axis=1)).tolist())


class _Schedule:
    """Stands in for numba's ``prange`` while a kernel runs as Python: runs each parallel loop's
    iterations forwards or backwards and records, for each, which rows of the ``watched`` arrays
    it changed and which ratings it read (through `_ReadLog`). Iterations of a race-free loop
    write disjoint rows and read nothing another iteration writes, so their order cannot
    matter; compiled, they run at once on different threads."""

    def __init__(self, watched, reverse):
        self.watched, self.reverse = watched, reverse
        self.loops = []  # per parallel loop: {iteration: {watched name: rows changed}}
        self.reads = []  # per parallel loop: {iteration: [rating positions read, in order]}
        self.current = None

    def __call__(self, n):
        writes, reads = {}, {}
        self.loops.append(writes)
        self.reads.append(reads)
        for it in (range(n - 1, -1, -1) if self.reverse else range(n)):
            before = {name: array.copy() for name, array in self.watched.items()}
            reads[it] = []
            self.current = reads[it]
            yield it
            writes[it] = {name: _changed_rows(before[name], array)
                          for name, array in self.watched.items()}
        self.current = None


class _ReadLog(np.ndarray):
    """A ratings' values array that tells its `_Schedule` each position read."""

    def __getitem__(self, key):
        schedule = self.__dict__.get("schedule")
        if schedule is not None and schedule.current is not None:
            schedule.current.append(int(key))
        return np.ndarray.__getitem__(self, key)


def _run_scheduled(kernel, sides, grads, extra, reverse):
    """``kernel`` of `fastcofi.kernels.objective` run as Python under a `_Schedule`, with
    poisoned scratch memory and NaN gradients; returns (cost, gradients, schedule)."""
    grads = tuple(Gradient(np.full_like(g.factors, np.nan), np.full_like(g.bias, np.nan))
                  for g in grads)
    watched = {f"{side}.{part}": array for side, grad in zip(("first", "second"), grads)
               for part, array in zip(("factors", "bias"), grad)}
    schedule = _Schedule(watched, reverse)
    logged = []
    for side in sides:
        values = side.values.view(_ReadLog)
        values.schedule = schedule
        logged.append(side._replace(values=values))
    with pytest.MonkeyPatch.context() as patch:
        for name in ("_penalty_rows", "_own_rows", "_fetch_ahead", kernel):
            function = getattr(objective_kernels, name)
            patch.setattr(objective_kernels, name, getattr(function, "py_func", function))
        # The compiled intrinsics' stand-ins for Python (what runs with the JIT off).
        patch.setattr(objective_kernels, "muladd", jit_helpers._unfused_muladd)
        patch.setattr(objective_kernels, "prefetch", jit_helpers._no_prefetch)
        patch.setattr(objective_kernels, "prange", schedule)
        patch.setattr(np, "empty", _poisoned_empty(np.empty))
        cost = getattr(objective_kernels, kernel)(*logged, *grads, *extra)
    return cost, grads, schedule


def _scheduling_problem(seed):
    """14 items x 11 users, 70 ratings, k = 2, random biases and penalty weights: the sides as
    the kernels read them (chunks set by each test) and the dense objective's arguments."""
    ratings, X, Theta = _random_problem(seed, n_items=14, n_users=11, nnz=70, k=2)
    rng = np.random.default_rng(seed)
    bias = (rng.normal(size=14), rng.normal(size=11))
    weights = (rng.random(14) + 0.5, rng.random(11) + 0.5)
    users, items, values = ratings.coo()
    dense, mask = np.zeros((14, 11)), np.zeros((14, 11), dtype=bool)
    dense[items, users], mask[items, users] = values, True
    items_side = Side(X, bias[0], weights[0], *ratings.by_item, None)
    users_side = Side(Theta, bias[1], weights[1], *ratings.by_user, None)
    expected = _dense_biased_objective(X, Theta, *bias, 0.4, dense, mask, 0.7, 0.3, weights)
    return items_side, users_side, expected


def _assert_matches(run, want_cost, want_grads):
    cost, grads, _ = run
    assert abs(cost - want_cost) <= 1e-9 * (1 + abs(want_cost))
    for got, want in zip([a for g in grads for a in g], want_grads):
        assert relative_error(got, want) <= 1e-9


@pytest.mark.parametrize("walk_items", [True, False])
def test_one_pass_kernel_is_race_free_for_any_groups_and_blocks(walk_items):
    """Several row groups (one empty) and column blocks, the parallel iterations run in both
    orders: each group writes exactly its own rows' gradients and reads each of its ratings
    once, block by block; each row of the other side is summed by its own iteration; the
    result is bit-identical in either order and equals the dense objective. A group that
    touches another's rows (a race once compiled) or reads what another set up fails here,
    where run in one order on one thread it would not."""
    items, users, (want_cost, want) = _scheduling_problem(11)
    walked, other = (items, users) if walk_items else (users, items)
    # The dense gradients (X, Theta, item bias, user bias) as (walked, walked bias, other, ...).
    want = [want[i] for i in ((0, 2, 1, 3) if walk_items else (1, 3, 0, 2))]
    n_rows, n_cols = walked.factors.shape[0], other.factors.shape[0]
    groups = np.array([0, 3, 3, 8, n_rows], dtype=np.int64)
    blocks = np.array([0, 3, 5, 8, n_cols], dtype=np.int64)
    block_of = np.searchsorted(blocks, np.arange(n_cols), side="right") - 1
    grads = [Gradient(walked.factors, walked.bias), Gradient(other.factors, other.bias)]
    extra = (groups, blocks, 0.4, 0.7, 0.3, other.factors)
    runs = [_run_scheduled("cost_and_grad_buffered", (walked, other), grads, extra, reverse)
            for reverse in (False, True)]
    _assert_matches(runs[0], want_cost, want)
    assert runs[1][0] == runs[0][0]
    for a, b in zip(runs[1][1], runs[0][1]):
        np.testing.assert_array_equal(a.factors, b.factors)
        np.testing.assert_array_equal(a.bias, b.bias)
    indptr, columns = walked.indptr, walked.indices
    for _, _, schedule in runs:
        group_writes, other_writes = schedule.loops
        for g in range(len(groups) - 1):
            rows = set(range(groups[g], groups[g + 1]))
            assert group_writes[g] == {"first.factors": rows, "first.bias": rows,
                                       "second.factors": set(), "second.bias": set()}
            read = schedule.reads[0][g]
            assert sorted(read) == list(range(indptr[groups[g]], indptr[groups[g + 1]]))
            assert np.all(np.diff(block_of[columns[read]]) >= 0)  # one block after the other
        assert sorted(other_writes) == list(range(n_cols))
        for j, written in other_writes.items():
            assert written == {"first.factors": set(), "first.bias": set(),
                               "second.factors": {j}, "second.bias": {j}}


def test_two_pass_kernel_is_race_free_for_any_chunks():
    """Several chunks on each side (one empty), the parallel iterations run in both orders:
    each chunk writes exactly its own rows' gradients, and the result is bit-identical in
    either order and equals the dense objective."""
    items, users, (want_cost, want) = _scheduling_problem(12)
    items = items._replace(chunks=np.array([0, 4, 4, 9, 14], dtype=np.int64))
    users = users._replace(chunks=np.array([0, 2, 7, 11], dtype=np.int64))
    grads = [Gradient(items.factors, items.bias), Gradient(users.factors, users.bias)]
    runs = [_run_scheduled("cost_and_grad_two_pass", (items, users), grads, (0.4, 0.7, 0.3),
                           reverse) for reverse in (False, True)]
    _assert_matches(runs[0], want_cost, [want[0], want[2], want[1], want[3]])
    assert runs[1][0] == runs[0][0]
    for a, b in zip(runs[1][1], runs[0][1]):
        np.testing.assert_array_equal(a.factors, b.factors)
        np.testing.assert_array_equal(a.bias, b.bias)
    for _, _, schedule in runs:
        for loop, (mine, others, chunks) in enumerate(
                [("first", "second", items.chunks), ("second", "first", users.chunks)]):
            assert sorted(schedule.loops[loop]) == list(range(len(chunks) - 1))
            for c, written in schedule.loops[loop].items():
                rows = set(range(chunks[c], chunks[c + 1]))
                assert written == {f"{mine}.factors": rows, f"{mine}.bias": rows,
                                   f"{others}.factors": set(), f"{others}.bias": set()}


@pytest.mark.parametrize("n_items, n_users", [(300, 200), (200, 300)])
def test_column_blocks_leave_the_buffered_gradients_unchanged_bit_for_bit(n_items, n_users):
    ratings, X, Theta = _random_problem(2, n_items=n_items, n_users=n_users, nnz=20000)
    rng = np.random.default_rng(3)
    args = (rng.normal(size=n_items), rng.normal(size=n_users), 0.3, ratings, 0.7, 0.2,
            (rng.random(n_items) + 0.5, rng.random(n_users) + 0.5))

    def run(block_bytes):
        grads = (np.empty_like(X), np.empty_like(Theta), np.empty(n_items), np.empty(n_users))
        cost = _evaluate(X, Theta, *args, grads, buffered=True, block_bytes=block_bytes)
        return cost, grads

    whole = run(1 << 40)
    # (X, Theta, item bias, user bias): the side with more rows is walked, the other buffered.
    walked = (1, 3) if n_users > n_items else (0, 2)
    for block_bytes in (1, 1000, 5000):
        blocked = run(block_bytes)
        assert blocked[0] == pytest.approx(whole[0], rel=1e-12)
        for part, (a, b) in enumerate(zip(blocked[1], whole[1])):
            if part in walked:
                # Its ratings are added four at a time from where each block starts.
                assert relative_error(a, b) <= 1e-13
            else:
                np.testing.assert_array_equal(a, b)


def test_column_blocks_cut_by_size():
    np.testing.assert_array_equal(column_blocks(10, 4, block_bytes=1 << 20), [0, 10])
    # 10 columns x (2 * 4 + 1) floats = 720 bytes: 3 blocks of at most 300 bytes
    np.testing.assert_array_equal(column_blocks(10, 4, block_bytes=300), [0, 3, 6, 10])
    np.testing.assert_array_equal(column_blocks(3, 4, block_bytes=1), [0, 1, 2, 3])
    np.testing.assert_array_equal(column_blocks(0, 4), [0, 0])
    # float32 reads: 360 bytes, 2 blocks of 300
    np.testing.assert_array_equal(column_blocks(10, 4, block_bytes=300, itemsize=4), [0, 5, 10])



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
