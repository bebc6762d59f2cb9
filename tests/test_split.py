import hashlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastcofi import Ratings
from fastcofi.evaluate.split import (
    kfold,
    leave_k_out,
    official_folds,
    random_split,
    random_split_indices,
    temporal_split,
)


def _coo(seed, n_users=12, n_items=9, density=0.5, string_ids=False):
    """COO columns (users, items, values, timestamps) of unique pairs, in a shuffled order."""
    rng = np.random.default_rng(seed)
    mask = rng.random((n_users, n_items)) < density
    mask[0, 0] = mask[1, 1] = True  # at least two ratings
    uu, ii = np.nonzero(mask)
    order = rng.permutation(uu.shape[0])
    uu, ii = uu[order], ii[order]
    values = rng.integers(1, 6, size=uu.shape[0]).astype(np.float64)
    ts = rng.integers(0, 50, size=uu.shape[0])  # repeated timestamps included
    if string_ids:
        return uu.astype(str), np.char.add("i", ii.astype(str)), values, ts
    return uu, ii, values, ts


def _triples(ratings):
    u, i, v = ratings.coo()
    ts = ratings.timestamps
    ts = ts.tolist() if ts is not None else [None] * ratings.nnz
    return sorted(
        zip(ratings.user_ids[u].tolist(), ratings.item_ids[i].tolist(), v.tolist(), ts)
    )


def _rated_ids(ratings):
    u, i, _ = ratings.coo()
    return set(ratings.user_ids[u].tolist()), set(ratings.item_ids[i].tolist())


def _check_pair(full, train, test):
    """Train and test partition ``full``; train declares every id, test only its own."""
    assert sorted(_triples(train) + _triples(test)) == _triples(full)
    assert not set(_triples(train)) & set(_triples(test))
    np.testing.assert_array_equal(train.user_ids, full.user_ids)
    np.testing.assert_array_equal(train.item_ids, full.item_ids)
    users, items = _rated_ids(test)
    assert set(test.user_ids.tolist()) == users and set(test.item_ids.tolist()) == items


# -- random holdout --------------------------------------------------------------------------
def test_random_split_indices_follow_the_protocol_formula():
    train_rows, test_rows = random_split_indices(103, 0.2, random_state=42)
    perm = np.random.default_rng(42).permutation(103)
    np.testing.assert_array_equal(test_rows, np.sort(perm[:20]))
    np.testing.assert_array_equal(train_rows, np.sort(perm[20:]))
    assert test_rows.dtype == train_rows.dtype == np.int64


@given(seed=st.integers(0, 2**32 - 1), fraction=st.sampled_from([0.1, 0.2, 0.5, 0.9]))
def test_random_split_partitions_with_the_asked_size(seed, fraction):
    data = _coo(seed)
    full = Ratings.from_arrays(*data[:3], timestamps=data[3])
    n = full.nnz
    if int(n * fraction) < 1 or int(n * fraction) >= n:
        with pytest.raises(ValueError, match="both must be at least 1"):
            random_split(data, fraction, random_state=seed)
        return
    train, test = random_split(data, fraction, random_state=seed)
    assert test.nnz == int(n * fraction) and train.nnz == n - test.nnz
    _check_pair(full, train, test)
    # same seed, same split; Ratings input splits its storage order the same way
    again = random_split(data, fraction, random_state=seed)
    assert _triples(again[1]) == _triples(test)
    by_ratings = random_split(full, fraction, random_state=seed)
    _check_pair(full, *by_ratings)


def test_tuple_rows_are_split_in_input_order():
    users, items, values, ts = _coo(5)
    _, test_rows = random_split_indices(users.shape[0], 0.3, random_state=7)
    _, test = random_split((users, items, values, ts), 0.3, random_state=7)
    expected = Ratings.from_arrays(
        users[test_rows], items[test_rows], values[test_rows], timestamps=ts[test_rows]
    )
    assert _triples(test) == _triples(expected)


def test_different_seeds_give_different_splits():
    data = _coo(0, 30, 30)
    a = random_split(data, 0.2, random_state=1)[1]
    b = random_split(data, 0.2, random_state=2)[1]
    assert _triples(a) != _triples(b)


def test_string_ids_and_float32_values_are_kept():
    users, items, values, _ = _coo(1, string_ids=True)
    full = Ratings.from_arrays(users, items, values, dtype=np.float32)
    train, test = random_split(full, 0.25, random_state=0)
    assert train.values.dtype == test.values.dtype == np.float32
    assert test.user_ids.dtype.kind == "U"
    _check_pair(full, train, test)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, "0.2", True])
def test_bad_test_fraction(fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        random_split(_coo(0), fraction)


def test_bad_input_type():
    with pytest.raises(TypeError, match=r"ratings must be a fastcofi.Ratings or a tuple"):
        random_split(np.zeros((3, 3)))
    with pytest.raises(TypeError, match="of length 2"):
        random_split(([1], [2]))


def test_tuple_with_duplicated_pairs_is_rejected():
    with pytest.raises(ValueError, match="duplicated rating"):
        random_split(([1, 1, 2], [1, 1, 2], [3.0, 4.0, 5.0]), 0.5)


# -- k-fold ----------------------------------------------------------------------------------
@given(
    seed=st.integers(0, 2**32 - 1),
    n_splits=st.integers(2, 6),
    shuffle=st.booleans(),
    compat=st.sampled_from([None, "surprise"]),
)
def test_kfold_tests_every_rating_exactly_once(seed, n_splits, shuffle, compat):
    data = _coo(seed, 6, 5)
    full = Ratings.from_arrays(*data[:3], timestamps=data[3])
    folds = list(kfold(data, n_splits, shuffle=shuffle, random_state=seed, compat=compat))
    assert len(folds) == n_splits
    tested = []
    sizes = []
    for train, test in folds:
        _check_pair(full, train, test)
        tested += _triples(test)
        sizes.append(test.nnz)
    assert sorted(tested) == _triples(full)
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    again = [_triples(t) for _, t in kfold(data, n_splits, shuffle, seed, compat=compat)]
    assert again == [_triples(t) for _, t in folds]


def test_kfold_without_shuffle_takes_consecutive_blocks():
    users = np.arange(7)
    folds = list(kfold((users, users, np.ones(7)), 3, shuffle=False))
    assert [sorted(test.user_ids.tolist()) for _, test in folds] == [[0, 1, 2], [3, 4], [5, 6]]


def test_kfold_surprise_compat_matches_surprise_algorithm():
    # Surprise's KFold: RandomState(seed).shuffle(arange(n)), then n // k per fold, one more
    # for the first n % k folds.
    n = 23
    users = np.arange(n)
    data = (users, np.zeros(n, dtype=np.int64), np.ones(n))
    indices = np.arange(n)
    np.random.RandomState(0).shuffle(indices)
    expected, stop = [], 0
    for fold in range(5):
        start, stop = stop, stop + n // 5 + (1 if fold < n % 5 else 0)
        expected.append(sorted(indices[start:stop].tolist()))
    folds = kfold(data, 5, random_state=0, compat="surprise")
    got = [sorted(t.user_ids.tolist()) for _, t in folds]
    assert got == expected


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_splits": 1}, "n_splits must be an integer >= 2"),
        ({"n_splits": 1000}, "n_splits must be at most the number of ratings"),
        ({"compat": "sklearn"}, "compat must be one of"),
        (
            {"compat": "surprise", "random_state": np.random.default_rng(0)},
            "numpy.random.Generator",
        ),
    ],
)
def test_kfold_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        next(kfold(_coo(0), **kwargs))


# -- leave-k-out -----------------------------------------------------------------------------
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 3), by=st.sampled_from(["random", "time"]))
def test_leave_k_out_holds_out_k_per_user(seed, k, by):
    data = _coo(seed, 10, 8)
    full = Ratings.from_arrays(*data[:3], timestamps=data[3])
    counts = dict(zip(*np.unique(data[0], return_counts=True)))
    if max(counts.values()) <= k:
        with pytest.raises(ValueError, match="no user has more than"):
            leave_k_out(data, k, random_state=seed, by=by)
        return
    train, test = leave_k_out(data, k, random_state=seed, by=by)
    _check_pair(full, train, test)
    test_counts = dict(zip(*np.unique(test.user_ids[test.coo()[0]], return_counts=True)))
    for user, count in counts.items():
        assert test_counts.get(user, 0) == (k if count > k else 0)
    if by == "time":
        # every held-out rating is at least as late as every kept rating of the same user
        for user in test_counts:
            kept = [t for u, _, _, t in _triples(train) if u == user]
            held = [t for u, _, _, t in _triples(test) if u == user]
            assert min(held) >= max(kept)
    again = leave_k_out(data, k, random_state=seed, by=by)[1]
    assert _triples(again) == _triples(test)


def test_leave_k_out_by_time_breaks_ties_by_later_row():
    data = (["a", "a", "a"], [1, 2, 3], [1.0, 2.0, 3.0], [5, 7, 7])
    _, test = leave_k_out(data, 1, by="time")
    assert test.item_ids.tolist() == [3]


def test_leave_k_out_errors():
    with pytest.raises(ValueError, match="needs timestamps"):
        leave_k_out(_coo(0)[:3], 1, by="time")
    with pytest.raises(ValueError, match="by must be one of"):
        leave_k_out(_coo(0), 1, by="last")
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        leave_k_out(_coo(0), 0)


# -- temporal --------------------------------------------------------------------------------
@given(seed=st.integers(0, 2**32 - 1))
def test_temporal_split_puts_the_latest_ratings_in_test(seed):
    data = _coo(seed)
    full = Ratings.from_arrays(*data[:3], timestamps=data[3])
    train, test = temporal_split(full, 0.3)
    assert test.nnz == int(full.nnz * 0.3)
    _check_pair(full, train, test)
    assert test.timestamps.min() >= train.timestamps.max()


def test_temporal_split_ties_at_the_cut_follow_row_order():
    data = ([1, 2, 3, 4], [1, 1, 1, 1], [1.0, 2.0, 3.0, 4.0], [0, 9, 9, 1])
    train, test = temporal_split(data, 0.25)
    assert test.user_ids.tolist() == [3]


def test_temporal_split_needs_timestamps():
    with pytest.raises(ValueError, match="temporal_split needs timestamps"):
        temporal_split(Ratings.from_arrays([1, 2], [1, 2], [3.0, 4.0]))


# -- real data -------------------------------------------------------------------------------
@pytest.mark.realdata
def test_protocol_b_reproduces_the_benchmark_split(ml100k):
    users, items, values, ts = np.loadtxt(ml100k / "u.data", dtype=np.int64, unpack=True)
    n = users.shape[0]
    _, test_rows = random_split_indices(n, 0.2, random_state=42)
    digest = hashlib.sha256(np.sort(test_rows).astype("<i8").tobytes()).hexdigest()
    assert digest.startswith("dfd227a6bd538e26")
    train, test = random_split((users, items, values, ts), 0.2, random_state=42)
    assert (train.nnz, test.nnz) == (n - int(n * 0.2), int(n * 0.2))
    assert (train.n_users, train.n_items) == (943, 1682)
    # spot-check: the test set is exactly the protocol's rows
    expected = Ratings.from_arrays(users[test_rows], items[test_rows], values[test_rows])
    assert np.array_equal(test.coo()[2], expected.coo()[2])
    np.testing.assert_array_equal(test.item_ids, expected.item_ids)


@pytest.mark.realdata
@pytest.mark.parametrize(
    "which, n_folds, sizes", [("u", 5, (80000, 20000)), ("ua", 1, (90570, 9430))]
)
def test_official_folds(ml100k, which, n_folds, sizes):
    folds = official_folds(ml100k, which)
    assert len(folds) == n_folds
    for train, test in folds:
        assert (train.nnz, test.nnz) == sizes
        assert train.timestamps is not None and test.timestamps is not None
    if which == "u":
        # protocol A: some test items are missing from their base file
        train, test = folds[0]
        assert 22 <= np.setdiff1d(test.item_ids, train.item_ids).shape[0] <= 34


def test_official_folds_errors(tmp_path):
    with pytest.raises(ValueError, match="which must be one of"):
        official_folds(tmp_path, "u6")
    with pytest.raises(FileNotFoundError, match="u1.base"):
        official_folds(tmp_path)
