"""Serving: recommend (one user, batches), fold-in, add_users, similarity, clusters, threads."""

import os
import subprocess
import sys
import textwrap
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fastcofi import MatrixFactorization, Ratings, _parallel, load_model, serving
from fastcofi.kernels.foldin import fold_in_ids, fold_in_row
from fastcofi.kernels.rowsolve import solve_rows
from fastcofi.kernels.sparse import lookup_int
from fastcofi.kernels.topn import cosine_top_n, pair_dots, select_top_n, top_n_batch

from .conftest import JIT_DISABLED, REPO

needs_jit = pytest.mark.skipif(
    JIT_DISABLED, reason="numba's threading layers exist only with the JIT on"
)


def close(a, b, tol):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.max(np.abs(a - b)) / (1 + np.max(np.abs(b))) <= tol


def low_rank_ratings(n_users=60, n_items=40, k=3, density=0.4, seed=0, str_ids=False):
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=(n_items, k)) @ rng.normal(size=(n_users, k)).T
    rated = rng.random((n_items, n_users)) < density
    items, users = np.nonzero(rated)
    values = np.clip(np.round(3 + truth[items, users]), 1, 5)
    if str_ids:
        users = np.array([f"u{u:03d}" for u in users])
        items = np.array([f"i{i:03d}" for i in items])
    return Ratings.from_arrays(users, items, values)


@pytest.fixture(scope="module")
def ratings():
    return low_rank_ratings()


@pytest.fixture(scope="module")
def model(ratings):
    return MatrixFactorization(4, random_state=0).fit(ratings)


def _offsets(model):
    """(mu, item offsets, user offsets) of the serving state."""
    state = serving.state_of(model)
    return state.mu, state.item_off, state.user_off


def brute_force(model, u, n, exclude_seen=True, mask=None):
    """Reference top-n by a full sort (ties: smaller item index first)."""
    mu, item_off, user_off = _offsets(model)
    scores = model.item_factors_ @ model.user_factors_[u] + item_off + mu + user_off[u]
    if exclude_seen:
        indptr, items = model.seen_indptr_, model.seen_indices_
        scores[items[indptr[u] : indptr[u + 1]]] = -np.inf
    if mask is not None:
        scores[~mask] = -np.inf
    order = np.lexsort((np.arange(scores.shape[0]), -scores))
    order = order[np.isfinite(scores[order])][:n]
    return order, scores[order]


# -- recommend ------------------------------------------------------------------------------------
def test_checkerboard_known_answer():
    """Two taste groups: each user is offered the unseen items of their own group, best first."""
    n = 20
    rng = np.random.default_rng(0)
    users, items, values = [], [], []
    for u in range(n):
        for i in range(n):
            if rng.random() < 0.6:
                users.append(u)
                items.append(i)
                values.append(5.0 if u % 2 == i % 2 else 1.0)
    model = MatrixFactorization(2, reg=0.1, max_iter=500, random_state=0).fit(
        Ratings.from_arrays(users, items, values, all_users=range(n), all_items=range(n))
    )
    rated = set(zip(users, items))
    batch_ids, batch_scores = model.recommend(np.arange(n), n=n)
    for u in range(n):
        unseen_own = {i for i in range(n) if i % 2 == u % 2 and (u, i) not in rated}
        ids, scores = model.recommend(u, n=len(unseen_own))
        assert set(ids.tolist()) == unseen_own
        assert np.all(np.diff(scores) <= 0)
        unseen = n - sum((u, i) in rated for i in range(n))
        assert batch_ids[u, : len(unseen_own)].tolist() == ids.tolist()
        assert np.isneginf(batch_scores[u, unseen:]).all() and (batch_ids[u, unseen:] == -1).all()


def test_matches_brute_force_and_batch(model):
    n_users = model.user_factors_.shape[0]
    batch_ids, batch_scores = model.recommend(model.user_ids_, n=7)
    assert batch_ids.shape == batch_scores.shape == (n_users, 7)
    for u in range(n_users):
        order, scores = brute_force(model, u, 7)
        ids, got = model.recommend(model.user_ids_[u], n=7)
        assert ids.tolist() == model.item_ids_[order].tolist()
        assert close(got, scores, 1e-12)
        assert batch_ids[u].tolist() == ids.tolist()
        assert close(batch_scores[u], got, 1e-12)


def test_exclusions(model):
    u = 3
    user = model.user_ids_[u]
    n_items = model.item_factors_.shape[0]
    indptr, seen = model.seen_indptr_, model.seen_indices_
    seen_ids = set(model.item_ids_[seen[indptr[u] : indptr[u + 1]]].tolist())
    ids, _ = model.recommend(user, n=n_items)
    assert set(ids.tolist()) == set(model.item_ids_.tolist()) - seen_ids
    ids, _ = model.recommend(user, n=n_items, exclude_seen=False)
    assert sorted(ids.tolist()) == sorted(model.item_ids_.tolist())
    candidates = model.item_ids_[::3]
    blocked = model.item_ids_[::6]
    ids, scores = model.recommend(
        user, n=n_items, exclude_seen=False, items=[*candidates, 999], filter_items=blocked
    )
    assert set(ids.tolist()) == set(candidates.tolist()) - set(blocked.tolist())
    mask = np.isin(model.item_ids_, candidates) & ~np.isin(model.item_ids_, blocked)
    order, expected = brute_force(model, u, n_items, exclude_seen=False, mask=mask)
    assert ids.tolist() == model.item_ids_[order].tolist() and close(scores, expected, 1e-12)
    # The same options in a batch.
    b_ids, _ = model.recommend([user, user], n=3, items=candidates, filter_items=blocked)
    assert b_ids[0].tolist() == b_ids[1].tolist()
    assert set(b_ids[0].tolist()) <= set(candidates.tolist()) - set(blocked.tolist())


def test_padding_shapes_and_errors(model):
    user = model.user_ids_[0]
    ids, scores = model.recommend(user, n=5, items=model.item_ids_[:2], exclude_seen=False)
    assert ids.shape == scores.shape == (2,)
    ids, scores = model.recommend([user], n=4, items=model.item_ids_[:2], exclude_seen=False)
    assert ids.shape == (1, 4) and ids[0, 2:].tolist() == [-1, -1]
    assert np.isneginf(scores[0, 2:]).all() and np.isfinite(scores[0, :2]).all()
    assert model.recommend(user, n=0)[0].shape == (0,)
    assert model.recommend([user], n=0)[0].shape == (1, 0)
    assert model.recommend(np.array([], dtype=np.int64), n=3)[0].shape == (0, 3)
    assert model.recommend(str(user), n=2)[0].shape == (2,)  # "7" names integer id 7
    with pytest.raises(KeyError, match="unknown user 12345"):
        model.recommend(12345)
    with pytest.raises(KeyError, match="unknown user 12345"):
        model.recommend([user, 12345])
    with pytest.raises(ValueError, match="n must be"):
        model.recommend(user, n=-1)


def test_string_ids_and_padding():
    model = MatrixFactorization(3, random_state=0).fit(low_rank_ratings(20, 12, str_ids=True))
    ids, _ = model.recommend("u001", n=3)
    assert ids.dtype.kind == "U" and ids.shape == (3,)
    batch, _ = model.recommend(["u001", "u002"], n=12)
    assert batch.dtype.kind == "U" and batch[0, :3].tolist() == ids.tolist()
    assert "" in batch[0].tolist()  # padded where seen items were left out
    sim, _ = model.similar_items("i003", n=2)
    assert sim.dtype.kind == "U" and "i003" not in sim.tolist()
    w, _ = model.fold_in(["i001", "i002", "nope"], [5.0, 1.0, 3.0])
    assert w.shape == (3,)
    with pytest.raises(ValueError, match="repeat"):
        model.fold_in(["i001", "i001"], [5.0, 1.0])
    with pytest.raises(ValueError, match="repeat"):
        model.fold_in(["x", "x"], [5.0, 1.0])


def test_read_only_loaded_model(model, tmp_path):
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = load_model(path)
    assert not loaded.item_factors_.flags.writeable and not loaded.seen_indices_.flags.writeable
    loaded.warm_up()
    users = model.user_ids_[:5]
    for a, b in zip(loaded.recommend(users, n=5), model.recommend(users, n=5)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(loaded.recommend(users[0], n=5), model.recommend(users[0], n=5)):
        np.testing.assert_array_equal(a, b)
    items = model.item_ids_[:6]
    values = np.arange(6, dtype=float) % 5 + 1
    assert close(loaded.fold_in(items, values)[0], model.fold_in(items, values)[0], 1e-12)
    similar = loaded.similar_items(items[0], 3)[0]
    assert similar.tolist() == model.similar_items(items[0], 3)[0].tolist()
    grown = loaded.add_users(Ratings.from_arrays([10**6], [items[0]], [4.0]))
    assert grown.recommend(10**6, n=3)[0].shape == (3,)


def test_refit_invalidates_serving_state(ratings):
    model = MatrixFactorization(2, random_state=0).fit(ratings)
    before = model.recommend(model.user_ids_[0], n=5)
    model.set_params(n_factors=3, random_state=1).fit(ratings)
    ids, scores = model.recommend(model.user_ids_[0], n=5)
    order, expected = brute_force(model, 0, 5)
    assert ids.tolist() == model.item_ids_[order].tolist() and close(scores, expected, 1e-12)
    assert not np.allclose(scores, before[1])


# -- top-n selection ------------------------------------------------------------------------------
@given(
    st.lists(st.sampled_from([-np.inf, np.nan, -2.0, -1.0, 0.0, 0.5, 1.0, 3.0]), max_size=60)
    | st.lists(st.floats(-1e6, 1e6), max_size=60),
    st.integers(0, 70),
)
@example([1.0, 1.0, 0.5], 0)  # n = 0 with candidates: nothing selected, nothing read
@example([0.5, 2.0, 2.0], 1)
@example([2.0, 2.0, 2.0, 1.0], 2)
def test_select_top_n_matches_full_sort(values, n):
    """Ties are ranked by the smaller index; -inf and NaN are never selected."""
    scores = np.array(values, dtype=np.float64)
    out_index = np.empty(max(n, 0), dtype=np.int64)
    out_scores = np.empty(max(n, 0))
    count = select_top_n(scores, n, out_index, out_scores)
    finite = np.flatnonzero(scores > -np.inf)
    expected = finite[np.lexsort((finite, -scores[finite]))][:n]
    assert count == expected.shape[0]
    assert out_index[:count].tolist() == expected.tolist()
    assert out_scores[:count].tolist() == scores[expected].tolist()


@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 40), st.integers(0, 60),
       st.integers(0, 2**32 - 1))
def test_pair_dots_are_the_rows_products(n_items, n_users, k, m, seed):
    """Every pair's factor term, with repeated pairs and rows, against numpy's row products."""
    rng = np.random.default_rng(seed)
    X, Theta = rng.normal(size=(n_items, k)), rng.normal(size=(n_users, k))
    items, users = rng.integers(0, n_items, m), rng.integers(0, n_users, m)
    out = np.full(m, np.nan)
    pair_dots(X, Theta, items, users, out)
    np.testing.assert_allclose(out, np.sum(X[items] * Theta[users], axis=1), rtol=1e-12,
                               atol=1e-12 * k)


# -- fold-in --------------------------------------------------------------------------------------
@pytest.mark.parametrize("normalize", ["biases", "item_mean", "none"])
def test_fold_in_reproduces_converged_training_user(normalize):
    ratings = low_rank_ratings(80, 50, density=0.5, seed=1)
    model = MatrixFactorization(
        3, solver="als", normalize=normalize, max_iter=2000, tol=1e-13, random_state=0
    ).fit(ratings)
    indptr, items, values = ratings.by_user
    for u in range(0, ratings.n_users, 7):
        rated = model.item_ids_[items[indptr[u] : indptr[u + 1]]]
        w, beta = model.fold_in(rated, values[indptr[u] : indptr[u + 1]])
        assert close(w, model.user_factors_[u], 1e-4)
        if normalize == "biases":
            assert abs(beta - model.user_bias_[u]) < 1e-4
        else:
            assert beta == 0.0
        ids, scores = model.recommend_new_user(rated, values[indptr[u] : indptr[u + 1]], n=10)
        t_ids, t_scores = model.recommend(model.user_ids_[u], n=10)
        assert ids.tolist() == t_ids.tolist()
        assert np.max(np.abs(scores - t_scores)) < 0.03


@pytest.mark.filterwarnings("ignore::fastcofi.ConvergenceWarning")
@pytest.mark.parametrize("normalize, weighting", [("biases", "count"), ("biases", "none"),
                                                  ("item_mean", "count"), ("none", "none")])
def test_fold_in_solves_the_normal_equations(model, ratings, normalize, weighting):
    m = MatrixFactorization(4, normalize=normalize, reg_weighting=weighting, reg=0.3, reg_bias=0.07,
                            max_iter=5, random_state=0).fit(ratings)
    rng = np.random.default_rng(3)
    pick = rng.choice(m.item_factors_.shape[0], 9, replace=False)
    values = rng.integers(1, 6, 9).astype(float)
    items = np.concatenate([m.item_ids_[pick], [-17, 10**9]])  # two unknown items, ignored
    w, beta = m.fold_in(items, np.concatenate([values, [5.0, 1.0]]))
    mu, item_off, _ = _offsets(m)
    F = m.item_factors_[pick]
    target = values - (mu + item_off[pick])
    scale = 9.0 if weighting == "count" else 1.0
    if normalize == "biases":
        F = np.hstack([F, np.ones((9, 1))])
        penalty = np.diag([0.3] * 4 + [0.07]) * scale
    else:
        penalty = 0.3 * scale * np.eye(4)
    # Least squares of the stacked system [F; sqrt(penalty)] x = [target; 0].
    stacked = np.vstack([F, np.sqrt(penalty)])
    x = np.linalg.lstsq(stacked, np.concatenate([target, np.zeros(len(penalty))]), rcond=None)[0]
    assert close(w, x[:4], 1e-9)
    assert abs(beta - (x[4] if normalize == "biases" else 0.0)) < 1e-9
    pred = m.predict_new_user(items, np.concatenate([values, [5.0, 1.0]]), m.item_ids_[:3])
    expected = np.clip(mu + item_off[:3] + beta + m.item_factors_[:3] @ w, *m.rating_range_)
    assert close(pred, expected, 1e-12)


def test_fold_in_edge_cases(model):
    k = model.item_factors_.shape[1]
    w, beta = model.fold_in([], [])
    assert w.shape == (k,) and not w.any() and beta == 0.0
    w, beta = model.fold_in([10**9], [4.0])  # only unknown items: nothing to learn from
    assert not w.any() and beta == 0.0
    with pytest.raises(ValueError, match="item 3 appears twice"):
        model.fold_in([3, 5, 3], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="appears twice"):
        model.fold_in([10**9, 10**9], [1.0, 2.0])
    with pytest.raises(ValueError, match="one length"):
        model.fold_in([3, 5], [1.0])
    with pytest.raises(ValueError, match="finite"):
        model.fold_in([3], [np.nan])
    ids, _ = model.recommend_new_user([model.item_ids_[0]], [5.0], n=100)
    assert model.item_ids_[0] not in ids.tolist()
    ids, _ = model.recommend_new_user([model.item_ids_[0]], [5.0], n=100, exclude_seen=False)
    assert model.item_ids_[0] in ids.tolist()



@pytest.fixture(scope="module")
def digit_model():
    """A model whose ids are strings of digits (items "10" ... "49", users "100" ...): integer
    queries name them."""
    ratings = low_rank_ratings(30, 40, seed=2)
    users, items, values = ratings.coo()
    return MatrixFactorization(3, max_iter=5, random_state=0).fit(
        Ratings.from_arrays((users + 100).astype(str), (items + 10).astype(str), values))


@pytest.mark.filterwarnings("ignore::fastcofi.ConvergenceWarning")
def test_fold_in_reads_ids_of_another_type_as_lookups_do(model, digit_model):
    """Ids typed otherwise than the model's are parsed where exact ("7" and 7.0 name item 7);
    anything else (2.5, "abc") is an unknown item and ignored, never truncated or a crash."""
    values = np.array([4.0, 5.0, 1.0, 2.0])
    w, beta = model.fold_in([3, 7], values[[0, 3]])
    for items in (["3", "abc", "2.5", "7"], [3.0, 12.5, 2.5, 7.0]):
        w2, beta2 = model.fold_in(items, values)
        np.testing.assert_array_equal(w2, w)
        assert beta2 == beta
    w, beta = digit_model.fold_in(["12", "30"], values[:2])
    w2, beta2 = digit_model.fold_in([12, 30], values[:2])
    np.testing.assert_array_equal(w2, w)
    assert beta2 == beta and w.any()
    ids, _ = digit_model.recommend_new_user(np.array([12, 30, 5]), values[:3], n=40)
    assert not {"12", "30"} & set(ids.tolist()) and len(ids) == 38


def test_fold_in_errors_are_the_same_for_every_id_type(model, digit_model):
    """A repeated item is named (the repeated one, not the smallest), known or unknown, with
    integer or string ids; a non-finite value is reported before a repeat on every path."""
    for m, known, other in ((model, 5, 3), (digit_model, "15", "13")):
        with pytest.raises(ValueError, match=f"item {known!r} appears twice"):
            m.fold_in([known, other, known], [1.0, 2.0, 3.0])
        for unknown in (10**9, "zz"):
            query = np.asarray([other, unknown, unknown])  # one type: strings when mixed
            with pytest.raises(ValueError, match=f"item {query[1].item()!r} appears twice"):
                m.fold_in(query, [1.0, 2.0, 3.0])
            with pytest.raises(ValueError, match="finite"):
                m.fold_in(query, [np.nan, 2.0, 3.0])

# -- add_users ------------------------------------------------------------------------------------
def test_add_users(model):
    snapshot = {name: np.array(getattr(model, name), copy=True)
                for name in ("user_factors_", "user_ids_", "user_bias_")}
    seen_before = tuple(
        np.array(a, copy=True) for a in (model.seen_indptr_, model.seen_indices_)
    )
    before = model.recommend(model.user_ids_, n=5)
    items = model.item_ids_
    new = Ratings.from_arrays(
        [-3, -3, -3, 500, 500, 25000], [items[0], items[1], 10**9, items[2], items[3], items[4]],
        [5.0, 1.0, 3.0, 4.0, 2.0, 5.0],
    )
    grown = model.add_users(new)
    # The original is untouched.
    for name, value in snapshot.items():
        np.testing.assert_array_equal(getattr(model, name), value)
    for a, b in zip((model.seen_indptr_, model.seen_indices_), seen_before):
        np.testing.assert_array_equal(a, b)
    assert model.user_factors_.shape[0] == snapshot["user_ids_"].shape[0]
    # The grown model: ids sorted, old users unchanged, new users as fold_in / recommend_new_user.
    assert np.all(np.diff(grown.user_ids_) > 0)
    assert grown.user_ids_.shape[0] == model.user_ids_.shape[0] + 3
    after = grown.recommend(model.user_ids_, n=5)
    np.testing.assert_array_equal(after[0], before[0])
    assert close(after[1], before[1], 1e-12)
    for user, its, vals in [(-3, [items[0], items[1], 10**9], [5.0, 1.0, 3.0]),
                            (500, [items[2], items[3]], [4.0, 2.0]), (25000, [items[4]], [5.0])]:
        u = int(np.searchsorted(grown.user_ids_, user))
        w, beta = model.fold_in(its, vals)
        assert close(grown.user_factors_[u], w, 1e-12)
        assert abs(grown.user_bias_[u] - beta) < 1e-12
        ids, scores = grown.recommend(user, n=8)
        e_ids, e_scores = model.recommend_new_user(its, vals, n=8)
        assert ids.tolist() == e_ids.tolist() and close(scores, e_scores, 1e-12)
        assert not set(ids.tolist()) & set(its)
    with pytest.raises(ValueError, match="already in the model"):
        grown.add_users(Ratings.from_arrays([500], [items[0]], [3.0]))
    for old_user in model.user_ids_[[0, 2, -1]]:
        with pytest.raises(ValueError, match=f"user {old_user} is already in the model"):
            model.add_users(Ratings.from_arrays([old_user], [items[0]], [3.0]))
    with pytest.raises(TypeError, match="Ratings"):
        model.add_users([(1, 2, 3.0)])
    # Every user of the grown model, old and new, still has exactly its own items left out.
    rated = {u: set() for u in grown.user_ids_.tolist()}
    users, item_index, _ = new.coo()
    for u, i in zip(new.user_ids[users].tolist(), new.item_ids[item_index].tolist()):
        rated[u].add(i)
    indptr, seen = model.seen_indptr_, model.seen_indices_
    for u, user in enumerate(model.user_ids_.tolist()):
        rated[user] = set(items[seen[indptr[u]:indptr[u + 1]]].tolist())
    everything = set(items.tolist())
    for user, own in rated.items():
        ids, _ = grown.recommend(user, n=items.shape[0])
        assert set(ids.tolist()) == everything - own, user


def test_add_users_wants_ids_of_the_model_type(model, digit_model):
    with pytest.raises(TypeError, match="ratings user ids must be integers, like the model's, "
                                        "found <U"):
        model.add_users(Ratings.from_arrays(["a"], model.item_ids_[:1], [3.0]))
    with pytest.raises(TypeError, match="ratings user ids must be strings, like the model's, "
                                        "found int64"):
        digit_model.add_users(Ratings.from_arrays([10**6], digit_model.item_ids_[:1], [3.0]))


# -- similarity and clusters ----------------------------------------------------------------------
def test_similar_items_and_users(model):
    planted = MatrixFactorization(4)
    planted.__dict__.update(model.__dict__)
    planted.__dict__.pop("_serving", None)
    X = np.array(model.item_factors_, copy=True)
    X[7] = 2.5 * X[3]  # the same direction: cosine 1
    planted.item_factors_ = X
    ids, sims = planted.similar_items(planted.item_ids_[3], n=5)
    assert ids[0] == planted.item_ids_[7] and abs(sims[0] - 1.0) < 1e-12
    assert planted.item_ids_[3] not in ids.tolist() and np.all(np.diff(sims) <= 0)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    expected = Xn @ Xn[3]
    expected[3] = -np.inf
    assert close(sims, np.sort(expected)[::-1][:5], 1e-12)
    Theta = model.user_factors_
    ids, sims = model.similar_users(model.user_ids_[0], n=3)
    Tn = Theta / np.linalg.norm(Theta, axis=1, keepdims=True)
    expected = Tn @ Tn[0]
    expected[0] = -np.inf
    assert ids.tolist() == model.user_ids_[np.argsort(-expected)[:3]].tolist()
    assert close(sims, np.sort(expected)[::-1][:3], 1e-12)
    with pytest.raises(KeyError, match="unknown item"):
        model.similar_items(10**9)
    with pytest.raises(KeyError, match="unknown user"):
        model.similar_users(10**9)


def test_cluster_users_recovers_planted_groups(model):
    rng = np.random.default_rng(5)
    planted = MatrixFactorization(4)
    planted.__dict__.update(model.__dict__)
    planted.__dict__.pop("_serving", None)
    n_users = model.user_factors_.shape[0]
    truth = rng.integers(0, 3, n_users)
    centers = 3.0 * np.eye(4)[:3]
    planted.user_factors_ = centers[truth] + rng.normal(0, 0.05, size=(n_users, 4))
    clusters = planted.cluster_users(3, random_state=0)
    assert clusters.labels.shape == (n_users,) and clusters.centers.shape == (3, 4)
    # The same partition as the planted one, whatever the numbering.
    for c in range(3):
        assert np.unique(truth[clusters.labels == c]).shape[0] == 1
    assert np.unique(clusters.labels).shape[0] == 3
    again = planted.cluster_users(3, random_state=0)
    np.testing.assert_array_equal(again.labels, clusters.labels)
    c = int(clusters.labels[0])
    members = planted.user_ids_[clusters.labels == c]
    assert set(clusters.members(c).tolist()) == set(members.tolist())
    ids, scores = clusters.recommend(c, n=5)
    mu, item_off, user_off = _offsets(planted)
    expected = planted.item_factors_ @ clusters.centers[c] + item_off + mu
    expected += user_off[clusters.labels == c].mean()
    assert ids.tolist() == planted.item_ids_[np.argsort(-expected)[:5]].tolist()
    assert close(scores, np.sort(expected)[::-1][:5], 1e-12)
    with pytest.raises(ValueError, match="cluster must be"):
        clusters.recommend(3)
    with pytest.raises(ValueError, match="n_clusters"):
        planted.cluster_users(0)


# -- warm-up, threads -----------------------------------------------------------------------------
SERVING_KERNELS = (top_n_batch, cosine_top_n, lookup_int, fold_in_ids, fold_in_row, solve_rows)


@needs_jit
def test_no_compilation_after_warm_up(model, tmp_path):
    model.save(tmp_path / "m.npz")
    for m in (model, load_model(tmp_path / "m.npz")):
        m.warm_up()
        before = [len(kernel.signatures) for kernel in SERVING_KERNELS]
        user, item = m.user_ids_[1], m.item_ids_[2]
        m.recommend(user, n=3)
        m.recommend(int(user), n=3, items=[item], filter_items=[item])
        m.recommend(list(m.user_ids_[:3]), n=4, exclude_seen=False)
        m.recommend(m.user_ids_[:3].astype(np.int32), n=4, filter_items=[item])
        m.fold_in([item], [4])
        m.fold_in(np.array([item, 10**9], dtype=np.int32), np.array([4, 1], dtype=np.int64))
        m.recommend_new_user([item], [4.0], n=2)
        m.predict_new_user([item], [4.0], [item])
        m.similar_items(item, 2)
        m.similar_users(user, 2)
        m.cluster_users(2, random_state=0).recommend(1, 3)
        m.add_users(Ratings.from_arrays([10**7], [item], [4.0]))
        after = [len(kernel.signatures) for kernel in SERVING_KERNELS]
        assert after == before


def test_concurrent_calls_match_serial(model):
    users = model.user_ids_
    items = model.item_ids_

    def calls(j):
        u = users[j % len(users)]
        return [
            model.recommend(u, n=5),
            model.recommend(users[j % 7 : j % 7 + 25], n=6),
            model.fold_in(items[j % 5 : j % 5 + 8], np.arange(8.0) % 5 + 1),
            model.recommend_new_user(items[:6], np.arange(6.0) % 5 + 1, n=4),
            model.similar_items(items[j % len(items)], n=4),
            model.similar_users(u, n=4),
        ]

    serial = [calls(j) for j in range(48)]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(calls, range(48)))
    for s_rows, p_rows in zip(serial, parallel):
        for s, p in zip(s_rows, p_rows):
            for a, b in zip(s, p):
                np.testing.assert_array_equal(a, b)


@needs_jit
def test_concurrent_batches_under_workqueue_layer():
    """Numba's workqueue layer is not thread-safe: the serving lock must make batches safe."""
    script = textwrap.dedent(
        """
        import numba, numpy as np
        from concurrent.futures import ThreadPoolExecutor
        from fastcofi import MatrixFactorization, Ratings
        rng = np.random.default_rng(0)
        users, items = rng.integers(0, 200, 3000), rng.integers(0, 300, 3000)
        r = Ratings.from_arrays(users, items, rng.integers(1, 6, 3000).astype(float),
                                duplicates="last")
        m = MatrixFactorization(8, max_iter=5, random_state=0).fit(r)
        expected = m.recommend(m.user_ids_, n=10)
        def work(j):
            return m.recommend(m.user_ids_, n=10)
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(work, range(32)))
        for ids, scores in results:
            assert (ids == expected[0]).all() and (scores == expected[1]).all()
        assert numba.threading_layer() == "workqueue", numba.threading_layer()
        print("ok")
        """
    )
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


@needs_jit
@pytest.mark.filterwarnings("ignore::fastcofi.ConvergenceWarning")
def test_parallel_guard_tracks_layer():
    """After a batch has run, the lock is skipped exactly on the thread-safe layers."""
    import numba

    model = MatrixFactorization(2, max_iter=3, random_state=0).fit(low_rank_ratings(10, 8))
    model.recommend(model.user_ids_, n=2)
    safe = numba.threading_layer() in ("tbb", "omp")
    assert (_parallel._parallel_guard() is _parallel._PARALLEL_LOCK) != safe


@pytest.mark.filterwarnings("ignore::fastcofi.ConvergenceWarning")
@pytest.mark.parametrize("normalize", ["biases", "item_mean", "none"])
@pytest.mark.parametrize("clip", [False, True])
def test_predict_new_user_unknown_candidate_gets_the_exact_fallback(ratings, normalize, clip):
    """An unknown candidate: the global mean plus the folded-in user bias (learned biases), or the
    global mean alone; a known candidate: the full prediction. Both as `predict` gives for the
    same user added with `add_users`."""
    m = MatrixFactorization(3, normalize=normalize, clip=clip, max_iter=20,
                            random_state=0).fit(ratings)
    rated = m.item_ids_[[0, 2, 5, 7]]
    values = np.array([5.0, 5.0, 4.0, 5.0])  # well above the mean: a clearly positive bias
    w, beta = m.fold_in(rated, values)
    candidates = np.array([10**9, m.item_ids_[1], -5, m.item_ids_[3]])
    pred = m.predict_new_user(rated, values, candidates)
    mu, item_off, _ = _offsets(m)
    fallback = m.global_mean_ + beta if normalize == "biases" else m.global_mean_
    known = mu + item_off[[1, 3]] + beta + m.item_factors_[[1, 3]] @ w
    expected = np.array([fallback, known[0], fallback, known[1]])
    if clip:
        expected = np.clip(expected, *m.rating_range_)
    if normalize == "biases":
        assert beta > 0.1 and fallback < m.rating_range_[1]  # the bias is visible, not clipped
    assert close(pred, expected, 1e-12)
    grown = m.add_users(Ratings.from_arrays(np.full(4, 10**6), rated, values))
    assert close(grown.predict(np.full(4, 10**6), candidates), pred, 1e-12)


# -- ties -----------------------------------------------------------------------------------------
def _lexsort_top(scores, n):
    """Reference: indices of the n best finite scores, equal scores by the smaller index."""
    finite = np.flatnonzero(np.isfinite(scores))
    return finite[np.lexsort((finite, -scores[finite]))][:n]


@given(st.lists(st.sampled_from([-np.inf, -1.0, 0.0, 0.5, 2.0]), max_size=40),
       st.integers(0, 45))
def test_top_n_numpy_breaks_ties_by_index(values, n):
    scores = np.array(values, dtype=np.float64)
    assert serving._top_n_numpy(scores, n).tolist() == _lexsort_top(scores, n).tolist()


def test_top_n_numpy_ten_equal_scores():
    assert serving._top_n_numpy(np.zeros(10), 3).tolist() == [0, 1, 2]


@st.composite
def tied_models(draw):
    """A fitted-state model whose scores tie often: factor rows from a small pool of rows of -1, 0
    and 1 (zero rows included), offsets in halves, so every score is exact; int or str ids."""
    seed = draw(st.integers(0, 2**32 - 1))
    n_items, n_users, k = draw(st.integers(1, 25)), draw(st.integers(1, 5)), draw(st.integers(1, 3))
    normalize = draw(st.sampled_from(["biases", "item_mean", "none"]))
    rng = np.random.default_rng(seed)
    pool = rng.integers(-1, 2, size=(draw(st.integers(1, 4)), k)).astype(np.float64)
    pool[0] = 0.0
    seen = rng.random((n_users, n_items)) < 0.3
    model = MatrixFactorization(k, normalize=normalize, reg=0.5, reg_bias=0.5)
    model.item_factors_ = pool[rng.integers(0, pool.shape[0], n_items)]
    model.user_factors_ = rng.integers(-1, 2, size=(n_users, k)).astype(np.float64)
    if draw(st.booleans()):
        model.item_ids_ = np.array([f"i{i:03d}" for i in range(n_items)])
        model.user_ids_ = np.array([f"u{u:02d}" for u in range(n_users)])
    else:
        model.item_ids_ = np.arange(n_items, dtype=np.int64) * 7 - 20
        model.user_ids_ = np.arange(n_users, dtype=np.int64) * 3 + 1
    model.global_mean_ = 3.0
    halves = rng.integers(-2, 3, size=n_items) / 2.0
    model.item_means_ = 3.0 + halves if normalize == "item_mean" else None
    model.item_bias_ = halves if normalize == "biases" else None
    model.user_bias_ = rng.integers(-2, 3, size=n_users) / 2.0 if normalize == "biases" else None
    model.rating_range_ = (1.0, 5.0)
    model.reg_, model.reg_bias_ = 0.5, 0.5
    model.solver_, model.reg_weighting_ = "cg", "sqrt"
    model.seen_indptr_ = np.concatenate([[0], np.cumsum(seen.sum(axis=1))]).astype(np.int64)
    model.seen_indices_ = np.nonzero(seen)[1].astype(np.int32)
    model.noise_variance_ = model.user_bias_variance_ = None
    model.n_iter_ = 1
    return model, rng


@given(tied_models(), st.integers(0, 30), st.booleans(), st.booleans())
def test_every_top_n_path_breaks_ties_by_item_index(model_rng, n, exclude_seen, restrict):
    """recommend (one user, a batch), recommend_new_user, cluster recommendations and
    similar_items / similar_users all rank equal scores by the smaller index, as a lexsort does."""
    model, rng = model_rng
    mu, item_off, user_off = _offsets(model)
    X, Theta = model.item_factors_, model.user_factors_
    n_items, n_users = X.shape[0], Theta.shape[0]
    indptr, seen = model.seen_indptr_, model.seen_indices_
    items = filter_items = mask = None
    if restrict:
        mask = rng.random(n_items) < 0.7
        items = model.item_ids_[mask | (rng.random(n_items) < 0.2)]
        filter_items = model.item_ids_[~mask]
    batch_ids, batch_scores = model.recommend(model.user_ids_, n, exclude_seen=exclude_seen,
                                              items=items, filter_items=filter_items)
    for u in range(n_users):
        scores = X @ Theta[u] + item_off
        if exclude_seen:
            scores[seen[indptr[u]:indptr[u + 1]]] = -np.inf
        if mask is not None:
            scores[~mask] = -np.inf
        best = _lexsort_top(scores, n)
        ids, got = model.recommend(model.user_ids_[u], n, exclude_seen=exclude_seen, items=items,
                                   filter_items=filter_items)
        assert ids.tolist() == model.item_ids_[best].tolist()
        assert got.tolist() == (scores[best] + mu + user_off[u]).tolist()
        assert batch_ids[u, :len(best)].tolist() == ids.tolist()
        assert batch_scores[u, :len(best)].tolist() == got.tolist()
        assert np.isneginf(batch_scores[u, len(best):]).all()
    # A new user: the same BLAS product as serving, then the same selection.
    rated = rng.choice(n_items, size=min(3, n_items), replace=False)
    values = rng.integers(1, 6, size=rated.shape[0]).astype(np.float64)
    w, _ = model.fold_in(model.item_ids_[rated], values)
    scores = X @ w + item_off
    if exclude_seen:
        scores[rated] = -np.inf
    best = _lexsort_top(scores, n)
    ids, _ = model.recommend_new_user(model.item_ids_[rated], values, n, exclude_seen=exclude_seen)
    assert ids.tolist() == model.item_ids_[best].tolist()
    # Clusters: every user in cluster 0, centred at the mean of their factors.
    clusters = serving.UserClusters(model, np.zeros(n_users, dtype=np.int64),
                                    Theta.mean(axis=0, keepdims=True))
    ids, _ = clusters.recommend(0, n)
    assert ids.tolist() == model.item_ids_[_lexsort_top(X @ clusters.centers[0] + item_off,
                                                        n)].tolist()
    # Cosine similarity: integer dot products and norms of integer sums, so exact as computed.
    for F, ids_of, similar in ((X, model.item_ids_, model.similar_items),
                               (Theta, model.user_ids_, model.similar_users)):
        norms = np.sqrt(np.einsum("ij,ij->i", F, F))
        q = int(rng.integers(F.shape[0]))
        with np.errstate(invalid="ignore", divide="ignore"):
            sims = np.where(norms * norms[q] > 0, (F @ F[q]) / (norms * norms[q]), 0.0)
        sims[q] = -np.inf
        best = _lexsort_top(sims, n)
        ids, got = similar(ids_of[q], n)
        assert ids.tolist() == ids_of[best].tolist()
        assert got.tolist() == sims[best].tolist()


def test_a_zero_norm_row_has_cosine_similarity_zero(model):
    """An item (or user) whose factors are all zero has no direction: its similarity with every
    row is 0, not NaN, and asking for its neighbours gives them in index order."""
    planted = MatrixFactorization(4)
    planted.__dict__.update(model.__dict__)
    planted.__dict__.pop("_serving", None)
    X, Theta = np.array(model.item_factors_), np.array(model.user_factors_)
    X[5] = 0.0
    Theta[2] = 0.0
    planted.item_factors_, planted.user_factors_ = X, Theta
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division warning either
        ids, sims = planted.similar_items(planted.item_ids_[5], n=4)
        assert ids.tolist() == planted.item_ids_[[0, 1, 2, 3]].tolist()
        assert sims.tolist() == [0.0] * 4
        ids, sims = planted.similar_items(planted.item_ids_[0], n=X.shape[0])
        assert sims[ids.tolist().index(planted.item_ids_[5])] == 0.0 and np.isfinite(sims).all()
        ids, sims = planted.similar_users(planted.user_ids_[2], n=3)
        assert ids.tolist() == planted.user_ids_[[0, 1, 3]].tolist() and not sims.any()


@pytest.mark.filterwarnings("ignore::fastcofi.ConvergenceWarning")
def test_a_single_item_model_honours_its_candidate_mask():
    """Masks and seen lists of length one are masks too, on every path."""
    m = MatrixFactorization(2, max_iter=3, random_state=0).fit(
        Ratings.from_arrays([1, 2, 3], [7, 7, 7], [4.0, 2.0, 5.0], all_users=[1, 2, 3, 4]))
    ids, scores = m.recommend([4, 1], n=2, filter_items=[7])
    assert ids.tolist() == [[-1, -1], [-1, -1]] and np.isneginf(scores).all()
    assert m.recommend(4, n=2, filter_items=[7])[0].tolist() == []
    assert m.recommend([4], n=1)[0].tolist() == [[7]]
    assert m.recommend([1], n=1)[0].tolist() == [[-1]]  # seen


def test_the_first_item_counts_as_a_candidate_and_as_a_filter(model):
    first = model.item_ids_[0]
    ids, _ = model.recommend(model.user_ids_[0], n=3, items=[first, 10**9], exclude_seen=False)
    assert ids.tolist() == [first]
    ids, _ = model.recommend(model.user_ids_[:2], n=3, items=[first, 10**9], exclude_seen=False)
    assert ids[:, 0].tolist() == [first, first] and (ids[:, 1:] == -1).all()
    for user in (model.user_ids_[0], model.user_ids_[:2]):
        ids, _ = model.recommend(user, n=model.item_ids_.shape[0], filter_items=[first],
                                 exclude_seen=False)
        assert first not in np.asarray(ids).reshape(-1).tolist()


def test_batches_cut_into_many_chunks_match_one_user_at_a_time(model, monkeypatch):
    """A score buffer of 7 cells holds no whole user of 40 items: one user per chunk, and every
    chunk's rows land in their own place."""
    monkeypatch.setattr(serving, "_BATCH_CELLS", 7)
    users = model.user_ids_[::-3]
    ids, scores = model.recommend(users, n=4, items=model.item_ids_[::2])
    for row, user in enumerate(users):
        one_ids, one_scores = model.recommend(user, n=4, items=model.item_ids_[::2])
        assert ids[row, :len(one_ids)].tolist() == one_ids.tolist()
        assert close(scores[row, :len(one_ids)], one_scores, 1e-12)
    monkeypatch.setattr(serving, "_BATCH_CELLS", 40 * 6)  # six users a chunk, the last short
    assert model.recommend(users, n=4)[0].tolist() == ids_all(model, users)


def test_the_batch_path_holds_at_most_its_score_cells_at_once(model, monkeypatch):
    """Users per chunk: as many as fit in ``_BATCH_CELLS`` scores, and one when not even one
    user's do (40 items here, and one item), whatever the number of factors."""
    chunks = []
    kernel = serving.top_n_batch

    def recording(scores, *args):
        chunks.append(scores.shape)
        return kernel(scores, *args)

    monkeypatch.setattr(serving, "top_n_batch", recording)
    users = model.user_ids_[:20]
    for cells, rows in ((7, 1), (40 * 6, 6), (40 * 30, 20)):
        monkeypatch.setattr(serving, "_BATCH_CELLS", cells)
        chunks.clear()
        model.recommend(users, n=2)
        assert [r for r, _ in chunks] == [rows] * (20 // rows) + [20 % rows] * (20 % rows > 0)
    one = MatrixFactorization(4)
    one.__dict__.update(model.__dict__)
    one.__dict__.pop("_serving", None)
    one.item_factors_, one.item_ids_ = model.item_factors_[:1], model.item_ids_[:1]
    one.seen_indptr_ = np.zeros(model.user_ids_.shape[0] + 1, dtype=np.int64)
    one.seen_indices_ = model.seen_indices_[:0]
    one.item_bias_ = None if model.item_bias_ is None else model.item_bias_[:1]
    one.item_means_ = None if model.item_means_ is None else model.item_means_[:1]
    monkeypatch.setattr(serving, "_BATCH_CELLS", 7)
    chunks.clear()
    one.recommend(users, n=1)
    assert [r for r, _ in chunks] == [7, 7, 6]


def ids_all(model, users):
    return [model.recommend(user, n=4)[0].tolist() for user in users]
