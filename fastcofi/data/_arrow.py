"""The pyarrow engine: multithreaded CSV parsing and Parquet batches into column buffers."""

import contextlib
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ._source import _BLOCK_BYTES, RatingsFileError, _blocks, _choose_columns, _Columns, _Layout
from ._text import _NeedStrings

# pyarrow parses a block in pieces of this size: large enough that the per-piece overhead stays
# negligible.
_ARROW_BLOCK_BYTES = 1 << 22
# Names the CSV parse workers, so that tests can tell they ended.
_CSV_THREAD_PREFIX = "fastcofi-csv"
# Parquet is converted a batch of this many rows at a time.
_PARQUET_BATCH_ROWS = 1 << 20


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
        # Spaces and stray quotes around an id are not part of it, as the builtin engine reads
        # them (`kernels.parse._trim`); Arrow's CSV reader keeps them.
        column = pc.utf8_trim(column, characters=' "')
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
