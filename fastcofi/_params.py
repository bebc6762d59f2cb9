"""Checks of the estimator's hyperparameters, validated once at the boundary (`fit`, model files)."""

import numpy as np

from ._parallel import check_n_threads
from .data.ratings import Ratings
from .train.objective import WEIGHT_POWERS

NORMALIZE = ("item_mean", "biases", "none")
SOLVERS = ("auto", "cg", "lbfgs", "als", "sgd", "vb", "gibbs")
WEIGHTINGS = ("auto",) + tuple(WEIGHT_POWERS)

# Training ratings from which solver="auto" and reg_weighting="auto" switch from CG with
# square-root weighted penalties (tuned on MovieLens 100K, 80k-90k ratings) to SGD with count
# weighting (LIBMF's objective), which the planted Netflix-shaped sets of 1e6-1e8 ratings
# favour: bench/README.md, "Time to quality at scale".
LARGE = 500_000
# reg=None: the penalty per standard deviation of the training ratings. Under count weighting a
# row's penalty grows with its ratings, so its per-rating strength is far smaller.
REG_PER_STD = {"sqrt": 1.15, "none": 1.15, "count": 0.035}
# SGD stopped early regularizes on its own, so its count-weighted penalty is smaller than the
# exact minimizers' (bench/sgd_settings.py: best of 0.5x-2x on the planted 1e6 and 1e7 sets).
SGD_REG_PER_STD = 0.02
# reg_bias=None: a fixed number suits any units (biases scale with the ratings, as the noise
# does), except under count weighting, where the bias is shrunk per rating like the factors.
REG_BIAS = {"sqrt": 0.8, "none": 0.8}


def resolve_auto(solver, reg_weighting, n_ratings, *, scipy_only=False):
    """``(solver, reg_weighting)`` with "auto" resolved for ``n_ratings`` training ratings: CG
    and "sqrt" below `LARGE`, SGD and "count" from there (CG when ``scipy_only``: an objective
    evaluated elsewhere, as on a Dask cluster, drives scipy's solvers only). SGD's "auto"
    weighting is "count" at any size: its per-rating penalty is the count-weighted one."""
    large = n_ratings >= LARGE
    if solver == "auto":
        solver = "sgd" if large and not scipy_only else "cg"
    if reg_weighting == "auto" and solver == "sgd":
        return solver, "count"
    if reg_weighting == "auto":
        reg_weighting = "count" if large else "sqrt"
    return solver, reg_weighting


def default_penalties(reg, reg_bias, reg_weighting, std, solver=None):
    """``(reg, reg_bias)`` as training uses them: ``reg=None`` from the training ratings'
    standard deviation ``std`` (`REG_PER_STD`; `SGD_REG_PER_STD` for ``solver="sgd"`` under
    count weighting), ``reg_bias=None`` as `REG_BIAS` says (``reg``, as resolved, under count
    weighting)."""
    per_std = (SGD_REG_PER_STD if solver == "sgd" and reg_weighting == "count"
               else REG_PER_STD[reg_weighting])
    reg = per_std * float(std) if reg is None else float(reg)
    if reg_bias is None:
        return reg, REG_BIAS.get(reg_weighting, reg)
    return reg, float(reg_bias)


def initial_scale(init_scale, solver):
    """The initial factors' standard deviation: ``init_scale``, or for None 0.1, and 0.01 for
    ``solver="sgd"``, whose early stopping regularizes by growing the factors from near zero
    (bench/sgd_settings.py: planted 1e7 set, best probe RMSE 0.6946 from 0.01, 0.6977 from 0.1)."""
    if init_scale is not None:
        return float(init_scale)
    return 0.01 if solver == "sgd" else 0.1


def check_params(model):
    """Every hyperparameter of a `MatrixFactorization` checked; ValueError naming the first wrong
    one, what was expected and what was found."""
    def positive_int(name):
        value = getattr(model, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, found {value!r}")

    def non_negative(name):
        value = getattr(model, name)
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise ValueError(f"{name} must be a number >= 0, found {value!r}")
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, found {value!r}")

    positive_int("n_factors")
    positive_int("max_iter")
    positive_int("patience")
    if model.reg is not None:
        non_negative("reg")
    if model.tol is not None:
        non_negative("tol")
    if model.init_scale is not None:
        non_negative("init_scale")
    if model.reg_bias is not None:
        non_negative("reg_bias")
    if model.normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE}, found {model.normalize!r}")
    if model.reg_weighting not in WEIGHTINGS:
        raise ValueError(
            f"reg_weighting must be one of {WEIGHTINGS}, found {model.reg_weighting!r}"
        )
    if model.solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, found {model.solver!r}")
    if model.solver == "vb" and model.normalize != "biases":
        raise ValueError(
            "solver='vb' learns the biases with the factors: it needs normalize='biases', "
            f"found normalize={model.normalize!r}"
        )
    if model.solver == "gibbs" and model.normalize != "biases":
        raise ValueError(
            "solver='gibbs' samples the biases with the factors: it needs "
            f"normalize='biases', found normalize={model.normalize!r}"
        )
    positive_int("n_samples")
    if model.thin is not None:
        positive_int("thin")
    if model.burn_in is not None:
        value = model.burn_in
        if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                or not 0 <= value < model.max_iter):
            raise ValueError(
                f"burn_in must be None or an integer in [0, max_iter={model.max_iter}), "
                f"found {value!r}"
            )
    check_n_threads(model.n_threads)
    clip = model.clip
    if not isinstance(clip, bool):
        try:
            low, high = (float(v) for v in clip)
        except (TypeError, ValueError):
            raise ValueError(
                f"clip must be True, False or (low, high), found {clip!r}"
            ) from None
        if not low <= high:
            raise ValueError(f"clip must have low <= high, found {clip!r}")


def check_fit_args(solver, ratings, validation, checkpoint, checkpoint_every, resume):
    if not isinstance(ratings, Ratings):
        raise TypeError(f"ratings must be a fastcofi.Ratings, found {type(ratings).__name__}")
    if validation is not None and not isinstance(validation, Ratings):
        raise TypeError(
            f"validation must be a fastcofi.Ratings, found {type(validation).__name__}"
        )
    if not isinstance(checkpoint_every, (int, np.integer)) or checkpoint_every < 1:
        raise ValueError(
            f"checkpoint_every must be a positive integer, found {checkpoint_every!r}"
        )
    if resume and checkpoint is None:
        raise ValueError("resume=True needs a checkpoint path")
    if checkpoint is not None and solver == "vb":
        raise ValueError(
            "solver='vb' does not checkpoint (its state holds a covariance per row); "
            "use solver 'cg', 'lbfgs' or 'als' with checkpoint="
        )


# tol=None: the projected scipy solvers (the smaller side's rows, the other side solved) at
# 1e-4 on ML-100K: CG protocol A 0.9095, B 0.9035; L-BFGS 0.9097, 0.9035 (3e-4: CG 0.9101,
# L-BFGS 0.9099; 3e-5: CG 0.9095, a third more iterations; bench/compare_peers.py's
# `fastcofi_rows` with `tol` set); VB keeps the figure it was tuned at, Gibbs does not use it.
# ALS and SGD stop on the cost's relative decrease per sweep.
# ALS at 1e-4: ML-100K protocol A 0.9095, B 0.9033 (bench/compare_peers.py; 3e-4: 0.9099,
# 0.9036; 1e-3: 0.9107, 0.9041). SGD stops early on purpose: at 3e-3 its training cost kept
# falling while ML-100K's test error rose (protocol A 0.9428; 0.9253 at 1e-2); on the planted
# 1e6 / 1e7 sets 1e-2 stops within 0.0015 of the best epoch.
_DEFAULT_TOL = {"cg": 1e-4, "lbfgs": 1e-4, "als": 1e-4, "sgd": 1e-2, "vb": 3e-3, "gibbs": 3e-3}


def default_tol(solver):
    """The ``tol`` that ``tol=None`` means for ``solver``."""
    return _DEFAULT_TOL[solver]
