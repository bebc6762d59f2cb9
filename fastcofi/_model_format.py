"""The model file format: what a fitted model is saved as (`save_model`) and read back from
(`read_model_file`, which checks every member; `fastcofi.model_file.load_model` builds the
model). The format knows the fitted attributes by name and never imports the estimator."""

import json
import os
import re
from pathlib import Path

import numpy as np

from ._npzfile import check_header, read_npz, write_npz

__all__ = ["ModelFileError", "read_model_file", "save_model"]

# -- model files -----------------------------------------------------------------------------
# One uncompressed ``.npz`` (a zip of ``.npy`` members), arrays only, read with allow_pickle=False.
# Version 1 members (shapes with n_items, n_users, k, nnz = training ratings, h = iterations):
#
#   fastcofi_format   0-d <U   "fastcofi-model"
#   format_version    0-d int64   1
#   fastcofi_version  0-d <U   the package version that wrote the file
#   params            0-d <U   JSON object of the hyperparameters (get_params(), with the
#                              solver and reg_weighting used in place of "auto")
#   normalize         0-d <U   "item_mean" | "biases" | "none"
#   item_factors      (n_items, k) float64       user_factors   (n_users, k) float64
#   item_ids          (n_items,) int64 or <U      user_ids       (n_users,) int64 or <U
#                     (sorted ascending, unique: dense indices are positions in these)
#   global_mean       0-d float64
#   item_means        (n_items,) float64          only with normalize="item_mean"
#   item_bias         (n_items,) float64          only with normalize="biases"
#   user_bias         (n_users,) float64          only with normalize="biases"
#   reg, reg_bias     0-d float64   the penalties training used (reg_, reg_bias_): fold-in's
#                     (version 2; a version 1 file takes them from params)
#   noise_variance    0-d float64                only with solver="vb" or "gibbs": fold-in's reg
#   user_bias_variance 0-d float64               only with solver="vb" or "gibbs": reg_bias =
#                                                noise / it
#   posterior_noise_variances (S,) float64       only with solver="gibbs" (version 3), S kept
#                                                draws: each draw's 1 / tau
#   posterior_item_bias_samples (n_items, S) float64, posterior_user_bias_samples (n_users, S)
#                                                float64: each draw's biases
#   posterior_item_prior_precision, posterior_user_prior_precision (S, k + 1, k + 1) float64:
#                                                each draw's prior precision matrix of (factors,
#                                                bias) (version 4; version 3 stored the diagonal,
#                                                (S, k + 1): the per-dimension prior of that time)
#   posterior_item_noise_scales (n_items, S) float64, posterior_user_noise_scales (n_users, S)
#                                                float64: each draw's noise scale of every row
#   posterior_item_noise_shapes, posterior_user_noise_shapes (S,) float64: each draw's shape
#                                                of its side's scales (version 5; a file of
#                                                version 3 or 4 has unit scales)
#                     (item_factors and user_factors then hold the draws stacked: S k columns)
#   rating_range      (2,) float64  min, max training rating
#   seen_indptr       (n_users + 1,) int64        the training ratings by user, as CSR:
#   seen_indices      (nnz,) int32 or int64       item indices rated by each user
#   n_iter            0-d int64                   best_iteration  0-d int64
#   history_<name>    (h,) float64 per history_ entry ("cost", "seconds", "val_rmse")
#   title_ids         (t,) int64 or <U            title_texts   (t,) <U   only with titles
MODEL_FORMAT = "fastcofi-model"
MODEL_FORMAT_VERSION = 5
# Version 2 added the members reg and reg_bias, because params' reg may be None (scaled to the
# ratings); version 3 the posterior_ members of a sampled (solver="gibbs") model; version 4 made
# their prior precisions full matrices (the Normal-Wishart prior on the factors); version 5
# added each row's noise scale. Only a sampled model is written as version 5: any other is still
# a version 2 file, which older fastcofi reads. Files of all five versions load (a version 3
# file's diagonals as diagonal matrices, a version 3 or 4 file's noise with unit scales).
_READABLE_VERSIONS = (1, 2, 3, 4, 5)
_POSTERIOR = {
    # name: (rows: "items" | "users" | None, columns: "S" | "S,d,d", first version, lower bound)
    "noise_variances": (None, "S", 3, 0.0),
    "item_bias_samples": ("items", "S", 3, None),
    "user_bias_samples": ("users", "S", 3, None),
    "item_prior_precision": (None, "S,d,d", 3, None),
    "user_prior_precision": (None, "S,d,d", 3, None),
    "item_noise_scales": ("items", "S", 5, 0.0),
    "user_noise_scales": ("users", "S", 5, 0.0),
    # Shapes above 1, or a new row's expected noise variance a / (a - 1) / tau is not finite.
    "item_noise_shapes": (None, "S", 5, 1.0),
    "user_noise_shapes": (None, "S", 5, 1.0),
}

_HISTORY_PREFIX = "history_"


class ModelFileError(ValueError):
    """A model file that cannot be loaded: not ours, corrupted, truncated or of a newer version.

    Attributes
    ----------
    path : str
    """

    def __init__(self, path, message):
        super().__init__(f"{path}: {message}")
        self.path = str(path)


def _jsonable(value):
    """Hyperparameter values as JSON types (a Generator seed cannot be stored: None)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, (tuple, list, np.ndarray)):
        return [_jsonable(v) for v in list(value)]
    if value is None or isinstance(value, (int, float, str)):
        return value
    return None


def _id_array(ids, name):
    ids = np.asarray(ids)
    if ids.dtype.kind in "iu":
        return ids.astype(np.int64)
    if ids.dtype.kind == "U":
        return ids
    raise ValueError(f"{name} must hold integers or unicode strings, found dtype {ids.dtype}")


def _title_arrays(titles, item_ids):
    """Titles keyed like the model's item ids, for the items the model has, in id order."""
    keys, texts = [], []
    for key, text in titles.items():
        if item_ids.dtype.kind == "U":
            key = str(key)
        else:
            from .data.ids import _parse_int

            key = _parse_int(key)
            if key is None:
                continue
        keys.append(key)
        texts.append(str(text))
    if not keys:
        return None
    key_array = np.array(keys, dtype=item_ids.dtype)
    order = np.argsort(key_array, kind="stable")
    key_array = key_array[order]
    text_array = np.array(texts, dtype=str)[order] if texts else np.array([], dtype="<U1")
    from .data.ids import lookup

    _, known = lookup(item_ids, key_array)
    if not known.any():
        return None
    return key_array[known], text_array[known]


def _model_arrays(model):
    """The arrays of a fitted model's file (see the table above)."""
    from . import __version__

    # The solver and weighting used, not "auto": fold-in weights a new user's penalty as
    # training did, and earlier versions of fastcofi can read the file.
    params = {name: _jsonable(value) for name, value in model.get_params().items()}
    params.update(solver=model.solver_, reg_weighting=model.reg_weighting_)
    item_ids = _id_array(model.item_ids_, "item_ids_")
    user_ids = _id_array(model.user_ids_, "user_ids_")
    seen_indptr, seen_indices = model.seen_indptr_, model.seen_indices_
    arrays = {
        "fastcofi_format": np.array(MODEL_FORMAT),
        "format_version": np.array(
            MODEL_FORMAT_VERSION if getattr(model, "_posterior", None) is not None else 2,
            dtype=np.int64),
        "fastcofi_version": np.array(str(__version__)),
        "params": np.array(json.dumps(params, sort_keys=True)),
        "normalize": np.array(str(model.normalize)),
        "item_factors": np.ascontiguousarray(model.item_factors_, dtype=np.float64),
        "user_factors": np.ascontiguousarray(model.user_factors_, dtype=np.float64),
        "item_ids": item_ids,
        "user_ids": user_ids,
        "global_mean": np.array(model.global_mean_, dtype=np.float64),
        "reg": np.array(model.reg_, dtype=np.float64),
        "reg_bias": np.array(model.reg_bias_, dtype=np.float64),
        "rating_range": np.array(model.rating_range_, dtype=np.float64),
        "seen_indptr": np.asarray(seen_indptr, dtype=np.int64),
        "seen_indices": np.asarray(seen_indices),
        "n_iter": np.array(int(model.n_iter_), dtype=np.int64),
        "best_iteration": np.array(int(getattr(model, "best_iteration_", model.n_iter_)),
                                   dtype=np.int64),
    }
    if model.item_means_ is not None:
        arrays["item_means"] = np.asarray(model.item_means_, dtype=np.float64)
    if model.item_bias_ is not None:
        arrays["item_bias"] = np.asarray(model.item_bias_, dtype=np.float64)
        arrays["user_bias"] = np.asarray(model.user_bias_, dtype=np.float64)
    if getattr(model, "noise_variance_", None) is not None:
        arrays["noise_variance"] = np.array(model.noise_variance_, dtype=np.float64)
        arrays["user_bias_variance"] = np.array(model.user_bias_variance_, dtype=np.float64)
    for key, values in (getattr(model, "_posterior", None) or {}).items():
        arrays["posterior_" + key] = np.asarray(values, dtype=np.float64)
    for key, values in (model.history_ or {}).items():
        if not re.fullmatch(r"[A-Za-z0-9_]+", str(key)):
            raise ValueError(f"history_ key {key!r} cannot be stored: expected letters, digits, _")
        arrays[_HISTORY_PREFIX + str(key)] = np.asarray(values, dtype=np.float64).reshape(-1)
    titles = getattr(model, "titles_", None)
    if titles:
        pair = _title_arrays(titles, item_ids)
        if pair is not None:
            arrays["title_ids"], arrays["title_texts"] = pair
    return arrays


def save_model(model, path):
    """Write a fitted model to one ``.npz`` file, atomically.

    The file holds arrays only (no pickles): factors, normalization terms, id maps, rating range,
    the training ratings by user (to exclude seen items), hyperparameters, history, the format
    version and, when the model has a ``titles_`` dict, the titles of its items. ``result_`` is not
    stored. The path is used exactly as given (no ``.npz`` is appended).

    The file is written to a temporary file in the same directory, flushed to disk, then renamed
    over ``path``: a crash or an error leaves either the old file or the new one, never a part.

    Parameters
    ----------
    model : MatrixFactorization
        Fitted.
    path : str or PathLike
    """
    if not hasattr(model, "item_factors_"):
        raise AttributeError(
            f"this {type(model).__name__} is not fitted yet; call fit(ratings) first"
        )
    write_npz(path, _model_arrays(model), "model file path")


def _need(path, arrays, name, kinds, ndim, what):
    if name not in arrays:
        raise ModelFileError(path, f"the member {name!r} is missing; expected {what}")
    arr = arrays[name]
    if arr.dtype.kind not in kinds or arr.ndim != ndim:
        raise ModelFileError(
            path, f"the member {name!r} has dtype {arr.dtype} and shape {arr.shape}; "
            f"expected {what}"
        )
    return arr


def _text(path, arrays, name):
    return str(_need(path, arrays, name, "U", 0, "a 0-d unicode string"))


def _length(path, name, arr, n, what):
    if arr.shape[0] != n:
        raise ModelFileError(
            path, f"the member {name!r} has {arr.shape[0]} rows; expected {n} ({what})"
        )


def _ids(path, arrays, name):
    arr = _need(path, arrays, name, "iuU", 1, "a 1-D array of integer or unicode ids")
    if arr.dtype.kind in "iu":
        arr = arr.astype(np.int64)
    if arr.shape[0] > 1 and not np.all(arr[1:] > arr[:-1]):
        raise ModelFileError(path, f"the member {name!r} is not sorted ascending without repeats")
    return arr


def _floats(path, arrays, name, ndim, what, finite=True):
    arr = _need(path, arrays, name, "f", ndim, what).astype(np.float64)
    if finite and not np.all(np.isfinite(arr)):
        raise ModelFileError(path, f"the member {name!r} holds NaN or infinite values")
    return arr


def _readonly_copy(arr):
    arr = np.ascontiguousarray(arr)
    arr.flags.writeable = False
    return arr


def _posterior(path, arrays, version, params, item_factors, n_items, n_users):
    """The checked posterior_ members of a solver="gibbs" file as a dict (None otherwise)."""
    if params.get("solver") != "gibbs":
        return None
    if version < 3:
        raise ModelFileError(path, f"a solver='gibbs' model needs format version 3 or later, "
                             f"found {version}")
    members = {name: spec for name, spec in _POSTERIOR.items() if spec[2] <= version}
    posterior = {}
    for name, (rows, columns, _, _) in members.items():
        ndim = 2 if rows else 1 + columns.count(",")
        if ndim == 3 and version == 3:
            ndim = 2  # per-dimension precisions, expanded below
        posterior[name] = _floats(path, arrays, "posterior_" + name, ndim,
                                  f"a {ndim}-D float array")
    n_samples = posterior["noise_variances"].shape[0]
    width = item_factors.shape[1]
    if n_samples < 1 or width % n_samples:
        raise ModelFileError(path, f"{n_samples} kept draws do not divide the {width} stacked "
                             "factor columns")
    d = width // n_samples + 1
    n_rows = {"items": n_items, "users": n_users}
    for name, (rows, columns, _, lower) in members.items():
        value = posterior[name]
        shape = ((n_rows[rows], n_samples) if rows else (n_samples,) if columns == "S"
                 else (n_samples, d) if version == 3 else (n_samples, d, d))
        if value.shape != shape:
            raise ModelFileError(path, f"posterior_{name} has shape {value.shape}; "
                                 f"expected {shape}")
        if columns == "S,d,d":
            if version == 3:
                if not np.all(value > 0):
                    raise ModelFileError(path, f"posterior_{name} must be > 0")
                value = value[:, :, None] * np.eye(d)
            elif not _positive_definite(value):
                raise ModelFileError(path, f"posterior_{name} must hold symmetric positive "
                                     "definite matrices")
        elif lower is not None and not np.all(value > lower):
            raise ModelFileError(path, f"posterior_{name} must be > {lower:g}")
        posterior[name] = _readonly_copy(value)
    return posterior


def _positive_definite(matrices):
    """Whether every (d, d) matrix of ``matrices`` (S, d, d) is symmetric positive definite."""
    if not np.allclose(matrices, matrices.transpose(0, 2, 1), rtol=1e-12, atol=0.0):
        return False
    try:
        np.linalg.cholesky(matrices)
    except np.linalg.LinAlgError:
        return False
    return True


def read_model_file(path):
    """Every member of a model file, checked (format marker, version, dtypes, shapes, index
    ranges); nothing in it is executed.

    Returns
    -------
    dict
        ``"format_version"``, ``"fastcofi_version"``, ``"params"`` (the stored
        hyperparameters), and the fitted state: ``"item_factors"``, ``"user_factors"``,
        ``"item_ids"``, ``"user_ids"``, ``"global_mean"``, ``"item_means"``, ``"item_bias"``,
        ``"user_bias"`` (None where the normalization has none), ``"rating_range"``,
        ``"penalties"`` ((reg, reg_bias), None in a version 1 file), ``"noise_variance"``,
        ``"user_bias_variance"``, ``"seen"`` (CSR pair), ``"n_iter"``, ``"best_iteration"``,
        ``"history"``, ``"titles"`` (dict or None); arrays read-only.

    Raises
    ------
    ModelFileError
        Naming the file and what is wrong with it.
    FileNotFoundError
    """
    path = Path(os.fspath(path))
    arrays = read_npz(path, ModelFileError, "model file")
    version = check_header(path, arrays, MODEL_FORMAT, _READABLE_VERSIONS, ModelFileError,
                           "fastcofi model file")
    writer = str(arrays["fastcofi_version"]) if "fastcofi_version" in arrays else "unknown"
    try:
        params = json.loads(_text(path, arrays, "params"))
    except json.JSONDecodeError as exc:
        raise ModelFileError(path, f"the member 'params' is not valid JSON ({exc})") from None
    if not isinstance(params, dict):
        raise ModelFileError(path, "the member 'params' is not a JSON object")
    normalize = _text(path, arrays, "normalize")
    params["normalize"] = normalize

    item_ids = _ids(path, arrays, "item_ids")
    user_ids = _ids(path, arrays, "user_ids")
    n_items, n_users = item_ids.shape[0], user_ids.shape[0]
    item_factors = _floats(path, arrays, "item_factors", 2, "a 2-D float array (n_items, k)")
    user_factors = _floats(path, arrays, "user_factors", 2, "a 2-D float array (n_users, k)")
    _length(path, "item_factors", item_factors, n_items, "one per item id")
    _length(path, "user_factors", user_factors, n_users, "one per user id")
    if item_factors.shape[1] != user_factors.shape[1]:
        raise ModelFileError(
            path, f"item_factors has {item_factors.shape[1]} columns and user_factors "
            f"{user_factors.shape[1]}; expected the same number of factors"
        )
    global_mean = float(_floats(path, arrays, "global_mean", 0, "a 0-d float"))
    rating_range = _floats(path, arrays, "rating_range", 1, "2 floats (min, max)")
    if rating_range.shape[0] != 2 or not rating_range[0] <= rating_range[1]:
        raise ModelFileError(path, f"rating_range is {rating_range.tolist()}; expected [min, max]")
    item_means = item_bias = user_bias = None
    if normalize == "item_mean":
        item_means = _floats(path, arrays, "item_means", 1, "item means (n_items,) float")
        _length(path, "item_means", item_means, n_items, "one per item id")
    elif normalize == "biases":
        item_bias = _floats(path, arrays, "item_bias", 1, "item biases (n_items,) float")
        user_bias = _floats(path, arrays, "user_bias", 1, "user biases (n_users,) float")
        _length(path, "item_bias", item_bias, n_items, "one per item id")
        _length(path, "user_bias", user_bias, n_users, "one per user id")

    if version >= 2:
        what = "a 0-d float >= 0 (the penalty new users are folded in with)"
        penalties = [float(_floats(path, arrays, name, 0, what)) for name in ("reg", "reg_bias")]
        if min(penalties) < 0:
            raise ModelFileError(path, f"reg and reg_bias must be >= 0, found {penalties}")
    else:
        penalties = None

    noise_variance = user_bias_variance = None
    if params.get("solver") in ("vb", "gibbs"):
        what = f"a 0-d float > 0 (solver {params.get('solver')!r} folds new users in with it)"
        noise_variance = float(_floats(path, arrays, "noise_variance", 0, what))
        user_bias_variance = float(_floats(path, arrays, "user_bias_variance", 0, what))
        if not (noise_variance > 0 and user_bias_variance > 0):
            raise ModelFileError(path, f"noise_variance and user_bias_variance must be > 0, found "
                                 f"{noise_variance} and {user_bias_variance}")

    posterior = _posterior(path, arrays, version, params, item_factors, n_items, n_users)

    indptr = _need(path, arrays, "seen_indptr", "iu", 1, "a 1-D integer array (n_users + 1,)")
    indices = _need(path, arrays, "seen_indices", "iu", 1, "a 1-D integer array (n_ratings,)")
    _length(path, "seen_indptr", indptr, n_users + 1, "n_users + 1")
    indptr = indptr.astype(np.int64)
    if indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != indices.shape[0]:
        raise ModelFileError(
            path, "seen_indptr is not a CSR row pointer: expected 0 first, non-decreasing, and "
            f"{indices.shape[0]} (the length of seen_indices) last"
        )
    if indices.size and (indices.min() < 0 or indices.max() >= n_items):
        raise ModelFileError(
            path, f"seen_indices holds item indices outside [0, {n_items}); found "
            f"{int(indices.min())}..{int(indices.max())}"
        )
    indices = indices.astype(np.int32 if n_items < 2**31 else np.int64)

    history = {}
    lengths = set()
    for name in sorted(arrays):
        if name.startswith(_HISTORY_PREFIX):
            values = _floats(path, arrays, name, 1, "a 1-D float array", finite=False)
            history[name[len(_HISTORY_PREFIX):]] = values.tolist()
            lengths.add(values.shape[0])
    if len(lengths) > 1:
        raise ModelFileError(path, f"the history_ arrays differ in length: {sorted(lengths)}")
    n_iter = int(_need(path, arrays, "n_iter", "iu", 0, "a 0-d integer"))
    best_iteration = int(_need(path, arrays, "best_iteration", "iu", 0, "a 0-d integer"))

    titles = None
    if "title_ids" in arrays or "title_texts" in arrays:
        title_ids = _ids(path, arrays, "title_ids")
        title_texts = _need(path, arrays, "title_texts", "U", 1, "a 1-D unicode array")
        _length(path, "title_texts", title_texts, title_ids.shape[0], "one per title id")
        if title_ids.dtype.kind != item_ids.dtype.kind:
            raise ModelFileError(path, "title_ids and item_ids hold ids of different types")
        titles = dict(zip(title_ids.tolist(), title_texts.tolist()))

    return {
        "format_version": version,
        "fastcofi_version": writer,
        "params": params,
        "item_factors": _readonly_copy(item_factors),
        "user_factors": _readonly_copy(user_factors),
        "item_ids": _readonly_copy(item_ids),
        "user_ids": _readonly_copy(user_ids),
        "global_mean": global_mean,
        "item_means": None if item_means is None else _readonly_copy(item_means),
        "item_bias": None if item_bias is None else _readonly_copy(item_bias),
        "user_bias": None if user_bias is None else _readonly_copy(user_bias),
        "rating_range": (float(rating_range[0]), float(rating_range[1])),
        "penalties": None if penalties is None else tuple(penalties),
        "noise_variance": noise_variance,
        "user_bias_variance": user_bias_variance,
        "posterior": posterior,
        "n_iter": n_iter,
        "best_iteration": best_iteration,
        "history": history,
        "seen": (_readonly_copy(indptr), _readonly_copy(indices)),
        "titles": titles,
    }
