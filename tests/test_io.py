"""Rating and title readers: formats, both engines, every bad input, fuzzing."""

import gzip
import io
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastcofi import Ratings
from fastcofi.data._source import RatingsFileError
from fastcofi.data.read import read_ratings
from fastcofi.data.titles import read_titles
from fastcofi.kernels.parse import PARSE_OK, Fields, Parsed, parse_block

from .conftest import HAVE_ARROW, REPO, shared_data_dir, write

ML100K_LINES = b"196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n"
ML1M_LINES = b"1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n"
LATEST = (b"userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n"
          b"2,1,0.5,964982224\n")


def triples(r):
    """Sorted (user, item, rating) of a Ratings, in external ids."""
    users, items, values = r.coo()
    rows = zip(r.user_ids[users].tolist(), r.item_ids[items].tolist(), values.tolist())
    return sorted(rows)


# -- formats ---------------------------------------------------------------------------------
def test_ml100k_detected_by_name(tmp_path, engine):
    r = read_ratings(write(tmp_path, "u1.base", ML100K_LINES), engine=engine)
    assert triples(r) == [(22, 377, 1.0), (186, 302, 3.0), (196, 242, 3.0)]
    assert r.user_ids.dtype.kind == "i" and r.values.dtype == np.float64
    # Timestamps follow the ratings into by-item order.
    users, items, _ = r.coo()
    stamp = dict(zip(zip(r.user_ids[users].tolist(), r.item_ids[items].tolist()),
                     r.timestamps.tolist()))
    assert stamp[(186, 302)] == 891717742


def test_ml1m_double_colon(tmp_path, engine):
    r = read_ratings(write(tmp_path, "ratings.dat", ML1M_LINES), engine=engine)
    assert triples(r) == [(1, 661, 3.0), (1, 1193, 5.0), (2, 1193, 4.0)]
    assert sorted(r.timestamps.tolist()) == [978298413, 978300760, 978302109]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_ml_latest_half_stars_and_crlf(tmp_path, engine, newline):
    data = LATEST.replace(b"\n", newline)
    r = read_ratings(write(tmp_path, "ratings.csv", data), engine=engine)
    assert triples(r) == [(1, 1, 4.0), (1, 3, 4.5), (2, 1, 0.5)]
    assert r.timestamps is not None


def test_named_columns_any_order_strings_and_extra_columns(tmp_path, engine):
    data = b"rating,comment,item_id,user_id\n5,great,b,alice\n3,meh,a,bob\n4.5,ok,a,alice\n"
    r = read_ratings(write(tmp_path, "x.csv", data), engine=engine)
    assert r.user_ids.tolist() == ["alice", "bob"] and r.item_ids.tolist() == ["a", "b"]
    assert triples(r) == [("alice", "a", 4.5), ("alice", "b", 5.0), ("bob", "a", 3.0)]
    assert r.timestamps is None


def test_explicit_column_names_and_positions(tmp_path, engine):
    data = b"who\twhat\thow\n1\t10\t2\n2\t10\t3\n"
    path = write(tmp_path, "x.tsv", data)
    r = read_ratings(path, user="who", item="what", rating="how", engine=engine)
    assert triples(r) == [(1, 10, 2.0), (2, 10, 3.0)]
    headerless = write(tmp_path, "y.tsv", b"10\t1\t2\n10\t2\t3\n")
    r = read_ratings(headerless, user=1, item=0, engine=engine)
    assert triples(r) == [(1, 10, 2.0), (2, 10, 3.0)]


def test_unicode_string_ids(tmp_path, engine):
    data = "user,item,rating\nzoë,café,4\nändré,café,3\n".encode()
    r = read_ratings(write(tmp_path, "x.csv", data), engine=engine)
    assert r.user_ids.tolist() == sorted(["zoë", "ändré"])
    assert triples(r) == [("zoë", "café", 4.0), ("ändré", "café", 3.0)]


def test_content_detection_without_a_telling_name(tmp_path, engine):
    assert read_ratings(write(tmp_path, "a.txt", ML1M_LINES), engine=engine).nnz == 3
    assert read_ratings(write(tmp_path, "b.txt", ML100K_LINES), engine=engine).nnz == 3
    assert read_ratings(write(tmp_path, "c.txt", LATEST), engine=engine).nnz == 3


def test_gz_and_zip(tmp_path, engine):
    r = read_ratings(write(tmp_path, "ratings.csv.gz", gzip.compress(LATEST)), engine=engine)
    assert triples(r)[1] == (1, 3, 4.5)
    r = read_ratings(write(tmp_path, "u.data.gz", gzip.compress(ML100K_LINES)), engine=engine)
    assert r.nnz == 3
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ml-latest-small/README.txt", b"read me")
        zf.writestr("ml-latest-small/movies.csv", b"movieId,title,genres\n1,Toy Story (1995),x\n")
        zf.writestr("ml-latest-small/ratings.csv", LATEST)
    path = write(tmp_path, "ml-latest-small.zip", buf.getvalue())
    assert triples(read_ratings(path, engine=engine)) == triples(
        read_ratings(write(tmp_path, "ratings.csv", LATEST), engine=engine))
    assert read_titles(path) == {1: "Toy Story (1995)"}


def test_float32_and_duplicate_policies(tmp_path, engine):
    data = b"user,item,rating\n1,1,2\n1,1,4\n2,1,5\n"
    path = write(tmp_path, "d.csv", data)
    ratings = read_ratings(path, dtype=np.float32, duplicates="last", engine=engine)
    assert ratings.values.dtype == np.float32
    r = read_ratings(path, duplicates="mean", engine=engine)
    assert triples(r) == [(1, 1, 3.0), (2, 1, 5.0)]


def test_engines_agree_on_a_larger_file(tmp_path):
    pytest.importorskip("pyarrow")
    rng = np.random.default_rng(0)
    keys = rng.choice(500 * 300, size=5000, replace=False)
    lines = [f"{k // 300},{k % 300},{rng.integers(1, 11) / 2},{rng.integers(1e9)}"
             for k in keys]
    path = write(tmp_path, "big.csv", ("user,item,rating,timestamp\n" + "\n".join(lines)).encode())
    a = read_ratings(path, engine="builtin")
    b = read_ratings(path, engine="pyarrow")
    for x, y in ((a.user_ids, b.user_ids), (a.item_ids, b.item_ids), (a.values, b.values),
                 (a.timestamps, b.timestamps), (a.by_user[1], b.by_user[1])):
        np.testing.assert_array_equal(x, y)


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({"userId": [1, 2, 2], "movieId": [5, 5, 6], "rating": [1.0, 2.5, 4.0],
                      "timestamp": [10, 20, 30]})
    path = tmp_path / "r.parquet"
    pq.write_table(table, path)
    r = read_ratings(path)
    assert triples(r) == [(1, 5, 1.0), (2, 5, 2.5), (2, 6, 4.0)]
    assert sorted(r.timestamps.tolist()) == [10, 20, 30]
    with pytest.raises(RatingsFileError, match="no column named"):
        read_ratings(path, rating="stars")


def test_from_dataframe():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"u": ["a", "b", "a"], "i": [1, 1, 2], "r": [3.0, 4.0, 5.0]})
    r = Ratings.from_dataframe(df, user="u", item="i", rating="r")
    assert isinstance(r, Ratings) and triples(r) == [("a", 1, 3.0), ("a", 2, 5.0), ("b", 1, 4.0)]
    with pytest.raises(ValueError, match="'rating' is not a column"):
        Ratings.from_dataframe(df, user="u", item="i")
    with pytest.raises(ValueError, match="finite"):
        Ratings.from_dataframe(pd.DataFrame({"user": [1], "item": [1], "rating": [np.nan]}))


def test_from_dataframe_dict_of_arrays():
    r = Ratings.from_dataframe({"user": np.array([1, 2]), "item": np.array([3, 3]),
                                "rating": np.array([1.0, 2.0])})
    assert triples(r) == [(1, 3, 1.0), (2, 3, 2.0)]


# -- bad input -------------------------------------------------------------------------------
def bad(tmp_path, name, data, engine, match, **kwargs):
    path = write(tmp_path, name, data)
    with pytest.raises(RatingsFileError, match=match) as info:
        read_ratings(path, engine=engine, **kwargs)
    assert str(path) in str(info.value)
    return info.value


def test_empty_file(tmp_path, engine):
    bad(tmp_path, "ratings.csv", b"", engine, "empty")
    bad(tmp_path, "u.data", b"\n\n", engine, "empty")


def test_header_only(tmp_path, engine):
    bad(tmp_path, "ratings.csv", b"userId,movieId,rating,timestamp\n", engine,
        "header line and no data rows")


def test_ragged_rows_name_line(tmp_path, engine):
    err = bad(tmp_path, "ratings.csv", LATEST + b"3,4\n", engine, "expected 4")
    assert err.line == 5
    err = bad(tmp_path, "u.data", ML100K_LINES + b"1\t2\t3\t4\t5\n", engine, "expected 4")
    assert err.line == 4 and err.column is not None


def test_non_numeric_rating(tmp_path, engine):
    err = bad(tmp_path, "ratings.csv", LATEST + b"3,4,four,5\n", engine,
              r"field 3 \('rating', the rating\): expected a number, found 'four'")
    assert (err.line, err.column) == (5, 5)


@pytest.mark.parametrize("word", [b"nan", b"NaN", b"inf", b"-Infinity"])
def test_nan_and_inf_ratings(tmp_path, engine, word):
    err = bad(tmp_path, "ratings.csv", LATEST[:33] + b"1,2," + word + b",5\n" + LATEST[33:],
              engine, "finite")
    assert err.line == 2


def test_empty_rating_field(tmp_path, engine):
    err = bad(tmp_path, "u.data", b"1\t2\t\t4\n", engine, "empty field")
    assert err.line == 1


def test_duplicated_pairs_name_file_and_lines(tmp_path, engine):
    err = bad(tmp_path, "ratings.csv", LATEST + b"1,3,2.0,7\n", engine, "duplicated rating")
    assert "user 1 and item 3" in str(err) and "lines 3 and 5" in str(err)


def test_random_binary_bytes(tmp_path, engine):
    noise = np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    bad(tmp_path, "ratings.csv", noise, engine, "found NUL bytes: a binary file")
    bad(tmp_path, "mystery.bin", noise.replace(b"\x00", b"\x01"), engine, "invalid UTF-8")


def test_invalid_utf8_in_numeric_column(tmp_path, engine):
    err = bad(tmp_path, "ratings.csv", LATEST + b"3,4,\xff\xfe,5\n", engine, "invalid UTF-8")
    assert err.line == 5


def test_invalid_utf8_in_id_column(tmp_path, engine):
    err = bad(tmp_path, "ratings.csv", LATEST + b"\xff\xfe,4,3,5\n", engine, "invalid UTF-8")
    assert (err.line, err.column) == (5, 1)


def test_truncated_gz(tmp_path, engine):
    data = gzip.compress(LATEST * 50)
    bad(tmp_path, "ratings.csv.gz", data[: len(data) // 2], engine, "gzip")


def test_not_gzip_at_all(tmp_path, engine):
    bad(tmp_path, "ratings.csv.gz", LATEST, engine, "gzip")


def test_bad_zip(tmp_path, engine):
    bad(tmp_path, "ml-1m.zip", b"PK\x03\x04 not really", engine, "zip")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("README", b"x")
    bad(tmp_path, "other.zip", buf.getvalue(), engine, "holds no ratings.csv")


def test_directory_given_as_file(tmp_path, engine):
    with pytest.raises(RatingsFileError, match="is a directory") as info:
        read_ratings(tmp_path, engine=engine)
    assert str(tmp_path) in str(info.value)


def test_missing_path(tmp_path, engine):
    missing = tmp_path / "nope" / "ratings.csv"
    with pytest.raises(FileNotFoundError, match="no such file") as info:
        read_ratings(missing, engine=engine)
    assert str(missing) in str(info.value)


def test_mixed_separators(tmp_path, engine):
    err = bad(tmp_path, "ratings.csv", LATEST + b"3\t4\t3.5\t5\n", engine, "mixed separators")
    assert err.line == 5
    err = bad(tmp_path, "ratings.dat", ML1M_LINES + b"3::4:3::5\n", engine, "expected 4 '::'")
    assert err.line == 4
    bad(tmp_path, "u.data", ML100K_LINES + b"3,4,3,5\n", engine, "mixed separators")


def test_missing_columns_and_bad_arguments(tmp_path, engine):
    bad(tmp_path, "x.csv", b"a,b,c\n1,2,3\n", engine, "no user column")
    bad(tmp_path, "x.csv", b"user,item\n1,2\n", engine, "at least 3")
    bad(tmp_path, "x.csv", b"user;item;rating\n1;2;3\n", engine,
        "at least 3 ','-separated .* found 1; it holds ';': pass sep= or format=")
    path = write(tmp_path, "r.csv", LATEST)
    with pytest.raises(ValueError, match="format must be one of"):
        read_ratings(path, format="xlsx", engine=engine)
    with pytest.raises(ValueError, match="duplicates"):
        read_ratings(path, duplicates="first", engine=engine)
    with pytest.raises(ValueError, match="sep"):
        read_ratings(path, sep=";;;", engine=engine)


def test_non_integer_timestamp(tmp_path, engine):
    bad(tmp_path, "ratings.csv", LATEST + b"3,4,3.5,soon\n", engine, "timestamp")


# -- fuzz ------------------------------------------------------------------------------------
def _read_or_clean_error(path, engine):
    try:
        r = read_ratings(path, engine=engine)
    except (RatingsFileError, FileNotFoundError):
        return None
    assert isinstance(r, Ratings) and r.nnz > 0
    assert np.isfinite(r.values).all()
    return r


@pytest.mark.parametrize("field", [b"x ", b" x", b'x"', b'"x"', b"1\x01\x01 "])
def test_string_ids_lose_surrounding_spaces_and_quotes_in_both_engines(tmp_path, field):
    # Found by test_fuzz_mutated_valid_files: pyarrow read "1\x01\x01 " with its space, the
    # builtin engine without.
    path = write(tmp_path, "u.data", field + b"\t302\t3\t881250949\n")
    ids = {engine: read_ratings(path, engine=engine).user_ids.tolist()
           for engine in ["builtin"] + (["pyarrow"] if HAVE_ARROW else [])}
    expected = [field.strip(b' "').decode()]
    assert all(found == expected for found in ids.values()), ids


def test_byte_order_mark_before_headerless_data_is_not_data(tmp_path, engine):
    # Found by test_fuzz_mutated_valid_files: the builtin engine read "\ufeff196" as a string id.
    path = write(tmp_path, "u.data", b"\xef\xbb\xbf" + ML100K_LINES)
    r = read_ratings(path, engine=engine)
    assert triples(r) == triples(read_ratings(write(tmp_path, "plain.data", ML100K_LINES)))
    assert r.user_ids.dtype.kind == "i"


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=300), name=st.sampled_from(["ratings.csv", "u.data", "ratings.dat",
                                                           "x.tsv", "ratings.csv.gz"]))
def test_fuzz_random_bytes(tmp_path_factory, data, name):
    folder = tmp_path_factory.mktemp("fuzz")
    path = write(folder, name, data)
    for engine in ["builtin"] + (["pyarrow"] if HAVE_ARROW else []):
        _read_or_clean_error(path, engine)


@settings(max_examples=40, deadline=None)
@given(base=st.sampled_from([LATEST, ML100K_LINES, ML1M_LINES]),
       edits=st.lists(st.tuples(st.integers(0, 200), st.binary(min_size=0, max_size=3)),
                      min_size=1, max_size=4))
def test_fuzz_mutated_valid_files(tmp_path_factory, base, edits):
    data = bytearray(base)
    for pos, replacement in edits:
        pos %= len(data) + 1
        data[pos:pos + 1] = replacement
    folder = tmp_path_factory.mktemp("mut")
    name = {LATEST: "ratings.csv", ML100K_LINES: "u.data", ML1M_LINES: "ratings.dat"}[base]
    path = write(folder, name, bytes(data))
    results = []
    for engine in ["builtin"] + (["pyarrow"] if HAVE_ARROW else []):
        results.append(_read_or_clean_error(path, engine))
    if len(results) == 2 and results[0] is not None and results[1] is not None:
        assert triples(results[0]) == triples(results[1])


# -- the builtin parser's numbers -------------------------------------------------------------
_FLOAT_TEXTS = [repr, "{:E}".format, "{:+.17g}".format, "{:+e}".format, "{:.6f}".format]


@given(rows=st.lists(st.tuples(
    st.integers(-(10**18 - 1), 10**18 - 1), st.booleans(),
    st.floats(-1e290, 1e290).filter(lambda v: v == 0 or abs(v) > 1e-290),
    st.sampled_from(_FLOAT_TEXTS)), min_size=1, max_size=12))
def test_builtin_parser_reads_signed_numbers_as_python_does(rows):
    # Integers with and without '+', floats with signs, exponents (e/E, +/-) and fractions.
    lines = [f"{u:+d}" if plus else str(u) for u, plus, _, _ in rows]
    texts = [form(v) for _, _, v, form in rows]
    block = "\n".join(f"{u},7,{t}" for u, t in zip(lines, texts)).encode()
    n = len(rows)
    out = Parsed(np.zeros((4, n), dtype=np.int64), np.zeros((2, 0), dtype=np.int64), np.zeros(n))
    fields = Fields(ord(","), 1, np.array([0, 1, 2], dtype=np.int64), np.zeros(4, dtype=bool))
    assert parse_block(np.frombuffer(block, dtype=np.uint8), fields, out)[:2] == (n, PARSE_OK)
    assert out.ints[0].tolist() == [u for u, _, _, _ in rows] and set(out.ints[1]) == {7}
    # Correctly rounded where mantissa and power of ten are exact, within a few ulps elsewhere.
    np.testing.assert_allclose(out.ratings, [float(t) for t in texts], rtol=1e-14, atol=0)
    assert all(np.signbit(out.ratings) == np.signbit([float(t) for t in texts]))


# -- titles ----------------------------------------------------------------------------------
def test_titles_u_item_latin1(tmp_path):
    data = "1|Toy Story (1995)|01-Jan-1995||http://x|0|0\n2|Misérables, Les (1995)|x\n"
    titles = read_titles(write(tmp_path, "u.item", data.encode("latin-1")))
    assert titles == {1: "Toy Story (1995)", 2: "Misérables, Les (1995)"}


def test_titles_movies_dat_and_csv(tmp_path):
    dat = "1::Toy Story (1995)::Animation|Children's\n2::Jumanji (1995)::Adventure\n"
    assert read_titles(write(tmp_path, "movies.dat", dat.encode("latin-1")))[2] == "Jumanji (1995)"
    csv = ('movieId,title,genres\n1,Toy Story (1995),Animation\n'
           '11,"American President, The (1995)",Comedy|Drama\r\n').encode()
    titles = read_titles(write(tmp_path, "movies.csv", csv))
    assert titles == {1: "Toy Story (1995)", 11: "American President, The (1995)"}
    assert all(isinstance(k, int) for k in titles)


def test_titles_bad_input(tmp_path):
    with pytest.raises(RatingsFileError, match="empty"):
        read_titles(write(tmp_path, "u.item", b""))
    with pytest.raises(RatingsFileError, match="expected an integer item id") as info:
        read_titles(write(tmp_path, "movies.dat", b"1::A::x\nabc::B::y\n"))
    assert info.value.line == 2
    with pytest.raises(RatingsFileError, match="second title"):
        read_titles(write(tmp_path, "u.item", b"1|A|x\n1|B|y\n"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_titles(tmp_path / "missing.csv")


# -- real data -------------------------------------------------------------------------------
@pytest.mark.realdata
def test_ml100k_real_split(ml100k, engine):
    r = read_ratings(ml100k / "u1.base", engine=engine)
    assert (r.nnz, r.n_users, r.n_items) == (80_000, 943, 1650)
    assert set(np.unique(r.values).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert r.timestamps.min() >= 874724710
    full = read_ratings(ml100k / "u.data", engine=engine)
    assert (full.nnz, full.n_users, full.n_items) == (100_000, 943, 1682)
    assert full.user_ids.tolist() == list(range(1, 944))
    counts = np.bincount(full.values.astype(int))
    assert counts[1:].tolist() == [6110, 11370, 27145, 34174, 21201]


@pytest.mark.realdata
def test_ml100k_real_titles(ml100k):
    titles = read_titles(ml100k / "u.item")
    assert len(titles) == 1682 and sorted(titles) == list(range(1, 1683))
    assert titles[1] == "Toy Story (1995)"
    assert any("é" in t for t in titles.values())  # decoded as latin-1


def test_toy_titles_and_ratings(toy_data_dir):
    titles = read_titles(toy_data_dir / "movies.txt")
    assert len(titles) == 10 and titles[5] == "Notorious (2009)"
    r = read_ratings(toy_data_dir / "ratings.tsv", user=1, item=0)
    assert (r.nnz, r.n_users, r.n_items) == (29, 5, 9)


def test_shared_folder_default_points_beside_repo(monkeypatch, tmp_path):
    """The tests and the benchmarks find the real data in the same folder: ../shared/data beside
    the repository, or FASTCOFI_TEST_DATA."""
    import importlib.util

    # bench/ is a folder of scripts, not a package: load its harness by path.
    spec = importlib.util.spec_from_file_location("bench_harness", REPO / "bench" / "harness.py")
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    shared_data = harness.shared_data

    monkeypatch.delenv("FASTCOFI_TEST_DATA", raising=False)
    assert shared_data_dir() == shared_data() == REPO.parent / "shared" / "data"
    monkeypatch.setenv("FASTCOFI_TEST_DATA", str(tmp_path))
    assert shared_data_dir() == shared_data() == tmp_path
