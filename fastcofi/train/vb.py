"""Variational Bayes: mean-field updates of both sides until the free energy settles."""

import time

import numpy as np

from .._parallel import threads
from ..data.ratings import value_moments
from ..kernels.vb import Moments, Posterior, vb_update_rows
from .solvers import _warn

# The free energy's relative change that ends VB, as a fraction of ``tol`` (3e-4 at the default
# tol): ML-100K's test RMSE has stopped moving by then (17-23 sweeps; 1e-4 takes 23-29 sweeps
# for protocol A 0.9060 instead of 0.9062).
_VB_TOL_SCALE = 0.1


def _moments(mean, cov):
    """The posterior moments `fastcofi.kernels.vb.vb_update_rows` reads of the other side."""
    k = mean.shape[1] - 1
    first = mean.copy()
    first[:, k] = 1.0
    second = np.einsum("na,nb->nab", first, first)
    second[:, :k, :k] += cov[:, :k, :k]
    cross = first * mean[:, k:]
    cross[:, :k] += cov[:, :k, k]
    return Moments(first, second.reshape(len(mean), -1), cross, np.ascontiguousarray(mean[:, k]),
                   mean[:, k] ** 2 + cov[:, k, k])


# Starts of `minimize_vb`: initial noise variances as fractions of the ratings' variance. From the
# first alone, VB switched every factor off where signal and noise are of similar size (planted
# rank 3, noise 1.0 or 1.5, k = 8..20: 1.22-1.43x the noise floor); the second, which assumes
# little noise, reaches a higher free energy there (1.09-1.11x) but a lower one on ML-100K
# (u1 0.9229 against 0.9158). Keeping the start with the higher free energy gets both.
_VB_START_NOISE = (1.0, 1.0 / 16.0)


def minimize_vb(objective, params, *, max_iter, tol, init_cov=0.01,
                init_noise=_VB_START_NOISE, on_iteration=None):
    """Variational Bayes: Gaussian posteriors for every row, prior and noise variances learned.

    The model of ``objective`` (``mu`` + biases + factors) with priors instead of penalties:
    every item's (factors, bias) ~ N(0, diag(item variances)), every user's likewise with its
    own variances, ratings with Gaussian noise. Mean-field updates alternate items and users
    (`fastcofi.kernels.vb.vb_update_rows`, each row's full covariance kept); after each sweep
    every variance is set to its posterior average (per factor dimension, so unneeded dimensions
    shrink away: automatic relevance determination). The free energy never decreases. Stops when
    a sweep changes it by less than ``tol / 10`` of its size, after ``max_iter`` sweeps, or when
    ``on_iteration`` asks. ``objective.reg`` and its weighting are not used: the data set them.

    Parameters
    ----------
    objective : FlatObjective
        Supplies the ratings, ``mu`` and the parameter layout; its biases must be learned.
    params : ndarray of shape (objective.size,), float64
        Initial posterior means; overwritten with the result.
    init_cov : float, default 0.01
        Initial posterior covariance of every row (times the identity).
    init_noise : float or sequence of float, default (1.0, 1/16)
        Initial noise variance, as a fraction of the ratings' variance (each > 0). With several,
        VB runs from each (from the same ``params``) and keeps the run with the highest free
        energy; a start whose row systems stop being positive definite is dropped (an error
        only when every start fails).
    on_iteration : callable, optional
        ``on_iteration(iteration, params, history) -> stop`` after each sweep. With several
        starts it sees only the kept one, run once more for it (same result: VB draws no random
        numbers), and a stop it asks for ends that run.

    Returns
    -------
    params : ndarray (the same array)
        Posterior means.
    history : dict of lists ``"cost"`` (the negative free energy) and ``"seconds"``
    state : dict
        ``"noise_variance"``, ``"item_variances"``, ``"user_variances"`` (length k + 1, the bias
        last), ``"free_energy"``, ``"converged"``.
    """
    starts = np.asarray(init_noise, dtype=np.float64).reshape(-1)
    valid = np.ndim(init_noise) <= 1 and starts.size > 0
    if not (valid and np.all(np.isfinite(starts) & (starts > 0))):
        raise ValueError(
            f"init_noise must be a number > 0 or a 1-D sequence of them, found {init_noise!r}"
        )
    # Initial noise variances: each start's fraction of the ratings' variance.
    noises = starts * value_moments(objective.ratings.values)[1]
    if starts.size > 1:
        runs, failure = [], None
        for noise in noises:
            try:
                runs.append((noise, _vb_run(objective, params.copy(), max_iter, tol, init_cov,
                                            noise, None)))
            except FloatingPointError as exc:
                failure = failure or exc
        if not runs:
            raise failure
        energies = [state["free_energy"] for _, (_, _, state) in runs]
        noise, run = runs[int(np.argmax(np.nan_to_num(energies, nan=-np.inf)))]
        if on_iteration is None:
            params[...] = run[0]
        else:
            run = _vb_run(objective, params, max_iter, tol, init_cov, noise, on_iteration)
    else:
        run = _vb_run(objective, params, max_iter, tol, init_cov, noises[0], on_iteration)
    if not run[2]["converged"]:
        _warn("VB", len(run[1]["cost"]), tol, "maximum number of iterations reached")
    return params, run[1], run[2]


def _vb_run(objective, params, max_iter, tol, init_cov, init_noise_variance, on_iteration):
    """One VB run from one start (see `minimize_vb`; ``init_noise_variance`` in rating units);
    does not warn."""
    ratings = objective.ratings
    X, Theta, item_bias, user_bias = objective.unpack(params)
    k = X.shape[1]
    d = k + 1
    n_items, n_users, nnz = ratings.n_items, ratings.n_users, ratings.nnz
    item_mean = np.column_stack([X, item_bias])
    user_mean = np.column_stack([Theta, user_bias])
    item_cov = np.broadcast_to(np.eye(d) * init_cov, (n_items, d, d)).copy()
    user_cov = np.broadcast_to(np.eye(d) * init_cov, (n_users, d, d)).copy()
    variances = {
        side: np.array([1.0 / k] * k + [0.1]) for side in ("items", "users")
    }
    tau = 1.0 / max(init_noise_variance, 1e-12)
    item_sse, item_logdet = np.zeros(n_items), np.zeros(n_items)
    user_sse, user_logdet = np.zeros(n_users), np.zeros(n_users)
    log2pi = np.log(2.0 * np.pi)
    history = {"cost": [], "seconds": []}
    start = time.perf_counter()
    previous = None
    converged = False
    threshold = float(tol) * _VB_TOL_SCALE
    item_rows = ratings.item_rows
    user_rows = ratings.user_rows
    with threads(objective.n_threads):
        for iteration in range(1, int(max_iter) + 1):
            failed = vb_update_rows(
                item_rows, _moments(user_mean, user_cov), objective.mu, tau,
                1.0 / variances["items"], Posterior(item_mean, item_cov, item_sse, item_logdet),
            )
            failed += vb_update_rows(
                user_rows, _moments(item_mean, item_cov), objective.mu, tau,
                1.0 / variances["users"], Posterior(user_mean, user_cov, user_sse, user_logdet),
            )
            if failed:
                raise FloatingPointError(
                    f"variational Bayes: {failed} row systems were not positive definite"
                )
            expected_sse = float(np.sum(user_sse))
            free_energy = 0.0
            for side, mean, cov, logdet in (
                ("items", item_mean, item_cov, item_logdet),
                ("users", user_mean, user_cov, user_logdet),
            ):
                n = mean.shape[0]
                second = np.einsum("na,na->a", mean, mean) + np.einsum("naa->a", cov)
                variances[side] = np.maximum(second / max(n, 1), 1e-10)
                # Expected log prior at the updated variances, plus the posterior's entropy.
                free_energy += (
                    -0.5 * n * np.sum(log2pi + np.log(variances[side]))
                    - 0.5 * np.sum(second / variances[side])
                    + 0.5 * n * d * (1.0 + log2pi) + 0.5 * float(np.sum(logdet))
                )
            tau = nnz / max(expected_sse, 1e-300)
            free_energy += 0.5 * nnz * (np.log(tau) - log2pi) - 0.5 * tau * expected_sse
            X[...] = item_mean[:, :k]
            item_bias[...] = item_mean[:, k]
            Theta[...] = user_mean[:, :k]
            user_bias[...] = user_mean[:, k]
            history["cost"].append(-free_energy)
            history["seconds"].append(time.perf_counter() - start)
            if on_iteration is not None and on_iteration(iteration, params, history):
                converged = True
                break
            if previous is not None and abs(free_energy - previous) <= threshold * abs(previous):
                converged = True
                break
            previous = free_energy
    state = {
        "noise_variance": 1.0 / tau,
        "item_variances": variances["items"],
        "user_variances": variances["users"],
        "free_energy": -history["cost"][-1] if history["cost"] else float("nan"),
        "converged": converged,
    }
    return params, history, state


def set_vb_posterior(model, vb_state):
    """A fitted model's VB attributes (None without ``vb_state``, for the other solvers): the
    learned noise and user-bias prior variances, and its factors rescaled so that the user side
    has unit prior variance, which makes fold-in a plain ridge solve (predictions unchanged)."""
    model.noise_variance_ = model.user_bias_variance_ = None
    if vb_state is None:
        return
    k = model.item_factors_.shape[1]
    scale = np.sqrt(vb_state["user_variances"][:k])
    model.item_factors_ *= scale
    model.user_factors_ /= scale
    model.noise_variance_ = float(vb_state["noise_variance"])
    model.user_bias_variance_ = float(vb_state["user_variances"][k])
