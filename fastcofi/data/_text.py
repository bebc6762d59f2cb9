"""The builtin engine: the Numba byte parser, block by block, into column buffers."""


import numpy as np

from ..kernels.parse import (
    PARSE_BAD_FLOAT,
    PARSE_BAD_INT,
    PARSE_EMPTY,
    PARSE_NONFINITE,
    PARSE_OK,
    PARSE_TOO_FEW,
    PARSE_TOO_MANY,
    Fields,
    Parsed,
    parse_block,
)
from ._source import (
    _BLOCK_BYTES,
    _SLOT_ROLE,
    RatingsFileError,
    _blocks,
    _bytes_repr,
    _Columns,
    _excerpt,
    _other_separators,
)


def _builtin_error(source, layout, block, status, line_in_block, field, pos, lines_before):
    line_start = block.rfind(b"\n", 0, pos) + 1
    line_end = block.find(b"\n", pos)
    line_end = len(block) if line_end < 0 else line_end
    lineno = lines_before + line_in_block + 1
    column = pos - line_start + 1
    text = block[line_start:line_end].rstrip(b"\r")
    sep_name = {"\t": "tab", ",": "comma", "::": "'::'"}.get(layout.sep, repr(layout.sep))
    if status in (PARSE_TOO_FEW, PARSE_TOO_MANY):
        found = text.count(layout.sep.encode()) + 1
        other = _other_separators(layout.sep, text)
        hint = f" (it holds {other[0]!r}: mixed separators?)" if other else ""
        return RatingsFileError(
            source.name,
            f"expected {layout.ncols} {sep_name}-separated fields, found {found}{hint}: "
            f"{_bytes_repr(text)}",
            lineno,
            column if status == PARSE_TOO_MANY else None,
        )
    sep_bytes = layout.sep.encode()
    field_end = block.find(sep_bytes, pos, line_end)
    raw = block[pos:(line_end if field_end < 0 else field_end)].rstrip(b"\r")
    label = layout.field_label(field)
    if status == PARSE_EMPTY:
        message = f"{label}: expected a value, found an empty field"
    elif status == PARSE_NONFINITE:
        message = f"{label}: ratings must be finite numbers, found {_bytes_repr(raw)}"
    elif status == PARSE_BAD_FLOAT:
        message = f"{label}: expected a number, found {_bytes_repr(raw)}"
    else:
        message = f"{label}: expected an integer, found {_bytes_repr(raw)}"
    return RatingsFileError(source.name, message, lineno, column)


class _NeedStrings(Exception):
    """An id column holds something other than integers: reread it as strings."""

    def __init__(self, slot):
        self.slot = slot


def _read_builtin(source, layout, dtype, string_slots=(False, False)):
    """Parse a delimited file with the Numba kernel, block by block, into `_Columns`."""
    sep = layout.sep.encode()
    slot_of_field = np.full(layout.ncols, -1, dtype=np.int64)
    for slot, role in enumerate(_SLOT_ROLE):
        if layout.chosen[role] is not None:
            slot_of_field[layout.chosen[role]] = slot
    string_slot = np.array(list(string_slots) + [False, False], dtype=np.bool_)
    fields = Fields(sep[0], len(sep), slot_of_field, string_slot)
    has_ts = layout.chosen["timestamp"] is not None
    columns = _Columns(source, dtype, has_ts)
    out = Parsed(np.empty((4, 0), dtype=np.int64), np.empty((2, 0), dtype=np.int64), np.empty(0))
    for block, lines_before, newlines in _blocks(source, layout.header_lines, _BLOCK_BYTES):
        if any(string_slots):
            _check_utf8(source, block, lines_before)
        buf = np.frombuffer(block, dtype=np.uint8)
        max_rows = newlines + 1
        if out.ratings.shape[0] < max_rows:
            # One set of scratch arrays for every block: fresh ones would be page-faulted anew.
            out = Parsed(
                np.empty((4, max_rows), dtype=np.int64),
                np.empty((2, max_rows if any(string_slots) else 0), dtype=np.int64),
                np.empty(max_rows, dtype=np.float64),
            )
        rows, status, line, field, pos = parse_block(buf, fields, out)
        if status == PARSE_BAD_INT and slot_of_field[field] in (0, 1):
            raise _NeedStrings(int(slot_of_field[field]))
        if status != PARSE_OK:
            raise _builtin_error(
                source, layout, bytes(block), status, line, field, pos, lines_before
            )
        ids = []
        for slot in (0, 1):
            if string_slots[slot]:
                strings = _gather_strings(buf, out.ints[slot, :rows], out.ends[slot, :rows])
                ids.append(_byte_labels(strings))
            else:
                ids.append(out.ints[slot, :rows])
        columns.plan(rows, len(block))
        columns.append(
            ids[0], ids[1], out.ratings[:rows], out.ints[3, :rows] if has_ts else None
        )
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
            f"expected UTF-8 text, found invalid UTF-8 bytes {_excerpt(block[exc.start:exc.end + 3])}",
            lines_before + block.count(b"\n", 0, exc.start) + 1,
            exc.start - line_start + 1,
        ) from None




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
