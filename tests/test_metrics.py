import math
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastcofi import MatrixFactorization, Ratings
from fastcofi.evaluate.metrics import (
    coverage,
    evaluate,
    hit_rate,
    mae,
    map_at_k,
    ndcg_at_k,
    precision_at_k,
    ranking_metrics,
    recall_at_k,
    rmse,
)
from fastcofi.train.solvers import ConvergenceWarning


class StubModel:
    """Fixed ranked lists per user, with the padding contract of `MatrixFactorization.recommend`."""

    def __init__(self, lists, item_ids, scores=None, pad=-1):
        self.lists = lists
        self.scores = scores or {}
        self.user_ids_ = np.array(sorted(lists))
        self.item_ids_ = np.asarray(item_ids)
        self.pad = pad
        self.calls = []

    def recommend(self, users, n=10, exclude_seen=True):
        users = list(np.asarray(users).tolist())
        self.calls.append((users, n, exclude_seen))
        ids = np.full((len(users), n), self.pad, dtype=self.item_ids_.dtype)
        out = np.full((len(users), n), -np.inf)
        for row, user in enumerate(users):
            best = self.lists[user][:n]
            ids[row, : len(best)] = best
            default = np.arange(len(best), 0, -1, dtype=np.float64)
            out[row, : len(best)] = self.scores.get(user, default)[: len(best)]
        return ids, out

    def predict(self, users, items):
        return np.full(np.broadcast(users, items).shape, 3.0)


def _test_set():
    # a: relevant 1, 2 (3 is rated 2: not relevant); b: relevant 4; c: nothing relevant;
    # d: unknown to the model.
    return Ratings.from_arrays(
        ["a", "a", "a", "b", "c", "d"],
        [1, 2, 3, 4, 5, 1],
        [5.0, 4.0, 2.0, 5.0, 3.0, 5.0],
    )


def _stub():
    return StubModel(
        {"a": [1, 7, 2], "b": [8, 9, 6], "c": [5, 1, 2]}, item_ids=np.arange(1, 11)
    )


# -- rating errors ---------------------------------------------------------------------------
def test_rmse_and_mae_known_answers():
    assert rmse([1, 2, 3], [1, 3, 5]) == pytest.approx(math.sqrt(5 / 3))
    assert mae([1, 2, 3], [1, 3, 5]) == pytest.approx(1.0)
    assert rmse([4.0], [4.0]) == 0.0
    assert mae(np.array([[1.0, 2.0]]), np.array([[2.0, 0.0]])) == pytest.approx(1.5)


@pytest.mark.parametrize(
    "y_true, y_pred, match",
    [
        ([1, 2], [1, 2, 3], "same shape"),
        ([], [], "empty"),
        ([1, np.nan], [1, 2], "y_true must be finite"),
        ([1, 2], [1, np.inf], "y_pred must be finite"),
    ],
)
def test_rating_errors_reject_bad_input(y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        rmse(y_true, y_pred)
    with pytest.raises(ValueError, match=match):
        mae(y_true, y_pred)


# -- ranking: known answers ------------------------------------------------------------------
def test_ranking_metrics_known_answers():
    res = ranking_metrics(_stub(), _test_set(), k=3, relevance_threshold=4.0)
    # a: hits at ranks 1 and 3 of 2 relevant; b: no hit of 1 relevant.
    ndcg_a = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert res["precision_at_k"] == pytest.approx((2 / 3 + 0) / 2)
    assert res["recall_at_k"] == pytest.approx((1 + 0) / 2)
    assert res["ndcg_at_k"] == pytest.approx(ndcg_a / 2)
    assert res["map_at_k"] == pytest.approx(((1 / 1 + 2 / 3) / 2 + 0) / 2)
    assert res["hit_rate"] == pytest.approx(0.5)
    # distinct items over the lists of a, b and c (c is ranked though skipped): 7 of 10
    assert res["coverage"] == pytest.approx(0.7)
    assert (res["n_users_evaluated"], res["n_users_skipped"], res["n_users_unknown"]) == (2, 1, 1)
    assert res["k"] == 3 and res["relevance_threshold"] == 4.0


def test_single_metric_functions_agree_with_ranking_metrics():
    test, res = _test_set(), ranking_metrics(_stub(), _test_set(), k=3)
    assert precision_at_k(_stub(), test, k=3) == res["precision_at_k"]
    assert recall_at_k(_stub(), test, k=3) == res["recall_at_k"]
    assert ndcg_at_k(_stub(), test, k=3) == res["ndcg_at_k"]
    assert map_at_k(_stub(), test, k=3) == res["map_at_k"]
    assert hit_rate(_stub(), test, k=3) == res["hit_rate"]
    assert coverage(_stub(), test, k=3) == res["coverage"]


def test_recommend_is_called_once_in_batch_for_known_test_users():
    model = _stub()
    ranking_metrics(model, _test_set(), k=2, exclude_seen=False)
    assert model.calls == [(["a", "b", "c"], 2, False)]


def test_k_larger_than_the_lists_counts_missing_slots_as_misses():
    # Only two items can be recommended to "a"; the -1 padding must not match item -1.
    model = StubModel({"a": [1, 2]}, item_ids=np.array([-1, 1, 2]))
    test = Ratings.from_arrays(["a", "a", "a"], [1, 2, -1], [5.0, 5.0, 5.0])
    res = ranking_metrics(model, test, k=5)
    assert res["precision_at_k"] == pytest.approx(2 / 5)
    assert res["recall_at_k"] == pytest.approx(2 / 3)
    ideal = sum(1 / math.log2(r + 2) for r in range(3))
    assert res["ndcg_at_k"] == pytest.approx((1 + 1 / math.log2(3)) / ideal)
    assert res["map_at_k"] == pytest.approx((1 + 1) / 3)
    assert res["coverage"] == pytest.approx(2 / 3)


def test_relevant_items_beyond_k_cap_the_ideal_at_k():
    model = StubModel({"a": [1, 2]}, item_ids=np.arange(1, 6))
    test = Ratings.from_arrays(["a"] * 4, [1, 2, 3, 4], [5.0] * 4)
    res = ranking_metrics(model, test, k=2)
    assert res["ndcg_at_k"] == pytest.approx(1.0)
    assert res["map_at_k"] == pytest.approx(1.0)
    assert res["recall_at_k"] == pytest.approx(0.5)


def test_no_relevant_items_gives_nan_and_counts_everyone_as_skipped():
    test = Ratings.from_arrays(["a", "b"], [1, 4], [1.0, 2.0])
    res = ranking_metrics(_stub(), test, k=3)
    for name in ("precision_at_k", "recall_at_k", "ndcg_at_k", "map_at_k", "hit_rate"):
        assert math.isnan(res[name])
    assert (res["n_users_evaluated"], res["n_users_skipped"]) == (0, 2)
    assert res["coverage"] == pytest.approx(6 / 10)


def test_threshold_none_makes_every_test_rating_relevant():
    res = ranking_metrics(_stub(), _test_set(), k=3, relevance_threshold=None)
    # a: 3 relevant (1, 2, 3), hits 1 and 2; b: 0 hits; c: item 5 hit at rank 1.
    assert res["n_users_evaluated"] == 3
    assert res["precision_at_k"] == pytest.approx((2 / 3 + 0 + 1 / 3) / 3)
    assert res["recall_at_k"] == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert res["hit_rate"] == pytest.approx(2 / 3)


def test_ties_keep_the_order_the_model_returns():
    model = StubModel({"a": [1, 2]}, item_ids=np.arange(1, 4), scores={"a": np.array([1.0, 1.0])})
    test = Ratings.from_arrays(["a"], [2], [5.0])
    assert precision_at_k(model, test, k=1) == 0.0
    assert ndcg_at_k(model, test, k=2) == pytest.approx(1 / math.log2(3))
    assert map_at_k(model, test, k=2) == pytest.approx(0.5)


def test_train_items_are_dropped_and_the_list_refilled():
    # The stub does not exclude anything; train says "a" already rated 1 and 7.
    model = StubModel({"a": [1, 7, 2, 3, 4]}, item_ids=np.arange(1, 11))
    train = Ratings.from_arrays(["a", "a", "b"], [1, 7, 2], [5.0, 5.0, 5.0])
    test = Ratings.from_arrays(["a", "a"], [2, 4], [5.0, 5.0])
    res = ranking_metrics(model, test, k=2, train=train)
    assert model.calls[0][1] == 2 + 2  # asks for k plus the user's number of train items
    assert res["precision_at_k"] == pytest.approx(0.5)  # [2, 3]: one hit
    assert res["map_at_k"] == pytest.approx(0.5)
    assert res["coverage"] == pytest.approx(0.2)


def test_string_item_ids_and_empty_string_padding():
    model = StubModel({"u": ["x"]}, item_ids=np.array(["", "x", "y"]), pad="")
    test = Ratings.from_arrays(["u", "u"], ["x", ""], [5.0, 5.0])
    res = ranking_metrics(model, test, k=3)
    assert res["precision_at_k"] == pytest.approx(1 / 3)
    assert res["recall_at_k"] == pytest.approx(1 / 2)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"k": 0}, ValueError, "k must be an integer >= 1, found 0"),
        ({"k": 2.5}, ValueError, "k must be"),
        ({"relevance_threshold": "4"}, ValueError, "relevance_threshold must be a number"),
        ({"train": "x"}, TypeError, "train must be a fastcofi.Ratings"),
    ],
)
def test_ranking_arguments_are_validated(kwargs, error, match):
    with pytest.raises(error, match=match):
        ranking_metrics(_stub(), _test_set(), **kwargs)


def test_test_set_must_be_ratings():
    with pytest.raises(TypeError, match="test must be a fastcofi.Ratings, found list"):
        precision_at_k(_stub(), [1, 2, 3])


# -- ranking: against a per-user reference ---------------------------------------------------
class ScoreModel:
    """recommend from a dense score matrix: best first, ties by the smaller item index."""

    def __init__(self, scores, seen):
        self.scores = scores
        self.seen = seen
        self.user_ids_ = np.arange(scores.shape[0])
        self.item_ids_ = np.arange(scores.shape[1]) * 10  # ids differ from indices

    def recommend(self, users, n=10, exclude_seen=True):
        users = np.asarray(users)
        ids = np.full((users.shape[0], n), -1)
        out = np.full((users.shape[0], n), -np.inf)
        for row, u in enumerate(users):
            s = self.scores[u].copy()
            if exclude_seen:
                s[self.seen[u]] = -np.inf
            order = np.lexsort((np.arange(s.shape[0]), -s))
            order = order[np.isfinite(s[order])][:n]
            ids[row, : order.shape[0]] = self.item_ids_[order]
            out[row, : order.shape[0]] = s[order]
        return ids, out


def _reference(model, test_pairs, k, threshold):
    """Per-user loop over the definitions in the module notes."""
    per = {m: [] for m in ("p", "r", "n", "ap", "hit")}
    shown = set()
    for user, rated in test_pairs.items():
        ranked = list(model.recommend([user], n=k)[0][0])
        ranked = [i for i, s in zip(ranked, model.recommend([user], n=k)[1][0]) if s > -np.inf]
        shown.update(ranked)
        relevant = {i for i, v in rated if v >= threshold}
        if not relevant:
            continue
        hits = [1.0 if i in relevant else 0.0 for i in ranked] + [0.0] * (k - len(ranked))
        per["p"].append(sum(hits) / k)
        per["r"].append(sum(hits) / len(relevant))
        dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
        idcg = sum(1 / math.log2(r + 2) for r in range(min(len(relevant), k)))
        per["n"].append(dcg / idcg)
        ap = sum(h * sum(hits[: r + 1]) / (r + 1) for r, h in enumerate(hits))
        per["ap"].append(ap / min(len(relevant), k))
        per["hit"].append(float(any(hits)))
    means = {m: (float(np.mean(v)) if v else float("nan")) for m, v in per.items()}
    means["coverage"] = len(shown) / len(model.item_ids_)
    return means


@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 8), ties=st.booleans())
def test_vectorized_metrics_match_a_per_user_reference(seed, k, ties):
    rng = np.random.default_rng(seed)
    n_users, n_items = int(rng.integers(1, 8)), int(rng.integers(1, 12))
    scores = rng.normal(size=(n_users, n_items))
    if ties:
        scores = np.round(scores)  # many equal scores
    rated = rng.random((n_users, n_items)) < 0.5
    in_test = rated & (rng.random((n_users, n_items)) < 0.5)
    if not in_test.any():
        in_test[0, 0] = rated[0, 0] = True
    seen = [np.flatnonzero(rated[u] & ~in_test[u]) for u in range(n_users)]
    model = ScoreModel(scores, seen)
    uu, ii = np.nonzero(in_test)
    values = rng.integers(1, 6, size=uu.shape[0]).astype(np.float64)
    test = Ratings.from_arrays(uu, ii * 10, values)
    res = ranking_metrics(model, test, k=k, relevance_threshold=4.0)
    pairs = {}
    for u, i, v in zip(uu.tolist(), (ii * 10).tolist(), values.tolist()):
        pairs.setdefault(u, []).append((i, v))
    ref = _reference(model, pairs, k, 4.0)
    for name, key in [
        ("precision_at_k", "p"), ("recall_at_k", "r"), ("ndcg_at_k", "n"),
        ("map_at_k", "ap"), ("hit_rate", "hit"), ("coverage", "coverage"),
    ]:
        if math.isnan(ref[key]):
            assert math.isnan(res[name])
        else:
            assert res[name] == pytest.approx(ref[key], abs=1e-12), name
        if name != "coverage":
            assert 0.0 <= res[name] <= 1.0 or math.isnan(res[name])
    # Giving the train set to a model that already excludes it changes nothing.
    tu = np.repeat(np.arange(n_users), [s.shape[0] for s in seen])
    if tu.shape[0]:
        train = Ratings.from_arrays(tu, np.concatenate(seen) * 10, np.ones(tu.shape[0]))
        again = ranking_metrics(model, test, k=k, relevance_threshold=4.0, train=train)
        for name in ("precision_at_k", "recall_at_k", "ndcg_at_k", "map_at_k", "coverage"):
            assert again[name] == res[name] or (math.isnan(again[name]) and math.isnan(res[name]))


# -- with a real (tiny) model ----------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(3)
    n_users, n_items = 25, 15
    mask = rng.random((n_users, n_items)) < 0.5
    uu, ii = np.nonzero(mask)
    values = rng.integers(1, 6, size=uu.shape[0]).astype(np.float64)
    test_rows = rng.random(uu.shape[0]) < 0.25
    train = Ratings.from_arrays(
        uu[~test_rows], ii[~test_rows], values[~test_rows],
        all_users=np.arange(n_users), all_items=np.arange(n_items),
    )
    test = Ratings.from_arrays(uu[test_rows], ii[test_rows], values[test_rows])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = MatrixFactorization(2, random_state=0, max_iter=30).fit(train)
    return model, train, test


def test_evaluate_with_a_fitted_model(fitted):
    model, train, test = fitted
    res = evaluate(model, test, k=5, relevance_threshold=4.0)
    u, i, v = test.coo()
    pred = model.predict(test.user_ids[u], test.item_ids[i])
    assert res["rmse"] == pytest.approx(np.sqrt(np.mean((pred - v) ** 2)))
    assert res["mae"] == pytest.approx(np.mean(np.abs(pred - v)))
    assert res["n"] == test.nnz
    assert res["n_users_unknown"] == 0
    assert res["n_users_evaluated"] + res["n_users_skipped"] == np.count_nonzero(
        np.diff(test.by_user[0])
    )
    for name in ("precision_at_k", "recall_at_k", "ndcg_at_k", "map_at_k", "hit_rate", "coverage"):
        assert 0.0 <= res[name] <= 1.0
    # The model already excludes its training items: naming them again changes nothing.
    again = evaluate(model, test, k=5, relevance_threshold=4.0, train=train)
    assert again == res
    assert set(evaluate(model, test, k=None)) == {"rmse", "mae", "n"}


def test_test_users_unknown_to_the_model_are_counted_not_ranked(fitted):
    model, _, _ = fitted
    test = Ratings.from_arrays([0, 999], [1, 1], [5.0, 5.0])
    res = evaluate(model, test, k=3)
    assert res["n_users_unknown"] == 1
    assert res["n_users_evaluated"] == 1
    assert res["n"] == 2  # the unknown user's rating is still predicted (by the fallback)
