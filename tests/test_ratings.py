import numba as nb
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

from fastcofi import Ratings
from fastcofi._parallel import threads
from fastcofi.data.ids import lookup, unique_ids
from fastcofi.kernels.sparse import (
    _SORT_MIN_PER_THREAD,
    _row_major_order,
    _sort_parts,
    _transpose_csr,
    row_major_order,
    transpose_csr,
)

from .strategies import sparse_problems


def _dense_of(ratings):
    dense = np.zeros((ratings.n_items, ratings.n_users))
    users, items, values = ratings.coo()
    dense[items, users] = values
    return dense


def test_from_arrays_maps_string_ids_in_sorted_order():
    r = Ratings.from_arrays(["bob", "amy", "bob"], ["z", "x", "x"], [1.0, 2.0, 3.0])
    assert list(r.user_ids) == ["amy", "bob"]
    assert list(r.item_ids) == ["x", "z"]
    assert (r.n_users, r.n_items, r.nnz) == (2, 2, 3)
    np.testing.assert_array_equal(_dense_of(r), [[2.0, 3.0], [0.0, 1.0]])


def test_by_item_and_by_user_csr_agree_and_are_sorted():
    rng = np.random.default_rng(0)
    flat = rng.choice(50 * 40, size=400, replace=False)
    r = Ratings.from_arrays(flat % 40, flat // 40, rng.normal(size=400))
    ip, iu, iv = r.by_item
    up, ui, uv = r.by_user
    assert ip.dtype == np.int64 and iu.dtype == np.int32 and iv.dtype == np.float64
    assert ip[-1] == up[-1] == 400
    by_item = {(i, int(iu[p])): iv[p] for i in range(r.n_items) for p in range(ip[i], ip[i + 1])}
    by_user = {(int(ui[p]), j): uv[p] for j in range(r.n_users) for p in range(up[j], up[j + 1])}
    assert by_item == by_user
    for i in range(r.n_items):
        assert np.all(np.diff(iu[ip[i] : ip[i + 1]]) > 0)
    np.testing.assert_array_equal(r.values, iv)


def test_declared_ids_get_empty_rows():
    r = Ratings.from_arrays([1], [10], [4.0], all_users=[3, 1, 2], all_items=[10, 20])
    assert list(r.user_ids) == [1, 2, 3] and list(r.item_ids) == [10, 20]
    np.testing.assert_array_equal(np.diff(r.by_user[0]), [1, 0, 0])
    np.testing.assert_array_equal(np.diff(r.by_item[0]), [1, 0])


def test_rated_id_missing_from_declared_ids_is_an_error():
    with pytest.raises(ValueError, match="user id 7 has a rating but is not in all_users"):
        Ratings.from_arrays([7], [1], [4.0], all_users=[1, 2])


@given(
    declared=st.lists(st.integers(-30, 30), min_size=1, max_size=20, unique=True),
    rated=st.lists(st.integers(-40, 40), min_size=1, max_size=30),
    unsigned=st.booleans(),
)
def test_declared_integer_ids_index_like_a_sorted_search(declared, rated, unsigned):
    """The table lookup of declared integer ids against numpy's sorted search, misses included
    (below, inside and above the declared range)."""
    if unsigned:
        declared = [v + 40 for v in declared]
        rated = [v + 40 for v in rated]
    dtype = np.uint32 if unsigned else np.int64
    rated = np.array(rated, dtype=dtype)
    uniq = np.unique(np.array(declared, dtype=dtype))
    position = np.searchsorted(uniq, rated)
    hit = (position < uniq.size) & (uniq[np.minimum(position, uniq.size - 1)] == rated)
    users = np.asarray(rated)
    items = np.arange(rated.size)
    if hit.all():
        r = Ratings.from_arrays(users, items, np.ones(rated.size), all_users=uniq,
                                duplicates="last")
        u, i, _ = r.coo()
        np.testing.assert_array_equal(r.user_ids[u], users[np.argsort(items)][i])
        assert r.n_users == uniq.size
    else:
        first = rated[np.flatnonzero(~hit)[0]]
        with pytest.raises(ValueError, match=f"user id {first} has a rating but is not in"):
            Ratings.from_arrays(users, items, np.ones(rated.size), all_users=uniq)


def test_duplicates_error_names_first_pair_and_rows():
    with pytest.raises(ValueError, match=r"user 'u' and item 2 \(input rows 1 and 3\)"):
        Ratings.from_arrays(["u", "u", "v", "u", "v"], [1, 2, 1, 2, 1], [1, 2, 3, 4, 5])


def test_duplicates_last_and_mean():
    args = (["u", "u", "v", "u"], [1, 2, 1, 2], [1.0, 2.0, 3.0, 5.0])
    last = Ratings.from_arrays(*args, duplicates="last", timestamps=[10, 20, 30, 40])
    mean = Ratings.from_arrays(*args, duplicates="mean")
    assert last.nnz == mean.nnz == 3
    np.testing.assert_array_equal(_dense_of(last), [[1.0, 3.0], [5.0, 0.0]])
    np.testing.assert_array_equal(_dense_of(mean), [[1.0, 3.0], [3.5, 0.0]])
    np.testing.assert_array_equal(last.timestamps, [10, 30, 40])


@pytest.mark.parametrize(
    "users, items, values, match",
    [
        ([1, 2], [1], [1.0, 2.0], "same length"),
        ([], [], [], "no ratings"),
        ([1, 2], [1, 2], [1.0, np.nan], r"finite; found nan at position 1 \(user 2, item 2\)"),
        ([1, 2], [1, 2], [1.0, np.inf], "finite"),
        ([1, 2], [1, 2], ["a", "b"], "numbers"),
        ([1, "a"], [1, 2], [1.0, 2.0], "one kind"),
        ([1.5, 2], [1, 2], [1.0, 2.0], "float 1.5"),
        ([[1, 2]], [[1, 2]], [[1.0, 2.0]], "1-dimensional"),
    ],
)
def test_bad_input_raises_clear_value_error(users, items, values, match):
    with pytest.raises(ValueError, match=match):
        Ratings.from_arrays(users, items, values)


def test_bad_duplicates_policy_and_dtype():
    with pytest.raises(ValueError, match="duplicates must be one of"):
        Ratings.from_arrays([1], [1], [1.0], duplicates="first")
    with pytest.raises(ValueError, match="float64 or float32"):
        Ratings.from_arrays([1], [1], [1.0], dtype=np.int32)


def test_float32_storage():
    r = Ratings.from_arrays([1, 2], [1, 1], [1.5, 2.5], dtype=np.float32)
    assert r.values.dtype == np.float32 and r.by_user[2].dtype == np.float32


def test_immutable():
    r = Ratings.from_arrays([1, 2], [1, 1], [1.5, 2.5])
    with pytest.raises(ValueError):
        r.values[0] = 3.0
    with pytest.raises(ValueError):
        r.by_user[1][0] = 3
    with pytest.raises(AttributeError):
        r.nnz = 3
    with pytest.raises(TypeError):
        Ratings()


def test_from_dense_zero_means_unrated_unless_mask_given():
    matrix = np.array([[5.0, 0.0], [0.0, 3.0], [0.0, 0.0]])
    r = Ratings.from_dense(matrix)
    assert (r.n_items, r.n_users, r.nnz) == (3, 2, 2)
    rated = np.array([[True, True], [False, True], [False, False]])
    r0 = Ratings.from_dense(matrix, rated, user_ids=["a", "b"], item_ids=[7, 8, 9])
    assert r0.nnz == 3 and list(r0.user_ids) == ["a", "b"]
    np.testing.assert_array_equal(_dense_of(r0), matrix)
    with pytest.raises(ValueError, match="shape"):
        Ratings.from_dense(matrix, rated[:2])


def test_from_dense_nan_in_unrated_entries_is_fine_with_a_mask():
    matrix = np.array([[np.nan, 2.0]])
    r = Ratings.from_dense(matrix, ~np.isnan(matrix))
    assert r.nnz == 1
    with pytest.raises(ValueError, match="finite"):
        Ratings.from_dense(matrix)


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "lil"])
def test_from_scipy_keeps_explicit_zeros(fmt):
    coo = sp.coo_matrix(([0.0, 4.0, 2.0], ([0, 1, 2], [1, 0, 1])), shape=(4, 3))
    r = Ratings.from_scipy(coo.asformat(fmt) if fmt != "lil" else coo.tolil())
    assert (r.n_items, r.n_users) == (4, 3)
    if fmt != "lil":  # lil drops explicit zeros on conversion
        assert r.nnz == 3
    np.testing.assert_array_equal(_dense_of(r), coo.toarray())


def test_from_scipy_array_and_errors():
    arr = sp.csr_array(np.array([[1.0, 0.0], [0.0, 2.0]]))
    assert Ratings.from_scipy(arr).nnz == 2
    with pytest.raises(ValueError, match="scipy sparse"):
        Ratings.from_scipy(np.eye(2))


@given(
    st.lists(st.tuples(st.integers(-5, 5), st.text("abc", min_size=1, max_size=2),
                       st.floats(-10, 10)), min_size=1, max_size=40)
)
def test_round_trip_against_dict(triples):
    """Every policy agrees with a plain-dict model of what it should keep."""
    users, items, values = zip(*triples)
    last = {}
    groups = {}
    for u, i, v in triples:
        last[(u, i)] = v
        groups.setdefault((u, i), []).append(v)
    for policy, expected in [("last", last), ("mean", {k: np.mean(v) for k, v in groups.items()})]:
        r = Ratings.from_arrays(users, items, values, duplicates=policy)
        u, i, v = r.coo()
        got = {(int(r.user_ids[a]), str(r.item_ids[b])): c for a, b, c in zip(u, i, v)}
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12)
    if len(groups) < len(triples):
        with pytest.raises(ValueError, match="duplicated rating"):
            Ratings.from_arrays(users, items, values)


def test_lookup_matches_types_and_marks_unknown():
    ids = np.array([3, 10, 42])
    index, known = lookup(ids, ["42", 3, "x", 7, 10.0, "10.5"])
    np.testing.assert_array_equal(index, [2, 0, -1, -1, 1, -1])
    np.testing.assert_array_equal(known, [True, True, False, False, True, False])
    index, known = lookup(np.array(["a", "b"]), np.array(["b", "c"]))
    np.testing.assert_array_equal(index, [1, -1])


def test_save_and_load_round_trip(tmp_path):
    r = Ratings.from_arrays(["b", "a", "b"], [3, 1, 1], [1.0, 2.0, 3.5], timestamps=[5, 6, 7],
                            all_items=[1, 2, 3])
    r.save(tmp_path / "r")
    for mmap in (True, False):
        back = Ratings.load(tmp_path / "r", mmap=mmap)
        assert (back.n_users, back.n_items, back.nnz) == (2, 3, 3)
        np.testing.assert_array_equal(back.user_ids, r.user_ids)
        for a, b in zip(back.by_item + back.by_user, r.by_item + r.by_user):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(back.timestamps, r.timestamps)
        with pytest.raises(ValueError):
            back.values[0] = 1.0
    r2 = Ratings.from_arrays([1], [1], [4.0])
    r2.save(tmp_path / "r")  # replaces the folder
    assert Ratings.load(tmp_path / "r").nnz == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # no temporary folders left


def test_load_rejects_foreign_and_corrupt_folders(tmp_path):
    with pytest.raises(ValueError, match="no header.json"):
        Ratings.load(tmp_path)
    r = Ratings.from_arrays([1, 2], [1, 2], [4.0, 5.0])
    r.save(tmp_path / "r")
    np.save(tmp_path / "r" / "item_users.npy", np.array([0, 7], dtype=np.int32))
    with pytest.raises(ValueError, match="out of range"):
        Ratings.load(tmp_path / "r")
    (tmp_path / "r" / "header.json").write_text('{"format": "fastcofi-ratings", "version": 9}')
    with pytest.raises(ValueError, match="version 9"):
        Ratings.load(tmp_path / "r")
    r.save(tmp_path / "p")
    np.save(tmp_path / "p" / "user_ids.npy", np.array([1, "x"], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="user_ids.npy: cannot be read"):
        Ratings.load(tmp_path / "p")


def _header(folder, **changes):
    import json

    header = json.loads((folder / "header.json").read_text())
    (folder / "header.json").write_text(json.dumps({**header, **changes}))


CORRUPTIONS = {
    "missing array": (lambda f: (f / "item_values.npy").unlink(),
                      r"item_values\.npy: cannot be read as an array \(\[Errno 2\] No such file"),
    "truncated array": (lambda f: (f / "item_values.npy").write_bytes(
        (f / "item_values.npy").read_bytes()[:90]),
                        r"item_values\.npy: cannot be read as an array \(EOF"),
    "not an array": (lambda f: (f / "user_indptr.npy").write_text("0,1,3"),
                     r"user_indptr\.npy: not a \.npy array file$"),
    "binary header": (lambda f: (f / "header.json").write_bytes(b"\xff\xfe\x00"),
                      r"header\.json: invalid JSON header \('utf-8' codec"),
    "header not an object": (lambda f: (f / "header.json").write_text("[1, 2]"),
                             r"header\.json: not a fastcofi ratings header$"),
    "count not an integer": (lambda f: _header(f, n_users=None),
                             r"header\.json: n_users, n_items and nnz must be integers >= 0, "
                             r"found n_users=None, n_items=3, nnz=3$"),
    "wrong count": (lambda f: _header(f, nnz=5),
                    r"r: corrupt ratings folder: item_indptr is not a valid CSR index; the by-item "
                    r"indices should be 5 integers;"),
    "array not listed": (lambda f: _header(f, arrays=["user_ids", "item_ids"]),
                         r"corrupt ratings folder: the by-item CSR is incomplete; the by-user CSR "
                         r"is incomplete$"),
    "integer values": (lambda f: np.save(f / "item_values.npy", np.array([1, 2, 3])),
                       r"corrupt ratings folder: the by-item values should be 3 floats$"),
    "unsorted ids": (lambda f: np.save(f / "user_ids.npy", np.array(["b", "a"])),
                     r"corrupt ratings folder: user_ids are not sorted ascending without "
                     r"repeats$"),
    "decreasing indptr": (lambda f: np.save(f / "item_indptr.npy", np.array([0, 3, 1, 3])),
                          r"corrupt ratings folder: item_indptr is not a valid CSR index$"),
}


@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_load_names_what_is_corrupt(tmp_path, corruption, mmap):
    damage, message = CORRUPTIONS[corruption]
    Ratings.from_arrays(["b", "a", "b"], [3, 1, 1], [1.0, 2.0, 3.5], all_items=[1, 2, 3]).save(
        tmp_path / "r")
    damage(tmp_path / "r")
    with pytest.raises(ValueError, match=message) as error:
        Ratings.load(tmp_path / "r", mmap=mmap)
    assert str(error.value).startswith(str(tmp_path / "r"))
    assert "\n" not in str(error.value)


# -- construction kernels ------------------------------------------------------------------
INT_DTYPES = [np.dtype(t) for t in (np.int8, np.uint8, np.int16, np.uint16, np.int32,
                                     np.uint32, np.int64, np.uint64, ">i8", ">u4")]


def _check_unique_ids(ids):
    uniq, index = unique_ids(ids)
    expected, inverse = np.unique(ids, return_inverse=True)
    assert uniq.dtype == ids.dtype.newbyteorder("=")
    np.testing.assert_array_equal(uniq, expected)
    np.testing.assert_array_equal(index, inverse.reshape(-1))


@given(st.sampled_from(INT_DTYPES), st.data())
def test_unique_ids_equal_numpy_unique(dtype, data):
    info = np.iinfo(dtype)
    # ids near both ends of the dtype, so that offsets from the minimum use its whole range
    lo = data.draw(st.sampled_from([int(info.min), 0, int(info.max) - 300]))
    values = data.draw(st.lists(st.integers(max(lo, int(info.min)), min(lo + 300, int(info.max))),
                                min_size=1, max_size=60))
    _check_unique_ids(np.array(values, dtype=dtype))


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_unique_ids_span_nearly_the_whole_dtype(dtype):
    # Offsets in the dtype of the ids wrapped (int8: 100 - (-128) = -28), and a span short of
    # the whole dtype kept the wrapped offset from landing back on the right slot.
    info = np.iinfo(dtype)
    _check_unique_ids(np.array([info.max - 27, info.min, 0, info.min + 1, info.max - 27],
                               dtype=dtype))
    _check_unique_ids(np.array([info.max, info.min, 0], dtype=dtype))


def test_big_endian_ids_build_the_same_ratings():
    native = Ratings.from_arrays([5, 3, 5], [7, 7, 9], [1.0, 2.0, 3.0])
    swapped = Ratings.from_arrays(np.array([5, 3, 5], dtype=">i8"),
                                  np.array([7, 7, 9], dtype=">i4"), [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(swapped.user_ids, native.user_ids)
    np.testing.assert_array_equal(swapped.item_ids, native.item_ids)
    for a, b in zip(swapped.coo(), native.coo()):
        np.testing.assert_array_equal(a, b)


def _transpose(matrix, with_extra, n_parts=None):
    """transpose_csr (or, given ``n_parts``, its kernel cut into that many parts) against scipy."""
    csr = sp.csr_array(matrix)
    n_cols = csr.shape[1]
    out_indices = np.empty(csr.nnz, dtype=np.int32)
    out_values = np.empty(csr.nnz)
    extra = np.arange(csr.nnz, dtype=np.int64) * 7 if with_extra else None
    out_extra = np.empty(csr.nnz, dtype=np.int64) if with_extra else None
    args = (csr.indptr.astype(np.int64), csr.indices.astype(np.int32), csr.data, n_cols,
            out_indices, out_values, extra, out_extra)
    indptr = (transpose_csr(*args) if n_parts is None
              else _transpose_csr(*args, n_parts))
    expected = sp.csr_array(csr.T)
    expected.has_sorted_indices = False
    expected.sort_indices()
    np.testing.assert_array_equal(indptr, expected.indptr)
    np.testing.assert_array_equal(out_indices, expected.indices)
    np.testing.assert_array_equal(out_values, expected.data)
    if with_extra:
        # extra rides with the values: the value stored at position p carries extra[p]
        position = np.empty(csr.nnz, dtype=np.int64)
        position[np.lexsort((np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr)),
                             csr.indices))] = np.arange(csr.nnz)
        np.testing.assert_array_equal(out_extra[position], extra)
    return indptr, out_indices, out_values


@given(st.integers(1, 12), st.integers(1, 12), st.floats(0.0, 1.0), st.booleans(),
       st.integers(0, 2**32 - 1))
def test_transpose_csr_equals_scipy(n_rows, n_cols, density, with_extra, seed):
    rng = np.random.default_rng(seed)
    matrix = (rng.random((n_rows, n_cols)) < density) * rng.normal(size=(n_rows, n_cols))
    _transpose(matrix, with_extra)


def test_transpose_csr_in_parallel_equals_one_thread():
    # Enough entries that each of two threads takes a run of rows of its own.
    assert 400 * 500 * 0.8 > 2 * _SORT_MIN_PER_THREAD
    rng = np.random.default_rng(0)
    matrix = (rng.random((400, 500)) < 0.8) * rng.normal(size=(400, 500))
    with threads(1):
        one = _transpose(matrix, True)
    with threads(2):
        two = _transpose(matrix, True)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


def test_sort_threads_keep_key_counts_under_4_bytes_per_entry(monkeypatch):
    monkeypatch.setattr(nb, "get_num_threads", lambda: 8)
    assert _sort_parts(10**6, 100) == 8
    assert _sort_parts(10**6, 10**6) == 1  # 2 x 8 MB of counts for 8 MB of entries
    assert _sort_parts(10**6, 10**5) == 5  # 5 x 0.8 MB of counts: 4 MB
    assert _sort_parts(100, 10) == 1  # too few entries to split


def _awkward_csrs():
    """CSRs with empty, leading-empty and trailing-empty rows, no entries, or no columns."""
    rng = np.random.default_rng(7)
    yield sp.csr_array((0, 5))
    yield sp.csr_array((6, 0))
    yield sp.csr_array((6, 5))
    for shape, density in [((1, 9), 1.0), ((9, 1), 0.5), ((30, 12), 0.3), ((25, 40), 0.05)]:
        matrix = (rng.random(shape) < density) * rng.normal(size=shape)
        matrix[:2] = 0  # leading empty rows
        matrix[-3:] = 0  # trailing empty rows
        if shape[0] > 10:
            matrix[shape[0] // 2] = 0
        yield sp.csr_array(matrix)


@pytest.mark.parametrize("n_parts", [1, 2, 3, 5, 8, 13, 25])
def test_parallel_sorts_hold_for_any_number_of_parts(n_parts):
    # More parts than rows or entries leaves some parts empty; each must still write nothing
    # twice and miss nothing.
    for csr in _awkward_csrs():
        csr.sort_indices()
        _transpose(csr, True, n_parts)

        # row_major_order sees the same entries as unordered (row, column) pairs
        n_rows = csr.shape[0]
        indices = csr.indices.astype(np.int32)
        rows = np.repeat(np.arange(n_rows, dtype=np.int32), np.diff(csr.indptr))
        shuffle = np.random.default_rng(n_parts).permutation(csr.nnz)
        order, row_indptr = _row_major_order(rows[shuffle], indices[shuffle], n_rows,
                                                      n_parts)
        np.testing.assert_array_equal(order, np.lexsort((indices[shuffle], rows[shuffle])))
        np.testing.assert_array_equal(row_indptr, csr.indptr)


@pytest.mark.parametrize("n", [50, 3 * _SORT_MIN_PER_THREAD])
def test_row_major_order_equals_a_stable_lexsort_on_any_thread_count(n):
    rng = np.random.default_rng(n)
    rows = rng.integers(0, 300, n).astype(np.int32)
    cols = rng.integers(0, 40, n).astype(np.int32)  # repeated pairs keep their input order
    expected = np.lexsort((cols, rows))
    for n_threads in (1, 2):
        with threads(n_threads):
            order, indptr = row_major_order(rows, cols, 300)
        np.testing.assert_array_equal(order, expected)
        np.testing.assert_array_equal(indptr, np.r_[0, np.cumsum(np.bincount(rows, minlength=300))])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_value_moments_match_numpy_in_chunks(dtype):
    from fastcofi.data.ratings import value_moments

    values = (np.random.default_rng(0).integers(1, 6, size=1001) * 0.5 + 100).astype(dtype)
    mean, variance = value_moments(values, chunk=64)
    assert mean == pytest.approx(np.mean(values, dtype=np.float64), rel=1e-12)
    assert variance == pytest.approx(np.var(values.astype(np.float64)), rel=1e-10)
    assert value_moments(np.array([]), chunk=8) == (0.0, 0.0)
    assert value_moments(np.full(5, 3.0))[1] == 0.0


@given(sparse_problems())
def test_from_arrays_stores_the_resolved_ratings(problem):
    """Repeated pairs resolved by each duplicates policy, float32 or float64 storage, int or
    string ids: the stored ratings are the strategy's dense reference, in both CSRs."""
    ratings, dense, mask, _, _, _ = problem
    users, items, values = ratings.coo()
    assert np.array_equal(np.sort(items * ratings.n_users + users),
                          np.flatnonzero(mask.reshape(-1)))
    # Within a few float64 ulps: a "mean" group's sum may be added in another order than the
    # reference's (numpy's reduceat against bincount: 2.8710234077911694 against ...169 seen).
    np.testing.assert_allclose(values, dense[items, users], rtol=4 * np.finfo(float).eps, atol=0)
    indptr, cols, by_user = ratings.by_user
    rows = np.repeat(np.arange(ratings.n_users), np.diff(indptr))
    assert by_user.dtype == values.dtype
    np.testing.assert_allclose(by_user, dense[cols, rows], rtol=4 * np.finfo(float).eps, atol=0)
    assert np.all(mask[cols, rows]) and cols.shape[0] == mask.sum()
