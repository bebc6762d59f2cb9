"""Reading a rating file: ``read_ratings`` on a ratings.csv shaped like ML-25M's.

Skipped by default; run with

    python3 -m pytest bench/test_bench_read.py --benchmark-only

One million lines (`bench_io.write_ratings_csv`: user-ordered, half stars, timestamps),
written once per run, read by each engine in this process with its kernels compiled first.
``bench/bench_io.py`` measures larger files in fresh processes, with their peak memory.
"""

import importlib.util

import pytest
from bench_io import write_ratings_csv

from fastcofi import read_ratings

LINES = 1_000_000
ENGINES = ["builtin", pytest.param("pyarrow", marks=pytest.mark.skipif(
    importlib.util.find_spec("pyarrow") is None, reason="pyarrow not installed"))]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("read")


# "user-item": ordered by user, then movie, as ML-20M/25M are (the reader's fast path);
# "user": movies unordered within each user, as in ML-1M (the reader sorts each user's).
@pytest.mark.parametrize("order", ["user-item", "user"])
@pytest.mark.parametrize("engine", ENGINES)
def test_read_csv(benchmark, folder, engine, order):
    path = folder / f"ratings-{order}.csv"
    if not path.exists():
        write_ratings_csv(path, LINES, order=order)
    tiny = folder / "tiny.csv"
    if not tiny.exists():
        write_ratings_csv(tiny, 10)
    read_ratings(tiny, engine=engine)  # compiled before timing
    benchmark.extra_info["lines"] = LINES
    ratings = benchmark.pedantic(read_ratings, args=(path,), kwargs={"engine": engine},
                                 rounds=5, warmup_rounds=1)
    assert ratings.nnz == LINES
