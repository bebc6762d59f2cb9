"""Columns from data frames: pandas, polars, pyarrow tables, dicts of arrays."""


import numpy as np

from .ratings import Ratings


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
