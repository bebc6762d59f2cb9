"""What both text engines share: file sources (plain, gzip, zip member), blocks of whole
lines, the column buffers they fill, and the error type that names file, line and column."""

import errno
import gzip
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

_ROLES = ("user", "item", "rating", "timestamp")
# Both engines read the file in blocks of this many bytes: it bounds their working memory beyond
# the output columns (a block, and its parsed columns: about 2x the block).
_BLOCK_BYTES = 1 << 25


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


def _excerpt(raw, limit=24):
    """A short, escaped excerpt of bytes for a message: never raw control bytes or a page of text."""
    shown = repr(bytes(raw[:limit]))
    return shown + ("..." if len(raw) > limit else "")


def _other_separators(sep, line):
    """The usual separators other than ``sep`` that ``line`` (bytes) holds: an error's hint."""
    return [s for s in ("\t", ",", "::", ";", "|") if s != sep and s.encode() in line]


def _bytes_repr(raw):
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return f"invalid UTF-8 bytes {_excerpt(raw)}"
    return repr(text[:40]) if text else "an empty field"


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


# Column names tried, case-insensitively, when user=/item=/rating=/timestamp= are not given.
_DEFAULT_NAMES = {
    "user": ("user", "userid", "user_id", "users", "uid", "reviewerid", "customer_id"),
    "item": ("item", "itemid", "item_id", "movieid", "movie_id", "movie", "items", "iid", "asin",
             "product_id"),
    "rating": ("rating", "ratings", "score", "value", "stars", "overall"),
    "timestamp": ("timestamp", "time", "ts", "unixreviewtime", "date"),
}


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


def _no_rows_message(layout):
    if layout.header_lines:
        return "no ratings: the file holds a header line and no data rows"
    return "no ratings: the file holds no data rows"
