"""Solvers: scipy's CG and L-BFGS-B on the fused objective, and alternating least squares.

Every solver minimizes the same objective (`fastcofi.objective.FlatObjective`) and reports each
iteration through ``on_iteration(iteration, params, history) -> stop``.
"""

import time
import warnings

import numpy as np

from .._parallel import one_blas_thread, threads
from ..kernels.rowsolve import solve_rows

__all__ = ["ConvergenceWarning", "minimize_scipy", "minimize_als"]


class ConvergenceWarning(UserWarning):
    """Training stopped before its convergence test was met."""


def _warn(solver, nit, tol, reason):
    warnings.warn(
        f"{solver} stopped after {nit} iterations without meeting tol={tol}: {reason}",
        ConvergenceWarning,
        stacklevel=4,
    )


def minimize_scipy(objective, x0, *, method, max_iter, tol, on_iteration=None):
    """Minimize ``objective`` with ``scipy.optimize.minimize(method="CG" or "L-BFGS-B", jac=True)``.

    Parameters
    ----------
    objective : callable
        ``objective(x) -> (cost, gradient)`` with a fresh gradient array each call.
    x0 : ndarray of shape (n_params,), float64
    method : {"CG", "L-BFGS-B"}
    max_iter : int
    tol : float
        Stop once the gradient's largest entry is below ``tol`` times its value at ``x0``
        (relative, so the test does not depend on the number of ratings). 0 disables the test;
        scipy may still stop when its line search makes no progress.
    on_iteration : callable, optional
        ``on_iteration(iteration, x, history) -> bool`` after each iteration, with the current
        iterate; returning True stops training (without a convergence warning).

    Returns
    -------
    result : scipy.optimize.OptimizeResult
    history : dict of lists ``"cost"`` and ``"seconds"``, one entry per iteration
    """
    # Imported here: scipy.optimize takes most of a second to import, which serving never needs.
    from scipy import optimize

    history = {"cost": [], "seconds": []}

    def scipy_callback(intermediate_result):
        history["cost"].append(float(intermediate_result.fun))
        history["seconds"].append(time.perf_counter() - start)
        if on_iteration is not None and on_iteration(
            len(history["cost"]), intermediate_result.x, history
        ):
            raise StopIteration

    if method == "CG":
        options = {"maxiter": int(max_iter)}
    else:
        # L-BFGS-B's own relative-decrease test would stop long before the gradient test.
        options = {"maxiter": int(max_iter), "ftol": 0.0, "maxfun": 4 * int(max_iter) + 20}
    with one_blas_thread():
        start = time.perf_counter()
        _, grad0 = objective(x0)
        gtol = float(tol) * float(np.max(np.abs(grad0))) if tol > 0 else 0.0
        options["gtol"] = gtol
        result = optimize.minimize(
            objective, x0, method=method, jac=True, callback=scipy_callback, options=options
        )
    if not result.success and result.status != 99:
        _warn(method, result.nit, tol, result.message)
    return result, history


def minimize_als(objective, params, *, fit_bias, max_iter, tol, on_iteration=None):
    """Alternating least squares on ``objective``'s parameters, updated in place.

    Each iteration solves every user row with the items fixed, then every item row with the
    users fixed (closed-form regularized least squares, `fastcofi.solve_rows`), so the
    cost never increases. Stops, as the scipy solvers do, once the gradient's largest entry is
    below ``tol`` times its value at the start (0 disables the test), when a sweep no longer
    lowers the cost at all, after ``max_iter`` iterations, or when ``on_iteration`` asks.

    Parameters
    ----------
    objective : FlatObjective
        Supplies the ratings, regularization and the parameter layout.
    params : ndarray of shape (objective.size,), float64
        Initial parameters; overwritten with the result.
    fit_bias : bool
        Learn the user and item biases (they must be part of ``objective``'s parameters).

    Returns
    -------
    params : ndarray (the same array)
    history : dict of lists ``"cost"`` and ``"seconds"``
    converged : bool
    """
    ratings = objective.ratings
    X, Theta, item_bias, user_bias = objective.unpack(params)
    zeros_items, zeros_users = np.zeros(ratings.n_items), np.zeros(ratings.n_users)
    history = {"cost": [], "seconds": []}
    start = time.perf_counter()
    previous, grad0 = objective(params)
    threshold = float(tol) * float(np.max(np.abs(grad0))) if tol > 0 else -1.0
    converged = False
    # A row without ratings and without penalty has an all-zero system: it fails every sweep and
    # stays at 0 as documented. Only rows with ratings that fail are worth a warning.
    empty_failures = [
        int(np.count_nonzero((np.diff(indptr) == 0) & (
            (objective.reg * weights == 0) | (fit_bias & (objective.reg_bias * weights == 0))
        )))
        for indptr, weights in ((ratings.by_user[0], objective.weights[1]),
                                (ratings.by_item[0], objective.weights[0]))
    ]
    singular = [0, 0]  # the most rows with ratings one sweep could not solve: users, items
    # The row solves call BLAS on small tiles from every kernel thread: BLAS threads of its own
    # would only oversubscribe the cores.
    with threads(objective.n_threads), one_blas_thread():
        for iteration in range(1, int(max_iter) + 1):
            # Biases learned: they sit beside the factors in each row solve. Fixed (item means):
            # a user's targets subtract the item's mean, an item's targets its own mean.
            user_offsets = (objective.mu + item_bias, zeros_users if fit_bias else user_bias)
            failed_users = solve_rows(
                *ratings.by_user, ratings._user_chunks, X, *user_offsets,
                objective.reg, objective.reg_bias, objective.weights[1], fit_bias, Theta, user_bias,
            )
            # Formed after the user solve: the item rows must see the user biases it just wrote
            # (stale ones let a sweep raise the cost, which ends training early).
            item_offsets = ((objective.mu + user_bias, zeros_items) if fit_bias
                            else (user_bias, objective.mu + item_bias))
            failed_items = solve_rows(
                *ratings.by_item, ratings._item_chunks, Theta, *item_offsets,
                objective.reg, objective.reg_bias, objective.weights[0], fit_bias, X, item_bias,
            )
            singular = [max(singular[0], failed_users - empty_failures[0]),
                        max(singular[1], failed_items - empty_failures[1])]
            cost, grad = objective(params)
            history["cost"].append(cost)
            history["seconds"].append(time.perf_counter() - start)
            if on_iteration is not None and on_iteration(iteration, params, history):
                converged = True
                break
            if np.max(np.abs(grad)) <= threshold or cost >= previous:
                converged = True
                break
            previous = cost
    if any(singular):
        warnings.warn(
            f"ALS: the least-squares systems of {singular[0]} user rows and {singular[1]} item "
            "rows with ratings were not positive definite (too few ratings for their factors, "
            "with reg=0): their factors were set to 0; use reg > 0",
            RuntimeWarning,
            stacklevel=3,
        )
    if not converged:
        _warn("ALS", len(history["cost"]), tol, "maximum number of iterations reached")
    return params, history, converged
