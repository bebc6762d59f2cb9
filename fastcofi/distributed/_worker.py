"""Worker-side functions of `fastcofi.distributed`: building, summarizing and evaluating shards.

They live at module level so that workers import them by name instead of unpickling code.
"""

import numpy as np

from .._parallel import threads
from ..data.ids import unique_ids
from ..data.ratings import Ratings, balanced_bounds, check_rating_dtype
from ..train.objective import _evaluate, row_weights


# -- worker-side functions (module level, so workers import them instead of unpickling code) --
class _Shard:
    """One block's ratings on a worker.

    Attributes
    ----------
    ratings : Ratings
        The shard's items and users renumbered from 0 (ids are the external ids).
    item_index, user_index : ndarray of int64
        Global (driver) index of each of the shard's items / users, ascending. The blocked side
        is a contiguous range holding every rating of its rows; the other side lists only the
        rows the shard has ratings of.
    """

    def __init__(self, ratings, item_index, user_index):
        self.ratings = ratings
        self.item_index = item_index
        self.user_index = user_index


def _build_shard(by, start, block_ids, other_ids, duplicates, *pieces):
    """A `_Shard` from pieces ``(items, users, values)`` of one block: indices local to the block
    on its side (``by``), global on the other."""
    if pieces:
        items, users, values = (np.concatenate([p[n] for p in pieces]) for n in range(3))
    else:
        items, users, values = np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
    block_index = np.arange(start, start + len(block_ids), dtype=np.int64)
    other = users if by == "items" else items
    other_index, other_local = unique_ids(other.astype(np.int64, copy=False))
    other_index = other_index.astype(np.int64)
    other_ids = np.asarray(other_ids)[other_index]
    if by == "items":
        ratings = Ratings._from_indices(
            other_ids, np.asarray(block_ids), other_local, items, values, None, duplicates
        )
        return _Shard(ratings, block_index, other_index)
    ratings = Ratings._from_indices(
        np.asarray(block_ids), other_ids, users, other_local, values, None, duplicates
    )
    return _Shard(ratings, other_index, block_index)


def _shard_summary(shard):
    """What the driver keeps of a shard: its rows' global indices and rating counts."""
    r = shard.ratings
    return {
        "item_index": shard.item_index,
        "user_index": shard.user_index,
        "item_counts": np.diff(r.by_item[0]),
        "user_counts": np.diff(r.by_user[0]),
        "nnz": r.nnz,
    }


def _shard_arrays(shard):
    """The shard's ratings with global indices: (items, users, values)."""
    users, items, values = shard.ratings.coo()
    return shard.item_index[items], shard.user_index[users], np.asarray(values)


def _shard_evaluate(shard, X, Theta, item_bias, user_bias, mu, reg, reg_bias, reg_weighting,
                    n_threads, by):
    r = shard.ratings
    # Zero on the side that is not blocked: its penalty is added once, on the driver, not once
    # per shard that has ratings of its rows.
    if by == "items":
        item_weight = row_weights(np.diff(r.by_item[0]), reg_weighting)
        user_weight = np.zeros(r.n_users)
    else:
        item_weight = np.zeros(r.n_items)
        user_weight = row_weights(np.diff(r.by_user[0]), reg_weighting)
    grads = (np.empty_like(X), np.empty_like(Theta), np.empty(r.n_items), np.empty(r.n_users))
    if n_threads is None:
        n_threads = _worker_threads()
    with threads(n_threads):
        cost = _evaluate(
            X, Theta, item_bias, user_bias, mu, r, reg, reg_bias, (item_weight, user_weight),
            grads,
        )
    return float(cost), grads


def _worker_threads():
    """The Dask worker's thread count, so that numba does not oversubscribe its cores."""
    try:
        from distributed import get_worker

        return max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):
        return None


def _frame_arrays(frame, columns):
    """(users, items, values) of one pandas partition, from the columns ``columns`` ({role:
    name}), each converted as `Ratings.from_dataframe` converts it."""
    from ..data.frames import column_array

    users, items, values = (column_array(frame[name], role) for role, name in columns.items())
    check_rating_dtype(values, f"the rating column {columns['rating']!r}")
    return users, items, values.astype(np.float64, copy=False)


def _file_arrays(path, duplicates, read_kwargs):
    """(users, items, values) of every row of one rating file, in file order, external ids, read
    as `read_ratings` reads them.

    Repeated pairs are left for the shards to merge with the other files' rows, so that a list
    of files gives the ratings of one file holding all their rows: merged here first,
    duplicates="mean" would give a pair a mean of per-file means. Under "error" a pair repeated
    within the file is named here, by file and lines, as `read_ratings` names it.
    """
    from ..data.read import _read_columns, _row_ids, _to_ratings

    source, columns, header_lines = _read_columns(path, **read_kwargs)
    users, items = _row_ids(columns["user"]), _row_ids(columns["item"])
    values = np.asarray(columns["rating"], dtype=np.float64)
    if duplicates == "error":
        _to_ratings(source, columns, duplicates, header_lines)
    return users, items, values


def _ids_summary(arrays):
    """Unique user ids, unique item ids, and the number of ratings of each."""
    from ..data.ids import _as_id_array

    users, items, values = arrays
    users = _as_id_array(users, "user ids")
    items = _as_id_array(items, "item ids")
    if values.size and not np.all(np.isfinite(values)):
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        raise ValueError(
            f"ratings must be finite; found {values[bad]!r} (user {users[bad]!r}, item "
            f"{items[bad]!r})"
        )
    return np.unique(users, return_counts=True), np.unique(items, return_counts=True)


def _split_partition(arrays, user_ids, item_ids, bounds, by):
    """One partition's ratings cut into blocks: per block (items, users, values), local to the
    block on the ``by`` side."""
    from ..data.ids import _as_id_array

    users, items, values = arrays
    u = np.searchsorted(user_ids, _as_id_array(users, "user ids")).astype(np.int64)
    i = np.searchsorted(item_ids, _as_id_array(items, "item ids")).astype(np.int64)
    block = np.searchsorted(bounds, i if by == "items" else u, side="right") - 1
    # Stable, so repeated pairs keep their input order (duplicates="last" keeps the last).
    order = np.argsort(block, kind="stable")
    cuts = np.searchsorted(block[order], np.arange(len(bounds)))
    pieces = []
    for s in range(len(bounds) - 1):
        take = order[cuts[s] : cuts[s + 1]]
        shift_i, shift_u = (bounds[s], 0) if by == "items" else (0, bounds[s])
        pieces.append((i[take] - shift_i, u[take] - shift_u, values[take]))
    return pieces


def _block_bounds(counts, n_shards):
    """Row boundaries of at most ``n_shards`` contiguous blocks of about equal rating counts."""
    indptr = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    return np.unique(balanced_bounds(indptr, n_shards))
