"""Item titles from MovieLens-style files."""

import io

from ._source import _TITLE_MEMBERS, RatingsFileError, _resolve


def read_titles(path):
    """Read item titles: ``u.item``, ``movies.dat``, ``movies.csv`` (or a ``.zip`` / ``.gz``).

    ``u.item`` is ``|``-separated latin-1 (id|title|...); ``movies.dat`` is ``::``-separated
    (latin-1 in ML-1M, UTF-8 in ML-10M; both are accepted); ``movies.csv`` has the header
    ``movieId,title,genres`` and quotes titles holding commas. A plain ``<id> <title>`` text file
    (the tutorial's ``movies.txt``) is read too.

    Returns
    -------
    dict
        ``{item id (int): title (str)}``.
    """
    import csv

    source = _resolve(path, _TITLE_MEMBERS)
    with source.open() as f:
        raw = source.read(f)
    if not raw.strip():
        raise RatingsFileError(source.name, "the file is empty; expected title lines")
    if b"\x00" in raw:
        raise RatingsFileError(source.name, "holds NUL bytes: a binary file, not text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        # MovieLens before 10M wrote latin-1; every byte string is valid latin-1.
        text = raw.decode("latin-1")
    name = source.inner.lower().rsplit("/", 1)[-1]
    lines = text.splitlines()
    first = lines[0] if lines else ""
    titles = {}
    if name.endswith(".csv") or (first.lower().startswith(("movieid,", "itemid,", "id,"))):
        reader = csv.reader(io.StringIO(text))
        header = next(reader)
        lowered = [h.strip().lower().lstrip("\ufeff") for h in header]
        id_col = next(
            (lowered.index(c) for c in ("movieid", "itemid", "item", "id") if c in lowered), None
        )
        title_col = lowered.index("title") if "title" in lowered else None
        if id_col is None or title_col is None:
            raise RatingsFileError(
                source.name, f"expected a header with an id column and 'title', found {header}", 1
            )
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            _add_title(source, titles, row, id_col, title_col, lineno)
        return titles
    if "::" in first or name.endswith(".dat"):
        splitter = lambda line: line.split("::")  # noqa: E731
    elif "|" in first or name == "u.item":
        splitter = lambda line: line.split("|")  # noqa: E731
    elif "\t" in first:
        splitter = lambda line: line.split("\t")  # noqa: E731
    else:
        splitter = lambda line: line.split(" ", 1)  # noqa: E731
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        _add_title(source, titles, splitter(line), 0, 1, lineno)
    return titles


def _add_title(source, titles, row, id_col, title_col, lineno):
    if len(row) <= max(id_col, title_col):
        raise RatingsFileError(
            source.name, f"expected an id and a title, found {len(row)} field(s): {row!r}", lineno
        )
    try:
        item = int(row[id_col].strip())
    except ValueError:
        raise RatingsFileError(
            source.name, f"expected an integer item id, found {row[id_col][:40]!r}", lineno, 1
        ) from None
    if item in titles:
        raise RatingsFileError(source.name, f"item {item} has a second title", lineno, 1)
    titles[item] = row[title_col].strip()
