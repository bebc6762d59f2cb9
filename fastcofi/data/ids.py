"""External ids: integers or strings, their sorted unique values, and dense indices of queries."""

import numpy as np

from ..kernels.sparse import compact_ids, lookup_compact


def _as_id_array(ids, name):
    """External ids as a 1-D array of integers or of unicode strings."""
    # A list mixing ints and strings would silently become strings under np.asarray.
    arr = ids if isinstance(ids, np.ndarray) else np.asarray(ids, dtype=object)
    if arr.dtype == object and arr.ndim == 1 and arr.size:
        arr = np.asarray(arr.tolist()) if _one_kind(arr) else arr
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-dimensional, found shape {arr.shape}")
    if arr.dtype.kind in "iu":
        return arr
    if arr.dtype.kind == "b":
        raise ValueError(f"{name} must hold integer or string ids, found booleans")
    if arr.dtype.kind == "f":
        if arr.size and not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must hold integer or string ids, found non-finite floats")
        as_int = arr.astype(np.int64)
        if not np.array_equal(as_int, arr):
            bad = arr[np.flatnonzero(as_int != arr)[0]]
            raise ValueError(
                f"{name} must hold integer or string ids, found the float {bad.item()!r}"
            )
        return as_int
    if arr.dtype.kind == "U":
        return arr
    if arr.dtype.kind in "OS":
        kinds = {type(v) for v in arr.tolist()}
        if kinds <= {str}:
            return arr.astype(str)
        if kinds <= {bytes}:
            return arr.astype(str)
        if all(issubclass(t, (int, np.integer)) and not issubclass(t, bool) for t in kinds):
            return arr.astype(np.int64)
        names = ", ".join(sorted(t.__name__ for t in kinds))
        raise ValueError(f"{name} must hold integers or strings (one kind), found {names}")
    raise ValueError(f"{name} must hold integer or string ids, found dtype {arr.dtype}")


def _one_kind(values):
    """True when ids are all strings or all (non-boolean) numbers."""
    kinds = {type(v) for v in values.tolist()}
    return kinds <= {str} or all(
        issubclass(t, (int, float, np.integer, np.floating)) and not issubclass(t, bool)
        for t in kinds
    )


def _index_dtype(n):
    return np.int32 if n < np.iinfo(np.int32).max else np.int64


def unique_ids(ids):
    """Sorted unique ids of a 1-D array and the dense index of each entry.

    Integer ids in a compact range are mapped through a lookup table (O(n)), several times
    faster than the sort that ``numpy.unique`` does on tens of millions of ids.
    """
    if not ids.dtype.isnative:
        # Numba reads native byte order only, and both paths below then return native ids.
        ids = ids.astype(ids.dtype.newbyteorder("="))
    if ids.dtype.kind in "iu" and ids.size:
        lo, hi = int(ids.min()), int(ids.max())
        span = hi - lo + 1
        if span <= 4 * ids.shape[0] + (1 << 20):
            # Offsets from a 64-bit origin: a small dtype such as int8 would wrap on a span
            # wider than its range, and int64 mixed with uint64 would turn into float.
            wide = np.uint64 if ids.dtype.kind == "u" else np.int64
            index = np.empty(ids.shape[0], dtype=_index_dtype(min(span, ids.shape[0])))
            offsets = compact_ids(ids, wide(lo), span, index)
            return (offsets.astype(wide) + wide(lo)).astype(ids.dtype), index
    uniq, index = np.unique(ids, return_inverse=True)
    return uniq, index.reshape(-1)


def _compact_span(sorted_ids):
    """The width of the range of sorted integer ids when a table over it is small enough to
    index through (at most 4 entries per id, or 1 Mi); 0 otherwise."""
    if sorted_ids.dtype.kind not in "iu" or sorted_ids.size == 0:
        return 0
    span = int(sorted_ids[-1]) - int(sorted_ids[0]) + 1
    return span if span <= 4 * sorted_ids.size + (1 << 20) else 0


def _declare_ids(rated_ids, declared, name):
    """Sorted unique ids and the dense index of every rated id."""
    if declared is None:
        return unique_ids(rated_ids)
    declared = _as_id_array(declared, f"all_{name}s")
    uniq = np.unique(declared)
    if uniq.size and rated_ids.size and (uniq.dtype.kind == "U") != (rated_ids.dtype.kind == "U"):
        raise ValueError(
            f"all_{name}s holds {'strings' if uniq.dtype.kind == 'U' else 'integers'} but the "
            f"{name} ids of the ratings do not"
        )
    span = _compact_span(uniq)
    if span and rated_ids.dtype.kind in "iu" and rated_ids.dtype.kind == uniq.dtype.kind:
        # A table instead of a bisection per rating: several times faster on 1e7 ratings.
        wide = np.uint64 if uniq.dtype.kind == "u" else np.int64
        index = np.empty(rated_ids.shape[0], dtype=_index_dtype(uniq.size))
        if lookup_compact(uniq.astype(wide), wide(uniq[0]), span, rated_ids, index) >= 0:
            return uniq, index
        missing = index < 0
    else:
        index = np.searchsorted(uniq, rated_ids)
        index_clipped = np.minimum(index, max(uniq.size - 1, 0))
        missing = (index >= uniq.size) | (uniq[index_clipped] != rated_ids) if uniq.size else None
    if uniq.size == 0 or np.any(missing):
        first = rated_ids[0] if uniq.size == 0 else rated_ids[np.flatnonzero(missing)[0]]
        raise ValueError(f"{name} id {first.item()!r} has a rating but is not in all_{name}s")
    return uniq, index


def lookup(known_ids, query):
    """Dense indices of external ids in the sorted array ``known_ids``.

    A query whose type differs from the ids' (a string against integer ids, say) is parsed into
    the ids' type where that is exact (``"42"`` -> 42); anything else is unknown.

    Returns
    -------
    index : ndarray of int64, the shape of ``query``; -1 where unknown
    known : ndarray of bool, the shape of ``query``
    """
    query = np.asarray(query)
    shape = query.shape
    flat = query.reshape(-1)
    parsable = np.ones(flat.shape, dtype=bool)
    if known_ids.dtype.kind == "U":
        if flat.dtype.kind != "U":
            flat = flat.astype(str)
    elif flat.dtype.kind not in "iu":
        parsed = [_parse_int(value) for value in flat.tolist()]
        parsable = np.array([v is not None for v in parsed], dtype=bool)
        flat = np.array([0 if v is None else v for v in parsed], dtype=np.int64)
    if known_ids.shape[0] == 0:
        return np.full(shape, -1, dtype=np.int64), np.zeros(shape, dtype=bool)
    index = np.searchsorted(known_ids, flat)
    clipped = np.minimum(index, known_ids.shape[0] - 1)
    known = (known_ids[clipped] == flat) & parsable
    index = np.where(known, clipped, -1).astype(np.int64)
    return index.reshape(shape), known.reshape(shape)


def _parse_int(value):
    """An id typed as text or float, as the integer it names exactly; None otherwise."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return int(value) if np.isfinite(value) and float(value).is_integer() else None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            try:
                return _parse_int(float(value))
            except ValueError:
                return None
    return None
