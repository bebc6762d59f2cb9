"""Solvers: the scipy conjugate-gradient driver, iteration history and convergence warnings."""

import time
import warnings

import numpy as np
from scipy import optimize
from threadpoolctl import threadpool_limits

__all__ = ["ConvergenceWarning", "minimize_cg"]


class ConvergenceWarning(UserWarning):
    """Training stopped before its convergence test was met."""


def minimize_cg(objective, x0, *, max_iter, tol, on_iteration=None):
    """Minimize ``objective`` by scipy's nonlinear conjugate gradient.

    Parameters
    ----------
    objective : callable
        ``objective(x) -> (cost, gradient)`` with a fresh gradient array each call.
    x0 : ndarray of shape (n_params,), float64
    max_iter : int
        CG iterations at most.
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
    history = {"cost": [], "seconds": []}

    def scipy_callback(intermediate_result):
        history["cost"].append(float(intermediate_result.fun))
        history["seconds"].append(time.perf_counter() - start)
        if on_iteration is not None and on_iteration(
            len(history["cost"]), intermediate_result.x, history
        ):
            raise StopIteration

    # CG's vector updates are memory-bound: BLAS threads would only spin against the kernel's.
    with threadpool_limits(limits=1, user_api="blas"):
        start = time.perf_counter()
        _, grad0 = objective(x0)
        gtol = float(tol) * float(np.max(np.abs(grad0))) if tol > 0 else 0.0
        result = optimize.minimize(
            objective,
            x0,
            method="CG",
            jac=True,
            callback=scipy_callback,
            options={"maxiter": int(max_iter), "gtol": gtol},
        )
    if not result.success and result.status != 99:
        warnings.warn(
            f"CG stopped after {result.nit} iterations without meeting tol={tol}: "
            f"{result.message}",
            ConvergenceWarning,
            stacklevel=3,
        )
    return result, history
