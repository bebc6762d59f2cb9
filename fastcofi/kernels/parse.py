"""The built-in text parser's byte-level kernels."""

from typing import NamedTuple

import numba as nb
import numpy as np

# -- the built-in text parser --------------------------------------------------------------------
# The builtin engine of :func:`fastcofi.io.read_ratings` parses delimited bytes here; the reader
# turns a status other than PARSE_OK into its error message.
(PARSE_OK, PARSE_TOO_FEW, PARSE_TOO_MANY, PARSE_EMPTY, PARSE_BAD_INT, PARSE_BAD_FLOAT,
 PARSE_NONFINITE) = range(7)
# Exactly representable powers of ten: mantissa * or / these is correctly rounded (Clinger).
# Module-level arrays are compile-time constants to Numba.
POW10 = np.array([10.0**k for k in range(23)])
_NAN, _INF, _INFINITY = (np.frombuffer(w, dtype=np.uint8) for w in (b"nan", b"inf", b"infinity"))


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
def _sign(buf, pos, end):
    """(where the digits start, negative): past an optional '-' or '+' at ``pos``."""
    if pos < end and (buf[pos] == 45 or buf[pos] == 43):
        return pos + 1, buf[pos] == 45
    return pos, False


@nb.njit(cache=True, nogil=True)
def _parse_int(buf, start, end):
    """(ok, value): an optionally signed decimal integer of at most 18 digits."""
    start, end = _trim(buf, start, end)
    start, neg = _sign(buf, start, end)
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
def _parse_float(buf, start, end):
    """(ok, value): decimal with optional fraction and exponent; nan/inf words too."""
    start, end = _trim(buf, start, end)
    start, neg = _sign(buf, start, end)
    if start >= end:
        return False, 0.0
    if _word(buf, start, end, _NAN):
        return True, np.nan
    if _word(buf, start, end, _INF) or _word(buf, start, end, _INFINITY):
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
        p, eneg = _sign(buf, p + 1, end)
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
        value = value * POW10[exp10] if exp10 >= 0 else value / POW10[-exp10]
    else:
        # Outside the exact range: within a few ulps, far below any rating's precision.
        value = value * 10.0**exp10
    return True, -value if neg else value


class Fields(NamedTuple):
    """How a line is cut into fields and what each field is.

    ``sep0`` is the separator's byte and ``sep_len`` its length (2 for a doubled byte, '::');
    ``slot_of_field`` (ncols,) int64 gives each field's slot: 0 user, 1 item, 2 rating,
    3 timestamp or -1 (ignored); ``string_slot`` (4,) bool marks the id slots read as byte ranges
    instead of integers.
    """

    sep0: int
    sep_len: int
    slot_of_field: np.ndarray
    string_slot: np.ndarray


class Parsed(NamedTuple):
    """Where a block's columns go, one entry per row: ``ints`` (4, rows) int64, the integer slots
    (or a string slot's start offsets); ``ends`` (2, rows) int64, a string slot's end offsets
    (may have no columns when no slot is a string); ``ratings`` (rows,) float64."""

    ints: np.ndarray
    ends: np.ndarray
    ratings: np.ndarray


@nb.njit(cache=True, nogil=True)
def parse_block(buf, fields, out):
    """Parse whole lines of ``buf`` (uint8) as `Fields` into ``out`` (a `Parsed`).

    Integer slots fill ``out.ints[slot]``; a string slot stores its field's start and end offsets
    in ``out.ints`` / ``out.ends`` instead. Blank lines are skipped.

    Returns (n_rows, status, line index in block, field index, byte offset of the problem).
    """
    sep0, sep_len = fields.sep0, fields.sep_len
    slot_of_field, string_slot = fields.slot_of_field, fields.string_slot
    ncols = slot_of_field.shape[0]
    out_int, out_end, out_float = out.ints, out.ends, out.ratings
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
                return row, PARSE_TOO_MANY, line, field, start
            slot = slot_of_field[field]
            if slot >= 0:
                s, e = _trim(buf, start, end)
                if s == e:
                    return row, PARSE_EMPTY, line, field, start
                if slot == 2:
                    ok, v = _parse_float(buf, start, end)
                    if not ok:
                        return row, PARSE_BAD_FLOAT, line, field, start
                    if not np.isfinite(v):
                        return row, PARSE_NONFINITE, line, field, start
                    out_float[row] = v
                elif string_slot[slot]:
                    out_int[slot, row] = s
                    out_end[slot, row] = e
                else:
                    ok, iv = _parse_int(buf, start, end)
                    if not ok:
                        return row, PARSE_BAD_INT, line, field, start
                    out_int[slot, row] = iv
            field += 1
            if pos < n and buf[pos] != 10:
                pos += sep_len
                continue
            break
        if field < ncols:
            return row, PARSE_TOO_FEW, line, field, line_start
        row += 1
        line += 1
        pos += 1
    return row, PARSE_OK, line, 0, n


# How the lines read are ordered, so that the reader can skip sorting what already is sorted.
UNORDERED, BY_USER, BY_USER_THEN_ITEM = range(3)


@nb.njit(cache=True, nogil=True)
def user_order(users, items):
    """How lines are ordered: `BY_USER_THEN_ITEM` when (user, item) pairs strictly increase
    (hence no repeat), `BY_USER` when only the users never decrease, else `UNORDERED`."""
    order = BY_USER_THEN_ITEM
    for p in range(1, users.shape[0]):
        if users[p] < users[p - 1]:
            return UNORDERED
        if users[p] == users[p - 1] and items[p] <= items[p - 1]:
            order = BY_USER
    return order
