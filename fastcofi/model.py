"""The estimator: `MatrixFactorization`."""

import logging
import sys

import numpy as np

from . import serving
from .objective import FlatObjective
from .ratings import Ratings, lookup
from .solvers import minimize_cg

__all__ = ["MatrixFactorization"]

logger = logging.getLogger("fastcofi")

_NORMALIZE = ("item_mean", "none")
_SOLVERS = ("cg",)


class MatrixFactorization:
    """Low-rank matrix factorization of explicit ratings (the tutorial's collaborative filtering).

    Predicts ``item_factors_[i] . user_factors_[j] + item_means_[i]`` and learns the factors by
    minimizing ``1/2 sum_observed (x_i . theta_j - (y_ij - mean_i))^2 + reg/2 (|X|^2 + |Theta|^2)``
    with scipy's nonlinear conjugate gradient.

    Parameters
    ----------
    n_factors : int, default 10
        Latent dimension k.
    reg : float, default 10.0
        L2 regularization of both factor matrices.
    normalize : {"item_mean", "none"}, default "item_mean"
        ``"item_mean"`` subtracts each item's mean rating before factorizing (the tutorial's
        normalization); ``"none"`` factorizes the raw ratings.
    solver : {"cg"}, default "cg"
        scipy's ``minimize(method="CG", jac=True)`` on the fused Numba objective.
    max_iter : int, default 200
        Iterations at most.
    tol : float, default 1e-4
        Stop when the gradient's largest entry falls below ``tol`` times its initial value;
        0 disables this test.
    init_scale : float, default 0.1
        Standard deviation of the normal random initial factors.
    random_state : int, numpy.random.Generator or None
        Seed of the initial factors; fitting twice with the same seed gives the same model.
    n_threads : int, optional
        Threads for the kernels (numba's default when None); results do not depend on it.
    verbose : bool, default False
        Print one progress line per iteration to stderr.

    Attributes
    ----------
    item_factors_ : ndarray of shape (n_items, n_factors), float64
    user_factors_ : ndarray of shape (n_users, n_factors), float64
    item_ids_, user_ids_ : ndarray of shape (n_items,) / (n_users,)
        External ids, in the order of the factor rows.
    global_mean_ : float
        Mean training rating.
    item_means_ : ndarray of shape (n_items,), float64
        Each item's mean training rating (``"item_mean"``; the global mean for an item without
        ratings), zeros under ``"none"``.
    rating_range_ : tuple (float, float)
        Smallest and largest training rating; predictions are clipped to it.
    n_iter_ : int
    result_ : scipy.optimize.OptimizeResult
    history_ : dict of lists
        ``"cost"`` and ``"seconds"`` per iteration, and ``"val_rmse"`` with a validation set.
    """

    def __init__(
        self,
        n_factors=10,
        *,
        reg=10.0,
        normalize="item_mean",
        solver="cg",
        max_iter=200,
        tol=1e-4,
        init_scale=0.1,
        random_state=None,
        n_threads=None,
        verbose=False,
    ):
        self.n_factors = n_factors
        self.reg = reg
        self.normalize = normalize
        self.solver = solver
        self.max_iter = max_iter
        self.tol = tol
        self.init_scale = init_scale
        self.random_state = random_state
        self.n_threads = n_threads
        self.verbose = verbose

    def get_params(self):
        """Hyperparameters as a dict (scikit-learn style)."""
        return {
            "n_factors": self.n_factors,
            "reg": self.reg,
            "normalize": self.normalize,
            "solver": self.solver,
            "max_iter": self.max_iter,
            "tol": self.tol,
            "init_scale": self.init_scale,
            "random_state": self.random_state,
            "n_threads": self.n_threads,
            "verbose": self.verbose,
        }

    def _check_params(self):
        def positive_int(name):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, found {value!r}")

        def non_negative(name):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise ValueError(f"{name} must be a number >= 0, found {value!r}")
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, found {value!r}")

        positive_int("n_factors")
        positive_int("max_iter")
        non_negative("reg")
        non_negative("tol")
        non_negative("init_scale")
        if self.normalize not in _NORMALIZE:
            raise ValueError(f"normalize must be one of {_NORMALIZE}, found {self.normalize!r}")
        if self.solver not in _SOLVERS:
            raise ValueError(f"solver must be one of {_SOLVERS}, found {self.solver!r}")
        if self.n_threads is not None:
            positive_int("n_threads")

    # -- training -----------------------------------------------------------------------------
    def fit(self, ratings, *, validation=None, callback=None):
        """Learn the factors from ``ratings``.

        Parameters
        ----------
        ratings : Ratings
        validation : Ratings, optional
            Held-out ratings; their RMSE after each iteration goes to ``history_["val_rmse"]``.
        callback : callable, optional
            ``callback(iteration, info) -> bool``; ``info`` holds this iteration's ``"cost"``,
            ``"seconds"`` (and ``"val_rmse"``); returning True stops training.

        Returns
        -------
        self
        """
        self._check_params()
        if not isinstance(ratings, Ratings):
            raise TypeError(f"ratings must be a fastcofi.Ratings, found {type(ratings).__name__}")
        if validation is not None and not isinstance(validation, Ratings):
            raise TypeError(
                f"validation must be a fastcofi.Ratings, found {type(validation).__name__}"
            )
        n_items, n_users, k = ratings.n_items, ratings.n_users, int(self.n_factors)
        item_indptr, _, values = ratings.by_item
        counts = np.diff(item_indptr)
        sums = np.bincount(ratings.coo()[1], weights=values, minlength=n_items)
        global_mean = float(values.mean(dtype=np.float64))
        if self.normalize == "item_mean":
            # An item with no rating (declared only) is predicted at the global mean.
            item_means = np.where(counts > 0, sums / np.maximum(counts, 1), global_mean)
        else:
            item_means = np.zeros(n_items)

        rng = np.random.default_rng(self.random_state)
        scale = float(self.init_scale)
        X0 = rng.normal(0.0, scale, size=(n_items, k))
        Theta0 = rng.normal(0.0, scale, size=(n_users, k))
        objective = FlatObjective(ratings, k, self.reg, item_means, self.n_threads)

        val_rmse = []
        val_index = None
        if validation is not None:
            users = lookup(ratings.user_ids, validation.user_ids)[0]
            items = lookup(ratings.item_ids, validation.item_ids)[0]
            v_users, v_items, v_values = validation.coo()
            val_index = (users[v_users], items[v_items], np.asarray(v_values, dtype=np.float64))
        rating_range = (float(values.min()), float(values.max()))

        def on_iteration(iteration, params, history):
            info = {key: values[-1] for key, values in history.items()}
            if val_index is not None:
                X, Theta = objective.unpack(params)
                pred = _predict_indices(
                    X, Theta, item_means, global_mean, rating_range, val_index[0], val_index[1]
                )
                info["val_rmse"] = float(np.sqrt(np.mean((pred - val_index[2]) ** 2)))
                val_rmse.append(info["val_rmse"])
            if self.verbose:
                extra = f"  val_rmse {info['val_rmse']:.4f}" if "val_rmse" in info else ""
                print(
                    f"iter {iteration:4d}  cost {info['cost']:.6g}  {info['seconds']:.2f}s{extra}",
                    file=sys.stderr,
                )
            logger.debug("iteration %d: %s", iteration, info)
            return bool(callback(iteration, info)) if callback is not None else False

        result, history = minimize_cg(
            objective,
            objective.pack(X0, Theta0),
            max_iter=self.max_iter,
            tol=self.tol,
            on_iteration=on_iteration,
        )
        if val_index is not None:
            history["val_rmse"] = val_rmse
        X, Theta = objective.unpack(result.x)
        self.item_factors_ = np.ascontiguousarray(X)
        self.user_factors_ = np.ascontiguousarray(Theta)
        self.item_ids_ = ratings.item_ids
        self.user_ids_ = ratings.user_ids
        self.global_mean_ = global_mean
        self.item_means_ = item_means
        self.rating_range_ = rating_range
        self.n_iter_ = int(result.nit)
        self.result_ = result
        self.history_ = history
        self._seen = ratings.by_user[:2]
        return self

    # -- prediction ---------------------------------------------------------------------------
    def _check_fitted(self):
        if not hasattr(self, "item_factors_"):
            raise AttributeError(
                f"this {type(self).__name__} is not fitted yet; call fit(ratings) first"
            )

    def predict(self, users, items):
        """Predicted ratings for pairs of external ids, clipped to ``rating_range_``.

        A user or item unseen in training gets a fallback instead of an error: an unknown user
        of a known item gets the item's mean, an unknown item the global mean.

        Parameters
        ----------
        users, items : array-like of external ids, broadcastable to one shape (scalars allowed)

        Returns
        -------
        ndarray of float64, the broadcast shape (0-dimensional for two scalars)
        """
        self._check_fitted()
        users, items = np.broadcast_arrays(np.asarray(users), np.asarray(items))
        u_index = lookup(self.user_ids_, users)[0]
        i_index = lookup(self.item_ids_, items)[0]
        return _predict_indices(
            self.item_factors_,
            self.user_factors_,
            self.item_means_,
            self.global_mean_,
            self.rating_range_,
            u_index,
            i_index,
        )

    def recommend(self, user, n=10, *, exclude_seen=True, items=None, filter_items=None):
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
        return serving.recommend(self, user, n, exclude_seen, items, filter_items)


def _predict_indices(X, Theta, item_means, global_mean, rating_range, u_index, i_index):
    """Predictions for dense indices, -1 meaning unknown (see `MatrixFactorization.predict`)."""
    u_known = u_index >= 0
    i_known = i_index >= 0
    both = u_known & i_known
    pred = np.full(u_index.shape, global_mean, dtype=np.float64)
    pred[i_known] = item_means[i_index[i_known]]
    ui, ii = u_index[both], i_index[both]
    pred[both] += np.einsum("ij,ij->i", X[ii], Theta[ui])
    np.clip(pred, rating_range[0], rating_range[1], out=pred)
    return pred if pred.ndim else pred[()]
