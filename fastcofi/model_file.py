"""Model files: save_model, load_model and model_info."""

import errno
import json
import os
import re
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

# -- model files -----------------------------------------------------------------------------
# One uncompressed ``.npz`` (a zip of ``.npy`` members), arrays only, read with allow_pickle=False.
# Version 1 members (shapes with n_items, n_users, k, nnz = training ratings, h = iterations):
#
#   fastcofi_format   0-d <U   "fastcofi-model"
#   format_version    0-d int64   1
#   fastcofi_version  0-d <U   the package version that wrote the file
#   params            0-d <U   JSON object of the hyperparameters (get_params())
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
#   noise_variance    0-d float64                only with solver="vb": fold-in's reg
#   user_bias_variance 0-d float64               only with solver="vb": reg_bias = noise / it
#   rating_range      (2,) float64  min, max training rating
#   seen_indptr       (n_users + 1,) int64        the training ratings by user, as CSR:
#   seen_indices      (nnz,) int32 or int64       item indices rated by each user
#   n_iter            0-d int64                   best_iteration  0-d int64
#   history_<name>    (h,) float64 per history_ entry ("cost", "seconds", "val_rmse")
#   title_ids         (t,) int64 or <U            title_texts   (t,) <U   only with titles
MODEL_FORMAT = "fastcofi-model"
MODEL_FORMAT_VERSION = 2
# Version 2 added the members reg and reg_bias, because params' reg may be None (scaled to the
# ratings); files of both versions load.
_READABLE_VERSIONS = (1, 2)
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
            from .data.ratings import _parse_int

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
    from .data.ratings import lookup

    _, known = lookup(item_ids, key_array)
    if not known.any():
        return None
    return key_array[known], text_array[known]


def _model_arrays(model):
    """The arrays of a fitted model's file (see the table above)."""
    from . import __version__

    params = {name: _jsonable(value) for name, value in model.get_params().items()}
    item_ids = _id_array(model.item_ids_, "item_ids_")
    user_ids = _id_array(model.user_ids_, "user_ids_")
    seen_indptr, seen_indices = model._seen
    arrays = {
        "fastcofi_format": np.array(MODEL_FORMAT),
        "format_version": np.array(MODEL_FORMAT_VERSION, dtype=np.int64),
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
    path = Path(os.fspath(path))
    if not hasattr(model, "item_factors_"):
        raise AttributeError(
            f"this {type(model).__name__} is not fitted yet; call fit(ratings) first"
        )
    if path.is_dir():
        raise IsADirectoryError(
            errno.EISDIR, "is a directory; expected a model file path", str(path)
        )
    arrays = _model_arrays(model)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(
            errno.ENOENT, "the folder to write the model file in does not exist", str(folder)
        )
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _new_file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)


def _new_file_mode(path):
    """Keep the mode of a file being replaced; else the mode open() would give (0o666 - umask)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0o022)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_dir(folder):
    """Make the rename durable where the platform allows opening a directory."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_npz(path):
    """Every member of the file as a dict of arrays; ModelFileError for anything unreadable."""
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "no such model file", str(path))
    if path.is_dir():
        raise ModelFileError(path, "is a directory; expected a fastcofi model file (.npz)")
    with open(path, "rb") as f:
        head = f.read(4)
        if not head:
            raise ModelFileError(path, "the file is empty; expected a fastcofi model file (.npz)")
        if head != b"PK\x03\x04":
            raise ModelFileError(
                path, f"not a fastcofi model file: expected an .npz (zip) archive, "
                f"found a file starting with {head!r}"
            )
        f.seek(0)
        try:
            # numpy reads each member's bytes without reaching the end of its stream, where
            # zipfile checks the CRC: check every member first so corruption cannot pass.
            with zipfile.ZipFile(f) as archive:
                bad = archive.testzip()
            if bad is not None:
                raise ModelFileError(
                    path, f"corrupted model file: the member {bad!r} fails its CRC check"
                )
            f.seek(0)
            with np.load(f, allow_pickle=False) as npz:
                names = list(npz.files)
                arrays = {}
                for name in names:
                    try:
                        value = npz[name]
                    except ValueError as exc:
                        if "pickle" in str(exc).lower():
                            raise ModelFileError(
                                path, f"member {name!r} holds Python objects (a pickle); a "
                                "fastcofi model file holds plain arrays only, and pickles are "
                                "never loaded"
                            ) from None
                        raise
                    if not isinstance(value, np.ndarray):
                        raise ModelFileError(
                            path, f"not a fastcofi model file: the member {name!r} is not a "
                            ".npy array"
                        )
                    arrays[name] = value
        except ModelFileError:
            raise
        except (zipfile.BadZipFile, EOFError, ValueError, OSError, zlib.error, KeyError,
                TypeError, RuntimeError, NotImplementedError, MemoryError) as exc:
            raise ModelFileError(
                path, f"corrupted or truncated model file: cannot read it as .npz ({exc})"
            ) from None
    return arrays


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


def load_model(path, *, warm=False):
    """Load a model written by :func:`save_model` (``MatrixFactorization.save``).

    Nothing in the file is executed: it is read with ``allow_pickle=False`` and every member is
    checked (format marker, version, dtypes, shapes, index ranges) before the model is built. The
    loaded arrays are read-only. ``result_`` is None; ``titles_`` is set when the file has titles.

    Parameters
    ----------
    path : str or PathLike
    warm : bool, default False
        Run each serving kernel once (``model.warm_up()``) so the first request compiles nothing.

    Returns
    -------
    MatrixFactorization

    Raises
    ------
    ModelFileError
        A ``ValueError`` naming the file and the problem: not a model file, a newer format
        version, a missing or malformed member, a corrupted or truncated file.
    FileNotFoundError
        The path does not exist.
    """
    model, _ = _load_model(path)
    if warm:
        model.warm_up()
    return model


def model_info(path):
    """A summary of a model file (loaded and checked in full), for ``fastcofi info``.

    Returns
    -------
    dict
        ``"format_version"``, ``"n_users"``, ``"n_items"``, ``"n_factors"``, ``"params"`` (the
        hyperparameters), and ``"fastcofi_version"``, ``"normalize"``, ``"n_ratings"``
        (training ratings), ``"rating_range"``, ``"n_iter"``, ``"user_id_type"``,
        ``"item_id_type"`` (``"int"`` or ``"str"``), ``"n_titles"``, and ``"reg"``,
        ``"reg_bias"``: the penalties training used (``params`` may hold None for them).
    """
    model, meta = _load_model(path)
    return {
        "format_version": meta["format_version"],
        "n_users": int(model.user_factors_.shape[0]),
        "n_items": int(model.item_factors_.shape[0]),
        "n_factors": int(model.item_factors_.shape[1]),
        "params": model.get_params(),
        "fastcofi_version": meta["fastcofi_version"],
        "normalize": model.normalize,
        "n_ratings": int(model._seen[1].shape[0]),
        "rating_range": [float(v) for v in model.rating_range_],
        "n_iter": int(model.n_iter_),
        "user_id_type": "str" if model.user_ids_.dtype.kind == "U" else "int",
        "item_id_type": "str" if model.item_ids_.dtype.kind == "U" else "int",
        "n_titles": len(getattr(model, "titles_", None) or {}),
        "reg": float(model.reg_),
        "reg_bias": float(model.reg_bias_),
    }


def _load_model(path):
    from .model import MatrixFactorization

    path = Path(os.fspath(path))
    arrays = _read_npz(path)
    if "fastcofi_format" not in arrays:
        raise ModelFileError(
            path, "not a fastcofi model file: an .npz without the 'fastcofi_format' marker "
            f"(it holds {sorted(arrays)[:8]})"
        )
    marker = arrays["fastcofi_format"]
    if marker.dtype.kind != "U" or marker.ndim != 0 or str(marker) != MODEL_FORMAT:
        raise ModelFileError(
            path, f"not a fastcofi model file: the format marker is {marker!r}, "
            f"expected {MODEL_FORMAT!r}"
        )
    version_arr = _need(path, arrays, "format_version", "iu", 0, "a 0-d integer")
    version = int(version_arr)
    if version not in _READABLE_VERSIONS:
        newer = "a newer" if version > MODEL_FORMAT_VERSION else "an unknown"
        raise ModelFileError(
            path, f"{newer} model format version {version}; this fastcofi reads versions "
            f"{', '.join(map(str, _READABLE_VERSIONS))} (upgrade fastcofi to load it)"
        )
    writer = str(arrays["fastcofi_version"]) if "fastcofi_version" in arrays else "unknown"
    try:
        params = json.loads(_text(path, arrays, "params"))
    except json.JSONDecodeError as exc:
        raise ModelFileError(path, f"the member 'params' is not valid JSON ({exc})") from None
    if not isinstance(params, dict):
        raise ModelFileError(path, "the member 'params' is not a JSON object")
    normalize = _text(path, arrays, "normalize")
    known = MatrixFactorization._PARAMS
    kwargs = {name: value for name, value in params.items() if name in known}
    if isinstance(kwargs.get("clip"), list):
        kwargs["clip"] = tuple(kwargs["clip"])
    kwargs["normalize"] = normalize
    model = MatrixFactorization(**kwargs)
    try:
        model._check_params()
    except ValueError as exc:
        raise ModelFileError(path, f"invalid hyperparameters ({exc})") from None

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
    elif model.reg is None:
        raise ModelFileError(path, "a version 1 file must hold a number as params' reg, found null")
    else:
        # reg is a number, so the training ratings' variance is not needed to resolve it
        penalties = model._penalties(variance=None)

    noise_variance = user_bias_variance = None
    if model.solver == "vb":
        what = "a 0-d float > 0 (solver 'vb' folds new users in with it)"
        noise_variance = float(_floats(path, arrays, "noise_variance", 0, what))
        user_bias_variance = float(_floats(path, arrays, "user_bias_variance", 0, what))
        if not (noise_variance > 0 and user_bias_variance > 0):
            raise ModelFileError(path, f"noise_variance and user_bias_variance must be > 0, found "
                                 f"{noise_variance} and {user_bias_variance}")

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

    model.item_factors_ = _readonly_copy(item_factors)
    model.user_factors_ = _readonly_copy(user_factors)
    model.item_ids_ = _readonly_copy(item_ids)
    model.user_ids_ = _readonly_copy(user_ids)
    model.global_mean_ = global_mean
    model.item_means_ = None if item_means is None else _readonly_copy(item_means)
    model.item_bias_ = None if item_bias is None else _readonly_copy(item_bias)
    model.user_bias_ = None if user_bias is None else _readonly_copy(user_bias)
    model.rating_range_ = (float(rating_range[0]), float(rating_range[1]))
    model.reg_, model.reg_bias_ = penalties
    model.noise_variance_ = noise_variance
    model.user_bias_variance_ = user_bias_variance
    model.n_iter_ = n_iter
    model.best_iteration_ = best_iteration
    model.result_ = None
    model.history_ = history
    model._seen = (_readonly_copy(indptr), _readonly_copy(indices))
    if titles is not None:
        model.titles_ = titles
    return model, {"format_version": version, "fastcofi_version": writer}
