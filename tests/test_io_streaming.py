"""Block-by-block reading: results equal one whole-file read, errors keep their lines."""

import gc
import gzip
import threading
import time

import numpy as np
import pytest

from fastcofi import Ratings
from fastcofi.data import _arrow, _text, read
from fastcofi.data._source import RatingsFileError
from fastcofi.data.read import read_ratings
from fastcofi.kernels.parse import BY_USER, BY_USER_THEN_ITEM, UNORDERED, user_order

from .conftest import HAVE_ARROW, write


def shrink_blocks(patch):
    """Blocks of a few lines each, so that every file spans many blocks."""
    patch.setattr(_text, "_BLOCK_BYTES", 64)
    patch.setattr(_arrow, "_BLOCK_BYTES", 64)
    patch.setattr(_arrow, "_PARQUET_BATCH_ROWS", 7)


@pytest.fixture
def tiny_blocks(monkeypatch):
    shrink_blocks(monkeypatch)


def movielens_lines(n=600, seed=0, user_offset=0):
    rng = np.random.default_rng(seed)
    keys = rng.choice(90 * 70, size=n, replace=False)
    lines = [f"{k // 70 + 1 + user_offset},{k % 70 * 3 + 1},{rng.integers(1, 11) / 2:g},"
             f"{rng.integers(8e8, 1.6e9)}" for k in keys]
    return lines


def ratings_csv(lines):
    return ("userId,movieId,rating,timestamp\n" + "\n".join(lines) + "\n").encode()


def assert_same(a, b):
    assert (a.n_users, a.n_items, a.nnz) == (b.n_users, b.n_items, b.nnz)
    for x, y in ((a.user_ids, b.user_ids), (a.item_ids, b.item_ids), (a.timestamps, b.timestamps),
                 *zip(a.by_item, b.by_item), *zip(a.by_user, b.by_user)):
        if x is None or y is None:
            assert x is None and y is None
            continue
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


def read_both(monkeypatch, path, **kwargs):
    """(whole-file read, read in blocks of 64 bytes)."""
    whole = read_ratings(path, **kwargs)
    with monkeypatch.context() as m:
        shrink_blocks(m)
        blocks = read_ratings(path, **kwargs)
    return whole, blocks


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_blocks_equal_one_whole_read(tmp_path, monkeypatch, engine, dtype):
    path = write(tmp_path, "ratings.csv", ratings_csv(movielens_lines()))
    whole, blocks = read_both(monkeypatch, path, engine=engine, dtype=dtype)
    assert_same(whole, blocks)
    assert whole.values.dtype == dtype and whole.user_ids.dtype == np.int64
    assert whole.timestamps.dtype == np.int64


def test_engines_agree_in_blocks(tmp_path, tiny_blocks):
    pytest.importorskip("pyarrow")
    path = write(tmp_path, "ratings.csv", ratings_csv(movielens_lines(seed=1)))
    assert_same(read_ratings(path, engine="builtin"), read_ratings(path, engine="pyarrow"))


def test_string_ids_across_blocks(tmp_path, monkeypatch, engine):
    rng = np.random.default_rng(2)
    names = [f"user-{k:03d}-ü" for k in range(40)]
    keys = rng.choice(40 * 30, size=400, replace=False)
    body = "\n".join(f"{names[k // 30]},m{k % 30},{rng.integers(1, 6)}" for k in keys)
    path = write(tmp_path, "r.csv", ("user,item,rating\n" + body + "\n").encode())
    whole, blocks = read_both(monkeypatch, path, engine=engine)
    assert_same(whole, blocks)
    assert whole.user_ids.tolist() == sorted({names[k // 30] for k in keys})


def test_ids_become_strings_in_a_later_block(tmp_path, tiny_blocks, engine):
    lines = movielens_lines(200, seed=3) + ["abc,5,3.5,100"]
    path = write(tmp_path, "ratings.csv", ratings_csv(lines))
    r = read_ratings(path, engine=engine)
    assert r.user_ids.dtype.kind == "U" and "abc" in r.user_ids.tolist() and r.nnz == 201
    if HAVE_ARROW:
        assert_same(r, read_ratings(path, engine="builtin"))


def test_ids_past_int32_in_a_later_block(tmp_path, monkeypatch, engine):
    lines = movielens_lines(200, seed=4) + [f"{2**40},{-(2**35)},4,7"]
    path = write(tmp_path, "ratings.csv", ratings_csv(lines))
    whole, blocks = read_both(monkeypatch, path, engine=engine)
    assert_same(whole, blocks)
    assert whole.user_ids[-1] == 2**40 and whole.item_ids[0] == -(2**35)


def test_compressed_and_blank_lines_in_blocks(tmp_path, monkeypatch, engine):
    lines = movielens_lines(300, seed=5)
    data = ratings_csv(lines[:150] + [""] * 80 + lines[150:])
    plain = read_ratings(write(tmp_path, "ratings.csv", ratings_csv(lines)), engine=engine)
    gz = write(tmp_path, "ratings.csv.gz", gzip.compress(data))
    for r in read_both(monkeypatch, gz, engine=engine):
        assert_same(plain, r)


def test_a_line_longer_than_a_block(tmp_path, tiny_blocks, engine):
    lines = movielens_lines(50, seed=6)
    user, item, rating, stamp = lines[20].split(",")
    lines[20] = ",".join([user, item, f"{float(rating):.300f}", stamp])
    long = read_ratings(write(tmp_path, "ratings.csv", ratings_csv(lines)), engine=engine)
    lines[20] = f"{user},{item},{rating},{stamp}"
    assert_same(long, read_ratings(write(tmp_path, "short.csv", ratings_csv(lines)),
                                   engine=engine))


def test_parquet_in_batches(tmp_path, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rng = np.random.default_rng(7)
    keys = rng.choice(50 * 40, size=300, replace=False)
    table = pa.table({"userId": keys // 40, "movieId": (keys % 40).astype(np.int32),
                      "rating": rng.integers(1, 11, 300) / 2, "timestamp": rng.integers(0, 9, 300)})
    path = tmp_path / "r.parquet"
    pq.write_table(table, path, row_group_size=50)
    whole, blocks = read_both(monkeypatch, path, dtype=np.float32)
    assert_same(whole, blocks)
    assert whole.nnz == 300


# -- errors past the first block keep their file line numbers -----------------------------------
def bad(path, engine, match):
    with pytest.raises(RatingsFileError, match=match) as info:
        read_ratings(path, engine=engine)
    assert str(path) in str(info.value)
    return info.value


@pytest.mark.parametrize("line", [2, 57, 401])
def test_bad_rating_line_numbers_across_blocks(tmp_path, tiny_blocks, engine, line):
    lines = movielens_lines(400, seed=8)
    lines.insert(line - 2, "3,4,four,5")  # file line `line` (the header is line 1)
    err = bad(write(tmp_path, "ratings.csv", ratings_csv(lines)), engine, "expected a number")
    assert (err.line, err.column) == (line, 5)


def test_ragged_line_and_blank_lines_across_blocks(tmp_path, tiny_blocks, engine):
    lines = movielens_lines(300, seed=9)
    lines[100:100] = [""] * 30
    lines.insert(250, "3,4")  # file line 252
    err = bad(write(tmp_path, "ratings.csv", ratings_csv(lines)), engine, "expected 4")
    assert err.line == 252


def test_nonfinite_and_bad_utf8_across_blocks(tmp_path, tiny_blocks, engine):
    lines = movielens_lines(300, seed=10)
    lines.insert(200, "3,4,nan,5")
    assert bad(write(tmp_path, "ratings.csv", ratings_csv(lines)), engine, "finite").line == 202
    data = ratings_csv(movielens_lines(300, seed=10)) + b"\xff\xfe,4,3,5\n"
    err = bad(write(tmp_path, "ratings.csv", data), engine, "invalid UTF-8")
    assert (err.line, err.column) == (302, 1)


def parse_workers():
    return [t for t in threading.enumerate() if t.name.startswith(_arrow._CSV_THREAD_PREFIX)]


def test_refused_read_ends_its_parse_workers_without_the_gc(tmp_path, tiny_blocks):
    """A read refused mid-file (the consumer raises while the batch generator is suspended)
    must close its workers itself: left to the garbage collector, the close once ran on a
    thread that was starting up and deadlocked CI."""
    pytest.importorskip("pyarrow")
    gc.collect()
    lines = movielens_lines(300, seed=10)
    lines.insert(200, "3,4,nan,5")
    path = write(tmp_path, "ratings.csv", ratings_csv(lines))
    gc.disable()
    try:
        bad(path, "pyarrow", "finite")
        deadline = time.monotonic() + 30
        while parse_workers() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert parse_workers() == []
    finally:
        gc.enable()


def test_duplicates_across_blocks_name_both_lines(tmp_path, tiny_blocks, engine):
    lines = movielens_lines(300, seed=11)
    user, item = lines[5].split(",")[:2]
    lines.append(f"{user},{item},1.0,7")
    err = bad(write(tmp_path, "ratings.csv", ratings_csv(lines)), engine, "duplicated rating")
    assert "lines 7 and 302" in str(err)


@pytest.mark.parametrize("string_ids", [False, True])
def test_raw_columns_are_every_row_in_file_order(tmp_path, tiny_blocks, engine, string_ids):
    """`_read_columns` (what read_ratings indexes and merges, and fastcofi.distributed merges
    across files) keeps every row, in file order, across blocks; read_ratings is then
    `Ratings.from_arrays` on those rows."""
    lines = movielens_lines(300, seed=15)
    # Repeats, blocks later, of pairs of earlier blocks: one pair twice more.
    lines += [",".join(lines[k].split(",")[:2] + [f"{n}.5", "9"]) for n, k in enumerate([3, 3, 50])]
    if string_ids:
        lines = ["u" + line for line in lines]
    path = write(tmp_path, "ratings.csv", ratings_csv(lines))
    fields = [line.split(",") for line in lines]
    users = [u if string_ids else int(u) for u, _, _, _ in fields]
    items = [int(f[1]) for f in fields]
    values = [float(f[2]) for f in fields]
    stamps = [int(f[3]) for f in fields]
    source, columns, header_lines = read._read_columns(path, engine=engine)
    assert header_lines == 1 and source.name == str(path)
    assert read._row_ids(columns["user"]).tolist() == users
    assert read._row_ids(columns["item"]).tolist() == items
    assert columns["rating"].tolist() == values and columns["timestamp"].tolist() == stamps
    for duplicates in ("last", "mean"):
        expected = Ratings.from_arrays(users, items, values, duplicates=duplicates,
                                       timestamps=stamps)
        assert_same(read_ratings(path, duplicates=duplicates, engine=engine), expected)


def test_float32_overflow_in_a_later_block(tmp_path, tiny_blocks, engine):
    lines = movielens_lines(200, seed=12) + ["999,999,1e300,5"]
    with pytest.raises(RatingsFileError, match="overflow float32"):
        read_ratings(write(tmp_path, "ratings.csv", ratings_csv(lines)), engine=engine,
                     dtype=np.float32)


def test_auto_engine_without_pyarrow(tmp_path, monkeypatch):
    monkeypatch.setattr(read, "_have_pyarrow", lambda: False)
    path = write(tmp_path, "ratings.csv", ratings_csv(movielens_lines(100, seed=13)))
    r = read_ratings(path)
    assert r.nnz == 100 and r.timestamps is not None
    with pytest.raises(ImportError, match="fastcofi\\[io\\]"):
        read_ratings(path, engine="pyarrow")


# -- files grouped by user take the CSR fast paths; the result is the same -------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("within_user", ["by item", "any order"])
def test_user_grouped_file_equals_shuffled_file(tmp_path, monkeypatch, engine, dtype,
                                                within_user):
    fast = []
    build = Ratings._from_user_csr
    monkeypatch.setattr(Ratings, "_from_user_csr",
                        classmethod(lambda cls, *args: fast.append(1) or build(*args)))
    lines = movielens_lines(500, seed=14)
    if within_user == "by item":
        grouped = sorted(lines, key=lambda s: tuple(int(x) for x in s.split(",")[:2]))
    else:
        grouped = sorted(lines, key=lambda s: int(s.split(",")[0]))  # stable: items unordered
        assert grouped != sorted(lines, key=lambda s: tuple(int(x) for x in s.split(",")[:2]))
    shuffled = list(np.random.default_rng(0).permutation(grouped))
    a = read_ratings(write(tmp_path, "ratings.csv", ratings_csv(grouped)), engine=engine,
                     dtype=dtype)
    assert fast == [1]
    b = read_ratings(write(tmp_path, "shuffled.csv", ratings_csv(shuffled)), engine=engine,
                     dtype=dtype)
    assert fast == [1]
    assert_same(a, b)
    assert a.timestamps is not None
    np.testing.assert_array_equal(a.timestamps, b.timestamps)


def test_user_order_check():
    users = np.array([0, 0, 1, 1, 2], dtype=np.int32)
    order = user_order
    assert order(users, np.array([1, 2, 0, 5, 0], dtype=np.int32)) == BY_USER_THEN_ITEM
    assert order(users, np.array([1, 1, 0, 5, 0], dtype=np.int32)) == BY_USER  # a repeat
    assert order(users, np.array([2, 1, 0, 5, 0], dtype=np.int32)) == BY_USER
    assert order(users[::-1].copy(), np.zeros(5, dtype=np.int32)) == UNORDERED


@pytest.mark.parametrize("duplicates", ["last", "mean"])
def test_user_grouped_repeats_are_resolved(tmp_path, engine, duplicates):
    lines = ["1,2,4.0,5", "1,1,3.0,6", "1,2,2.0,7", "2,1,1.0,8"]
    r = read_ratings(write(tmp_path, "ratings.csv", ratings_csv(lines)), engine=engine,
                     duplicates=duplicates)
    assert r.nnz == 3
    users, items, values = r.coo()
    pair = (r.user_ids[users] == 1) & (r.item_ids[items] == 2)
    assert values[pair].tolist() == ([2.0] if duplicates == "last" else [3.0])


def test_user_major_duplicates_still_error(tmp_path, engine):
    lines = ["1,1,4.0,5", "1,2,3.0,6", "1,2,2.0,7", "2,1,1.0,8"]
    with pytest.raises(RatingsFileError, match="lines 3 and 4"):
        read_ratings(write(tmp_path, "ratings.csv", ratings_csv(lines)), engine=engine)
    # grouped by user, items unordered
    lines = ["1,2,4.0,5", "1,1,3.0,6", "1,2,2.0,7", "2,1,1.0,8"]
    with pytest.raises(RatingsFileError, match="lines 2 and 4"):
        read_ratings(write(tmp_path, "ratings.csv", ratings_csv(lines)), engine=engine)
