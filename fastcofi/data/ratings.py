"""`Ratings`: the immutable sparse store of observed ratings."""

import json
from pathlib import Path

import numpy as np

from .._npzfile import atomic_folder
from ..kernels.sparse import Rows, gather_rows, row_major_order, take, transpose_csr
from .frames import frame_columns
from .ids import _as_id_array, _declare_ids, _index_dtype

__all__ = ["Ratings"]

_DUPLICATE_POLICIES = ("error", "last", "mean")


def check_duplicates_policy(duplicates):
    """Raise unless ``duplicates`` names a policy for repeated (user, item) pairs; every entry
    point that takes one checks it here, before any work."""
    if duplicates not in _DUPLICATE_POLICIES:
        raise ValueError(f"duplicates must be one of {_DUPLICATE_POLICIES}, found {duplicates!r}")


def check_rating_dtype(values, name="values"):
    """Raise unless ``values`` (an ndarray) holds numbers: booleans and strings are not ratings."""
    if values.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be numbers, found dtype {values.dtype}")
# Rows per chunk are chosen so that a chunk holds about this many ratings: enough work to hide
# the scheduling cost, and enough chunks to balance two to a few dozen threads.
_RATINGS_PER_CHUNK = 2048
_MAX_CHUNKS = 1024












def balanced_bounds(indptr, n_parts):
    """Row boundaries (int64, length ``n_parts + 1``, repeats allowed) cutting a CSR into
    ``n_parts`` runs of rows with about equal numbers of ratings."""
    n_rows = indptr.shape[0] - 1
    n_parts = max(1, int(n_parts))
    targets = (int(indptr[-1]) * np.arange(n_parts + 1, dtype=np.float64) / n_parts)
    bounds = np.searchsorted(indptr, targets.astype(np.int64), side="left").astype(np.int64)
    bounds[0], bounds[-1] = 0, n_rows
    return bounds


def value_moments(values, chunk=1 << 20):
    """Mean and variance (float64) of ``values``, a chunk at a time: ``np.var`` would allocate
    temporaries as large as the ratings (800 MB at 1e8)."""
    n = values.shape[0]
    if n == 0:
        return 0.0, 0.0
    mean = float(values.mean(dtype=np.float64))
    squares = 0.0
    for start in range(0, n, chunk):
        deviation = values[start : start + chunk].astype(np.float64) - mean
        squares += float(deviation @ deviation)
    return mean, squares / n


def _chunks(indptr):
    """Row boundaries of chunks with about equal numbers of ratings (int64)."""
    n_rows = indptr.shape[0] - 1
    nnz = int(indptr[-1])
    n_chunks = int(min(max(1, n_rows), _MAX_CHUNKS, max(1, nnz // _RATINGS_PER_CHUNK)))
    return np.unique(balanced_bounds(indptr, n_chunks))


def _readonly(*arrays):
    for a in arrays:
        if a is not None:
            a.flags.writeable = False


class Ratings:
    """Observed ratings of items by users, stored sparsely; immutable.

    Build it with :meth:`from_arrays`, :meth:`from_dense` or :meth:`from_scipy`. External user and
    item ids (integers or strings) are mapped to dense indices in sorted order of the unique ids.

    Attributes
    ----------
    n_users, n_items, nnz : int
    user_ids : ndarray of shape (n_users,)
        External id of each user index (integers or unicode strings).
    item_ids : ndarray of shape (n_items,)
        External id of each item index.
    values : ndarray of shape (nnz,), float64 (or the ``dtype`` asked for)
        The ratings in by-item order (item index, then user index).
    timestamps : ndarray of shape (nnz,) or None
        Aligned with ``values``.
    by_item : tuple (indptr, indices, values)
        CSR with one row per item: ``indptr`` int64 of shape (n_items + 1,), ``indices`` the user
        index of each rating (int32, int64 only past 2**31 users), ``values`` as above.
    by_user : tuple (indptr, indices, values)
        CSR with one row per user; ``indices`` are item indices.
    item_rows, user_rows : fastcofi.kernels.sparse.Rows
        ``by_item`` / ``by_user`` with row boundaries of chunks of about equal numbers of
        ratings: what the parallel row kernels take.
    """

    __slots__ = (
        "_user_ids",
        "_item_ids",
        "_by_item",
        "_by_user",
        "_timestamps",
        "_item_chunks",
        "_user_chunks",
    )

    def __init__(self, *args, **kwargs):
        raise TypeError(
            "build Ratings with Ratings.from_arrays, Ratings.from_dense or Ratings.from_scipy"
        )

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def _from_indices(cls, user_ids, item_ids, users, items, values, timestamps, duplicates):
        """Build from dense indices (any int dtype); checks duplicates and sorts into both CSRs."""
        n_users, n_items = len(user_ids), len(item_ids)
        users = users.astype(_index_dtype(n_users), copy=False)
        items = items.astype(_index_dtype(n_items), copy=False)
        order, item_indptr = row_major_order(items, users, n_items)
        row_users = np.empty_like(users)
        sorted_values = np.empty_like(values)
        if gather_rows(order, item_indptr, users, values, row_users, sorted_values):
            # same[p]: sorted position p + 1 repeats the (item, user) pair at position p.
            same = row_users[1:] == row_users[:-1]
            row_starts = item_indptr[1:-1]
            same[row_starts[(row_starts > 0) & (row_starts < same.shape[0] + 1)] - 1] = False
            if duplicates == "error":
                cls._raise_first_duplicate(order, same, user_ids, item_ids, users, items)
            # Keep the last member of each group (the sort keeps input order): its timestamp wins.
            last_of_group = np.concatenate([~same, [True]])
            if duplicates == "mean":
                starts = np.flatnonzero(np.concatenate([[True], ~same]))
                sums = np.add.reduceat(sorted_values.astype(np.float64), starts)
                sorted_values = (sums / np.diff(np.append(starts, same.shape[0] + 1))).astype(
                    values.dtype
                )
            else:
                sorted_values = sorted_values[last_of_group]
            order = order[last_of_group]
            row_users = row_users[last_of_group]
            item_indptr = np.zeros(n_items + 1, dtype=np.int64)
            np.cumsum(np.bincount(items[order], minlength=n_items), out=item_indptr[1:])
        ts = None if timestamps is None else take(timestamps, order)
        del order
        user_items = np.empty(row_users.shape[0], dtype=items.dtype)
        user_values = np.empty_like(sorted_values)
        user_indptr = transpose_csr(
            item_indptr, row_users, sorted_values, n_users, user_items, user_values
        )
        return cls._assemble(
            user_ids, item_ids, (item_indptr, row_users, sorted_values),
            (user_indptr, user_items, user_values), ts,
        )

    @classmethod
    def _from_user_csr(cls, user_ids, item_ids, user_indptr, user_items, user_values,
                       timestamps=None):
        """Build from a by-user CSR whose rows list distinct items in ascending order.

        The by-item CSR is its transpose, one counting sort; the arrays given become the by-user
        CSR (not copied), so nothing beyond the two CSRs is held: no COO copy and no duplicate
        check (distinct rows are the caller's contract). Timestamps, aligned with the by-user
        order, move to the by-item order in the same transpose.

        Parameters
        ----------
        user_ids : ndarray of shape (n_users,)
        item_ids : ndarray of shape (n_items,)
        user_indptr : ndarray of shape (n_users + 1,), int64
        user_items : ndarray of shape (nnz,), int32 (int64 past 2**31 items)
        user_values : ndarray of shape (nnz,), float64 or float32
        timestamps : ndarray of shape (nnz,), optional
        """
        nnz = user_items.shape[0]
        item_users = np.empty(nnz, dtype=_index_dtype(len(user_ids)))
        if timestamps is None:
            item_values = np.empty_like(user_values)
            item_indptr = transpose_csr(
                user_indptr, user_items, user_values, len(item_ids), item_users, item_values
            )
        else:
            item_values = np.empty_like(user_values)
            item_timestamps = np.empty_like(timestamps)
            item_indptr = transpose_csr(
                user_indptr, user_items, user_values, len(item_ids), item_users, item_values,
                timestamps, item_timestamps,
            )
            timestamps = item_timestamps
        return cls._assemble(
            user_ids, item_ids, (item_indptr, item_users, item_values),
            (user_indptr, user_items, user_values), timestamps,
        )

    @classmethod
    def _assemble(cls, user_ids, item_ids, by_item, by_user, timestamps):
        """The object around finished CSRs (taken over and made read-only)."""
        obj = object.__new__(cls)
        obj._user_ids = user_ids
        obj._item_ids = item_ids
        obj._by_item = by_item
        obj._by_user = by_user
        obj._timestamps = timestamps
        obj._item_chunks = _chunks(by_item[0])
        obj._user_chunks = _chunks(by_user[0])
        _readonly(user_ids, item_ids, *obj._by_item, *obj._by_user, timestamps)
        _readonly(obj._item_chunks, obj._user_chunks)
        return obj

    @staticmethod
    def _raise_first_duplicate(order, same, user_ids, item_ids, users, items):
        # same[p] is True when sorted position p + 1 repeats the pair at position p.
        later = int(order[1:][same].min())
        earlier = int(np.flatnonzero((users == users[later]) & (items == items[later]))[0])
        raise ValueError(
            f"duplicated rating for user {user_ids[users[later]].item()!r} and item "
            f"{item_ids[items[later]].item()!r} (input rows {earlier} and {later}); "
            "pass duplicates='last' or duplicates='mean' to resolve repeated pairs"
        )

    @classmethod
    def from_arrays(
        cls,
        users,
        items,
        values,
        *,
        all_users=None,
        all_items=None,
        duplicates="error",
        dtype=np.float64,
        timestamps=None,
    ):
        """Build from parallel arrays of user ids, item ids and ratings (COO form).

        Parameters
        ----------
        users, items : array-like of shape (nnz,)
            External ids, integers or strings.
        values : array-like of shape (nnz,)
            Ratings, finite numbers.
        all_users, all_items : array-like, optional
            Every id to give an index, including ids without ratings (they get empty rows). Every
            rated id must be among them.
        duplicates : {"error", "last", "mean"}
            What to do with a repeated (user, item) pair: raise naming the first one, keep the
            last in input order, or average them.
        dtype : {numpy.float64, numpy.float32}
            Storage type of the values.
        timestamps : array-like of shape (nnz,), optional
            Kept aligned with the ratings (the last one for resolved duplicates).

        Returns
        -------
        Ratings
        """
        check_duplicates_policy(duplicates)
        dtype = np.dtype(dtype)
        if dtype not in (np.dtype(np.float64), np.dtype(np.float32)):
            raise ValueError(f"dtype must be float64 or float32, found {dtype}")
        users = _as_id_array(users, "users")
        items = _as_id_array(items, "items")
        raw_values = np.asarray(values)
        if raw_values.ndim != 1:
            raise ValueError(f"values must be 1-dimensional, found shape {raw_values.shape}")
        check_rating_dtype(raw_values)
        lengths = {"users": users.shape[0], "items": items.shape[0], "values": raw_values.shape[0]}
        if timestamps is not None:
            timestamps = np.asarray(timestamps)
            if timestamps.ndim != 1 or timestamps.dtype.kind not in "iuf":
                raise ValueError("timestamps must be a 1-dimensional array of numbers")
            lengths["timestamps"] = timestamps.shape[0]
        if len(set(lengths.values())) != 1:
            found = ", ".join(f"{k} has {v}" for k, v in lengths.items())
            raise ValueError(f"users, items and values must have the same length; found {found}")
        if raw_values.shape[0] == 0:
            raise ValueError("no ratings: users, items and values are empty")
        finite = np.isfinite(raw_values)
        if not finite.all():
            bad = int(np.flatnonzero(~finite)[0])
            raise ValueError(
                f"ratings must be finite; found {raw_values[bad].item()!r} at position {bad} "
                f"(user {users[bad].item()!r}, item {items[bad].item()!r})"
            )
        vals = raw_values.astype(dtype, copy=False)
        if dtype == np.float32 and raw_values.dtype.kind == "f" and not np.isfinite(vals).all():
            raise ValueError("ratings overflow float32; use dtype=np.float64")
        user_ids, user_index = _declare_ids(users, all_users, "user")
        item_ids, item_index = _declare_ids(items, all_items, "item")
        return cls._from_indices(
            user_ids, item_ids, user_index, item_index, vals, timestamps, duplicates
        )

    @classmethod
    def from_dense(cls, matrix, rated=None, *, user_ids=None, item_ids=None):
        """Build from the tutorial's dense layout, items x users.

        Parameters
        ----------
        matrix : array-like of shape (n_items, n_users)
            Ratings.
        rated : array-like of shape (n_items, n_users) of bool, optional
            True where a rating exists. Without it, 0 means unrated; with it, a 0 is a real rating
            and unrated entries may hold anything (NaN included).
        user_ids, item_ids : array-like, optional
            External ids of the columns / rows; default ``0..n-1``.

        Returns
        -------
        Ratings
        """
        matrix = np.asarray(matrix)
        if matrix.ndim != 2:
            raise ValueError(
                f"matrix must be 2-dimensional (items x users), found shape {matrix.shape}"
            )
        if matrix.dtype.kind not in "iufb":
            raise ValueError(f"matrix must hold numbers, found dtype {matrix.dtype}")
        if rated is None:
            mask = matrix != 0
        else:
            mask = np.asarray(rated)
            if mask.shape != matrix.shape:
                raise ValueError(
                    f"rated must have the shape of matrix {matrix.shape}, found {mask.shape}"
                )
            mask = mask.astype(bool)
        n_items, n_users = matrix.shape
        user_ids = np.arange(n_users) if user_ids is None else _as_id_array(user_ids, "user_ids")
        item_ids = np.arange(n_items) if item_ids is None else _as_id_array(item_ids, "item_ids")
        if user_ids.shape[0] != n_users or item_ids.shape[0] != n_items:
            raise ValueError(
                f"expected {n_users} user_ids and {n_items} item_ids for a matrix of shape "
                f"{matrix.shape}, found {user_ids.shape[0]} and {item_ids.shape[0]}"
            )
        item_idx, user_idx = np.nonzero(mask)
        return cls.from_arrays(
            user_ids[user_idx],
            item_ids[item_idx],
            matrix[item_idx, user_idx].astype(np.float64),
            all_users=user_ids,
            all_items=item_ids,
        )

    @classmethod
    def from_scipy(cls, matrix, *, user_ids=None, item_ids=None):
        """Build from a scipy sparse matrix or array, items x users; stored entries are ratings.

        Explicitly stored zeros are ratings of 0; repeated coordinates are an error.
        """
        import scipy.sparse as sp

        if not sp.issparse(matrix):
            raise ValueError(
                f"expected a scipy sparse matrix or array, found {type(matrix).__name__}"
            )
        if matrix.ndim != 2:
            raise ValueError(
                f"expected a 2-dimensional sparse matrix, found {matrix.ndim} dimensions"
            )
        coo = matrix.tocoo()
        n_items, n_users = coo.shape
        user_ids = np.arange(n_users) if user_ids is None else _as_id_array(user_ids, "user_ids")
        item_ids = np.arange(n_items) if item_ids is None else _as_id_array(item_ids, "item_ids")
        if user_ids.shape[0] != n_users or item_ids.shape[0] != n_items:
            raise ValueError(
                f"expected {n_users} user_ids and {n_items} item_ids for a matrix of shape "
                f"{coo.shape}, found {user_ids.shape[0]} and {item_ids.shape[0]}"
            )
        return cls.from_arrays(
            user_ids[coo.col],
            item_ids[coo.row],
            np.asarray(coo.data, dtype=np.float64),
            all_users=user_ids,
            all_items=item_ids,
        )

    @classmethod
    def from_dataframe(cls, df, *, user="user", item="item", rating="rating", timestamp=None,
                       dtype=np.float64, duplicates="error"):
        """Build from a data frame's columns.

        Works with pandas, polars, a pyarrow Table or a dict of arrays: anything whose
        ``df[name]`` gives a column convertible with ``numpy.asarray``.

        Parameters
        ----------
        df : DataFrame-like
        user, item, rating : str
            Column names of the user ids, item ids (integers or strings) and ratings (numbers).
        timestamp : str, optional
            Column of timestamps to keep.
        dtype, duplicates
            As in `from_arrays`.

        Returns
        -------
        Ratings
        """
        picked = frame_columns(
            df, {"user": user, "item": item, "rating": rating, "timestamp": timestamp}
        )
        return cls.from_arrays(
            picked["user"], picked["item"], picked["rating"], dtype=dtype, duplicates=duplicates,
            timestamps=picked.get("timestamp"),
        )

    # -- attributes ---------------------------------------------------------------------------
    @property
    def n_users(self):
        return int(self._user_ids.shape[0])

    @property
    def n_items(self):
        return int(self._item_ids.shape[0])

    @property
    def nnz(self):
        return int(self._by_item[2].shape[0])

    @property
    def user_ids(self):
        return self._user_ids

    @property
    def item_ids(self):
        return self._item_ids

    @property
    def values(self):
        return self._by_item[2]

    @property
    def timestamps(self):
        return self._timestamps

    @property
    def by_item(self):
        return self._by_item

    @property
    def by_user(self):
        return self._by_user

    @property
    def item_rows(self):
        return Rows(*self._by_item, self._item_chunks)

    @property
    def user_rows(self):
        return Rows(*self._by_user, self._user_chunks)

    def coo(self):
        """Dense indices and values in by-item order.

        Returns
        -------
        users : ndarray of shape (nnz,), int32 or int64
        items : ndarray of shape (nnz,), int32 or int64
        values : ndarray of shape (nnz,)
        """
        indptr, users, values = self._by_item
        items = np.repeat(np.arange(self.n_items, dtype=users.dtype), np.diff(indptr))
        return users, items, values

    # -- persistence --------------------------------------------------------------------------
    _FORMAT = "fastcofi-ratings"
    _VERSION = 1
    _ARRAYS = (
        "user_ids", "item_ids", "item_indptr", "item_users", "item_values",
        "user_indptr", "user_items", "user_values", "timestamps",
    )

    def save(self, folder):
        """Write to ``folder`` as ``.npy`` files plus ``header.json``, so `load` can memory-map
        them.

        The folder is written under a temporary name beside it and renamed into place, so an
        interrupted save never leaves a half-written folder under ``folder``. An existing
        folder is replaced.
        """
        folder = Path(folder)
        arrays = dict(
            zip(self._ARRAYS, (self._user_ids, self._item_ids, *self._by_item, *self._by_user,
                               self._timestamps))
        )
        header = {
            "format": self._FORMAT,
            "version": self._VERSION,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "nnz": self.nnz,
            "arrays": [name for name, a in arrays.items() if a is not None],
        }
        with atomic_folder(folder) as tmp:
            for name, array in arrays.items():
                if array is not None:
                    np.save(tmp / f"{name}.npy", array, allow_pickle=False)
            (tmp / "header.json").write_text(json.dumps(header))

    @classmethod
    def load(cls, folder, mmap=True):
        """Read a folder written by `save`; with ``mmap`` the arrays are memory-mapped read-only.

        Raises
        ------
        ValueError
            When the folder is not a fastcofi ratings folder or its arrays are inconsistent.
        """
        folder = Path(folder)
        header_path = folder / "header.json"
        if not header_path.is_file():
            raise ValueError(f"{folder}: not a fastcofi ratings folder (no header.json)")
        try:
            header = json.loads(header_path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{header_path}: invalid JSON header ({exc})") from None
        if not isinstance(header, dict) or header.get("format") != cls._FORMAT:
            raise ValueError(f"{header_path}: not a fastcofi ratings header")
        if header.get("version") != cls._VERSION:
            raise ValueError(
                f"{header_path}: format version {header.get('version')!r} is not supported "
                f"(this fastcofi reads version {cls._VERSION})"
            )
        counts = {key: header.get(key) for key in ("n_users", "n_items", "nnz")}
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                   for v in counts.values()):
            raise ValueError(
                f"{header_path}: n_users, n_items and nnz must be integers >= 0, found "
                + ", ".join(f"{key}={value!r}" for key, value in counts.items())
            )
        arrays = {}
        for name in cls._ARRAYS:
            path = folder / f"{name}.npy"
            if name in header.get("arrays", ()):
                if path.is_file() and not _is_npy(path):
                    # np.load would call it a pickle, which it is not allowed to read.
                    raise ValueError(f"{path}: not a .npy array file")
                try:
                    arrays[name] = np.load(
                        path, mmap_mode="r" if mmap else None, allow_pickle=False
                    )
                except (OSError, ValueError) as exc:
                    raise ValueError(f"{path}: cannot be read as an array ({exc})") from None
            else:
                arrays[name] = None
        obj = object.__new__(cls)
        obj._user_ids, obj._item_ids = arrays["user_ids"], arrays["item_ids"]
        obj._by_item = (arrays["item_indptr"], arrays["item_users"], arrays["item_values"])
        obj._by_user = (arrays["user_indptr"], arrays["user_items"], arrays["user_values"])
        obj._timestamps = arrays["timestamps"]
        obj._check_loaded(folder, header)
        obj._item_chunks = _chunks(np.asarray(obj._by_item[0]))
        obj._user_chunks = _chunks(np.asarray(obj._by_user[0]))
        _readonly(obj._user_ids, obj._item_ids, *obj._by_item, *obj._by_user, obj._timestamps)
        _readonly(obj._item_chunks, obj._user_chunks)
        return obj

    def _check_loaded(self, folder, header):
        n_users, n_items, nnz = header.get("n_users"), header.get("n_items"), header.get("nnz")
        problems = []
        if self._user_ids is None or self._user_ids.shape != (n_users,):
            problems.append(f"user_ids should have {n_users} entries")
        if self._item_ids is None or self._item_ids.shape != (n_items,):
            problems.append(f"item_ids should have {n_items} entries")
        for side, ids in (("user", self._user_ids), ("item", self._item_ids)):
            # lookup bisects the ids: unsorted ones would find the wrong rows, silently.
            if ids is not None and ids.ndim == 1 and np.any(ids[1:] <= ids[:-1]):
                problems.append(f"{side}_ids are not sorted ascending without repeats")
        for side, (indptr, indices, values), rows, cols in (
            ("item", self._by_item, n_items, n_users),
            ("user", self._by_user, n_users, n_items),
        ):
            if indptr is None or indices is None or values is None:
                problems.append(f"the by-{side} CSR is incomplete")
                continue
            if indptr.shape != (rows + 1,) or indptr.dtype.kind != "i":
                problems.append(f"{side}_indptr should be {rows + 1} integers")
            elif indptr[0] != 0 or indptr[-1] != nnz or np.any(np.diff(indptr) < 0):
                problems.append(f"{side}_indptr is not a valid CSR index")
            if indices.shape != (nnz,) or indices.dtype.kind != "i":
                problems.append(f"the by-{side} indices should be {nnz} integers")
            elif nnz and (indices.min() < 0 or indices.max() >= cols):
                problems.append(f"the by-{side} indices are out of range")
            if values.shape != (nnz,) or values.dtype not in (np.float64, np.float32):
                problems.append(f"the by-{side} values should be {nnz} floats")
        if self._timestamps is not None and self._timestamps.shape != (nnz,):
            problems.append(f"timestamps should have {nnz} entries")
        if problems:
            raise ValueError(f"{folder}: corrupt ratings folder: " + "; ".join(problems))

    def __repr__(self):
        return f"Ratings(n_users={self.n_users}, n_items={self.n_items}, nnz={self.nnz})"


def _is_npy(path):
    with open(path, "rb") as handle:
        return handle.read(6) == b"\x93NUMPY"
