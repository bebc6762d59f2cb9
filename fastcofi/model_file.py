"""Model files: `MatrixFactorization.save` writes one, `load_model` builds the model back, and
`model_info` summarizes one for ``fastcofi info``. The format itself (members, versions, checks)
is `fastcofi._model_format`; this module joins it to the estimator, never the reverse."""

from ._model_format import ModelFileError, read_model_file, save_model
from .model import MatrixFactorization

__all__ = ["ModelFileError", "load_model", "model_info", "save_model"]


def _from_file(path):
    """The model a file holds (see `fastcofi.model_file`), and the file's contents."""
    contents = read_model_file(path)
    known = {name: value for name, value in contents["params"].items()
             if name in MatrixFactorization._PARAMS}
    if isinstance(known.get("clip"), list):
        known["clip"] = tuple(known["clip"])
    # Files from before these parameters existed were trained with CG on the plain penalty.
    known.setdefault("solver", "cg")
    known.setdefault("reg_weighting", "none")
    for name in ("solver", "reg_weighting"):
        if known[name] == "auto":
            raise ModelFileError(path, f"params' {name} is 'auto'; a model file holds the "
                                 f"{name} training used")
    model = MatrixFactorization(**known)
    try:
        model._check_params()
    except ValueError as exc:
        raise ModelFileError(path, f"invalid hyperparameters ({exc})") from None
    penalties = contents["penalties"]
    if penalties is None:  # a version 1 file: params' reg must be a number
        if model.reg is None:
            raise ModelFileError(
                path, "a version 1 file must hold a number as params' reg, found null"
            )
        reg = float(model.reg)  # reg_bias None meant reg then
        penalties = (reg, reg if model.reg_bias is None else float(model.reg_bias))
    model.reg_, model.reg_bias_ = penalties
    # A file holds the solver and weighting training used ("auto" resolved).
    model.solver_, model.reg_weighting_ = model.solver, model.reg_weighting
    for name in ("item_factors", "user_factors", "item_ids", "user_ids", "global_mean",
                 "item_means", "item_bias", "user_bias", "rating_range", "noise_variance",
                 "user_bias_variance", "n_iter", "best_iteration", "history"):
        setattr(model, name + "_", contents[name])
    model.result_ = None
    model._posterior = contents["posterior"]
    model.n_samples_ = (1 if model._posterior is None
                        else int(model._posterior["noise_variances"].shape[0]))
    model.seen_indptr_, model.seen_indices_ = contents["seen"]
    if contents["titles"] is not None:
        model.titles_ = contents["titles"]
    return model, contents


def load_model(path, *, warm=False):
    """Load a model written by `MatrixFactorization.save`.

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
    model, _ = _from_file(path)
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
        (training ratings), ``"rating_range"``, ``"n_iter"``, ``"best_iteration"`` (the
        iteration kept), ``"user_id_type"``, ``"item_id_type"`` (``"int"`` or ``"str"``),
        ``"n_titles"``, and ``"reg"``,
        ``"reg_bias"``: the penalties training used (``params`` may hold None for them).
    """
    model, contents = _from_file(path)
    return {
        "format_version": contents["format_version"],
        "n_users": int(model.user_factors_.shape[0]),
        "n_items": int(model.item_factors_.shape[0]),
        "n_factors": int(model.item_factors_.shape[1]) // model.n_samples_,
        "params": model.get_params(),
        "fastcofi_version": contents["fastcofi_version"],
        "normalize": model.normalize,
        "n_ratings": int(model.seen_indices_.shape[0]),
        "rating_range": [float(v) for v in model.rating_range_],
        "n_iter": int(model.n_iter_),
        "best_iteration": int(model.best_iteration_),
        "user_id_type": "str" if model.user_ids_.dtype.kind == "U" else "int",
        "item_id_type": "str" if model.item_ids_.dtype.kind == "U" else "int",
        "n_titles": len(getattr(model, "titles_", None) or {}),
        "reg": float(model.reg_),
        "reg_bias": float(model.reg_bias_),
    }
