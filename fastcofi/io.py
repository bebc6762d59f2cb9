"""Readers for rating and title files: file -> :class:`~fastcofi.ratings.Ratings`.

Two engines parse delimited text without making a Python object per rating:

- ``"pyarrow"`` (the optional extra ``fastcofi[io]``): pyarrow's multithreaded CSV reader, also
  used for Parquet;
- ``"builtin"``: a Numba byte parser over blocks of the file, always available. It also diagnoses
  every file pyarrow rejects, because pyarrow's messages carry no line numbers.

Every bad input raises :class:`RatingsFileError` (a ``ValueError``) whose message names the file,
the line and column where they apply, what was expected and what was found. A missing path raises
``FileNotFoundError`` naming it.
"""

import errno
import gzip
import io
import os
import re
import zipfile
import zlib
from pathlib import Path

import numba as nb
import numpy as np

from .ratings import Ratings

__all__ = ["RatingsFileError", "read_ratings", "read_titles", "ratings_from_dataframe"]

FORMATS = ("ml-100k", "ml-1m", "ml-latest", "csv", "tsv", "parquet")
ENGINES = ("auto", "pyarrow", "builtin")

# Column names tried, case-insensitively, when user=/item=/rating=/timestamp= are not given.
_DEFAULT_NAMES = {
    "user": ("user", "userid", "user_id", "users", "uid", "reviewerid", "customer_id"),
    "item": ("item", "itemid", "item_id", "movieid", "movie_id", "movie", "items", "iid", "asin",
             "product_id"),
    "rating": ("rating", "ratings", "score", "value", "stars", "overall"),
    "timestamp": ("timestamp", "time", "ts", "unixreviewtime", "date"),
}
_ROLES = ("user", "item", "rating", "timestamp")
# Blocks of this many bytes bound the builtin engine's working memory beyond its output arrays.
_BLOCK_BYTES = 1 << 25
# pyarrow's default 1 MiB blocks leave its threads idle on the per-block overhead.
_ARROW_BLOCK_BYTES = 1 << 24
_SNIFF_BYTES = 1 << 16


class RatingsFileError(ValueError):
    """A rating or title file that cannot be read as asked.

    Attributes
    ----------
    path : str
        The file (``archive.zip!member`` for a member of a zip archive).
    line, column : int or None
        1-based position of the problem, where it applies.
    """

    def __init__(self, path, message, line=None, column=None):
        where = str(path)
        if line is not None:
            where += f":{line}"
            if column is not None:
                where += f":{column}"
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.line = line
        self.column = column


# -- sources ---------------------------------------------------------------------------------
class _Source:
    """A file to read: where it is, what to call it in messages, how to open its bytes."""

    def __init__(self, path, member=None):
        self.path = path
        self.member = member
        self.gz = member is None and path.name.lower().endswith(".gz")
        self.name = f"{path}!{member}" if member else str(path)
        inner = member if member else path.name
        self.inner = inner[:-3] if self.gz else inner

    def open(self):
        """A binary file object; read errors surface as RatingsFileError through _read."""
        if self.member is not None:
            return zipfile.ZipFile(self.path).open(self.member)
        if self.gz:
            return gzip.open(self.path, "rb")
        return open(self.path, "rb")

    def read(self, f, n=-1):
        try:
            return f.read(n)
        except (EOFError, OSError, zlib.error, zipfile.BadZipFile) as exc:
            raise RatingsFileError(self.name, _compression_message(self, exc)) from None


def _compression_message(source, exc):
    if source.gz:
        if isinstance(exc, EOFError):
            return "truncated gzip file: the compressed stream ends before its end marker"
        return f"not a valid gzip file ({exc})"
    if source.member is not None:
        return f"cannot read the zip member ({exc})"
    return f"cannot read the file ({exc})"


def _resolve(path, wanted):
    """Check the path and pick the member of a zip archive; returns a _Source.

    ``wanted`` orders the member names to look for in an archive (ratings or titles).
    """
    path = Path(os.fspath(path))
    if not path.exists():
        raise FileNotFoundError(
            errno.ENOENT, f"no such file (expected a {wanted[0]} file)", str(path)
        )
    if path.is_dir():
        raise RatingsFileError(path, f"is a directory; expected a {wanted[0]} file")
    if path.name.lower().endswith(".zip"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if not n.endswith("/")]
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise RatingsFileError(path, f"not a valid zip archive ({exc})") from None
        for candidate in wanted:
            found = sorted(n for n in names if n.rsplit("/", 1)[-1] == candidate)
            if found:
                return _Source(path, found[0])
        listed = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        raise RatingsFileError(
            path, f"the archive holds no {' / '.join(wanted)}; found {listed or 'no files'}"
        )
    return _Source(path)


_RATING_MEMBERS = ("ratings.csv", "ratings.dat", "u.data", "ratings.tsv", "ratings.parquet")
_TITLE_MEMBERS = ("movies.csv", "movies.dat", "u.item", "movies.txt")


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
        f"{first[:60]!r}; pass format= one of {FORMATS}",
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


# -- column choice ---------------------------------------------------------------------------
def _choose_columns(source, names, wanted, has_header):
    """Field index of user, item, rating, timestamp (None where absent).

    ``names`` are the header's column names, or None for a headerless file, where the columns
    are user, item, rating[, timestamp] in that order unless integer positions are given.
    """
    n = len(names) if names is not None else None
    chosen = {}
    for role in _ROLES:
        spec = wanted[role]
        if spec is False:
            chosen[role] = None
            continue
        if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
            if not 0 <= int(spec) < n:
                raise RatingsFileError(
                    source.name, f"{role}={spec} is not a column position; the file has {n} columns"
                )
            chosen[role] = int(spec)
            continue
        if spec is not None and not isinstance(spec, str):
            raise ValueError(f"{role} must be a column name or position, found {spec!r}")
        if not has_header:
            if spec is not None:
                raise RatingsFileError(
                    source.name,
                    f"{role}={spec!r} names a column but the file has no header; "
                    "give a column position (an int) instead",
                    line=1,
                )
            default = _ROLES.index(role)
            chosen[role] = default if default < n else None
            continue
        if spec is not None:
            matches = [i for i, nm in enumerate(names) if nm == spec]
            if not matches:
                raise RatingsFileError(
                    source.name, f"no column named {role}={spec!r}; the header has {names}", line=1
                )
            chosen[role] = matches[0]
            continue
        lowered = [nm.lower() for nm in names]
        chosen[role] = next(
            (lowered.index(c) for c in _DEFAULT_NAMES[role] if c in lowered), None
        )
        if chosen[role] is None and role != "timestamp":
            raise RatingsFileError(
                source.name,
                f"no {role} column: expected one named like {_DEFAULT_NAMES[role][:4]} "
                f"(or pass {role}=), found the header {names}",
                line=1,
            )
    if chosen["user"] is None or chosen["item"] is None or chosen["rating"] is None:
        missing = [r for r in ("user", "item", "rating") if chosen[r] is None]
        raise RatingsFileError(
            source.name, f"expected at least 3 columns (user, item, rating), found {n}; "
            f"missing {missing}", line=1,
        )
    used = [chosen[r] for r in _ROLES if chosen[r] is not None]
    if len(set(used)) != len(used):
        raise RatingsFileError(source.name, f"two roles use the same column: {chosen}")
    return chosen


# -- the builtin engine: a Numba byte parser ---------------------------------------------------
_OK, _TOO_FEW, _TOO_MANY, _EMPTY, _BAD_INT, _BAD_FLOAT, _NONFINITE = range(7)
# Exactly representable powers of ten: mantissa * or / these is correctly rounded (Clinger).
_POW10 = np.array([10.0**k for k in range(23)])


@nb.njit(cache=True, nogil=True)
def _is_sep(buf, pos, n, sep0, sep_len):
    if buf[pos] != sep0:
        return False
    return sep_len == 1 or (pos + 1 < n and buf[pos + 1] == sep0)


@nb.njit(cache=True, nogil=True)
def _trim(buf, start, end):
    while start < end and (buf[start] == 32 or buf[start] == 34):  # spaces, a quote
        start += 1
    while end > start and (buf[end - 1] == 32 or buf[end - 1] == 34):
        end -= 1
    return start, end


@nb.njit(cache=True, nogil=True)
def _parse_int(buf, start, end):
    """(ok, value): an optionally signed decimal integer of at most 18 digits."""
    start, end = _trim(buf, start, end)
    neg = False
    if start < end and (buf[start] == 45 or buf[start] == 43):
        neg = buf[start] == 45
        start += 1
    if start >= end or end - start > 18:
        return False, 0
    value = 0
    for p in range(start, end):
        d = np.int64(buf[p]) - 48  # int64: uint8 arithmetic would wrap without the JIT
        if d < 0 or d > 9:
            return False, 0
        value = value * 10 + d
    return True, -value if neg else value


@nb.njit(cache=True, nogil=True)
def _lower(c):
    return c + 32 if 65 <= c <= 90 else c


@nb.njit(cache=True, nogil=True)
def _word(buf, start, end, word):
    if end - start != len(word):
        return False
    for k in range(len(word)):
        if _lower(buf[start + k]) != word[k]:
            return False
    return True


@nb.njit(cache=True, nogil=True)
def _parse_float(buf, start, end, pow10, nan_w, inf_w, infinity_w):
    """(ok, value): decimal with optional fraction and exponent; nan/inf words too."""
    start, end = _trim(buf, start, end)
    neg = False
    if start < end and (buf[start] == 45 or buf[start] == 43):
        neg = buf[start] == 45
        start += 1
    if start >= end:
        return False, 0.0
    if _word(buf, start, end, nan_w):
        return True, np.nan
    if _word(buf, start, end, inf_w) or _word(buf, start, end, infinity_w):
        return True, -np.inf if neg else np.inf
    mant = 0
    exp10 = 0
    digits = 0
    p = start
    while p < end and 48 <= buf[p] <= 57:
        if mant < 100000000000000000:
            mant = mant * 10 + (np.int64(buf[p]) - 48)
        else:
            exp10 += 1
        digits += 1
        p += 1
    if p < end and buf[p] == 46:
        p += 1
        while p < end and 48 <= buf[p] <= 57:
            if mant < 100000000000000000:
                mant = mant * 10 + (np.int64(buf[p]) - 48)
                exp10 -= 1
            digits += 1
            p += 1
    if digits == 0:
        return False, 0.0
    if p < end and (buf[p] == 101 or buf[p] == 69):
        p += 1
        eneg = False
        if p < end and (buf[p] == 45 or buf[p] == 43):
            eneg = buf[p] == 45
            p += 1
        if p >= end:
            return False, 0.0
        e = 0
        while p < end and 48 <= buf[p] <= 57:
            if e < 100000:
                e = e * 10 + (np.int64(buf[p]) - 48)
            p += 1
        exp10 += -e if eneg else e
    if p != end:
        return False, 0.0
    value = float(mant)
    if mant < 9007199254740992 and -22 <= exp10 <= 22:
        value = value * pow10[exp10] if exp10 >= 0 else value / pow10[-exp10]
    else:
        # Outside the exact range: within a few ulps, far below any rating's precision.
        value = value * 10.0**exp10
    return True, -value if neg else value


@nb.njit(cache=True, nogil=True)
def _parse_block(buf, sep0, sep_len, ncols, slot_of_field, string_slot, out_int, out_end,
                 out_float, pow10, nan_w, inf_w, infinity_w):
    """Parse whole lines of ``buf`` into columns.

    ``slot_of_field[f]`` is 0 user, 1 item, 2 rating, 3 timestamp or -1 (ignored). Integer slots
    fill ``out_int[slot]``; a slot with ``string_slot[slot]`` stores its field's start and end
    offsets in ``out_int`` / ``out_end`` instead. Blank lines are skipped.

    Returns (n_rows, status, line index in block, field index, byte offset of the problem).
    """
    n = buf.shape[0]
    pos = 0
    row = 0
    line = 0
    while pos < n:
        if buf[pos] == 10:
            pos += 1
            line += 1
            continue
        if buf[pos] == 13 and (pos + 1 == n or buf[pos + 1] == 10):
            pos += 2
            line += 1
            continue
        line_start = pos
        field = 0
        while True:
            start = pos
            while pos < n and buf[pos] != 10 and not _is_sep(buf, pos, n, sep0, sep_len):
                pos += 1
            end = pos
            if (pos == n or buf[pos] == 10) and end > start and buf[end - 1] == 13:
                end -= 1
            if field >= ncols:
                return row, _TOO_MANY, line, field, start
            slot = slot_of_field[field]
            if slot >= 0:
                s, e = _trim(buf, start, end)
                if s == e:
                    return row, _EMPTY, line, field, start
                if slot == 2:
                    ok, v = _parse_float(buf, start, end, pow10, nan_w, inf_w, infinity_w)
                    if not ok:
                        return row, _BAD_FLOAT, line, field, start
                    if not np.isfinite(v):
                        return row, _NONFINITE, line, field, start
                    out_float[row] = v
                elif string_slot[slot]:
                    out_int[slot, row] = s
                    out_end[slot, row] = e
                else:
                    ok, iv = _parse_int(buf, start, end)
                    if not ok:
                        return row, _BAD_INT, line, field, start
                    out_int[slot, row] = iv
            field += 1
            if pos < n and buf[pos] != 10:
                pos += sep_len
                continue
            break
        if field < ncols:
            return row, _TOO_FEW, line, field, line_start
        row += 1
        line += 1
        pos += 1
    return row, _OK, line, 0, n


_SLOT_ROLE = ("user", "item", "rating", "timestamp")


class _Layout:
    """What one read needs to know: separator, header lines, field count, field -> role."""

    def __init__(self, sep, header_lines, ncols, chosen, names):
        self.sep = sep
        self.header_lines = header_lines
        self.ncols = ncols
        self.chosen = chosen
        self.names = names

    def field_label(self, field):
        role = next((r for r in _ROLES if self.chosen[r] == field), None)
        name = self.names[field] if self.names is not None and field < len(self.names) else None
        label = f"field {field + 1}"
        if name:
            label += f" ({name!r}"
            label += f", the {role})" if role else ")"
        elif role:
            label += f" (the {role})"
        return label


def _bytes_repr(raw):
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return f"invalid UTF-8 bytes {raw[:40]!r}"
    return repr(text[:40]) if text else "an empty field"


def _builtin_error(source, layout, block, status, line_in_block, field, pos, lines_before):
    line_start = block.rfind(b"\n", 0, pos) + 1
    line_end = block.find(b"\n", pos)
    line_end = len(block) if line_end < 0 else line_end
    lineno = lines_before + line_in_block + 1
    column = pos - line_start + 1
    text = block[line_start:line_end].rstrip(b"\r")
    sep_name = {"\t": "tab", ",": "comma", "::": "'::'"}.get(layout.sep, repr(layout.sep))
    if status in (_TOO_FEW, _TOO_MANY):
        found = text.count(layout.sep.encode()) + 1
        other = [s for s in ("\t", ",", "::", ";", "|") if s != layout.sep and s.encode() in text]
        hint = f" (it holds {other[0]!r}: mixed separators?)" if other else ""
        return RatingsFileError(
            source.name,
            f"expected {layout.ncols} {sep_name}-separated fields, found {found}{hint}: "
            f"{_bytes_repr(text)}",
            lineno,
            column if status == _TOO_MANY else None,
        )
    sep_bytes = layout.sep.encode()
    field_end = block.find(sep_bytes, pos, line_end)
    raw = block[pos:(line_end if field_end < 0 else field_end)].rstrip(b"\r")
    label = layout.field_label(field)
    if status == _EMPTY:
        message = f"{label}: expected a value, found an empty field"
    elif status == _NONFINITE:
        message = f"{label}: ratings must be finite numbers, found {_bytes_repr(raw)}"
    elif status == _BAD_FLOAT:
        message = f"{label}: expected a number, found {_bytes_repr(raw)}"
    else:
        message = f"{label}: expected an integer, found {_bytes_repr(raw)}"
    return RatingsFileError(source.name, message, lineno, column)


class _NeedStrings(Exception):
    """An id column holds something other than integers: reread it as strings."""

    def __init__(self, slot):
        self.slot = slot


def _read_builtin(source, layout, string_slots=(False, False)):
    """Parse a delimited file with the Numba kernel, block by block.

    Returns user ids, item ids, ratings and timestamps (or None) as arrays of shape (nnz,);
    ids are int64, or fixed-width bytes for a column read as strings.
    """
    sep = layout.sep.encode()
    slot_of_field = np.full(layout.ncols, -1, dtype=np.int64)
    for slot, role in enumerate(_SLOT_ROLE):
        if layout.chosen[role] is not None:
            slot_of_field[layout.chosen[role]] = slot
    string_slot = np.array(list(string_slots) + [False, False], dtype=np.bool_)
    words = [np.frombuffer(w, dtype=np.uint8) for w in (b"nan", b"inf", b"infinity")]
    parts = {k: [] for k in ("user", "item", "rating", "timestamp")}
    lines_before = 0
    with source.open() as f:
        for _ in range(layout.header_lines):
            try:
                header = f.readline()
            except (EOFError, OSError, zlib.error, zipfile.BadZipFile) as exc:
                raise RatingsFileError(source.name, _compression_message(source, exc)) from None
            lines_before += 1 if header else 0
        rest = b""
        while True:
            chunk = source.read(f, _BLOCK_BYTES)
            data = rest + chunk
            if not data:
                break
            if chunk:
                cut = data.rfind(b"\n") + 1
                block, rest = data[:cut], data[cut:]
                if not block:
                    rest = data
                    continue
            else:
                block, rest = data, b""
            if any(string_slots):
                _check_utf8(source, block, lines_before)
            buf = np.frombuffer(block, dtype=np.uint8)
            max_rows = block.count(b"\n") + 1
            out_int = np.empty((4, max_rows), dtype=np.int64)
            out_end = np.empty((2, max_rows if any(string_slots) else 0), dtype=np.int64)
            out_float = np.empty(max_rows, dtype=np.float64)
            rows, status, line, field, pos = _parse_block(
                buf, sep[0], len(sep), layout.ncols, slot_of_field, string_slot, out_int,
                out_end,
                out_float, _POW10, *words,
            )
            if status == _BAD_INT and slot_of_field[field] in (0, 1):
                raise _NeedStrings(int(slot_of_field[field]))
            if status != _OK:
                raise _builtin_error(source, layout, block, status, line, field, pos, lines_before)
            for slot, role in enumerate(("user", "item")):
                if string_slots[slot]:
                    parts[role].append(_gather_strings(buf, out_int[slot, :rows], out_end[slot, :rows]))
                else:
                    parts[role].append(out_int[slot, :rows].copy())
            parts["rating"].append(out_float[:rows].copy())
            if layout.chosen["timestamp"] is not None:
                parts["timestamp"].append(out_int[3, :rows].copy())
            lines_before += block.count(b"\n")
            if not chunk:
                break
    if not parts["rating"] or sum(p.shape[0] for p in parts["rating"]) == 0:
        raise RatingsFileError(source.name, _no_rows_message(layout))
    out = [np.concatenate(parts[k]) for k in ("user", "item", "rating")]
    ts = np.concatenate(parts["timestamp"]) if parts["timestamp"] else None
    return out[0], out[1], out[2], ts


def _check_utf8(source, block, lines_before):
    """String ids must decode; checking the block is one fast C pass."""
    try:
        block.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = block.rfind(b"\n", 0, exc.start) + 1
        raise RatingsFileError(
            source.name,
            f"expected UTF-8 text, found invalid UTF-8 bytes {block[exc.start:exc.end + 3]!r}",
            lines_before + block.count(b"\n", 0, exc.start) + 1,
            exc.start - line_start + 1,
        ) from None


def _no_rows_message(layout):
    if layout.header_lines:
        return "no ratings: the file holds a header line and no data rows"
    return "no ratings: the file holds no data rows"


def _gather_strings(buf, starts, ends):
    """Fields as a fixed-width bytes array (no Python object per field)."""
    lengths = ends - starts
    width = int(lengths.max()) if lengths.shape[0] else 1
    width = max(width, 1)
    offsets = np.arange(width, dtype=np.int64)
    idx = starts[:, None] + offsets[None, :]
    inside = offsets[None, :] < lengths[:, None]
    np.minimum(idx, buf.shape[0] - 1, out=idx)
    mat = np.where(inside, buf[idx], 0).astype(np.uint8)
    return np.ascontiguousarray(mat).view(f"S{width}").reshape(-1)


# -- the pyarrow engine ----------------------------------------------------------------------
def _have_pyarrow():
    try:
        import pyarrow.csv  # noqa: F401
    except ImportError:
        return False
    return True


class _ArrowFailed(Exception):
    """pyarrow refused the file; the builtin engine is asked for a precise diagnosis."""

    def __init__(self, message):
        self.message = message


def _read_arrow_csv(source, layout):
    import pyarrow as pa
    import pyarrow.csv as pacsv

    sep = layout.sep
    if len(sep) == 2:
        # pyarrow splits on one character; "a::b" becomes a, <empty>, b.
        names = [f"f{k}" for k in range(2 * layout.ncols - 1)]
        field_of = {role: 2 * f for role, f in layout.chosen.items() if f is not None}
        gaps = [names[k] for k in range(1, len(names), 2)]
        sep = sep[0]
    else:
        names = [f"f{k}" for k in range(layout.ncols)]
        field_of = {role: f for role, f in layout.chosen.items() if f is not None}
        gaps = []
    wanted = {role: names[f] for role, f in field_of.items()}
    types = {wanted["rating"]: pa.float64()}
    if "timestamp" in wanted:
        types[wanted["timestamp"]] = pa.int64()
    for gap in gaps:
        types[gap] = pa.null()
    read = pacsv.ReadOptions(
        column_names=names, skip_rows=layout.header_lines, block_size=_ARROW_BLOCK_BYTES
    )
    parse = pacsv.ParseOptions(delimiter=sep, newlines_in_values=False, ignore_empty_lines=True)
    convert = pacsv.ConvertOptions(
        column_types=types,
        include_columns=list(wanted.values()) + gaps,
        null_values=[""],
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    if source.member is not None:
        opened = source.open()
    elif source.gz:
        opened = pa.input_stream(str(source.path), compression="gzip")
    else:
        opened = str(source.path)
    try:
        table = pacsv.read_csv(opened, read_options=read, parse_options=parse, convert_options=convert)
    except (pa.ArrowException, OSError, EOFError, zlib.error, UnicodeDecodeError, ValueError) as exc:
        raise _ArrowFailed(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    finally:
        if not isinstance(opened, str):
            opened.close()
    for gap in gaps:
        if table.column(gap).null_count != table.num_rows:
            raise _ArrowFailed("a single ':' where '::' separates fields")
    return _arrow_columns(source, layout, {role: table.column(name) for role, name in wanted.items()})


def _read_arrow_parquet(source, wanted):
    import pyarrow as pa
    import pyarrow.parquet as pq

    if source.member is not None or source.gz:
        raise RatingsFileError(source.name, "Parquet is read from a plain file, not from .gz or .zip")
    try:
        schema = pq.read_schema(str(source.path))
    except (pa.ArrowException, OSError) as exc:
        raise RatingsFileError(source.name, f"not a readable Parquet file ({exc})") from None
    names = list(schema.names)
    chosen = _choose_columns(source, names, wanted, has_header=True)
    cols = {role: names[f] for role, f in chosen.items() if f is not None}
    try:
        table = pq.read_table(str(source.path), columns=list(dict.fromkeys(cols.values())))
    except (pa.ArrowException, OSError) as exc:
        raise RatingsFileError(source.name, f"not a readable Parquet file ({exc})") from None
    layout = _Layout(None, 0, len(names), chosen, names)
    return _arrow_columns(source, layout, {role: table.column(name) for role, name in cols.items()})


def _arrow_ids(source, layout, role, column):
    """Integer ids as int64, other ids as a sorted-unique-ready fixed-width bytes array."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if column.null_count:
        raise _ArrowFailed(f"missing {role} ids")
    typ = column.type
    if pa.types.is_integer(typ):
        return column.to_numpy().astype(np.int64, copy=False)
    if pa.types.is_floating(typ) or pa.types.is_decimal(typ):
        values = column.to_numpy().astype(np.float64)
        as_int = values.astype(np.int64)
        if not np.all(np.isfinite(values)) or not np.array_equal(as_int, values):
            raise _ArrowFailed(f"non-integer numeric {role} ids")
        return as_int
    if pa.types.is_dictionary(typ):
        column = column.cast(typ.value_type)
        typ = column.type
    if pa.types.is_binary(typ) or pa.types.is_large_binary(typ):
        raise _ArrowFailed(f"the {role} ids are not valid UTF-8")
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        # Dictionary encoding keeps one Python string per distinct id, none per rating.
        encoded = pc.dictionary_encode(column.combine_chunks())
        labels = np.array(encoded.dictionary.to_pylist(), dtype=str)
        codes = encoded.indices.to_numpy().astype(np.int64)
        return labels, codes
    raise RatingsFileError(
        source.name, f"the {role} column has type {typ}; expected integer or string ids"
    )


def _arrow_columns(source, layout, columns):
    import pyarrow as pa

    if len(columns["rating"]) == 0:
        raise RatingsFileError(source.name, _no_rows_message(layout))
    out = {}
    for role in ("user", "item"):
        out[role] = _arrow_ids(source, layout, role, columns[role])
    rating = columns["rating"]
    if not (pa.types.is_integer(rating.type) or pa.types.is_floating(rating.type)):
        raise _ArrowFailed(f"non-numeric rating column of type {rating.type}")
    if rating.null_count:
        raise _ArrowFailed("missing ratings")
    values = rating.to_numpy().astype(np.float64, copy=False)
    if not np.isfinite(values).all():
        raise _ArrowFailed("non-finite ratings")
    ts = None
    if "timestamp" in columns:
        col = columns["timestamp"]
        if col.null_count:
            raise _ArrowFailed("missing timestamps")
        if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
            col = col.cast(pa.timestamp("s")).cast(pa.int64())
        if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
            raise RatingsFileError(
                source.name,
                f"the timestamp column has type {col.type}; expected numbers "
                "(pass timestamp=False to skip it)",
            )
        ts = col.to_numpy()
    return out["user"], out["item"], values, ts


# -- ids -> Ratings --------------------------------------------------------------------------
def _dense_ids(ids):
    """Sorted unique ids and the index of each, int32 where it fits.

    ``ids`` is an int64 array, a fixed-width bytes array, or ``(labels, codes)`` from a
    dictionary encoding. Integer ids in a compact range are mapped by a lookup table (O(n)),
    which is several times faster than sorting tens of millions of them.
    """
    if isinstance(ids, tuple):
        labels, codes = ids
        order = np.argsort(labels, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.shape[0])
        return labels[order], rank[codes]
    if ids.dtype.kind == "S":
        uniq, index = np.unique(ids, return_inverse=True)
        # Byte order of UTF-8 equals code point order, so the decoded labels stay sorted.
        labels = np.array([u.decode("utf-8") for u in uniq.tolist()], dtype=str)
        if labels.shape[0] != uniq.shape[0] or np.unique(labels).shape[0] != labels.shape[0]:
            labels, index = np.unique(labels[index], return_inverse=True)
        return labels, index.reshape(-1)
    lo, hi = int(ids.min()), int(ids.max())
    span = hi - lo + 1
    if span <= 4 * ids.shape[0] + (1 << 20):
        present = np.zeros(span, dtype=np.bool_)
        shifted = ids - lo
        present[shifted] = True
        uniq = np.flatnonzero(present) + lo
        lookup = np.cumsum(present, dtype=np.int64) - 1
        index_dtype = np.int32 if uniq.shape[0] < 2**31 - 1 else np.int64
        return uniq.astype(np.int64), lookup.astype(index_dtype)[shifted]
    uniq, index = np.unique(ids, return_inverse=True)
    return uniq, index.reshape(-1)


def _to_ratings(source, users, items, values, ts, dtype, duplicates, header_lines):
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise ValueError(f"dtype must be float64 or float32, found {dtype}")
    if duplicates not in ("error", "last", "mean"):
        raise ValueError(f"duplicates must be 'error', 'last' or 'mean', found {duplicates!r}")
    user_ids, uidx = _dense_ids(users)
    item_ids, iidx = _dense_ids(items)
    vals = values.astype(dtype, copy=False)
    if dtype == np.float32 and not np.isfinite(vals).all():
        raise RatingsFileError(source.name, "ratings overflow float32; use dtype=np.float64")
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
                 sep=None, dtype=np.float64, duplicates="error", engine="auto"):
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

    Raises
    ------
    RatingsFileError
        A ``ValueError`` naming the file, line and column, what was expected and what was found.
    FileNotFoundError
        The path does not exist.
    """
    if format is not None and format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS} or None, found {format!r}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, found {engine!r}")
    if sep is not None and (not isinstance(sep, str) or sep not in ("::",) and len(sep) != 1
                            or sep in ("\n", "\r", '"')):
        raise ValueError(f"sep must be one character or '::', found {sep!r}")
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
        users, items, values, ts = _read_arrow_parquet(source, wanted)
        return _to_ratings(source, users, items, values, ts, dtype, duplicates, 0)
    if not head.strip():
        raise RatingsFileError(source.name, "the file is empty; expected rating lines")
    if b"\x00" in head:
        at = head.index(b"\x00")
        raise RatingsFileError(
            source.name, "found NUL bytes: a binary file, expected delimited text",
            head.count(b"\n", 0, at) + 1, at - head.rfind(b"\n", 0, at),
        )
    layout = _make_layout(source, fmt, sep, head, wanted)
    if use_arrow:
        try:
            users, items, values, ts = _read_arrow_csv(source, layout)
        except _ArrowFailed as failure:
            # pyarrow says what but not where: the builtin engine finds the line and column.
            _read_builtin_strings(source, layout)
            raise RatingsFileError(source.name, failure.message) from None
    else:
        users, items, values, ts = _read_builtin_strings(source, layout)
    return _to_ratings(source, users, items, values, ts, dtype, duplicates, layout.header_lines)


def _read_builtin_strings(source, layout):
    string_slots = [False, False]
    while True:
        try:
            return _read_builtin(source, layout, tuple(string_slots))
        except _NeedStrings as need:
            string_slots[need.slot] = True


def _make_layout(source, fmt, sep, head, wanted):
    sep, header = _format_layout(fmt, sep)
    first = _first_line(head)
    if first.startswith(b"\xef\xbb\xbf"):
        first = first[3:]
    fields = _split_line(first, sep)
    has_header = header == "required" or (header == "sniff" and not _looks_numeric(fields))
    ncols = len(fields)
    if ncols < 3:
        other = [s for s in ("\t", ",", "::", ";", "|") if s != sep and s.encode() in first]
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


# -- read_titles -----------------------------------------------------------------------------
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
        id_col = next((lowered.index(c) for c in ("movieid", "itemid", "item", "id") if c in lowered), None)
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


# -- data frames -----------------------------------------------------------------------------
def ratings_from_dataframe(df, *, user="user", item="item", rating="rating", timestamp=None,
                           dtype=np.float64, duplicates="error"):
    """Build :class:`~fastcofi.ratings.Ratings` from a data frame's columns.

    Attached as ``Ratings.from_dataframe``. Works with pandas, polars, a pyarrow Table or a dict
    of arrays: anything whose ``df[name]`` gives a column convertible with ``numpy.asarray``.

    Parameters
    ----------
    df : DataFrame-like
    user, item, rating : str
        Column names of the user ids, item ids (integers or strings) and ratings (numbers).
    timestamp : str, optional
        Column of timestamps to keep.
    dtype, duplicates
        As in :meth:`Ratings.from_arrays`.

    Returns
    -------
    Ratings
    """
    columns = _frame_columns(df)
    picked = {}
    for role, name in (("user", user), ("item", item), ("rating", rating), ("timestamp", timestamp)):
        if name is None:
            continue
        if columns is not None and name not in columns:
            raise ValueError(f"{role}={name!r} is not a column of the data frame; found {columns}")
        try:
            col = df[name]
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"{role}={name!r} is not a column of the data frame") from None
        picked[role] = _column_array(col, role)
    return Ratings.from_arrays(
        picked["user"], picked["item"], picked["rating"], dtype=dtype, duplicates=duplicates,
        timestamps=picked.get("timestamp"),
    )


def _frame_columns(df):
    cols = getattr(df, "columns", None)
    if cols is None and isinstance(df, dict):
        cols = df.keys()
    if cols is None:
        names = getattr(df, "column_names", None)
        return list(names) if names is not None else None
    return [str(c) if not isinstance(c, str) else c for c in list(cols)]


def _column_array(col, role):
    if hasattr(col, "to_numpy"):
        try:
            arr = col.to_numpy()
        except TypeError:
            arr = col.to_numpy(zero_copy_only=False)
    else:
        arr = np.asarray(col)
    arr = np.asarray(arr)
    if role == "rating" and arr.dtype == object:
        # pandas' nullable floats come out as objects holding pd.NA.
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"the {role} column must hold numbers, found objects") from None
    return arr
