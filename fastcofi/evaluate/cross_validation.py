"""Cross-validation: fit a fresh copy of a model on each fold, score it on the fold's test set."""

import time

import numpy as np

from .metrics import RANKING_METRICS, ranking_metrics, rating_metrics
from .split import kfold

__all__ = ["cross_validate"]

_RATING_METRICS = ("rmse", "mae")
METRICS = _RATING_METRICS + RANKING_METRICS


def cross_validate(
    model,
    ratings,
    cv=5,
    random_state=None,
    metrics=("rmse", "mae"),
    *,
    k=10,
    relevance_threshold=4.0,
):
    """Per-fold test metrics and fit times of ``model`` over cross-validation folds.

    Each fold fits a fresh clone ``type(model)(**model.get_params())`` (the given model is left
    untouched), so with a fixed ``model.random_state`` every fold starts from the same seed.

    Parameters
    ----------
    model : estimator
        With ``get_params()``, ``fit(ratings)``, ``predict`` and, for ranking metrics,
        ``recommend``.
    ratings : Ratings or tuple (users, items, values[, timestamps])
        Split by :func:`fastcofi.split.kfold` when ``cv`` is an int; ignored otherwise.
    cv : int >= 2 or iterable of (train, test) pairs of Ratings, default 5
        An int is ``kfold(ratings, cv, shuffle=True, random_state=random_state)``; pass
        ``kfold(..., compat="surprise")`` or ``official_folds(folder)`` for other folds.
    random_state : int, numpy.random.Generator or None
        Seed of the fold shuffle when ``cv`` is an int.
    metrics : sequence of str, default ("rmse", "mae")
        Any of ``"rmse"``, ``"mae"`` and the ranking metrics ``"precision_at_k"``,
        ``"recall_at_k"``, ``"ndcg_at_k"``, ``"map_at_k"``, ``"hit_rate"``, ``"coverage"``
        (defined in :mod:`fastcofi.metrics`).
    k : int, default 10
        List length of the ranking metrics.
    relevance_threshold : float or None, default 4.0
        Relevance of a test rating for the ranking metrics.

    Returns
    -------
    dict
        Lists with one entry per fold: each asked metric (float), ``"fit_time"`` and
        ``"score_time"`` (seconds, float), ``"n_train"`` and ``"n_test"`` (int); and for each of
        these keys ``"mean_<key>"``, the mean over folds (float).
    """
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"metrics must be a non-empty sequence of {METRICS}, found {metrics!r}")
    if not callable(getattr(model, "get_params", None)):
        raise TypeError(f"model must have get_params() to be cloned, found {type(model).__name__}")
    if isinstance(cv, (int, np.integer)) and not isinstance(cv, bool):
        folds = kfold(ratings, cv, shuffle=True, random_state=random_state)
    elif hasattr(cv, "__iter__") and not isinstance(cv, (str, bytes)):
        folds = cv
    else:
        raise ValueError(f"cv must be an int >= 2 or an iterable of (train, test), found {cv!r}")
    want_ranking = any(m in RANKING_METRICS for m in metrics)

    keys = metrics + ("fit_time", "score_time", "n_train", "n_test")
    result = {key: [] for key in keys}
    for fold, pair in enumerate(folds):
        try:
            train, test = pair
        except (TypeError, ValueError):
            raise ValueError(
                f"cv must yield (train, test) pairs; fold {fold} is a {type(pair).__name__}"
            ) from None
        estimator = type(model)(**model.get_params())
        start = time.perf_counter()
        estimator.fit(train)
        result["fit_time"].append(time.perf_counter() - start)
        start = time.perf_counter()
        scores = {}
        if "rmse" in metrics or "mae" in metrics:
            scores.update(rating_metrics(estimator, test))
        if want_ranking:
            scores.update(
                ranking_metrics(estimator, test, k, relevance_threshold=relevance_threshold)
            )
        result["score_time"].append(time.perf_counter() - start)
        for m in metrics:
            result[m].append(float(scores[m]))
        result["n_train"].append(int(train.nnz))
        result["n_test"].append(int(test.nnz))
    if not result["fit_time"]:
        raise ValueError("cv yielded no fold")
    for key in keys:
        result[f"mean_{key}"] = float(np.mean(result[key]))
    return result
