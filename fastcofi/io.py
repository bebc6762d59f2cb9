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

import contextlib
import errno
import gzip
import io
import json
import os
import re
import tempfile
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from . import _kernels
from .ratings import Ratings, _index_dtype, check_duplicates_policy, unique_ids

__all__ = [
    "ModelFileError",
    "RatingsFileError",
    "load_model",
    "model_info",
    "ratings_from_dataframe",
    "read_ratings",
    "read_titles",
    "save_model",
]

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
# Both engines read the file in blocks of this many bytes: it bounds their working memory beyond
# the output columns (a block, and its parsed columns: about 2x the block).
_BLOCK_BYTES = 1 << 25
# pyarrow parses a block in pieces of this size: large enough that the per-piece overhead stays
# negligible.
_ARROW_BLOCK_BYTES = 1 << 22
# Names the CSV parse workers, so that tests can tell they ended.
_CSV_THREAD_PREFIX = "fastcofi-csv"
# Parquet is converted a batch of this many rows at a time.
_PARQUET_BATCH_ROWS = 1 << 20
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
        return self._call(f.read, n)

    def readinto(self, f, view):
        return self._call(f.readinto, view)

    def readline(self, f):
        return self._call(f.readline)

    def size(self):
        """Bytes of the (uncompressed) data, or None where only reading it would tell."""
        if self.member is not None:
            with zipfile.ZipFile(self.path) as archive:
                return archive.getinfo(self.member).file_size
        return None if self.gz else self.path.stat().st_size

    def _call(self, method, *args):
        try:
            return method(*args)
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


# -- the builtin engine: a Numba byte parser (its kernels are in _kernels) -----------------------
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
    if status in (_kernels.PARSE_TOO_FEW, _kernels.PARSE_TOO_MANY):
        found = text.count(layout.sep.encode()) + 1
        other = [s for s in ("\t", ",", "::", ";", "|") if s != layout.sep and s.encode() in text]
        hint = f" (it holds {other[0]!r}: mixed separators?)" if other else ""
        return RatingsFileError(
            source.name,
            f"expected {layout.ncols} {sep_name}-separated fields, found {found}{hint}: "
            f"{_bytes_repr(text)}",
            lineno,
            column if status == _kernels.PARSE_TOO_MANY else None,
        )
    sep_bytes = layout.sep.encode()
    field_end = block.find(sep_bytes, pos, line_end)
    raw = block[pos:(line_end if field_end < 0 else field_end)].rstrip(b"\r")
    label = layout.field_label(field)
    if status == _kernels.PARSE_EMPTY:
        message = f"{label}: expected a value, found an empty field"
    elif status == _kernels.PARSE_NONFINITE:
        message = f"{label}: ratings must be finite numbers, found {_bytes_repr(raw)}"
    elif status == _kernels.PARSE_BAD_FLOAT:
        message = f"{label}: expected a number, found {_bytes_repr(raw)}"
    else:
        message = f"{label}: expected an integer, found {_bytes_repr(raw)}"
    return RatingsFileError(source.name, message, lineno, column)


class _NeedStrings(Exception):
    """An id column holds something other than integers: reread it as strings."""

    def __init__(self, slot):
        self.slot = slot


def _blocks(source, header_lines, block_bytes, count_lines=True, n_buffers=1):
    """The data lines of a file, in blocks of whole lines read into reused buffers.

    Yields
    ------
    block : memoryview of bytes
        About ``block_bytes`` of whole lines (the last block may lack its final newline). Valid
        until ``n_buffers`` more blocks are asked for: the buffers are reused in turn, so no
        block is allocated and page-faulted anew.
    lines_before : int or None
        Lines of the file before the block, the header included, for 1-based line numbers.
    newlines : int or None
        Newlines in the block. Both are None without ``count_lines`` (counting costs a pass).
    """
    with source.open() as f:
        lines_before = 0
        for _ in range(header_lines):
            lines_before += 1 if source.readline(f) else 0
        buffers = [bytearray(block_bytes) for _ in range(n_buffers)]
        turn = 0
        data = buffers[0]
        filled = 0
        if header_lines == 0:
            # A UTF-8 byte order mark before the first line is not data (pyarrow drops it too;
            # with a header it goes with the header line).
            filled = source.readinto(f, memoryview(data)[:3])
            if bytes(data[:filled]) == b"\xef\xbb\xbf":
                filled = 0
        while True:
            if filled == len(data):
                # A line longer than the buffer. A new buffer rather than a resize: blocks
                # already handed out may still export the old one.
                data = buffers[turn] = data + bytearray(len(data))
            got = source.readinto(f, memoryview(data)[filled:])
            end = filled + got
            cut = data.rfind(b"\n", 0, end) + 1 if got else end
            if got and cut == 0:
                filled = end
                continue
            if cut == 0:
                return
            newlines = data.count(b"\n", 0, cut) if count_lines else None
            yield memoryview(data)[:cut], lines_before if count_lines else None, newlines
            if not got:
                return
            if count_lines:
                lines_before += newlines
            # The partial last line starts the next buffer. Same-length slice assignment: allowed
            # while a block's view of that buffer is alive.
            turn = (turn + 1) % n_buffers
            following = buffers[turn]
            if len(following) < end - cut:
                following = buffers[turn] = bytearray(len(data))
            following[:end - cut] = data[cut:end]
            data = following
            filled = end - cut


class _Columns:
    """The columns of a file read block by block, appended to buffers grown in place.

    Integer ids are stored as int32 while they fit (int64 from the first block where they do
    not); string ids as codes into the labels of their block, offset so that the codes of all
    blocks index one concatenation of the labels. Ratings are stored in the ``dtype`` asked for.
    No column is ever held twice, and no Python object is made per rating.

    Parameters
    ----------
    source : _Source
    dtype : numpy.dtype
        float64 or float32.
    has_timestamps : bool
    """

    def __init__(self, source, dtype, has_timestamps):
        self.source = source
        self.dtype = np.dtype(dtype)
        self.has_timestamps = has_timestamps
        self.total_bytes = source.size()
        self.n = 0
        self.capacity = 0
        self.ids = {"user": None, "item": None}
        self.labels = {"user": None, "item": None}
        self.n_labels = {"user": 0, "item": 0}
        self.values = None
        self.timestamps = None

    def _arrays(self):
        return [a for a in (*self.ids.values(), self.values, self.timestamps) if a is not None]

    def reserve(self, rows):
        """Room for ``rows`` ratings in all.

        Room never written costs no memory (``np.empty`` maps it lazily); growing later goes
        through ``realloc``, which moves large buffers without copying them.
        """
        if rows <= self.capacity:
            return
        if self.values is None:
            self.ids = {role: np.empty(rows, dtype=np.int32) for role in self.ids}
            self.values = np.empty(rows, dtype=self.dtype)
            self.timestamps = np.empty(rows, dtype=np.int64) if self.has_timestamps else None
        else:
            for arr in self._arrays():
                arr.resize(rows, refcheck=False)
        self.capacity = rows

    def plan(self, rows, nbytes):
        """Before the first block: reserve for the whole file, from the rows per byte seen."""
        if self.capacity == 0 and self.total_bytes and nbytes:
            self.reserve(int(rows * self.total_bytes / nbytes * 1.05) + 1024)

    def append(self, users, items, values, timestamps):
        """Add a block: ids as int arrays or ``(labels, codes)``, ratings finite, shape (m,)."""
        m = values.shape[0]
        if m == 0:
            return
        if self.n + m > self.capacity:
            self.reserve(max(self.n + m, self.capacity + self.capacity // 2, 1 << 16))
        lo, hi = self.n, self.n + m
        for role, ids in (("user", users), ("item", items)):
            if isinstance(ids, tuple):
                labels, codes = ids
                if self.labels[role] is None:
                    self.labels[role] = []
                ids = codes.astype(np.int64, copy=False) + self.n_labels[role]
                self.labels[role].append(labels)
                self.n_labels[role] += labels.shape[0]
            buf = self.ids[role]
            if buf.dtype == np.int32 and (ids.min() < -_INT32_LIMIT or ids.max() >= _INT32_LIMIT):
                buf = self.ids[role] = buf.astype(np.int64)
            buf[lo:hi] = ids
        out = self.values[lo:hi]
        with np.errstate(over="ignore"):  # float32 overflow is reported just below
            out[...] = values
        if self.dtype == np.float32 and not np.isfinite(out).all():
            raise RatingsFileError(
                self.source.name, "ratings overflow float32; use dtype=np.float64"
            )
        if self.timestamps is not None:
            self.timestamps[lo:hi] = timestamps
        self.n = hi

    def finish(self, layout):
        """The columns, trimmed in place: a dict of user, item, rating, timestamp (or None).

        Ids are int32/int64 arrays, or ``(labels, codes)`` for string ids.
        """
        if self.n == 0:
            raise RatingsFileError(self.source.name, _no_rows_message(layout))
        for arr in self._arrays():
            arr.resize(self.n, refcheck=False)
        out = {"rating": self.values, "timestamp": self.timestamps}
        for role in ("user", "item"):
            if self.labels[role] is None:
                out[role] = self.ids[role]
            else:
                out[role] = (np.concatenate(self.labels[role]), self.ids[role])
        self.ids = self.values = self.timestamps = None
        return out


_INT32_LIMIT = 1 << 31


def _read_builtin(source, layout, dtype, string_slots=(False, False)):
    """Parse a delimited file with the Numba kernel, block by block, into `_Columns`."""
    sep = layout.sep.encode()
    slot_of_field = np.full(layout.ncols, -1, dtype=np.int64)
    for slot, role in enumerate(_SLOT_ROLE):
        if layout.chosen[role] is not None:
            slot_of_field[layout.chosen[role]] = slot
    string_slot = np.array(list(string_slots) + [False, False], dtype=np.bool_)
    words = [np.frombuffer(w, dtype=np.uint8) for w in (b"nan", b"inf", b"infinity")]
    has_ts = layout.chosen["timestamp"] is not None
    columns = _Columns(source, dtype, has_ts)
    out_int = out_end = out_float = np.empty(0)
    for block, lines_before, newlines in _blocks(source, layout.header_lines, _BLOCK_BYTES):
        if any(string_slots):
            _check_utf8(source, block, lines_before)
        buf = np.frombuffer(block, dtype=np.uint8)
        max_rows = newlines + 1
        if out_float.shape[0] < max_rows:
            # One set of scratch arrays for every block: fresh ones would be page-faulted anew.
            out_int = np.empty((4, max_rows), dtype=np.int64)
            out_end = np.empty((2, max_rows if any(string_slots) else 0), dtype=np.int64)
            out_float = np.empty(max_rows, dtype=np.float64)
        rows, status, line, field, pos = _kernels.parse_block(
            buf, sep[0], len(sep), layout.ncols, slot_of_field, string_slot, out_int,
            out_end, out_float, _kernels.POW10, *words,
        )
        if status == _kernels.PARSE_BAD_INT and slot_of_field[field] in (0, 1):
            raise _NeedStrings(int(slot_of_field[field]))
        if status != _kernels.PARSE_OK:
            raise _builtin_error(
                source, layout, bytes(block), status, line, field, pos, lines_before
            )
        ids = []
        for slot in (0, 1):
            if string_slots[slot]:
                fields = _gather_strings(buf, out_int[slot, :rows], out_end[slot, :rows])
                ids.append(_byte_labels(fields))
            else:
                ids.append(out_int[slot, :rows])
        columns.plan(rows, len(block))
        columns.append(ids[0], ids[1], out_float[:rows], out_int[3, :rows] if has_ts else None)
    return columns.finish(layout)


def _check_utf8(source, block, lines_before):
    """String ids must decode; checking the block is one fast C pass."""
    try:
        str(block, "utf-8")
    except UnicodeDecodeError as exc:
        block = bytes(block)
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


def _byte_labels(fields):
    """A block's string ids (fixed-width bytes, shape (m,)) as ``(labels, codes)``.

    ``labels`` are the block's distinct ids decoded (unicode, one Python string each, none per
    rating), ``codes`` (int64, shape (m,)) the index of each field among them.
    """
    uniq, codes = np.unique(fields, return_inverse=True)
    labels = np.array([u.decode("utf-8") for u in uniq.tolist()], dtype=str)
    return labels, codes.reshape(-1)


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


def _arrow_csv_batches(source, layout, string_ids):
    """The file's rows as pyarrow record batches, parsed block by block from `_blocks`.

    Only one block and its table are held at a time. Id columns are read as int64 unless
    ``string_ids[slot]``; a block where they are not integers raises `_NeedStrings`, so that
    the read restarts with that column as strings (types are fixed across blocks).

    Yields
    ------
    dict
        Role -> ``pyarrow.Array`` (user, item, rating, timestamp when chosen).
    int, int
        Rows and bytes of the block the batch came from, on its first batch (else 0, 0).
    """
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
    for slot, role in enumerate(("user", "item")):
        types[wanted[role]] = pa.string() if string_ids[slot] else pa.int64()
    if "timestamp" in wanted:
        types[wanted["timestamp"]] = pa.int64()
    for gap in gaps:
        types[gap] = pa.null()
    # use_threads=False: pyarrow can hang when a threaded read fails (apache/arrow#38676, an
    # empty block; #43892), and the worker thread below already overlaps parsing with conversion.
    read = pacsv.ReadOptions(column_names=names, block_size=_ARROW_BLOCK_BYTES, use_threads=False)
    parse = pacsv.ParseOptions(delimiter=sep, newlines_in_values=False, ignore_empty_lines=True)
    convert = pacsv.ConvertOptions(
        column_types=types,
        include_columns=list(wanted.values()) + gaps,
        null_values=[""],
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    slot_of_column = {names.index(wanted[role]): slot for slot, role in enumerate(("user", "item"))}

    def parsed(block, future):
        """The table of a block, or None for blank lines only; raises as documented above."""
        try:
            table = future.result()
        except (pa.ArrowException, UnicodeDecodeError, ValueError) as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if not bytes(block).strip():
                return None  # blank lines only: pyarrow calls that an empty file
            # pyarrow's message names the column: "In CSV column #0: ... error to int64".
            found = re.search(r"CSV column #(\d+): .*error to int64", message)
            slot = slot_of_column.get(int(found.group(1))) if found else None
            if slot is not None and not string_ids[slot]:
                raise _NeedStrings(slot) from None
            raise _ArrowFailed(message) from None
        for gap in gaps:
            if table.column(gap).null_count != table.num_rows:
                raise _ArrowFailed("a single ':' where '::' separates fields")
        return table

    def batches(table, nbytes):
        first = (table.num_rows, nbytes)
        for batch in table.to_batches():
            yield {role: batch.column(name) for role, name in wanted.items()}, first
            first = (0, 0)

    # Each block is parsed on a worker thread (pyarrow releases the GIL): while block k - 1 is
    # converted, block k is parsed and block k + 1 read and parsed, in three rotating buffers.
    # Two single-threaded parses in flight take the place of pyarrow's own threads.
    def start(block):
        return block, pool.submit(pacsv.read_csv, pa.BufferReader(pa.py_buffer(block)),
                                  read_options=read, parse_options=parse, convert_options=convert)

    def finished(block, future):
        table = parsed(block, future)
        return () if table is None else batches(table, len(block))

    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix=_CSV_THREAD_PREFIX)
    completed = False
    try:
        pending = None
        for block, _, _ in _blocks(source, layout.header_lines, _BLOCK_BYTES,
                                   count_lines=False, n_buffers=3):
            started = start(block)
            if pending is not None:
                yield from finished(*pending)
            pending = started
        if pending is not None:
            yield from finished(*pending)
        completed = True
    finally:
        # Only a finished read joins the workers. A generator left suspended is closed by
        # whoever drops it, possibly the garbage collector on a thread that is starting up and
        # holds threading's shutdown lock, which a join takes again: a deadlock, seen in CI.
        # Consumers close this generator themselves (_collect_arrow); the workers then end on
        # their own once the parse in flight returns.
        pool.shutdown(wait=completed, cancel_futures=True)


def _arrow_parquet_batches(source, wanted):
    """The layout of a Parquet file, and its rows as batches like `_arrow_csv_batches`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if source.member is not None or source.gz:
        raise RatingsFileError(
            source.name, "Parquet is read from a plain file, not from .gz or .zip"
        )
    try:
        parquet = pq.ParquetFile(str(source.path))
    except (pa.ArrowException, OSError) as exc:
        raise RatingsFileError(source.name, f"not a readable Parquet file ({exc})") from None
    names = list(parquet.schema_arrow.names)
    chosen = _choose_columns(source, names, wanted, has_header=True)
    cols = {role: names[f] for role, f in chosen.items() if f is not None}
    layout = _Layout(None, 0, len(names), chosen, names)

    def batches():
        try:
            for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS,
                                              columns=list(dict.fromkeys(cols.values()))):
                yield {role: batch.column(name) for role, name in cols.items()}, (0, 0)
        except (pa.ArrowException, OSError) as exc:
            raise RatingsFileError(source.name, f"not a readable Parquet file ({exc})") from None

    return layout, parquet.metadata.num_rows, batches()


def _arrow_ids(source, role, column):
    """Integer ids as an int64 array; other ids as ``(labels, codes)`` (see `_byte_labels`)."""
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
        encoded = pc.dictionary_encode(column)
        labels = np.array(encoded.dictionary.to_pylist(), dtype=str)
        codes = encoded.indices.to_numpy().astype(np.int64)
        return labels, codes
    raise RatingsFileError(
        source.name, f"the {role} column has type {typ}; expected integer or string ids"
    )


def _arrow_columns(source, batch):
    """A batch's arrays as numpy: user and item ids (see `_arrow_ids`), ratings, timestamps."""
    import pyarrow as pa

    users, items = (_arrow_ids(source, role, batch[role]) for role in ("user", "item"))
    rating = batch["rating"]
    if not (pa.types.is_integer(rating.type) or pa.types.is_floating(rating.type)):
        raise _ArrowFailed(f"non-numeric rating column of type {rating.type}")
    if rating.null_count:
        raise _ArrowFailed("missing ratings")
    values = rating.to_numpy()
    if not np.isfinite(values).all():
        raise _ArrowFailed("non-finite ratings")
    ts = None
    if "timestamp" in batch:
        col = batch["timestamp"]
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
    return users, items, values, ts


def _collect_arrow(source, layout, batches, dtype, rows=None):
    """Convert batches into `_Columns` as they come; returns `_Columns.finish`'s dict."""
    columns = _Columns(source, dtype, layout.chosen["timestamp"] is not None)
    if rows:
        columns.reserve(rows)
    # Closed here, not by the garbage collector, when a batch is refused (see _arrow_csv_batches).
    with contextlib.closing(batches):
        for batch, (block_rows, block_bytes) in batches:
            columns.plan(block_rows, block_bytes)
            columns.append(*_arrow_columns(source, batch))
    return columns.finish(layout)


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


def _to_ratings(source, columns, duplicates, header_lines):
    """Ratings from the dict of `_Columns.finish`; empties the dict as each column is mapped,
    so that no raw id column outlives its mapping."""
    user_ids, uidx = _dense_ids(columns.pop("user"))
    item_ids, iidx = _dense_ids(columns.pop("item"))
    vals = columns.pop("rating")  # already in the dtype asked for (see _Columns)
    ts = columns.pop("timestamp")
    order = _kernels.user_order(uidx, iidx)
    if order != _kernels.UNORDERED:
        indptr = np.zeros(user_ids.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(uidx, minlength=user_ids.shape[0]), out=indptr[1:])
        if order == _kernels.BY_USER_THEN_ITEM:
            # As in ML-20M/25M: the columns already are the by-user CSR, and distinct; only the
            # by-item transpose is left to build.
            del uidx
            return Ratings._from_user_csr(user_ids, item_ids, indptr, iidx, vals, ts)
        # Grouped by user, items in any order (as in ML-1M/10M): sorting within each user, in
        # cache, gives the by-user CSR; a repeated pair leaves it to the general path below,
        # which names or resolves it.
        within = _kernels.row_order(indptr, iidx)
        user_items, user_values = np.empty_like(iidx), np.empty_like(vals)
        if not _kernels.gather_rows(within, indptr, iidx, vals, user_items, user_values):
            del uidx, iidx, vals
            ts = None if ts is None else _kernels.take(ts, within)
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

    Notes
    -----
    Memory: besides the final arrays, the read holds a fixed ~150 MB (one 32 MiB block of text,
    the parsed tables of two blocks), then the id-mapped columns (4 + 4 + 8 + 8 bytes per rating
    with timestamps, float64) while the CSRs are built. On a 25M-line ``ratings.csv`` the peak
    growth measured 1.6x (lines ordered by user, then item) to 1.9x (any order) the final arrays.

    Raises
    ------
    RatingsFileError
        A ``ValueError`` naming the file, line and column, what was expected and what was found.
    FileNotFoundError
        The path does not exist.
    """
    check_duplicates_policy(duplicates)
    source, columns, header_lines = _read_columns(
        path, format, user=user, item=item, rating=rating, timestamp=timestamp, sep=sep,
        dtype=dtype, engine=engine,
    )
    return _to_ratings(source, columns, duplicates, header_lines)


def _read_columns(path, format=None, *, user=None, item=None, rating=None, timestamp=None,
                  sep=None, dtype=np.float64, engine="auto"):
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
    if b"\x00" in head:
        at = head.index(b"\x00")
        raise RatingsFileError(
            source.name, "found NUL bytes: a binary file, expected delimited text",
            head.count(b"\n", 0, at) + 1, at - head.rfind(b"\n", 0, at),
        )
    layout = _make_layout(source, fmt, sep, head, wanted)
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


def _with_string_ids(read):
    """``read(string_ids)``, again with a column as strings each time it says `_NeedStrings`."""
    string_ids = [False, False]
    while True:
        try:
            return read(tuple(string_ids))
        except _NeedStrings as need:
            string_ids[need.slot] = True


def _read_builtin_strings(source, layout, dtype):
    return _with_string_ids(lambda strings: _read_builtin(source, layout, dtype, strings))


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
    roles = (("user", user), ("item", item), ("rating", rating), ("timestamp", timestamp))
    for role, name in roles:
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


# -- model files -----------------------------------------------------------------------------
# One uncompressed ``.npz`` (a zip of ``.npy`` members), arrays only, read with allow_pickle=False.
# Version 1 members (shapes with n_items, n_users, k, nnz = training ratings, h = iterations):
#
#   fastcofi_format   0-d <U   "fastcofi-model"
#   format_version    0-d int64   1
#   fastcofi_version  0-d <U   the package version that wrote the file
#   params            0-d <U   JSON object of the hyperparameters (get_params())
#   normalize         0-d <U   "item_mean" | "biases" | "none"
#   item_factors      (n_items, k) float64       user_factors   (n_users, k) float64
#   item_ids          (n_items,) int64 or <U      user_ids       (n_users,) int64 or <U
#                     (sorted ascending, unique: dense indices are positions in these)
#   global_mean       0-d float64
#   item_means        (n_items,) float64          only with normalize="item_mean"
#   item_bias         (n_items,) float64          only with normalize="biases"
#   user_bias         (n_users,) float64          only with normalize="biases"
#   reg, reg_bias     0-d float64   the penalties training used (reg_, reg_bias_): fold-in's
#                     (version 2; a version 1 file takes them from params)
#   noise_variance    0-d float64                only with solver="vb": fold-in's reg
#   user_bias_variance 0-d float64               only with solver="vb": reg_bias = noise / it
#   rating_range      (2,) float64  min, max training rating
#   seen_indptr       (n_users + 1,) int64        the training ratings by user, as CSR:
#   seen_indices      (nnz,) int32 or int64       item indices rated by each user
#   n_iter            0-d int64                   best_iteration  0-d int64
#   history_<name>    (h,) float64 per history_ entry ("cost", "seconds", "val_rmse")
#   title_ids         (t,) int64 or <U            title_texts   (t,) <U   only with titles
MODEL_FORMAT = "fastcofi-model"
MODEL_FORMAT_VERSION = 2
# Version 2 added the members reg and reg_bias, because params' reg may be None (scaled to the
# ratings); files of both versions load.
_READABLE_VERSIONS = (1, 2)
_HISTORY_PREFIX = "history_"


class ModelFileError(ValueError):
    """A model file that cannot be loaded: not ours, corrupted, truncated or of a newer version.

    Attributes
    ----------
    path : str
    """

    def __init__(self, path, message):
        super().__init__(f"{path}: {message}")
        self.path = str(path)


def _jsonable(value):
    """Hyperparameter values as JSON types (a Generator seed cannot be stored: None)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, (tuple, list, np.ndarray)):
        return [_jsonable(v) for v in list(value)]
    if value is None or isinstance(value, (int, float, str)):
        return value
    return None


def _id_array(ids, name):
    ids = np.asarray(ids)
    if ids.dtype.kind in "iu":
        return ids.astype(np.int64)
    if ids.dtype.kind == "U":
        return ids
    raise ValueError(f"{name} must hold integers or unicode strings, found dtype {ids.dtype}")


def _title_arrays(titles, item_ids):
    """Titles keyed like the model's item ids, for the items the model has, in id order."""
    keys, texts = [], []
    for key, text in titles.items():
        if item_ids.dtype.kind == "U":
            key = str(key)
        else:
            from .ratings import _parse_int

            key = _parse_int(key)
            if key is None:
                continue
        keys.append(key)
        texts.append(str(text))
    if not keys:
        return None
    key_array = np.array(keys, dtype=item_ids.dtype)
    order = np.argsort(key_array, kind="stable")
    key_array = key_array[order]
    text_array = np.array(texts, dtype=str)[order] if texts else np.array([], dtype="<U1")
    from .ratings import lookup

    _, known = lookup(item_ids, key_array)
    if not known.any():
        return None
    return key_array[known], text_array[known]


def _model_arrays(model):
    """The arrays of a fitted model's file (see the table above)."""
    from . import __version__

    params = {name: _jsonable(value) for name, value in model.get_params().items()}
    item_ids = _id_array(model.item_ids_, "item_ids_")
    user_ids = _id_array(model.user_ids_, "user_ids_")
    seen_indptr, seen_indices = model._seen
    arrays = {
        "fastcofi_format": np.array(MODEL_FORMAT),
        "format_version": np.array(MODEL_FORMAT_VERSION, dtype=np.int64),
        "fastcofi_version": np.array(str(__version__)),
        "params": np.array(json.dumps(params, sort_keys=True)),
        "normalize": np.array(str(model.normalize)),
        "item_factors": np.ascontiguousarray(model.item_factors_, dtype=np.float64),
        "user_factors": np.ascontiguousarray(model.user_factors_, dtype=np.float64),
        "item_ids": item_ids,
        "user_ids": user_ids,
        "global_mean": np.array(model.global_mean_, dtype=np.float64),
        "reg": np.array(model.reg_, dtype=np.float64),
        "reg_bias": np.array(model.reg_bias_, dtype=np.float64),
        "rating_range": np.array(model.rating_range_, dtype=np.float64),
        "seen_indptr": np.asarray(seen_indptr, dtype=np.int64),
        "seen_indices": np.asarray(seen_indices),
        "n_iter": np.array(int(model.n_iter_), dtype=np.int64),
        "best_iteration": np.array(int(getattr(model, "best_iteration_", model.n_iter_)),
                                   dtype=np.int64),
    }
    if model.item_means_ is not None:
        arrays["item_means"] = np.asarray(model.item_means_, dtype=np.float64)
    if model.item_bias_ is not None:
        arrays["item_bias"] = np.asarray(model.item_bias_, dtype=np.float64)
        arrays["user_bias"] = np.asarray(model.user_bias_, dtype=np.float64)
    if getattr(model, "noise_variance_", None) is not None:
        arrays["noise_variance"] = np.array(model.noise_variance_, dtype=np.float64)
        arrays["user_bias_variance"] = np.array(model.user_bias_variance_, dtype=np.float64)
    for key, values in (model.history_ or {}).items():
        if not re.fullmatch(r"[A-Za-z0-9_]+", str(key)):
            raise ValueError(f"history_ key {key!r} cannot be stored: expected letters, digits, _")
        arrays[_HISTORY_PREFIX + str(key)] = np.asarray(values, dtype=np.float64).reshape(-1)
    titles = getattr(model, "titles_", None)
    if titles:
        pair = _title_arrays(titles, item_ids)
        if pair is not None:
            arrays["title_ids"], arrays["title_texts"] = pair
    return arrays


def save_model(model, path):
    """Write a fitted model to one ``.npz`` file, atomically.

    The file holds arrays only (no pickles): factors, normalization terms, id maps, rating range,
    the training ratings by user (to exclude seen items), hyperparameters, history, the format
    version and, when the model has a ``titles_`` dict, the titles of its items. ``result_`` is not
    stored. The path is used exactly as given (no ``.npz`` is appended).

    The file is written to a temporary file in the same directory, flushed to disk, then renamed
    over ``path``: a crash or an error leaves either the old file or the new one, never a part.

    Parameters
    ----------
    model : MatrixFactorization
        Fitted.
    path : str or PathLike
    """
    path = Path(os.fspath(path))
    if not hasattr(model, "item_factors_"):
        raise AttributeError(
            f"this {type(model).__name__} is not fitted yet; call fit(ratings) first"
        )
    if path.is_dir():
        raise IsADirectoryError(
            errno.EISDIR, "is a directory; expected a model file path", str(path)
        )
    arrays = _model_arrays(model)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(
            errno.ENOENT, "the folder to write the model file in does not exist", str(folder)
        )
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _new_file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)


def _new_file_mode(path):
    """Keep the mode of a file being replaced; else the mode open() would give (0o666 - umask)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0o022)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_dir(folder):
    """Make the rename durable where the platform allows opening a directory."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_npz(path):
    """Every member of the file as a dict of arrays; ModelFileError for anything unreadable."""
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "no such model file", str(path))
    if path.is_dir():
        raise ModelFileError(path, "is a directory; expected a fastcofi model file (.npz)")
    with open(path, "rb") as f:
        head = f.read(4)
        if not head:
            raise ModelFileError(path, "the file is empty; expected a fastcofi model file (.npz)")
        if head != b"PK\x03\x04":
            raise ModelFileError(
                path, f"not a fastcofi model file: expected an .npz (zip) archive, "
                f"found a file starting with {head!r}"
            )
        f.seek(0)
        try:
            # numpy reads each member's bytes without reaching the end of its stream, where
            # zipfile checks the CRC: check every member first so corruption cannot pass.
            with zipfile.ZipFile(f) as archive:
                bad = archive.testzip()
            if bad is not None:
                raise ModelFileError(
                    path, f"corrupted model file: the member {bad!r} fails its CRC check"
                )
            f.seek(0)
            with np.load(f, allow_pickle=False) as npz:
                names = list(npz.files)
                arrays = {}
                for name in names:
                    try:
                        value = npz[name]
                    except ValueError as exc:
                        if "pickle" in str(exc).lower():
                            raise ModelFileError(
                                path, f"member {name!r} holds Python objects (a pickle); a "
                                "fastcofi model file holds plain arrays only, and pickles are "
                                "never loaded"
                            ) from None
                        raise
                    if not isinstance(value, np.ndarray):
                        raise ModelFileError(
                            path, f"not a fastcofi model file: the member {name!r} is not a "
                            ".npy array"
                        )
                    arrays[name] = value
        except ModelFileError:
            raise
        except (zipfile.BadZipFile, EOFError, ValueError, OSError, zlib.error, KeyError,
                TypeError, RuntimeError, NotImplementedError, MemoryError) as exc:
            raise ModelFileError(
                path, f"corrupted or truncated model file: cannot read it as .npz ({exc})"
            ) from None
    return arrays


def _need(path, arrays, name, kinds, ndim, what):
    if name not in arrays:
        raise ModelFileError(path, f"the member {name!r} is missing; expected {what}")
    arr = arrays[name]
    if arr.dtype.kind not in kinds or arr.ndim != ndim:
        raise ModelFileError(
            path, f"the member {name!r} has dtype {arr.dtype} and shape {arr.shape}; "
            f"expected {what}"
        )
    return arr


def _text(path, arrays, name):
    return str(_need(path, arrays, name, "U", 0, "a 0-d unicode string"))


def _length(path, name, arr, n, what):
    if arr.shape[0] != n:
        raise ModelFileError(
            path, f"the member {name!r} has {arr.shape[0]} rows; expected {n} ({what})"
        )


def _ids(path, arrays, name):
    arr = _need(path, arrays, name, "iuU", 1, "a 1-D array of integer or unicode ids")
    if arr.dtype.kind in "iu":
        arr = arr.astype(np.int64)
    if arr.shape[0] > 1 and not np.all(arr[1:] > arr[:-1]):
        raise ModelFileError(path, f"the member {name!r} is not sorted ascending without repeats")
    return arr


def _floats(path, arrays, name, ndim, what, finite=True):
    arr = _need(path, arrays, name, "f", ndim, what).astype(np.float64)
    if finite and not np.all(np.isfinite(arr)):
        raise ModelFileError(path, f"the member {name!r} holds NaN or infinite values")
    return arr


def _readonly_copy(arr):
    arr = np.ascontiguousarray(arr)
    arr.flags.writeable = False
    return arr


def load_model(path, *, warm=False):
    """Load a model written by :func:`save_model` (``MatrixFactorization.save``).

    Nothing in the file is executed: it is read with ``allow_pickle=False`` and every member is
    checked (format marker, version, dtypes, shapes, index ranges) before the model is built. The
    loaded arrays are read-only. ``result_`` is None; ``titles_`` is set when the file has titles.

    Parameters
    ----------
    path : str or PathLike
    warm : bool, default False
        Run each serving kernel once (``model.warm_up()``) so the first request compiles nothing.

    Returns
    -------
    MatrixFactorization

    Raises
    ------
    ModelFileError
        A ``ValueError`` naming the file and the problem: not a model file, a newer format
        version, a missing or malformed member, a corrupted or truncated file.
    FileNotFoundError
        The path does not exist.
    """
    model, _ = _load_model(path)
    if warm:
        model.warm_up()
    return model


def model_info(path):
    """A summary of a model file (loaded and checked in full), for ``fastcofi info``.

    Returns
    -------
    dict
        ``"format_version"``, ``"n_users"``, ``"n_items"``, ``"n_factors"``, ``"params"`` (the
        hyperparameters), and ``"fastcofi_version"``, ``"normalize"``, ``"n_ratings"``
        (training ratings), ``"rating_range"``, ``"n_iter"``, ``"user_id_type"``,
        ``"item_id_type"`` (``"int"`` or ``"str"``), ``"n_titles"``, and ``"reg"``,
        ``"reg_bias"``: the penalties training used (``params`` may hold None for them).
    """
    model, meta = _load_model(path)
    return {
        "format_version": meta["format_version"],
        "n_users": int(model.user_factors_.shape[0]),
        "n_items": int(model.item_factors_.shape[0]),
        "n_factors": int(model.item_factors_.shape[1]),
        "params": model.get_params(),
        "fastcofi_version": meta["fastcofi_version"],
        "normalize": model.normalize,
        "n_ratings": int(model._seen[1].shape[0]),
        "rating_range": [float(v) for v in model.rating_range_],
        "n_iter": int(model.n_iter_),
        "user_id_type": "str" if model.user_ids_.dtype.kind == "U" else "int",
        "item_id_type": "str" if model.item_ids_.dtype.kind == "U" else "int",
        "n_titles": len(getattr(model, "titles_", None) or {}),
        "reg": float(model.reg_),
        "reg_bias": float(model.reg_bias_),
    }


def _load_model(path):
    from .model import MatrixFactorization

    path = Path(os.fspath(path))
    arrays = _read_npz(path)
    if "fastcofi_format" not in arrays:
        raise ModelFileError(
            path, "not a fastcofi model file: an .npz without the 'fastcofi_format' marker "
            f"(it holds {sorted(arrays)[:8]})"
        )
    marker = arrays["fastcofi_format"]
    if marker.dtype.kind != "U" or marker.ndim != 0 or str(marker) != MODEL_FORMAT:
        raise ModelFileError(
            path, f"not a fastcofi model file: the format marker is {marker!r}, "
            f"expected {MODEL_FORMAT!r}"
        )
    version_arr = _need(path, arrays, "format_version", "iu", 0, "a 0-d integer")
    version = int(version_arr)
    if version not in _READABLE_VERSIONS:
        newer = "a newer" if version > MODEL_FORMAT_VERSION else "an unknown"
        raise ModelFileError(
            path, f"{newer} model format version {version}; this fastcofi reads versions "
            f"{', '.join(map(str, _READABLE_VERSIONS))} (upgrade fastcofi to load it)"
        )
    writer = str(arrays["fastcofi_version"]) if "fastcofi_version" in arrays else "unknown"
    try:
        params = json.loads(_text(path, arrays, "params"))
    except json.JSONDecodeError as exc:
        raise ModelFileError(path, f"the member 'params' is not valid JSON ({exc})") from None
    if not isinstance(params, dict):
        raise ModelFileError(path, "the member 'params' is not a JSON object")
    normalize = _text(path, arrays, "normalize")
    known = MatrixFactorization._PARAMS
    kwargs = {name: value for name, value in params.items() if name in known}
    if isinstance(kwargs.get("clip"), list):
        kwargs["clip"] = tuple(kwargs["clip"])
    kwargs["normalize"] = normalize
    model = MatrixFactorization(**kwargs)
    try:
        model._check_params()
    except ValueError as exc:
        raise ModelFileError(path, f"invalid hyperparameters ({exc})") from None

    item_ids = _ids(path, arrays, "item_ids")
    user_ids = _ids(path, arrays, "user_ids")
    n_items, n_users = item_ids.shape[0], user_ids.shape[0]
    item_factors = _floats(path, arrays, "item_factors", 2, "a 2-D float array (n_items, k)")
    user_factors = _floats(path, arrays, "user_factors", 2, "a 2-D float array (n_users, k)")
    _length(path, "item_factors", item_factors, n_items, "one per item id")
    _length(path, "user_factors", user_factors, n_users, "one per user id")
    if item_factors.shape[1] != user_factors.shape[1]:
        raise ModelFileError(
            path, f"item_factors has {item_factors.shape[1]} columns and user_factors "
            f"{user_factors.shape[1]}; expected the same number of factors"
        )
    global_mean = float(_floats(path, arrays, "global_mean", 0, "a 0-d float"))
    rating_range = _floats(path, arrays, "rating_range", 1, "2 floats (min, max)")
    if rating_range.shape[0] != 2 or not rating_range[0] <= rating_range[1]:
        raise ModelFileError(path, f"rating_range is {rating_range.tolist()}; expected [min, max]")
    item_means = item_bias = user_bias = None
    if normalize == "item_mean":
        item_means = _floats(path, arrays, "item_means", 1, "item means (n_items,) float")
        _length(path, "item_means", item_means, n_items, "one per item id")
    elif normalize == "biases":
        item_bias = _floats(path, arrays, "item_bias", 1, "item biases (n_items,) float")
        user_bias = _floats(path, arrays, "user_bias", 1, "user biases (n_users,) float")
        _length(path, "item_bias", item_bias, n_items, "one per item id")
        _length(path, "user_bias", user_bias, n_users, "one per user id")

    if version >= 2:
        what = "a 0-d float >= 0 (the penalty new users are folded in with)"
        penalties = [float(_floats(path, arrays, name, 0, what)) for name in ("reg", "reg_bias")]
        if min(penalties) < 0:
            raise ModelFileError(path, f"reg and reg_bias must be >= 0, found {penalties}")
    elif model.reg is None:
        raise ModelFileError(path, "a version 1 file must hold a number as params' reg, found null")
    else:
        # reg is a number, so the training ratings' variance is not needed to resolve it
        penalties = model._penalties(variance=None)

    noise_variance = user_bias_variance = None
    if model.solver == "vb":
        what = "a 0-d float > 0 (solver 'vb' folds new users in with it)"
        noise_variance = float(_floats(path, arrays, "noise_variance", 0, what))
        user_bias_variance = float(_floats(path, arrays, "user_bias_variance", 0, what))
        if not (noise_variance > 0 and user_bias_variance > 0):
            raise ModelFileError(path, f"noise_variance and user_bias_variance must be > 0, found "
                                 f"{noise_variance} and {user_bias_variance}")

    indptr = _need(path, arrays, "seen_indptr", "iu", 1, "a 1-D integer array (n_users + 1,)")
    indices = _need(path, arrays, "seen_indices", "iu", 1, "a 1-D integer array (n_ratings,)")
    _length(path, "seen_indptr", indptr, n_users + 1, "n_users + 1")
    indptr = indptr.astype(np.int64)
    if indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != indices.shape[0]:
        raise ModelFileError(
            path, "seen_indptr is not a CSR row pointer: expected 0 first, non-decreasing, and "
            f"{indices.shape[0]} (the length of seen_indices) last"
        )
    if indices.size and (indices.min() < 0 or indices.max() >= n_items):
        raise ModelFileError(
            path, f"seen_indices holds item indices outside [0, {n_items}); found "
            f"{int(indices.min())}..{int(indices.max())}"
        )
    indices = indices.astype(np.int32 if n_items < 2**31 else np.int64)

    history = {}
    lengths = set()
    for name in sorted(arrays):
        if name.startswith(_HISTORY_PREFIX):
            values = _floats(path, arrays, name, 1, "a 1-D float array", finite=False)
            history[name[len(_HISTORY_PREFIX):]] = values.tolist()
            lengths.add(values.shape[0])
    if len(lengths) > 1:
        raise ModelFileError(path, f"the history_ arrays differ in length: {sorted(lengths)}")
    n_iter = int(_need(path, arrays, "n_iter", "iu", 0, "a 0-d integer"))
    best_iteration = int(_need(path, arrays, "best_iteration", "iu", 0, "a 0-d integer"))

    titles = None
    if "title_ids" in arrays or "title_texts" in arrays:
        title_ids = _ids(path, arrays, "title_ids")
        title_texts = _need(path, arrays, "title_texts", "U", 1, "a 1-D unicode array")
        _length(path, "title_texts", title_texts, title_ids.shape[0], "one per title id")
        if title_ids.dtype.kind != item_ids.dtype.kind:
            raise ModelFileError(path, "title_ids and item_ids hold ids of different types")
        titles = dict(zip(title_ids.tolist(), title_texts.tolist()))

    model.item_factors_ = _readonly_copy(item_factors)
    model.user_factors_ = _readonly_copy(user_factors)
    model.item_ids_ = _readonly_copy(item_ids)
    model.user_ids_ = _readonly_copy(user_ids)
    model.global_mean_ = global_mean
    model.item_means_ = None if item_means is None else _readonly_copy(item_means)
    model.item_bias_ = None if item_bias is None else _readonly_copy(item_bias)
    model.user_bias_ = None if user_bias is None else _readonly_copy(user_bias)
    model.rating_range_ = (float(rating_range[0]), float(rating_range[1]))
    model.reg_, model.reg_bias_ = penalties
    model.noise_variance_ = noise_variance
    model.user_bias_variance_ = user_bias_variance
    model.n_iter_ = n_iter
    model.best_iteration_ = best_iteration
    model.result_ = None
    model.history_ = history
    model._seen = (_readonly_copy(indptr), _readonly_copy(indices))
    if titles is not None:
        model.titles_ = titles
    return model, {"format_version": version, "fastcofi_version": writer}
