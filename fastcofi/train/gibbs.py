"""Bayesian matrix factorization by Gibbs sampling: the chain (`run_chain`) and its state.

The model (``normalize="biases"``): ``rating = mu + b_item + b_user + x_item . theta_user +
noise``, noise ~ N(0, 1 / tau), ``mu`` the training mean (fixed: the prior means of the biases,
sampled, absorb any shift). Every item's factors ``x`` ~ N(m_item, Lambda_item^-1) with a full
k x k precision, and its bias ~ N(m_b, 1 / lambda_b); users likewise with their own
hyperparameters. Hyperpriors: on the factors BPMF's Normal-Wishart (Salakhutdinov and Mnih,
ICML 2008): ``Lambda ~ Wishart(W0 = I, nu0 = k)``, ``m | Lambda ~ N(0, (beta0 Lambda)^-1)``,
beta0 = 2; on each bias a Normal-Gamma, ``lambda_b ~ Gamma(1, 1)``, ``m_b | lambda_b ~ N(0, 1 /
lambda_b)``; ``tau ~ Gamma(1, 1)``.

The noise is not the same for every rating: a rating of user ``u`` and item ``i`` has precision
``tau * alpha_u * beta_i``, each user's and each item's noise scale ~ Gamma(a, a) (mean 1) with
one shape ``a`` per side, itself drawn from a log-uniform prior on a grid from 2 to 1000 (the
heteroscedastic noise of robust BPMF: Lakshminarayanan, Bouchard and Archambeau, AISTATS 2011).
Users who rate erratically and items that split opinion get a small scale, so their ratings
weigh less in the other side's rows. On MovieLens 100K this lowered protocol A's RMSE from
0.8977 to 0.8929 (bench/README.md); on homoscedastic data the shapes go to the grid's top and
the scales stay near 1. A full precision couples the factor dimensions, which are
strongly correlated in the posterior: on MovieLens 100K it was more accurate than libFM's and
myFM's per-dimension Normal-Gamma on every protocol tried (bench/README.md). The bias stays
apart with a scalar prior, because it is no rotation of the factors and fold-in penalizes it on
its own.

One sweep draws, in order: the item hyperparameters given the item rows, every item row
(`fastcofi.kernels.gibbs.sample_rows`, in parallel), the items' scale shape and scales, the
same for the users, then ``tau`` given all residuals. Rows draw from counter-based streams keyed
by (seed, sweep, side, row); the few hyperparameter draws of sweep ``s`` come from
``numpy.random.default_rng([seed, s])``. The chain's position is therefore just (seed, sweep):
a checkpoint that stores the state after sweep ``s`` resumes bit-identically.
"""

import os
import time

import numpy as np
from scipy.special import gammaln

from .._parallel import threads
from ..data.ids import lookup
from ..data.ratings import value_moments
from ..kernels import gibbs as _gibbs_kernels
from .checkpoint import read_checkpoint
from .observers import Observers, RunningAverageRMSE, kept_draws

__all__ = ["GibbsState", "kept_sweeps", "predictive", "run_chain", "sample_predictions",
           "stack_samples"]

# What a verbose chain prints each sweep (`fastcofi.train.observers.Progress`).
_SWEEP_FIGURES = (("train_rmse", ".4f"), ("noise_precision", ".4g"), ("kept", "d"))

# Hyperprior constants. The biases' Normal-Gamma and the noise's Gamma (libFM's and myFM's
# defaults): Gamma(shape, rate) on precisions, and the prior mean's own weight gamma0 (in units of
# lambda) around 0. The factors' Normal-Wishart (BPMF's): mean 0 weighted beta0, scale matrix the
# identity, nu0 = k degrees of freedom.
_ALPHA0 = 1.0
_BETA0 = 1.0
_GAMMA0 = 1.0
_NW_BETA0 = 2.0
# The grid of the noise scales' shape a (log-uniform prior). From 2: a new row's expected noise
# variance, a / (a - 1) / tau, stays finite and within 2x of 1 / tau. To 1000: the scales of rows
# with a few dozen ratings then vary by a few per cent, all but the homoscedastic model.
_SCALE_SHAPES = np.geomspace(2.0, 1000.0, 48)


def _inverse_scales(posterior, side, index, known):
    """Each draw's ``1 / scale`` of a side's rows ``index`` (shape + (S,)): the kept scale of a
    known row, the prior's ``E[1 / scale] = a / (a - 1)`` of an unknown one (index -1)."""
    scales = posterior.get(side + "_noise_scales")
    if scales is None:
        return np.ones(index.shape + (posterior["noise_variances"].shape[0],))
    shapes = posterior[side + "_noise_shapes"]
    out = np.broadcast_to(shapes / (shapes - 1.0), index.shape + shapes.shape).copy()
    out[known] = 1.0 / scales[index[known]]
    return out


def kept_sweeps(max_iter, n_samples, burn_in, thin):
    """The sweeps (1-based) whose draws are kept: the last ``n_samples`` of ``max_iter``,
    ``max_iter - thin``, ... that come after ``burn_in``. An ndarray of int64, ascending."""
    grid = np.arange(int(max_iter), int(burn_in), -int(thin), dtype=np.int64)[: int(n_samples)]
    return grid[::-1].copy()


class GibbsState:
    """Everything a chain needs to continue: the current draw, hyperparameters, the kept draws.

    Attributes
    ----------
    item_rows, user_rows : ndarray of shape (n, k + 1), float64
        The current draw: factors, bias last.
    item_prior_mean, user_prior_mean : ndarray of shape (k + 1,), float64
    item_prior_precision, user_prior_precision : ndarray of shape (k + 1, k + 1), float64
        The current row prior of each side: mean and precision of (factors, bias), block
        diagonal (the factors' k x k block, then the bias's precision).
    tau : float
        Current noise precision.
    item_scale, user_scale : ndarray of shape (n,), float64
        Current noise scales of the rows (a rating's noise precision is ``tau`` times its
        user's and its item's scale).
    item_shape, user_shape : float
        Current shape of each side's scales' Gamma(a, a) prior.
    seed : int
        The chain's seed (uint64 range).
    sweep : int
        Sweeps done.
    kept_items, kept_users : ndarray of shape (n_samples, n, k + 1), float64
    kept_item_precision, kept_user_precision : ndarray of shape (n_samples, k + 1, k + 1)
        The prior precisions of the kept draws.
    kept_tau : ndarray of shape (n_samples,), float64
    kept_item_scale, kept_user_scale : ndarray of shape (n_samples, n), float64
    kept_shapes : ndarray of shape (n_samples, 2), float64
        The kept draws' (item, user) scale shapes.
    n_kept : int
        How many of the kept slots are filled.
    """

    _ARRAYS = ("item_rows", "user_rows", "item_prior_mean", "user_prior_mean",
               "item_prior_precision", "user_prior_precision", "kept_items", "kept_users",
               "kept_item_precision", "kept_user_precision", "kept_tau", "item_scale",
               "user_scale", "kept_item_scale", "kept_user_scale", "kept_shapes")

    def __init__(self, item_rows, user_rows, tau, seed, n_samples):
        d = item_rows.shape[1]
        self.item_rows = np.ascontiguousarray(item_rows, dtype=np.float64)
        self.user_rows = np.ascontiguousarray(user_rows, dtype=np.float64)
        self.item_prior_mean, self.user_prior_mean = np.zeros(d), np.zeros(d)
        self.item_prior_precision, self.user_prior_precision = np.eye(d), np.eye(d)
        self.tau = float(tau)
        self.item_scale = np.ones(self.item_rows.shape[0])
        self.user_scale = np.ones(self.user_rows.shape[0])
        self.item_shape = self.user_shape = float(_SCALE_SHAPES[-1])
        self.seed = int(seed)
        self.sweep = 0
        self.kept_items = np.zeros((n_samples, self.item_rows.shape[0], d))
        self.kept_users = np.zeros((n_samples, self.user_rows.shape[0], d))
        self.kept_item_precision = np.zeros((n_samples, d, d))
        self.kept_user_precision = np.zeros((n_samples, d, d))
        self.kept_tau = np.zeros(n_samples)
        self.kept_item_scale = np.zeros((n_samples, self.item_rows.shape[0]))
        self.kept_user_scale = np.zeros((n_samples, self.user_rows.shape[0]))
        self.kept_shapes = np.zeros((n_samples, 2))
        self.n_kept = 0

    def to_arrays(self):
        """The state as named arrays (for a checkpoint)."""
        out = {name: getattr(self, name) for name in self._ARRAYS}
        out["scalars"] = np.array([self.tau, self.item_shape, self.user_shape])
        # uint64 seeds do not fit int64; store them exactly as two 32-bit halves.
        out["counters"] = np.array([self.seed >> 32, self.seed & 0xFFFFFFFF, self.sweep,
                                    self.n_kept], dtype=np.int64)
        return out

    @classmethod
    def from_arrays(cls, arrays):
        """The inverse of `to_arrays`."""
        state = cls.__new__(cls)
        for name in cls._ARRAYS:
            setattr(state, name, np.array(arrays[name], dtype=np.float64))
        state.tau, state.item_shape, state.user_shape = (float(v) for v in arrays["scalars"])
        hi, lo, sweep, n_kept = (int(v) for v in arrays["counters"])
        state.seed, state.sweep, state.n_kept = (hi << 32) | lo, sweep, n_kept
        return state

    def keep(self):
        """Copy the current draw into the next kept slot."""
        slot = self.n_kept
        self.kept_items[slot] = self.item_rows
        self.kept_users[slot] = self.user_rows
        self.kept_item_precision[slot] = self.item_prior_precision
        self.kept_user_precision[slot] = self.user_prior_precision
        self.kept_tau[slot] = self.tau
        self.kept_item_scale[slot] = self.item_scale
        self.kept_user_scale[slot] = self.user_scale
        self.kept_shapes[slot] = self.item_shape, self.user_shape
        self.n_kept += 1


def _sample_normal_gamma(rows, rng):
    """A joint draw of (mean, precision) of one column given its entries ``rows`` (n,), under
    the Normal-Gamma hyperprior; two floats."""
    n = rows.shape[0]
    mean = rows.mean() if n else 0.0
    spread = float(((rows - mean) ** 2).sum())
    gamma_n = _GAMMA0 + n
    shape = _ALPHA0 + 0.5 * n
    rate = _BETA0 + 0.5 * (spread + _GAMMA0 * n * mean**2 / gamma_n)
    precision = rng.gamma(shape, 1.0 / rate)
    centre = rng.normal(n * mean / gamma_n, 1.0 / np.sqrt(gamma_n * precision))
    return float(centre), float(precision)


def _sample_scale_shape(scales, rng):
    """A draw of the shape ``a`` of one side's noise scales (n,), each ~ Gamma(a, a), from its
    posterior on the grid ``_SCALE_SHAPES`` (log-uniform prior)."""
    a = _SCALE_SHAPES
    n = scales.shape[0]
    log_posterior = (n * (a * np.log(a) - gammaln(a)) + (a - 1.0) * float(np.log(scales).sum())
                     - a * float(scales.sum()))
    weights = np.exp(log_posterior - log_posterior.max())
    return float(a[rng.choice(a.size, p=weights / weights.sum())])


def _sample_scales(shape, counts, scaled_sse, tau, rng):
    """Each row's noise scale from its conditional, Gamma(shape + n_r / 2, rate shape + tau
    scaled_sse_r / 2): ``counts`` (n,) its ratings, ``scaled_sse`` (n,) their squared residuals
    times the other side's scales."""
    return rng.gamma(shape + 0.5 * counts, 1.0 / (shape + 0.5 * tau * scaled_sse))


def _sample_wishart(scale, dof, rng):
    """One draw of Wishart(scale, dof) (mean ``dof * scale``) by Bartlett's decomposition:
    ``(L A)(L A)^T`` with ``L L^T = scale`` and ``A`` lower triangular, chi variates of ``dof,
    dof - 1, ...`` degrees of freedom on its diagonal and standard normals below."""
    d = scale.shape[0]
    A = np.zeros((d, d))
    for i in range(d):
        A[i, i] = np.sqrt(rng.chisquare(dof - i))
        A[i, :i] = rng.standard_normal(i)
    LA = np.linalg.cholesky(scale) @ A
    draw = LA @ LA.T
    return 0.5 * (draw + draw.T)  # exactly symmetric, whatever the product's rounding


def _sample_normal_wishart(rows, rng):
    """A joint draw of the factors' (mean (k,), precision (k, k)) given the rows (n, k): the
    Normal-Wishart posterior of BPMF (prior mean 0 weighted beta0, scale I, k degrees of
    freedom)."""
    n, k = rows.shape
    mean = rows.mean(axis=0) if n else np.zeros(k)
    centred = rows - mean
    beta_n = _NW_BETA0 + n
    inverse_scale = (np.eye(k) + centred.T @ centred
                     + (_NW_BETA0 * n / beta_n) * np.outer(mean, mean))
    scale = np.linalg.inv(inverse_scale)
    precision = _sample_wishart(0.5 * (scale + scale.T), k + n, rng)
    # m | Lambda ~ N(n mean / beta_n, (beta_n Lambda)^-1): mean + L^-T z with L L^T = beta_n Lambda.
    chol = np.linalg.cholesky(beta_n * precision)
    centre = n * mean / beta_n + np.linalg.solve(chol.T, rng.standard_normal(k))
    return centre, precision


def _sample_prior(rows, rng):
    """A draw of a side's row prior given its rows (n, k + 1): Normal-Wishart on the factors,
    Normal-Gamma on the bias. Returns ``(mean (k + 1,), precision (k + 1, k + 1))``, the
    precision block diagonal."""
    k = rows.shape[1] - 1
    centre, factor_precision = _sample_normal_wishart(rows[:, :k], rng)
    bias_centre, bias_precision = _sample_normal_gamma(rows[:, k], rng)
    precision = np.zeros((k + 1, k + 1))
    precision[:k, :k] = factor_precision
    precision[k, k] = bias_precision
    return np.append(centre, bias_centre), precision


def run_chain(ratings, mu, state, *, max_iter, keep, n_threads=None, on_sweep=None):
    """Continue the chain in ``state`` up to ``max_iter`` sweeps, keeping the sweeps in ``keep``.

    Parameters
    ----------
    ratings : Ratings
    mu : float
        The fixed global offset.
    state : GibbsState
        Updated in place.
    max_iter : int
        Total sweeps of the chain (those already in ``state.sweep`` included).
    keep : ndarray of int
        Sweeps whose draws fill the next kept slots (`kept_sweeps`).
    on_sweep : callable, optional
        ``on_sweep(sweep, state, history) -> stop`` after each sweep, ``sweep`` counted from 1
        in this call (``state.sweep`` counts the chain's), as the optimizers' ``on_iteration``
        (`fastcofi.train.observers.Observers`).

    Returns
    -------
    history : dict of lists, one entry per sweep of this call: ``"cost"`` (half the sum of
        squared training residuals of the sweep's draw, the likelihood's cost), ``"seconds"``
        (since this call began), ``"train_rmse"`` (of the draw) and ``"noise_precision"``.
    """
    k = state.item_rows.shape[1] - 1
    n_items, n_users, nnz = ratings.n_items, ratings.n_users, ratings.nnz
    keep = {int(s) for s in keep}
    seed = np.uint64(state.seed)
    X = np.ascontiguousarray(state.item_rows[:, :k])
    Theta = np.ascontiguousarray(state.user_rows[:, :k])
    item_bias = np.ascontiguousarray(state.item_rows[:, k])
    user_bias = np.ascontiguousarray(state.user_rows[:, k])
    item_sse, user_sse = np.zeros(n_items), np.zeros(n_users)
    item_scaled_sse, user_scaled_sse = np.zeros(n_items), np.zeros(n_users)
    item_counts = np.diff(ratings.by_item[0]).astype(np.float64)
    user_counts = np.diff(ratings.by_user[0]).astype(np.float64)
    item_rows = ratings.item_rows
    user_rows = ratings.user_rows
    history = {"cost": [], "seconds": [], "train_rmse": [], "noise_precision": []}
    start = time.perf_counter()
    first = state.sweep
    with threads(n_threads):
        for sweep in range(state.sweep + 1, int(max_iter) + 1):
            rng = np.random.default_rng([state.seed, sweep])
            state.item_prior_mean, state.item_prior_precision = _sample_prior(
                np.column_stack([X, item_bias]), rng)
            failed = _gibbs_kernels.sample_rows(
                item_rows, _gibbs_kernels.Other(Theta, user_bias, state.user_scale), mu,
                _gibbs_kernels.Prior(state.item_prior_mean, state.item_prior_precision),
                _gibbs_kernels.Noise(state.tau, state.item_scale),
                _gibbs_kernels.stream_key(seed, sweep, 0),
                _gibbs_kernels.Draws(X, item_bias, item_sse, item_scaled_sse),
            )
            state.item_shape = _sample_scale_shape(state.item_scale, rng)
            state.item_scale = _sample_scales(state.item_shape, item_counts, item_scaled_sse,
                                              state.tau, rng)
            state.user_prior_mean, state.user_prior_precision = _sample_prior(
                np.column_stack([Theta, user_bias]), rng)
            failed += _gibbs_kernels.sample_rows(
                user_rows, _gibbs_kernels.Other(X, item_bias, state.item_scale), mu,
                _gibbs_kernels.Prior(state.user_prior_mean, state.user_prior_precision),
                _gibbs_kernels.Noise(state.tau, state.user_scale),
                _gibbs_kernels.stream_key(seed, sweep, 1),
                _gibbs_kernels.Draws(Theta, user_bias, user_sse, user_scaled_sse),
            )
            state.user_shape = _sample_scale_shape(state.user_scale, rng)
            state.user_scale = _sample_scales(state.user_shape, user_counts, user_scaled_sse,
                                              state.tau, rng)
            if failed:
                raise FloatingPointError(
                    f"Gibbs sampling: {failed} row systems were not positive definite"
                )
            # Every rating lies in exactly one user row, so the users' sums cover them all.
            sse = float(user_sse.sum())
            scaled_sse = float(state.user_scale @ user_scaled_sse)
            state.tau = float(rng.gamma(_ALPHA0 + 0.5 * nnz, 1.0 / (_BETA0 + 0.5 * scaled_sse)))
            state.sweep = sweep
            state.item_rows = np.column_stack([X, item_bias])
            state.user_rows = np.column_stack([Theta, user_bias])
            if sweep in keep and state.n_kept < state.kept_tau.shape[0]:
                state.keep()
            history["cost"].append(0.5 * sse)
            history["seconds"].append(time.perf_counter() - start)
            history["train_rmse"].append(float(np.sqrt(sse / max(nnz, 1))))
            history["noise_precision"].append(state.tau)
            if on_sweep is not None and on_sweep(sweep - first, state, history):
                break
    return history


def sample_predictions(item_rows, user_rows, mu, u_index, i_index):
    """Unclipped predictions of one draw for dense indices (-1 unknown: the known bias only).

    ``item_rows``/``user_rows``: (n, k + 1) factors with the bias last. Returns float64 of the
    indices' shape."""
    k = item_rows.shape[1] - 1
    pred = np.full(u_index.shape, float(mu))
    u_known, i_known = u_index >= 0, i_index >= 0
    pred[i_known] += item_rows[i_index[i_known], k]
    pred[u_known] += user_rows[u_index[u_known], k]
    both = u_known & i_known
    pred[both] += np.einsum("ij,ij->i", item_rows[i_index[both], :k],
                            user_rows[u_index[both], :k])
    return pred


def _factor_cholesky(precision):
    """Lower Cholesky factors (S, k, k) of the factor blocks of (S, k + 1, k + 1) precisions."""
    return np.linalg.cholesky(precision[:, :-1, :-1])


def stack_samples(state):
    """The kept draws as a servable model: stacked factors and averaged biases.

    With S kept draws, sample ``s``'s item factors ``x_s`` become columns ``s k .. (s+1) k`` of
    the stacked item matrix as ``L_s^-1 x_s / sqrt(S)`` and its user factors as ``L_s^T theta_s
    / sqrt(S)``, where ``L_s L_s^T = Lambda_s`` is the Cholesky factor of that draw's user prior
    precision (factors block), so a stacked dot product is the average of the draws' dot
    products, and a user vector has a unit prior covariance per block of stacked columns up to
    the 1/S split: fold-in is then a ridge solve with penalty ``noise_variance`` (see
    `MatrixFactorization.fold_in`).

    Returns
    -------
    dict with ``"item_factors"`` (n_items, S k), ``"user_factors"`` (n_users, S k), ``"item_bias"``,
    ``"user_bias"`` (averages), ``"item_bias_samples"`` (n_items, S), ``"user_bias_samples"``
    (n_users, S), ``"noise_variances"`` (S,), ``"item_prior_precision"``,
    ``"user_prior_precision"`` (S, k + 1, k + 1), ``"user_bias_variance"`` (float, average of
    the draws' 1 / lambda_bias), ``"item_noise_scales"`` (n_items, S), ``"user_noise_scales"``
    (n_users, S) and ``"item_noise_shapes"``, ``"user_noise_shapes"`` (S,).
    """
    S = state.n_kept
    items, users = state.kept_items[:S], state.kept_users[:S]
    k = items.shape[2] - 1
    chol = _factor_cholesky(state.kept_user_precision[:S])  # (S, k, k)
    # Row vectors: x L^-T is (L^-1 x)^T, and theta L is (L^T theta)^T.
    item_factors = np.linalg.solve(chol, items[:, :, :k].transpose(0, 2, 1)).transpose(2, 0, 1)
    user_factors = np.matmul(users[:, :, :k], chol).transpose(1, 0, 2)
    scale = 1.0 / np.sqrt(S)
    return {
        "item_factors": np.ascontiguousarray(item_factors.reshape(items.shape[1], S * k) * scale),
        "user_factors": np.ascontiguousarray(user_factors.reshape(users.shape[1], S * k) * scale),
        "item_bias": items[:, :, k].mean(axis=0),
        "user_bias": users[:, :, k].mean(axis=0),
        "item_bias_samples": np.ascontiguousarray(items[:, :, k].T),
        "user_bias_samples": np.ascontiguousarray(users[:, :, k].T),
        "noise_variances": 1.0 / state.kept_tau[:S],
        "item_prior_precision": state.kept_item_precision[:S].copy(),
        "user_prior_precision": state.kept_user_precision[:S].copy(),
        "user_bias_variance": float(np.mean(1.0 / state.kept_user_precision[:S, k, k])),
        "item_noise_scales": np.ascontiguousarray(state.kept_item_scale[:S].T),
        "user_noise_scales": np.ascontiguousarray(state.kept_user_scale[:S].T),
        "item_noise_shapes": state.kept_shapes[:S, 0].copy(),
        "user_noise_shapes": state.kept_shapes[:S, 1].copy(),
    }


def predictive(posterior, item_factors, user_factors, mu, u_index, i_index):
    """Posterior predictive (mean, variance) of each pair from a stacked model.

    ``posterior``: `stack_samples`'s per-draw arrays; ``item_factors``/``user_factors`` the
    stacked matrices. Known pairs: the draws' predictions' mean and variance plus the pair's
    noise variance averaged over the draws, ``1 / (tau alpha_u beta_i)``; an unknown side's
    scale enters by its prior expectation, ``E[1 / alpha] = a / (a - 1)``, and so does a user
    added by fold-in (`fastcofi.serving`). A pair with an unknown side also adds that side's
    prior predictive variance (its bias's prior variance plus its factors' prior variance
    weighted by the known side's factors; prior means are left out, as the point prediction
    leaves them out), averaged over draws. A posterior without noise scales (a model file of
    format version 3 or 4) has unit scales.
    """
    ib, ub = posterior["item_bias_samples"], posterior["user_bias_samples"]
    S = ib.shape[1]
    k = item_factors.shape[1] // S
    u_known, i_known = u_index >= 0, i_index >= 0
    noise = (posterior["noise_variances"] * _inverse_scales(posterior, "user", u_index, u_known)
             * _inverse_scales(posterior, "item", i_index, i_known))
    draws = np.full(u_index.shape + (S,), float(mu))
    draws[i_known] += ib[i_index[i_known]]
    draws[u_known] += ub[u_index[u_known]]
    both = u_known & i_known
    xi = item_factors[i_index[both]].reshape(-1, S, k)
    tu = user_factors[u_index[both]].reshape(-1, S, k)
    draws[both] += S * np.einsum("nsk,nsk->ns", xi, tu)
    mean = draws.mean(axis=-1)
    variance = draws.var(axis=-1) + noise.mean(axis=-1)
    item_prec, user_prec = posterior["item_prior_precision"], posterior["user_prior_precision"]
    user_bias_var, item_bias_var = 1.0 / user_prec[:, k, k], 1.0 / item_prec[:, k, k]
    # Unknown user, known item: theta ~ N(., Lambda_user^-1) adds x^T Lambda_user^-1 x =
    # |L^-1 x|^2, and the stacked x'' = L^-1 x / sqrt(S) (stack_samples) makes that S |x''|^2.
    only_item = i_known & ~u_known
    if only_item.any():
        x = item_factors[i_index[only_item]].reshape(-1, S, k)
        factor_var = S * np.einsum("nsk,nsk->ns", x, x)
        variance[only_item] += np.mean(factor_var + user_bias_var, axis=-1)
    only_user = u_known & ~i_known
    item_cov = np.linalg.inv(item_prec[:, :k, :k])  # (S, k, k)
    if only_user.any():
        t = user_factors[u_index[only_user]].reshape(-1, S, k)
        # theta = sqrt(S) L^-T t (stack_samples); x ~ N(., Sigma_item) adds theta^T Sigma_item
        # theta = S t^T (L^-1 Sigma_item L^-T) t.
        chol = _factor_cholesky(user_prec)
        inner = np.linalg.solve(chol, np.linalg.solve(chol, item_cov).transpose(0, 2, 1))
        factor_var = S * np.einsum("nsa,sab,nsb->ns", t, inner, t)
        variance[only_user] += np.mean(factor_var + item_bias_var, axis=-1)
    neither = ~u_known & ~i_known
    if neither.any():
        # E[(x . theta)^2] of two independent zero-mean vectors: trace(Sigma_item Sigma_user).
        user_cov = np.linalg.inv(user_prec[:, :k, :k])
        both_var = (np.einsum("sab,sba->s", item_cov, user_cov) + item_bias_var
                    + user_bias_var)
        variance[neither] += float(np.mean(both_var))
    return mean, variance


def schedule(max_iter, n_samples, burn_in, thin):
    """``(burn_in, thin)`` with None resolved: a tenth of the sweeps burnt in, the kept draws
    spread over the rest of the chain."""
    max_iter = int(max_iter)
    burn_in = max_iter // 10 if burn_in is None else int(burn_in)
    thin = (max(1, (max_iter - burn_in) // int(n_samples)) if thin is None
            else int(thin))
    return burn_in, thin


def fit_gibbs(model, ratings, validation, callback, checkpoint, checkpoint_every, resume):
    """`MatrixFactorization.fit` for ``solver="gibbs"``, setting ``model``'s fitted attributes:
    run the chain (`run_chain`) with the observers asked for, then store the kept draws stacked
    (`stack_samples`).
    """
    n_items, n_users, k = ratings.n_items, ratings.n_users, int(model.n_factors)
    values = ratings.values
    global_mean, variance = value_moments(values)
    max_iter = int(model.max_iter)
    burn_in, thin = schedule(model.max_iter, model.n_samples, model.burn_in, model.thin)
    keep = kept_sweeps(max_iter, model.n_samples, burn_in, thin)
    rng = np.random.default_rng(model.random_state)
    scale = 0.1 if model.init_scale is None else float(model.init_scale)
    item_rows = np.column_stack([rng.normal(0.0, scale, (n_items, k)), np.zeros(n_items)])
    user_rows = np.column_stack([rng.normal(0.0, scale, (n_users, k)), np.zeros(n_users)])
    seed = int(rng.integers(0, 2**64, dtype=np.uint64))
    state = GibbsState(item_rows, user_rows, 1.0 / max(variance, 1e-12), seed, max(len(keep), 1))
    fingerprint = {
        **{key: model.get_params()[key] for key in ("n_factors", "normalize", "solver",
                                                    "max_iter", "n_samples")},
        # The chain's model: a checkpoint of the per-dimension Normal-Gamma prior or of one
        # noise precision for all ratings, which came before, holds other state.
        "factor_prior": "normal-wishart", "noise": "scaled-per-row",
        "burn_in_used": burn_in, "thin_used": thin,
        "n_users": n_users, "n_items": n_items, "nnz": ratings.nnz,
        "ratings_sum": float(values.sum(dtype=np.float64)),
    }
    prior = {}
    if resume and os.path.exists(checkpoint):
        _, _, prior, arrays = read_checkpoint(checkpoint, fingerprint, with_state=True)
        if arrays is None:
            raise ValueError(f"{checkpoint}: not a checkpoint of a Gibbs chain (no state)")
        state = GibbsState.from_arrays(arrays)
    model._set_data_state(ratings, global_mean, None)

    observers = Observers.for_run(
        state.sweep, prior, first=[kept_draws], callback=callback,
        validation=(None if validation is None
                    else _validation(model, ratings, validation, global_mean)),
        progress={"max_iter": max_iter, "unit": "sweep", "figures": _SWEEP_FIGURES}
        if model.verbose else None,
        checkpoint=None if checkpoint is None else
        {"path": checkpoint, "every": checkpoint_every, "fingerprint": fingerprint,
         "to_arrays": _checkpoint_arrays})

    history = run_chain(ratings, global_mean, state, max_iter=max_iter, keep=keep,
                        n_threads=model.n_threads, on_sweep=observers)
    if validation is not None:
        history.setdefault("val_rmse", [])
    if observers.checkpointing is not None:
        observers.checkpointing.write(state, state.sweep, history)
    history = observers.merged(history)
    if state.n_kept == 0:
        # Stopped (by the callback) before the first kept sweep: serve the last draw.
        state.keep()
    stacked = stack_samples(state)
    model.item_factors_ = stacked.pop("item_factors")
    model.user_factors_ = stacked.pop("user_factors")
    model.item_bias_ = stacked.pop("item_bias")
    model.user_bias_ = stacked.pop("user_bias")
    model.user_bias_variance_ = stacked.pop("user_bias_variance")
    model.noise_variance_ = float(np.mean(stacked["noise_variances"]))
    model._posterior = stacked
    model.n_samples_ = state.n_kept
    # The penalties fold-in uses (see _fold_in_penalty), recorded as for the other solvers.
    model.reg_ = model.noise_variance_
    model.reg_bias_ = model.noise_variance_ / model.user_bias_variance_
    model.n_iter_ = model.best_iteration_ = state.sweep
    model.result_ = None
    model.history_ = history
    return model


def _validation(model, ratings, validation, global_mean):
    """The running average's validation RMSE (`RunningAverageRMSE`), clipped as ``model`` will
    clip its predictions."""
    v_users, v_items, v_values = validation.coo()
    u_index = lookup(ratings.user_ids, validation.user_ids)[0][v_users]
    i_index = lookup(ratings.item_ids, validation.item_ids)[0][v_items]
    bounds = (model.rating_range_ if model.clip is True else None if model.clip is False
              else tuple(float(v) for v in model.clip))

    def predict(item_rows, user_rows):
        return sample_predictions(item_rows, user_rows, global_mean, u_index, i_index)

    return RunningAverageRMSE(predict, np.asarray(v_values, dtype=np.float64), bounds)


def _checkpoint_arrays(state):
    """A chain's checkpoint: its current draw as the parameter vector, and its whole state."""
    return np.concatenate([state.item_rows.ravel(), state.user_rows.ravel()]), state.to_arrays()
