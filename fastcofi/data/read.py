"""Readers for rating and title files: file -> :class:`~fastcofi.ratings.Ratings`.

Two engines parse delimited text without making a Python object per rating:

- ``"pyarrow"`` (the optional extra ``fastcofi[io]``): pyarrow's multithreaded CSV reader, also
  used for Parquet (read a batch of rows at a time);
- ``"builtin"``: a Numba byte parser, always available. It also diagnoses every file pyarrow
  rejects, because pyarrow's messages carry no line numbers.

Both read the file in blocks of whole lines (`_blocks`) and append each block's columns to
buffers grown in place (`_Columns`: int32 ids while they fit, ratings in the dtype asked for), so
the whole text or a whole parsed table is never held. A file ordered by user, then item (as
ML-20M/25M are) is already the by-user CSR; others go through `Ratings`' counting sort.

Every bad input raises :class:`RatingsFileError` (a ``ValueError``) whose message names the file,
the line and column where they apply, what was expected and what was found. A missing path raises
``FileNotFoundError`` naming it.
"""

import re

import numpy as np

from ..kernels.parse import BY_USER_THEN_ITEM, UNORDERED, user_order
from ..kernels.sparse import gather_rows, row_order, take
from ._arrow import (
    _arrow_csv_batches,
    _arrow_parquet_batches,
    _ArrowFailed,
    _collect_arrow,
    _have_pyarrow,
)
from ._source import (
    _RATING_MEMBERS,
    RatingsFileError,
    _bytes_repr,
    _choose_columns,
    _excerpt,
    _Layout,
    _other_separators,
    _resolve,
)
from ._text import _read_builtin_strings, _with_string_ids
from .ids import _index_dtype, unique_ids
from .ratings import Ratings, check_duplicates_policy

__all__ = ["FORMATS", "RatingsFileError", "read_ratings"]

FORMATS = ("ml-100k", "ml-1m", "ml-latest", "csv", "tsv", "parquet")
ENGINES = ("auto", "pyarrow", "builtin")


_SNIFF_BYTES = 1 << 16


# -- format detection ------------------------------------------------------------------------
_ML100K_NAME = re.compile(r"^(u\.data|u[1-5ab]\.(base|test))$")


def _first_line(head):
    end = head.find(b"\n")
    line = head if end < 0 else head[:end]
    return line.rstrip(b"\r")


def _detect_format(source, head):
    name = source.inner.lower().rsplit("/", 1)[-1]
    if name.endswith((".parquet", ".pq")) or head.startswith(b"PAR1"):
        return "parquet"
    if _ML100K_NAME.match(name):
        return "ml-100k"
    if name.endswith(".dat"):
        return "ml-1m"
    if name == "ratings.csv":
        return "ml-latest"
    first = _first_line(head)
    if b"::" in first:
        return "ml-1m"
    if name.endswith(".tsv") or name.endswith(".tab"):
        return "tsv"
    if name.endswith(".csv"):
        return "csv"
    if b"\t" in first:
        return "tsv"
    if b"," in first:
        return "csv"
    raise RatingsFileError(
        source.name,
        "cannot tell the format from the file name or its first line "
        f"{_excerpt(first)}; pass format= one of {FORMATS}",
        line=1,
    )


def _format_layout(fmt, sep):
    """Separator, whether a header is required/forbidden/sniffed, and the default column order."""
    if fmt == "ml-100k":
        return sep or "\t", "none"
    if fmt == "ml-1m":
        return sep or "::", "none"
    if fmt == "ml-latest":
        return sep or ",", "required"
    if fmt == "csv":
        return sep or ",", "sniff"
    return sep or "\t", "sniff"  # tsv


_NUMBER = re.compile(rb"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")


def _looks_numeric(fields):
    return bool(fields) and all(_NUMBER.match(f) for f in fields)


def _split_line(line, sep):
    return line.split(sep.encode())


def _clean_name(raw):
    name = raw.strip().strip('"').strip("'").strip()
    return name.lstrip("\ufeff")




# -- ids -> Ratings --------------------------------------------------------------------------
def _dense_ids(ids):
    """Sorted unique ids and the index of each, int32 where it fits.

    ``ids`` is an integer array, or ``(labels, codes)`` from `_Columns` (labels may repeat
    across blocks); integers go to `fastcofi.ratings.unique_ids`.
    """
    if isinstance(ids, tuple):
        labels, codes = ids
        uniq, inverse = np.unique(labels, return_inverse=True)
        return uniq, inverse.reshape(-1).astype(_index_dtype(uniq.shape[0]))[codes]
    uniq, index = unique_ids(ids)
    # Ids may be stored as int32 while reading; the ids of a Ratings are int64 (tiny arrays).
    return uniq.astype(np.int64), index


def _row_ids(ids):
    """The external id of every row: int64, or unicode strings for ``(labels, codes)``."""
    if isinstance(ids, tuple):
        labels, codes = ids
        return labels[codes]
    return ids.astype(np.int64, copy=False)


# UTF-16/32 text reads as NUL-riddled bytes; naming the encoding says what to do about it.
# Longest marks first: the UTF-32 LE mark begins with the UTF-16 LE one.
_WIDE_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
              (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"))


def _refuse_wide_unicode(source, head):
    encoding = next((name for bom, name in _WIDE_BOMS if head.startswith(bom)), None)
    if encoding is None and len(head) >= 8 and b"\x00" in head[:64]:
        # Without a byte-order mark: ASCII text in UTF-16 has a NUL in every other byte, in
        # UTF-32 three in every four.
        size = min(len(head), 64)
        sample = head[:size - size % 4]
        zeros = [sample[i::4].count(0) for i in range(4)]
        quarter = len(sample) // 4
        if sum(z == quarter for z in zeros) == 3:
            encoding = "UTF-32"
        elif zeros[0] + zeros[2] == 2 * quarter or zeros[1] + zeros[3] == 2 * quarter:
            encoding = "UTF-16"
    if encoding is not None:
        raise RatingsFileError(
            source.name, f"the file is {encoding} text; expected UTF-8 (or ASCII): re-save it "
            "as UTF-8 (for example: iconv -f " + encoding + " -t UTF-8 IN > OUT)", line=1,
        )


# Squared residuals of larger ratings overflow float64 (1e150 ** 2 = 1e300 leaves room for
# sums over many ratings); such values are unit mistakes, refused where the line is known.
_MAX_ABS_RATING = 1e150


def _check_magnitude(source, values, header_lines):
    if values.dtype != np.float64:
        return  # float32 ends below 3.5e38; what overflows it was refused as not finite
    big = np.abs(values) > _MAX_ABS_RATING
    if big.any():
        row = int(np.argmax(big))
        raise RatingsFileError(
            source.name, f"rating {float(values[row]):g} is too large: expected ratings within "
            f"+-{_MAX_ABS_RATING:g} (the squared error would overflow); rescale the ratings",
            line=row + 1 + header_lines,
        )


def _to_ratings(source, columns, duplicates, header_lines):
    """Ratings from the dict of `_Columns.finish`; empties the dict as each column is mapped,
    so that no raw id column outlives its mapping."""
    user_ids, uidx = _dense_ids(columns.pop("user"))
    item_ids, iidx = _dense_ids(columns.pop("item"))
    vals = columns.pop("rating")  # already in the dtype asked for (see _Columns)
    _check_magnitude(source, vals, header_lines)
    ts = columns.pop("timestamp")
    order = user_order(uidx, iidx)
    if order != UNORDERED:
        indptr = np.zeros(user_ids.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(uidx, minlength=user_ids.shape[0]), out=indptr[1:])
        if order == BY_USER_THEN_ITEM:
            # As in ML-20M/25M: the columns already are the by-user CSR, and distinct; only the
            # by-item transpose is left to build.
            del uidx
            return Ratings._from_user_csr(user_ids, item_ids, indptr, iidx, vals, ts)
        # Grouped by user, items in any order (as in ML-1M/10M): sorting within each user, in
        # cache, gives the by-user CSR; a repeated pair leaves it to the general path below,
        # which names or resolves it.
        within = row_order(indptr, iidx)
        user_items, user_values = np.empty_like(iidx), np.empty_like(vals)
        if not gather_rows(within, indptr, iidx, vals, user_items, user_values):
            del uidx, iidx, vals
            ts = None if ts is None else take(ts, within)
            del within
            return Ratings._from_user_csr(user_ids, item_ids, indptr, user_items, user_values, ts)
        del within, user_items, user_values
    try:
        # Ids are already mapped to sorted indices here: skip the mapping from_arrays would redo.
        return Ratings._from_indices(user_ids, item_ids, uidx, iidx, vals, ts, duplicates)
    except ValueError as exc:
        raise RatingsFileError(source.name, _with_lines(str(exc), header_lines)) from None


def _with_lines(message, header_lines):
    # Ratings counts data rows from 0; a reader of the file counts lines from 1.
    match = re.search(r"input rows (\d+) and (\d+)", message)
    if not match:
        return message
    a, b = (int(g) + 1 + header_lines for g in match.groups())
    return message.replace(match.group(0), f"lines {a} and {b}, counting no blank lines")


# -- read_ratings ----------------------------------------------------------------------------
def read_ratings(path, format=None, *, user=None, item=None, rating=None, timestamp=None,
                 sep=None, header=None, dtype=np.float64, duplicates="error", engine="auto"):
    """Read a rating file into :class:`~fastcofi.ratings.Ratings`.

    Parameters
    ----------
    path : str or os.PathLike
        A rating file, optionally ``.gz``-compressed, or a ``.zip`` of a MovieLens release (its
        ``ratings.csv``, ``ratings.dat`` or ``u.data`` is read).
    format : {"ml-100k", "ml-1m", "ml-latest", "csv", "tsv", "parquet"}, optional
        Detected from the file name, then from the first line, when not given:
        ``u.data`` / ``uN.base`` / ``uN.test`` are ML-100K (tab, no header: user, item, rating,
        timestamp); ``*.dat`` and lines holding ``::`` are ML-1M/10M; ``ratings.csv`` is
        ML-20M/25M/latest (header ``userId,movieId,rating,timestamp``). ``csv`` / ``tsv`` take a
        header naming the columns; a first line of numbers only means no header, and then the
        columns are user, item, rating[, timestamp].
    user, item, rating, timestamp : str or int, optional
        Column names (or 0-based positions). Defaults try common names case-insensitively:
        user/userId/user_id, item/itemId/movieId/item_id, rating/score, timestamp/time.
        ``timestamp=False`` ignores a timestamp column.
    sep : str, optional
        Field separator (one character, or ``"::"``); the format's own by default.
    header : bool, optional
        Whether the first line names the columns. By default the MovieLens formats say, and a
        CSV/TSV has a header unless its first line is numbers only; ``False`` reads a first line
        of string ids (``alice,pizza,4``) as data.
    dtype : {numpy.float64, numpy.float32}
        Storage type of the ratings.
    duplicates : {"error", "last", "mean"}
        A repeated (user, item) pair is an error naming both lines, or resolved as in
        :meth:`Ratings.from_arrays`.
    engine : {"auto", "pyarrow", "builtin"}
        ``auto`` takes pyarrow when it is installed (``pip install 'fastcofi[io]'``).

    Returns
    -------
    Ratings
        With ``timestamps`` (int64, shape (nnz,)) when the file has them.

    Notes
    -----
    Memory: besides the final arrays, the read holds a fixed ~150 MB (one 32 MiB block of text,
    the parsed tables of two blocks), then the id-mapped columns (4 + 4 + 8 + 8 bytes per rating
    with timestamps, float64) while the CSRs are built. On a 25M-line ``ratings.csv`` the peak
    growth measured 1.6x (lines ordered by user, then item) to 1.9x (any order) the final arrays.

    Raises
    ------
    RatingsFileError
        A ``ValueError`` naming the file, line and column, what was expected and what was found:
        among others for a rating that is not finite or is beyond ``1e150`` in magnitude (its
        square would overflow the objective), and for a UTF-16/UTF-32 file (re-save it as UTF-8).
    FileNotFoundError
        The path does not exist.
    """
    check_duplicates_policy(duplicates)
    source, columns, header_lines = _read_columns(
        path, format, user=user, item=item, rating=rating, timestamp=timestamp, sep=sep,
        header=header, dtype=dtype, engine=engine,
    )
    return _to_ratings(source, columns, duplicates, header_lines)


def _read_columns(path, format=None, *, user=None, item=None, rating=None, timestamp=None,
                  sep=None, header=None, dtype=np.float64, engine="auto"):
    """A rating file's rows as read, before ids are indexed and repeated pairs merged.

    The arguments are `read_ratings`'s, checked as it checks them. Returns ``(source, columns,
    header_lines)``: the `_Source` (its ``name`` for messages), `_Columns.finish`'s dict (rows
    in file order; ids as int32/int64 arrays or ``(labels, codes)``), and the header lines
    before the first row (for the line numbers of `_to_ratings`' messages).
    """
    if format is not None and format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS} or None, found {format!r}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, found {engine!r}")
    if sep is not None and (not isinstance(sep, str) or sep not in ("::",) and len(sep) != 1
                            or sep in ("\n", "\r", '"')):
        raise ValueError(f"sep must be one character or '::', found {sep!r}")
    if header not in (None, True, False):
        raise ValueError(f"header must be None, True or False, found {header!r}")
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise ValueError(f"dtype must be float64 or float32, found {dtype}")
    use_arrow = engine == "pyarrow" or (engine == "auto" and _have_pyarrow())
    if engine == "pyarrow" and not _have_pyarrow():
        raise ImportError("engine='pyarrow' needs pyarrow: pip install 'fastcofi[io]'")
    wanted = {"user": user, "item": item, "rating": rating, "timestamp": timestamp}
    source = _resolve(path, _RATING_MEMBERS)
    with source.open() as f:
        head = source.read(f, _SNIFF_BYTES)
    fmt = format or _detect_format(source, head)
    if fmt == "parquet":
        if not _have_pyarrow():
            raise ImportError(f"reading Parquet ({source.name}) needs pyarrow: "
                              "pip install 'fastcofi[io]'")
        layout, rows, batches = _arrow_parquet_batches(source, wanted)
        try:
            columns = _collect_arrow(source, layout, batches, dtype, rows)
        except _ArrowFailed as failure:
            raise RatingsFileError(source.name, failure.message) from None
        return source, columns, 0
    if not head.strip():
        raise RatingsFileError(source.name, "the file is empty; expected rating lines")
    _refuse_wide_unicode(source, head)
    if b"\x00" in head:
        at = head.index(b"\x00")
        raise RatingsFileError(
            source.name, "found NUL bytes: a binary file, expected delimited text",
            head.count(b"\n", 0, at) + 1, at - head.rfind(b"\n", 0, at),
        )
    layout = _make_layout(source, fmt, sep, head, wanted, header)
    if use_arrow:
        try:
            columns = _with_string_ids(
                lambda strings: _collect_arrow(
                    source, layout, _arrow_csv_batches(source, layout, strings), dtype
                )
            )
        except _ArrowFailed as failure:
            # pyarrow says what but not where: the builtin engine finds the line and column.
            _read_builtin_strings(source, layout, dtype)
            raise RatingsFileError(source.name, failure.message) from None
    else:
        columns = _read_builtin_strings(source, layout, dtype)
    return source, columns, layout.header_lines


def _make_layout(source, fmt, sep, head, wanted, header=None):
    sep, format_header = _format_layout(fmt, sep)
    first = _first_line(head)
    if first.startswith(b"\xef\xbb\xbf"):
        first = first[3:]
    fields = _split_line(first, sep)
    if header is None:
        has_header = format_header == "required" or (
            format_header == "sniff" and not _looks_numeric(fields)
        )
    else:
        has_header = bool(header)
    ncols = len(fields)
    if ncols < 3:
        other = _other_separators(sep, first)
        hint = f"; it holds {other[0]!r}: pass sep= or format=" if other else ""
        raise RatingsFileError(
            source.name,
            f"expected at least 3 {sep!r}-separated fields (user, item, rating) for format "
            f"{fmt!r}, found {ncols}{hint}: {_bytes_repr(first)}",
            line=1,
        )
    names = None
    if has_header:
        try:
            names = [_clean_name(f.decode("utf-8")) for f in fields]
        except UnicodeDecodeError:
            raise RatingsFileError(
                source.name, f"the header is not valid UTF-8: {first[:60]!r}", line=1
            ) from None
    chosen = _choose_columns(source, names if has_header else [None] * ncols, wanted, has_header)
    if not has_header:
        names = None
    return _Layout(sep, 1 if has_header else 0, ncols, chosen, names)
