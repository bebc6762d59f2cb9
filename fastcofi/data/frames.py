"""Columns from data frames: pandas, polars, pyarrow tables, dicts of arrays, as numpy arrays.

`Ratings.from_dataframe` and the Dask driver build on these; nothing here knows `Ratings`.
"""

__all__ = ["column_array", "column_names", "frame_columns"]


import numpy as np


def frame_columns(df, roles):
    """The columns ``roles`` names (``{role: column name or None}``) as numpy arrays.

    Works with pandas, polars, a pyarrow Table or a dict of arrays: anything whose ``df[name]``
    gives a column convertible with ``numpy.asarray``. Roles whose name is None are left out.

    Returns
    -------
    dict of ndarray, keyed by role
    """
    columns = column_names(df)
    picked = {}
    for role, name in roles.items():
        if name is None:
            continue
        if columns is not None and name not in columns:
            raise ValueError(f"{role}={name!r} is not a column of the data frame; found {columns}")
        try:
            col = df[name]
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"{role}={name!r} is not a column of the data frame") from None
        picked[role] = column_array(col, role)
    return picked


def column_names(df):
    """The frame's column labels as a list (labels that are not strings as text), or None."""
    cols = getattr(df, "columns", None)
    if cols is None and isinstance(df, dict):
        cols = df.keys()
    if cols is None:
        names = getattr(df, "column_names", None)
        return list(names) if names is not None else None
    return [str(c) if not isinstance(c, str) else c for c in list(cols)]


def column_array(col, role):
    """One column as a numpy array; a rating column of objects (pandas' nullable floats)
    as float64."""
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
