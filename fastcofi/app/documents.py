"""The JSON documents the command line and the HTTP service both answer with.

One place builds them, so that ``fastcofi recommend --json`` and ``GET /recommend`` cannot drift
apart: each recommendation carries the raw ``"score"`` the ranking used and the ``"prediction"``
that `MatrixFactorization.predict` gives for the same pair (the score clipped to the model's
rating range), and ids the model does not know are listed, never dropped silently.
"""

import math

import numpy as np

from .. import serving
from ..data.ids import _parse_int, lookup

__all__ = ["clipped", "json_value", "number", "recommendation_rows", "split_known",
           "titled_rows"]


def json_value(value):
    """Plain JSON values: numpy scalars to Python, NaN / inf to null, tuples to lists."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    return value


def number(value):
    """A float for JSON: None for NaN and infinities."""
    value = float(value)
    return value if math.isfinite(value) else None


def clipped(model, scores):
    """Raw scores as `predict` reports them: clipped to the model's ``clip`` range."""
    out = np.array(scores, dtype=np.float64)
    bounds = serving.state_of(model).clip
    if bounds is not None:
        finite = np.isfinite(out)  # padding scores (-inf) stay padding
        out[finite] = np.clip(out[finite], bounds[0], bounds[1])
    return out


def recommendation_rows(model, ids, scores, user=None):
    """``[{"item", "score", "prediction", "title"?}, ...]`` for one ranked list.

    With a known ``user`` the predictions are ``model.predict(user, ids)``, to the last bit (the
    ranking's scores come from another summation order); without one (a folded-in user, a
    cluster) they are the scores clipped as `predict` clips.
    """
    ids = np.asarray(ids)
    if user is not None and ids.size:
        predictions = np.atleast_1d(np.asarray(model.predict(user, ids), dtype=np.float64))
    else:
        predictions = clipped(model, scores)
    return titled_rows(model, ids, score=scores, prediction=predictions)


def titled_rows(model, ids, **columns):
    """``[{"item", <column>, ..., "title"?}, ...]``: one row per item id, each column's value as
    a JSON `number`, and the item's title where the model has one (``titles_``)."""
    titles = getattr(model, "titles_", None) or {}
    names = list(columns)
    rows = []
    for item, *values in zip(np.asarray(ids).tolist(),
                             *(np.asarray(v).tolist() for v in columns.values())):
        row = {"item": item, **{name: number(v) for name, v in zip(names, values)}}
        title = titles.get(item)
        if title is not None:
            row["title"] = title
        rows.append(row)
    return rows


def split_known(model_ids, ids):
    """(known mask, unknown ids as a list, in request order) for ids of the model's id type."""
    ids = np.asarray(ids)
    if ids.size == 0:
        return np.zeros(0, dtype=bool), []
    known = lookup(model_ids, ids)[1]
    return known, ids[~known].tolist()


def typed_id(model_ids, value, name):
    """``value`` (command-line or query text, or a JSON value) as an id of the model's id type:
    an integer-id model reads ``"42"`` as 42. ValueError naming ``name`` otherwise."""
    if model_ids.dtype.kind == "U":
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"{name} {value!r}: expected a string id")
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        parsed = _parse_int(value)
        if parsed is not None and -(2**63) <= parsed < 2**63:
            return parsed
    raise ValueError(f"{name} {value!r}: expected an integer id (the model's ids are integers)")
