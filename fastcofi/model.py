"""The estimator: `MatrixFactorization`."""

import os

import numpy as np

from . import serving
from ._model_format import save_model
from ._params import (
    check_fit_args,
    check_params,
    default_penalties,
    default_tol,
    initial_scale,
    resolve_auto,
)
from .data.ids import lookup
from .data.ratings import value_moments
from .train.checkpoint import read_checkpoint, write_checkpoint
from .train.gibbs import fit_gibbs
from .train.objective import FlatObjective
from .train.observers import EarlyStopping, Observers
from .train.sgd import SgdRun, minimize_sgd
from .train.solvers import minimize_als, minimize_scipy
from .train.vb import minimize_vb, set_vb_posterior

__all__ = ["MatrixFactorization"]

_SCIPY_METHODS = {"cg": "CG", "lbfgs": "L-BFGS-B"}


def _item_means(ratings, global_mean):
    """Each item's mean training rating; the global mean for an item without ratings."""
    counts = np.diff(ratings.by_item[0])
    sums = np.bincount(ratings.coo()[1], weights=ratings.values, minlength=ratings.n_items)
    return np.where(counts > 0, sums / np.maximum(counts, 1), global_mean)


class MatrixFactorization:
    """Low-rank matrix factorization of explicit ratings (the tutorial's collaborative filtering).

    Predicts ``mu + b_item[i] + b_user[j] + item_factors_[i] . user_factors_[j]`` and learns it by
    minimizing ``1/2 sum_observed (prediction - rating)^2 + reg/2 (|X|^2 + |Theta|^2)
    + reg_bias/2 (|b_item|^2 + |b_user|^2)``. What ``mu`` and the biases are depends on
    ``normalize``:

    - ``"item_mean"`` (the tutorial's): ``mu`` = 0, ``b_item`` = each item's mean rating (fixed),
      ``b_user`` = 0;
    - ``"biases"``: ``mu`` = the global mean, ``b_item`` and ``b_user`` learned with the factors;
    - ``"none"``: the raw ratings are factorized.

    Parameters
    ----------
    n_factors : int, default 10
        Latent dimension k.
    reg : float or None, default None
        L2 regularization of both factor matrices (on the sum over ratings, as in the tutorial),
        multiplied per row as ``reg_weighting`` says. None: the training ratings' standard
        deviation times 1.15 (1.29-1.30 on ML-100K's folds), times 0.035 under ``"count"``
        weighting (0.02 for ``"sgd"``), so that the penalty follows the ratings' units (0 when
        every rating is the same). ``reg_`` holds the value used.
    normalize : {"item_mean", "biases", "none"}, default "biases"
    reg_bias : float or None, default None
        L2 regularization of the learned biases (``normalize="biases"``), weighted per row like
        ``reg``. None: 0.8 (biases scale with the ratings as the noise does, so a fixed number
        suits any units), and ``reg`` (as resolved) under ``"count"`` weighting. ``reg_bias_``
        holds the value used.
    reg_weighting : {"auto", "sqrt", "count", "none"}, default "auto"
        Multiplies each user's and item's penalty (factors and bias) by the square root of its
        number of ratings (``"sqrt"``), by that number (``"count"``, ALS-WR's and LIBMF's: every
        row shrunk as much per rating), or by 1 (``"none"``, the tutorial's). ``"auto"``:
        ``"sqrt"`` below 500,000 training ratings, ``"count"`` from there and for ``"sgd"``
        (ML-100K, protocol A: 0.9097 with ``"sqrt"`` against 0.9173 with ``"count"``; the
        planted sets of 1e6-1e8 ratings the other way round: bench/README.md).
        ``reg_weighting_`` holds the weighting used.
    solver : {"auto", "cg", "lbfgs", "als", "sgd", "vb", "gibbs"}, default "auto"
        ``"auto"``: ``"cg"`` below 500,000 training ratings, where it reaches a good model
        first, and ``"sgd"`` from there (``solver_`` holds the one used; a ``make_objective``
        evaluated elsewhere, such as `fastcofi.distributed.fit`'s, always gets ``"cg"``).
        ``"cg"``: ``scipy.optimize.minimize(method="CG", jac=True)`` on the fused objective over
        the smaller side, the other solved exactly per evaluation (the tutorial's trainer);
        ``"lbfgs"``: L-BFGS-B so; ``"als"``: alternating least squares, row solves. ``"sgd"``
        (`fastcofi.train.sgd`): stochastic gradient epochs over blocks of users and items in
        parallel, a per-row AdaGrad step, from factors of 0.01 (``init_scale=None``) and with
        a count-weighted penalty of 0.02 standard deviations (``reg=None``); stopped early, it
        beats the exact minimum of any penalty tried on large planted sets (bench/README.md).
        ``"vb"``: variational Bayes (`fastcofi.train.vb`): the same predictor, with Gaussian
        priors whose variances, and the noise variance, are learned, so ``reg``, ``reg_bias``
        and ``reg_weighting`` are not used; per-dimension prior variances switch off the factor
        dimensions the data do not support. It runs from two starts (initial noise variances of
        the ratings' variance and a sixteenth of it) and keeps the one with the higher free
        energy; a third run replays the kept start when ``validation``, ``callback``,
        ``verbose`` or DEBUG logging observe it. It needs ``normalize="biases"``, keeps a
        (k+1) x (k+1) covariance per user and item while training, and does not checkpoint.
        ``"gibbs"``: Bayesian matrix factorization sampled by Gibbs sampling
        (`fastcofi.train.gibbs`): Gaussian users and items whose prior means and full factor
        precision matrices (BPMF's Normal-Wishart hyperprior), bias prior means and precisions
        (Normal-Gamma), the noise precision (Gamma) and each row's noise scale are sampled too,
        so ``reg``, ``reg_bias``, ``reg_weighting``, ``tol`` and ``patience`` are not used.
        Each sweep draws every item row, then every user row, from its conditional in parallel
        (the ALS row system, Cholesky, plus a triangular solve of standard normals from a
        per-row counter-based stream: the same ``random_state`` gives the same samples for any
        ``n_threads``). Predictions average the
        kept draws (``n_samples``, ``burn_in``, ``thin``), which are stored stacked (see
        ``item_factors_``), so every serving path works; ``predict(..., return_std=True)``
        gives the posterior predictive standard deviation. It needs ``normalize="biases"``.
    max_iter : int, default 300
        Iterations at most (ALS, VB: sweeps over users and items; Gibbs: the chain's sweeps,
        burn-in included, all run).
    tol : float or None, default None (CG, L-BFGS, ALS 1e-4; SGD 1e-2; VB 3e-3)
        CG, L-BFGS: stop when the gradient's largest entry falls below ``tol`` times its
        initial value. ALS, SGD: when a sweep (an epoch; SGD after its first 10)
        lowers the cost by less than ``tol`` times its value. VB: when a sweep moves its free
        energy by less than ``tol / 10`` of its size. 0 disables the test.
    patience : int, default 10
        With a validation set, stop once its RMSE has not improved for this many iterations and
        keep the best iterate.
    clip : bool or (float, float), default True
        Clip predictions to the training ratings' range (True), to a given range, or not (False).
    init_scale : float or None, default None
        Standard deviation of the normal random initial factors. None: 0.1, and 0.01 for
        ``"sgd"``, which regularizes by growing the factors from near zero.
    random_state : int, numpy.random.Generator or None
        Seed of the initial factors; fitting twice with the same seed gives the same model.
    n_threads : int, optional
        Threads for the kernels (numba's default when None); results do not depend on it.
    verbose : bool, default False
        Print one progress line per iteration to stderr.
    n_samples : int, default 100
        ``solver="gibbs"``: the most draws kept and averaged (the last ``n_samples`` of sweeps
        ``max_iter``, ``max_iter - thin``, ... after ``burn_in``). The model stores them all:
        factor matrices ``n_samples`` times wider than ``n_factors``.
    burn_in : int or None, default None
        ``solver="gibbs"``: sweeps never kept. None: a tenth of ``max_iter``.
    thin : int or None, default None
        ``solver="gibbs"``: keep every ``thin``-th sweep. None: spread the ``n_samples`` kept
        draws over the sweeps after ``burn_in``, ``max(1, (max_iter - burn_in) // n_samples)``.

    Attributes
    ----------
    item_factors_ : ndarray of shape (n_items, n_factors), float64
    user_factors_ : ndarray of shape (n_users, n_factors), float64
    item_ids_, user_ids_ : ndarray of shape (n_items,) / (n_users,)
        External ids, in the order of the factor rows.
    global_mean_ : float
        Mean training rating.
    item_means_ : ndarray of shape (n_items,), float64 or None
        ``"item_mean"``: each item's mean training rating (the global mean for an item without
        ratings). None otherwise.
    item_bias_, user_bias_ : ndarray of shape (n_items,) / (n_users,), float64 or None
        ``"biases"``: the learned biases (added to ``global_mean_``). None otherwise.
    rating_range_ : tuple (float, float)
        Smallest and largest training rating.
    reg_, reg_bias_ : float
        The factor and bias penalties used in training (``reg`` and ``reg_bias`` resolved), which
        fold-in uses too.
    n_iter_ : int
    result_ : scipy.optimize.OptimizeResult or None (ALS, SGD, VB, Gibbs)
    history_ : dict of lists
        ``"cost"`` and ``"seconds"`` per iteration, and ``"val_rmse"`` with a validation set.
    best_iteration_ : int
        The iteration whose parameters the model holds (the last one without validation).
    noise_variance_, user_bias_variance_ : float or None
        ``solver="vb"``: the learned rating noise variance and prior variance of user biases
        (None for the other solvers). Its user factors are stored scaled to a unit prior
        variance (item factors scaled inversely, predictions unchanged), so a new user is folded
        in with ``reg = noise_variance_`` and ``reg_bias = noise_variance_ /
        user_bias_variance_``, without count weighting. ``solver="gibbs"``: the draws' average
        noise variance (at unit noise scales) and user-bias prior variance.
    n_samples_ : int
        ``solver="gibbs"``: the number S of kept draws. ``item_factors_`` and ``user_factors_``
        then have S * n_factors columns, draw ``s`` in columns ``s k .. (s+1) k``: item factors
        ``L_s^-1 x_s / sqrt(S)`` and user factors ``L_s^T theta_s / sqrt(S)`` (``L_s L_s^T`` the
        draw's user prior precision matrix of the factors), so their dot product is the draws'
        average prediction and fold-in is a unit-prior ridge solve. ``item_bias_`` and
        ``user_bias_`` are the draws' averages. 1 for the other solvers.
    """

    def __init__(
        self,
        n_factors=10,
        *,
        reg=None,
        normalize="biases",
        reg_bias=None,
        reg_weighting="auto",
        solver="auto",
        max_iter=300,
        tol=None,
        patience=10,
        clip=True,
        init_scale=None,
        random_state=None,
        n_threads=None,
        verbose=False,
        n_samples=100,
        burn_in=None,
        thin=None,
    ):
        self.n_factors = n_factors
        self.reg = reg
        self.normalize = normalize
        self.reg_bias = reg_bias
        self.reg_weighting = reg_weighting
        self.solver = solver
        self.max_iter = max_iter
        self.tol = tol
        self.patience = patience
        self.clip = clip
        self.init_scale = init_scale
        self.random_state = random_state
        self.n_threads = n_threads
        self.verbose = verbose
        self.n_samples = n_samples
        self.burn_in = burn_in
        self.thin = thin

    _precondition = True  # CG, L-BFGS on row-rescaled parameters; the benchmarks switch it off
    _PARAMS = (
        "n_factors", "reg", "normalize", "reg_bias", "reg_weighting", "solver", "max_iter", "tol",
        "patience", "clip", "init_scale", "random_state", "n_threads", "verbose", "n_samples",
        "burn_in", "thin",
    )

    def get_params(self, deep=True):
        """Hyperparameters as a dict (scikit-learn style)."""
        return {name: getattr(self, name) for name in self._PARAMS}

    def set_params(self, **params):
        """Set hyperparameters (scikit-learn style); returns self."""
        for name, value in params.items():
            if name not in self._PARAMS:
                raise ValueError(f"unknown parameter {name!r}; expected one of {self._PARAMS}")
            setattr(self, name, value)
        return self

    def __repr__(self):
        defaults = type(self)().get_params()
        changed = ", ".join(
            f"{k}={v!r}" for k, v in self.get_params().items()
            if v is not defaults[k] and v != defaults[k]
        )
        return f"{type(self).__name__}({changed})"

    def _check_params(self):
        check_params(self)

    # -- training -----------------------------------------------------------------------------
    def fit(
        self, ratings, *, validation=None, callback=None, checkpoint=None, checkpoint_every=10,
        resume=False, make_objective=FlatObjective,
    ):
        """Learn the model from ``ratings``.

        Parameters
        ----------
        ratings : Ratings
        validation : Ratings, optional
            Held-out ratings: their RMSE after each iteration goes to ``history_["val_rmse"]``,
            training stops once it has not improved for ``patience`` iterations, and the model
            keeps the best iterate.
        callback : callable, optional
            ``callback(iteration, info) -> bool``; ``info`` holds this iteration's ``"cost"``,
            ``"seconds"`` (and ``"val_rmse"``); returning True stops training.
        checkpoint : str or path-like, optional
            File (``.npz``) where the parameters, iteration count and history are written
            atomically every ``checkpoint_every`` iterations and at the end.
        checkpoint_every : int, default 10
        resume : bool, default False
            Continue from ``checkpoint`` when it exists, with the iterations left of ``max_iter``.
            CG restarts from the steepest descent (scipy keeps its direction, and L-BFGS its
            memory, to itself); early stopping restarts its count. A checkpoint for other data
            or settings is refused. SGD's holds each row's step size: it resumes bit for bit.
            ``solver="gibbs"``: the iterations are sweeps; ``info`` also holds ``"train_rmse"``
            (of the sweep's draw), ``"noise_precision"`` (both also in ``history_``) and
            ``"kept"`` (draws kept so far); ``"val_rmse"`` is the RMSE of the running average of
            the kept draws (of the current draw before the first is kept) and stops nothing; a
            checkpoint holds the whole chain (draws, hyperparameters, kept draws, the streams'
            position): a resumed chain is bit-identical to one never interrupted.
        make_objective : callable, default `fastcofi.train.objective.FlatObjective`
            Builds what the solvers minimize, as ``make_objective(ratings, n_factors, reg, mu=,
            item_bias=, learn_biases=, reg_bias=, reg_weighting=, n_threads=)``, with
            `FlatObjective`'s contract (`fastcofi.distributed.fit`'s runs on a Dask cluster).

        Returns
        -------
        self
        """
        self._check_params()
        check_fit_args(self.solver, ratings, validation, checkpoint, checkpoint_every, resume)
        self.solver_, self.reg_weighting_ = resolve_auto(
            self.solver, self.reg_weighting, getattr(ratings, "nnz", 0),
            scipy_only=make_objective is not FlatObjective,
        )
        if self.solver_ in ("gibbs", "sgd") and make_objective is not FlatObjective:
            raise ValueError(
                f"solver={self.solver_!r} walks the ratings on this machine and takes no "
                f"make_objective; found {make_objective!r}"
            )
        if self.solver_ == "gibbs":
            return fit_gibbs(self, ratings, validation, callback, checkpoint, checkpoint_every,
                                   resume)
        global_mean, variance = value_moments(ratings.values)
        item_means = _item_means(ratings, global_mean) if self.normalize == "item_mean" else None
        reg, reg_bias = default_penalties(self.reg, self.reg_bias, self.reg_weighting_,
                                          np.sqrt(variance), self.solver_)
        learn_biases = self.normalize == "biases"
        objective = make_objective(
            ratings, int(self.n_factors), reg, mu=global_mean if learn_biases else 0.0,
            item_bias=item_means, learn_biases=learn_biases, reg_bias=reg_bias,
            reg_weighting=self.reg_weighting_, n_threads=self.n_threads,
        )
        params = self._initial_params(objective)
        fingerprint = self._fingerprint(ratings, reg, reg_bias)
        done, prior, state = 0, {}, None
        if resume and os.path.exists(checkpoint):
            params, done, prior, state = read_checkpoint(checkpoint, fingerprint, with_state=True)
            if params.shape != (objective.size,):
                raise ValueError(f"{checkpoint}: parameter vector has the wrong size")
        run = SgdRun(objective, state, done, prior) if self.solver_ == "sgd" else None
        self._set_data_state(ratings, global_mean, item_means)
        self.reg_, self.reg_bias_ = reg, reg_bias
        self._set_params(objective, params)

        stopping = None
        if validation is not None:
            rmse = self._validation_rmse(objective, ratings, validation)
            stopping = EarlyStopping(rmse, self.patience, start=done)
        observers = Observers.for_run(
            done, prior, validation=stopping, callback=callback,
            progress={"max_iter": self.max_iter} if self.verbose else None,
            checkpoint=None if checkpoint is None else
            {"path": checkpoint, "every": checkpoint_every, "fingerprint": fingerprint,
             "to_arrays": getattr(run, "to_arrays", None)})

        params, history, n_iter, result, vb_state = self._run_solver(
            objective, params, int(self.max_iter) - done, observers.hook, prior, run)
        history, n_iter = observers.merged(history), n_iter + done
        if checkpoint is not None:
            write_checkpoint(checkpoint, params, n_iter, history, fingerprint,
                             state=run and run.state())
        kept = stopping is not None and stopping.best_params is not None
        if stopping is not None:
            history.setdefault("val_rmse", [])
        self._set_params(objective, stopping.best_params if kept else params)
        set_vb_posterior(self, vb_state)
        self.n_iter_ = n_iter
        self.best_iteration_ = stopping.best_iteration if kept else n_iter
        self.result_ = result
        self.history_ = history
        return self

    def _run_solver(self, objective, params, remaining, hook, prior, sgd_run=None):
        """``(params, this run's history, its iterations, scipy's result or None, VB's state or
        None)`` from ``remaining`` iterations of the chosen solver."""
        if remaining <= 0:
            return params, {key: [] for key in prior}, 0, None, None
        tol = default_tol(self.solver_) if self.tol is None else float(self.tol)
        if self.solver_ == "als":
            params, history, _ = minimize_als(
                objective, params, fit_bias=objective.learn_biases, max_iter=remaining,
                tol=tol, on_iteration=hook,
            )
            return params, history, len(history["cost"]), None, None
        if self.solver_ == "sgd":
            params, history, _ = minimize_sgd(
                objective, params, fit_bias=objective.learn_biases, max_iter=remaining,
                tol=tol, run=sgd_run, on_iteration=hook,
            )
            return params, history, len(history["cost"]), None, None
        if self.solver_ == "vb":
            params, history, state = minimize_vb(
                objective, params, max_iter=remaining, tol=tol, on_iteration=hook,
            )
            return params, history, len(history["cost"]), None, state
        result, history = minimize_scipy(
            objective, params, method=_SCIPY_METHODS[self.solver_], max_iter=remaining,
            tol=tol, on_iteration=hook, precondition=self._precondition,
        )
        return result.x, history, int(result.nit), result, None

    def _initial_params(self, objective):
        """Normal random factors of standard deviation ``init_scale``, zero biases, packed."""
        rng = np.random.default_rng(self.random_state)
        scale, k = initial_scale(self.init_scale, self.solver_), int(self.n_factors)
        n_items, n_users = objective.ratings.n_items, objective.ratings.n_users
        return objective.pack(
            rng.normal(0.0, scale, size=(n_items, k)), rng.normal(0.0, scale, size=(n_users, k)),
            np.zeros(n_items), np.zeros(n_users),
        )

    def _fingerprint(self, ratings, reg, reg_bias):
        """What a checkpoint must have been written for to be resumed from."""
        params = self.get_params()
        return {
            **{key: params[key] for key in
               ("n_factors", "normalize", "reg", "reg_bias", "reg_weighting", "solver")},
            # reg=None resolves from the data: the penalties used are what must match.
            "reg_used": reg, "reg_bias_used": reg_bias,
            "n_users": ratings.n_users, "n_items": ratings.n_items, "nnz": ratings.nnz,
            "ratings_sum": float(ratings.values.sum(dtype=np.float64)),
        }

    def _validation_rmse(self, objective, ratings, validation):
        """``params -> RMSE on validation``; sets the fitted factors to ``params`` as it goes."""
        v_users, v_items, v_values = validation.coo()
        users = lookup(ratings.user_ids, validation.user_ids)[0][v_users]
        items = lookup(ratings.item_ids, validation.item_ids)[0][v_items]
        values = np.asarray(v_values, dtype=np.float64)

        def rmse(params):
            # Views, not copies (two parameter-sized copies an iteration at scale): fit sets
            # the kept parameters, copied, at its end.
            self._set_params(objective, params, copy=False)
            pred = serving.state_of(self).predict(users, items)
            return float(np.sqrt(np.mean((pred - values) ** 2)))

        return rmse

    def _set_data_state(self, ratings, global_mean, item_means):
        """The fitted attributes that training does not change, set once per fit."""
        self.item_ids_ = ratings.item_ids
        self.user_ids_ = ratings.user_ids
        self.global_mean_ = global_mean
        self.item_means_ = item_means
        self.rating_range_ = (float(ratings.values.min()), float(ratings.values.max()))
        self.seen_indptr_, self.seen_indices_ = ratings.by_user[:2]

    def _set_params(self, objective, params, copy=True):
        """The fitted factors and biases from a parameter vector (copied, or views of it)."""
        params = np.array(params, dtype=np.float64, copy=copy or None)
        X, Theta, item_bias, user_bias = objective.unpack(params)
        learned = objective.learn_biases
        self.item_factors_ = np.ascontiguousarray(X)
        self.user_factors_ = np.ascontiguousarray(Theta)
        self.item_bias_ = item_bias if learned else None
        self.user_bias_ = user_bias if learned else None

    # -- prediction ---------------------------------------------------------------------------
    def _check_fitted(self):
        if not hasattr(self, "item_factors_"):
            raise AttributeError(
                f"this {type(self).__name__} is not fitted yet; call fit(ratings) first"
            )

    def predict(self, users, items, *, return_std=False):
        """Predicted ratings for pairs of external ids, clipped as ``clip`` says.

        A user or item unseen in training gets a fallback instead of an error: the global mean
        plus whatever is known (an item's mean or bias, a user's bias).

        Parameters
        ----------
        users, items : array-like of external ids, broadcastable to one shape (scalars allowed)
        return_std : bool, default False
            Also return the posterior predictive standard deviation of each pair. Only models
            with a posterior over their parameters have one (``solver="gibbs"``): the spread of
            the kept draws' predictions plus the pair's noise variance, ``sqrt(var_s(pred_s) +
            mean_s(1 / (tau_s alpha_us beta_is)))`` (``alpha``, ``beta``: the user's and item's
            noise scales; an unseen or folded-in one's by its prior mean). A pair with an unseen
            user or item adds that side's prior variance (its bias's and factors', averaged).

        Returns
        -------
        predictions : ndarray of float64, the broadcast shape (a float for two scalars)
        std : ndarray of float64, same shape (only with ``return_std=True``)

        Raises
        ------
        ValueError
            ``return_std=True`` for a model without a posterior (the point estimates of
            ``"cg"``, ``"lbfgs"``, ``"als"``, and ``"vb"`` models, which keep no predictive
            variance).
        """
        self._check_fitted()
        users, items = np.broadcast_arrays(np.asarray(users), np.asarray(items))
        std_of = getattr(self, "_predictive_std", None) if return_std else None
        if return_std and std_of is None:
            raise ValueError(
                f"return_std=True: this model (solver {self.solver_!r}) has no posterior "
                "predictive distribution; a model trained with solver='gibbs' has one"
            )
        u_index, i_index = lookup(self.user_ids_, users)[0], lookup(self.item_ids_, items)[0]
        pred = serving.state_of(self).predict(u_index, i_index)
        pred = pred if pred.ndim else float(pred)
        if not return_std:
            return pred
        std = np.asarray(std_of(u_index, i_index), dtype=np.float64)
        return pred, (std if std.ndim else float(std))

    @property
    def _predictive_std(self):
        """``(u_index, i_index) -> std`` of a model with a posterior (the kept draws of
        ``solver="gibbs"``), None otherwise. A property, so a copy (`add_users`) answers for
        its own arrays."""
        posterior = getattr(self, "_posterior", None)
        if posterior is None:
            return None

        def std(u_index, i_index):
            from .train.gibbs import predictive

            _, variance = predictive(posterior, self.item_factors_, self.user_factors_,
                                     self.global_mean_, u_index, i_index)
            return np.sqrt(variance)

        return std

    def save(self, path):
        """Write the fitted model to one ``.npz`` file (arrays only, atomically); see
        `load_model`."""
        self._check_fitted()
        save_model(self, path)

    def recommend(self, user, n=10, *, exclude_seen=True, items=None, filter_items=None,
                  min_item_ratings=None):
        """Top-``n`` items for a user (or each user of an array), best first.

        Parameters
        ----------
        user : external id, or array-like of ids
        n : int
        exclude_seen : bool
            Leave out the items the user rated in training.
        items : array-like of item ids, optional
            Candidates to rank (default: every item). Unknown ids are ignored.
        filter_items : array-like of item ids, optional
            Items never to recommend.
        min_item_ratings : int, optional
            Leave out the items with fewer training ratings than this: an item rated once or
            twice has a factor fitted to those ratings alone, and a high score it owes to them
            says little (on ml-latest-small a quarter of the top-10 slots go to such items).

        Returns
        -------
        item_ids : ndarray of shape (m,) or (n_query_users, n)
        scores : ndarray of float64, same shape
            Raw predicted ratings (not clipped). With fewer than ``n`` candidates a 1-D result is
            shorter and 2-D rows are padded with score ``-inf`` and id ``-1`` (or ``""``).

        Raises
        ------
        KeyError
            For a user id not seen in training.
        """
        self._check_fitted()
        if min_item_ratings is not None:
            if (isinstance(min_item_ratings, bool)
                    or not isinstance(min_item_ratings, (int, np.integer)) or min_item_ratings < 0):
                raise ValueError(
                    f"min_item_ratings must be an integer >= 0, found {min_item_ratings!r}"
                )
            rare = self.item_ids_[serving.state_of(self).item_counts() < min_item_ratings]
            if filter_items is not None:
                rare = np.concatenate([np.asarray(filter_items).reshape(-1), rare])
            filter_items = rare
        return serving.recommend(self, user, n, exclude_seen, items, filter_items)

    # -- new users ----------------------------------------------------------------------------
    def fold_in(self, items, values):
        """A new user's factors (and bias) from their ratings, the item side held fixed.

        Solves the same regularized least-squares row as ALS training does for a user (the
        kernel `fastcofi.kernels.rowsolve.solve_row`), with the same normalization, biases and
        regularization (under ``reg_weighting="count"`` or ``"sqrt"`` the penalty is scaled by the
        number of known rated items, or its square root). A training user's own ratings give back
        their trained factors once training has converged. No retraining; microseconds.

        Parameters
        ----------
        items : array-like of item ids, shape (m,)
            Must not repeat. Items the model does not know are ignored.
        values : array-like of float, shape (m,)
            The user's ratings of ``items``, on the training scale.

        Returns
        -------
        user_vector : ndarray of shape (n_factors,), float64
            All zeros when no rated item is known.
        user_bias : float
            0.0 unless ``normalize="biases"``.

        Raises
        ------
        ValueError
            Repeated items, mismatched shapes or non-finite values.
        """
        self._check_fitted()
        return serving.fold_in(self, items, values)

    def recommend_new_user(self, items, values, n=10, *, exclude_seen=True):
        """Top-``n`` items for a user known only by their ratings (folded in, see `fold_in`).

        Parameters
        ----------
        items, values : array-like, shape (m,)
            The user's ratings; unknown items are ignored.
        n : int
        exclude_seen : bool
            Leave out the items in ``items``.

        Returns
        -------
        item_ids : ndarray of shape (min(n, candidates),)
        scores : ndarray of float64, same shape; raw predicted ratings, best first
        """
        self._check_fitted()
        return serving.recommend_new_user(self, items, values, n, exclude_seen)

    def predict_new_user(self, items, values, candidate_items):
        """Predicted ratings of ``candidate_items`` by a user known only by their ratings.

        Clipped like `predict`; an unknown candidate gets `predict`'s fallback (the global mean,
        plus the folded-in bias under ``normalize="biases"``).

        Returns
        -------
        ndarray of float64, the shape of ``candidate_items``
        """
        self._check_fitted()
        return serving.predict_new_user(self, items, values, candidate_items)

    def add_users(self, ratings):
        """A new model that also holds the users of ``ratings``, folded in; ``self`` is untouched.

        Each new user is solved as in `fold_in` (ratings of unknown items ignored) and can then
        be recommended by id; their rated items count as seen. The item side is shared.

        Parameters
        ----------
        ratings : Ratings
            Ratings by users that are not in the model (ids of the model's type).

        Returns
        -------
        MatrixFactorization

        Raises
        ------
        ValueError
            A user id that already exists in the model.
        """
        self._check_fitted()
        return serving.add_users(self, ratings)

    # -- similarity and clusters --------------------------------------------------------------
    def similar_items(self, item, n=10):
        """The ``n`` items whose factors are most cosine-similar to ``item``'s (itself excluded).

        Returns
        -------
        item_ids : ndarray of shape (min(n, n_items - 1),)
        similarities : ndarray of float64 in [-1, 1], same shape, best first

        Raises
        ------
        KeyError
            For an item id not in the model.
        """
        self._check_fitted()
        return serving.similar(self, item, n, "item")

    def similar_users(self, user, n=10):
        """The ``n`` users most cosine-similar to ``user`` in factor space (itself excluded).

        Returns
        -------
        user_ids : ndarray of shape (min(n, n_users - 1),)
        similarities : ndarray of float64, same shape, best first

        Raises
        ------
        KeyError
            For a user id not in the model.
        """
        self._check_fitted()
        return serving.similar(self, user, n, "user")

    def cluster_users(self, n_clusters, *, random_state=None):
        """Group the users by their learned preferences: k-means (scipy's ``kmeans2``, k-means++
        seeding from ``random_state``) on ``user_factors_``.

        Returns
        -------
        fastcofi.serving.UserClusters
            ``.labels`` (aligned with ``user_ids_``), ``.centers``, ``.recommend(cluster, n)``.
        """
        self._check_fitted()
        return serving.cluster_users(self, n_clusters, random_state)

    def warm_up(self):
        """Run every serving kernel once on tiny inputs, so no request pays for compilation.

        The kernels are compiled (or loaded from numba's cache) for this model's own array
        types (a loaded model's arrays are read-only, a different type). Returns self.
        """
        self._check_fitted()
        serving.warm_up(self)
        return self

