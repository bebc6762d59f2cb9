"""Solvers: scipy's CG and L-BFGS-B on the fused objective, and alternating least squares.

Every solver minimizes the same objective (`fastcofi.objective.FlatObjective`) and reports each
iteration through ``on_iteration(iteration, params, history) -> stop``.
"""

import os
import sys
import time
import warnings

import numpy as np

from .._parallel import one_blas_thread, threads
from .objective import ProjectedObjective, RowSolves

__all__ = ["ConvergenceWarning", "DivergenceError", "minimize_als", "minimize_scipy"]


class ConvergenceWarning(UserWarning):
    """Training stopped before its convergence test was met."""


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _caller_level():
    """``stacklevel`` naming the first caller outside fastcofi (the user's ``fit``), for a
    warning raised by the function that calls this one: the solvers sit at different depths
    below ``fit`` (preconditioned or not, VB), so no fixed level names that line."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level


def _warn(solver, nit, tol, reason):
    warnings.warn(
        f"{solver} stopped after {nit} iterations without meeting tol={tol}: {reason}",
        ConvergenceWarning,
        stacklevel=_caller_level(),
    )


def minimize_scipy(objective, x0, *, method, max_iter, tol, on_iteration=None,
                   precondition=False):
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
        (``"projected"``: at ``x0``'s free rows with the other side solved) (relative, so the
        test does not depend on the number of ratings). 0 disables the test; scipy may still
        stop when its line search makes no progress.
    on_iteration : callable, optional
        ``on_iteration(iteration, x, history) -> bool`` after each iteration, with the current
        iterate; returning True stops training (without a convergence warning).
    precondition : {False, True, "curvature", "projected"}, default False
        ``"curvature"``: minimize over ``z = x / s`` instead, ``s`` = 1 / sqrt(an estimate of
        each parameter's curvature, ``objective.curvature(x)``), so that rows with thousands
        of ratings and rows with three no longer share one step length. ``"projected"`` (a
        `FlatObjective` with ``projectable``): minimize over the smaller side's rows alone,
        the other side solved exactly at each evaluation (`ProjectedObjective`), each row's
        parameters changed to make its curvature block the identity. Either preconditioner
        is re-estimated at the start of segments of 5, 10, 20, ... iterations (each a fresh
        scipy run: scipy does not expose its restarts). True: ``"projected"`` where it
        applies, else ``"curvature"``. The cost is the same function; the gradient test and
        ``on_iteration`` see ``x`` (all of it).

    Returns
    -------
    result : scipy.optimize.OptimizeResult
        With ``precondition``: ``x``, ``fun``, ``nit`` (all segments), ``nfev`` (objective
        evaluations, the start's included), ``status`` (0 converged, 1 iteration limit, 2 no
        progress, 99 stopped by ``on_iteration``), ``success``, ``message``, ``segments``.
    history : dict of lists ``"cost"`` and ``"seconds"``, one entry per iteration
    """
    # Imported here: scipy.optimize takes most of a second to import, which serving never needs.
    from scipy import optimize

    if precondition is True:
        precondition = ("projected" if getattr(objective, "projectable", False)
                        else "curvature")
    if precondition == "projected":
        return _minimize_projected(objective, x0, method, max_iter, tol, on_iteration)
    if precondition:
        return _minimize_preconditioned(objective, x0, method, max_iter, tol, on_iteration)
    history = {"cost": [], "seconds": []}

    def scipy_callback(intermediate_result):
        history["cost"].append(float(intermediate_result.fun))
        history["seconds"].append(time.perf_counter() - start)
        _check_finite(method, len(history["cost"]), intermediate_result.fun)
        if on_iteration is not None and on_iteration(
            len(history["cost"]), intermediate_result.x, history
        ):
            raise StopIteration

    options = _scipy_options(method, max_iter)
    with one_blas_thread():
        start = time.perf_counter()
        cost0, grad0 = objective(x0)
        _check_finite(method, 0, cost0)
        gtol = float(tol) * float(np.max(np.abs(grad0))) if tol > 0 else 0.0
        options["gtol"] = gtol
        result = optimize.minimize(
            objective, x0, method=method, jac=True, callback=scipy_callback, options=options
        )
    _check_finite(method, int(result.nit), result.fun)
    if not result.success and result.status != 99:
        _warn(method, result.nit, tol, result.message)
    return result, history


def _scipy_options(method, max_iter):
    if method == "CG":
        return {"maxiter": int(max_iter)}
    # L-BFGS-B's own relative-decrease test would stop long before the gradient test.
    return {"maxiter": int(max_iter), "ftol": 0.0, "maxfun": 4 * int(max_iter) + 20}


def _warn_singular(solver, users, items):
    """Warn of rows with ratings whose least-squares systems a solver's row solves could not
    solve (``users``, ``items``: how many)."""
    if users or items:
        warnings.warn(
            f"{solver}: the least-squares systems of {users} user rows and {items} item "
            "rows with ratings were not positive definite (too few ratings for their factors, "
            "with reg=0): their factors were set to 0; use reg > 0",
            RuntimeWarning,
            stacklevel=_caller_level(),
        )


class DivergenceError(FloatingPointError):
    """A solver produced a non-finite cost or non-finite parameters."""


def _check_finite(solver, iteration, cost):
    """Stop a solver whose cost (a sum over every parameter and residual) is no longer finite."""
    if not np.isfinite(cost):
        raise DivergenceError(
            f"{solver} diverged at iteration {iteration}: the cost is {cost} (non-finite "
            "factors); try a larger reg, a smaller init_scale or another solver"
        )


# Iterations in the first preconditioned segment; each next segment is twice as long, so the
# scaling follows the factors' growth early and restarts cost little later.
_FIRST_SEGMENT = 5


class ScaledObjective:
    """``objective`` over ``z = x / scale``: ``(cost(scale * z), scale * gradient)``, a fresh
    gradient each call. Remembers the last point evaluated, in ``x``, with its cost and
    gradient, and counts the evaluations (``evaluations``)."""

    def __init__(self, objective, scale):
        self.objective = objective
        self.scale = scale
        self.last = None
        self.evaluations = 0

    def at(self, x):
        """``objective(x)``, in ``x``'s units, remembered and counted."""
        self.evaluations += 1
        cost, grad = self.objective(x)
        self.last = (x, cost, grad)
        return cost, grad

    def __call__(self, z):
        cost, grad = self.at(self.scale * z)
        return cost, grad * self.scale


def _minimize_preconditioned(objective, x0, method, max_iter, tol, on_iteration):
    """`minimize_scipy` with ``precondition=True``."""
    from scipy import optimize

    history = {"cost": [], "seconds": []}
    state = {"converged": False, "stopped": False}
    x = np.array(x0, dtype=np.float64)
    done, segments, segment = 0, 0, _FIRST_SEGMENT
    status, message = 1, ""
    with one_blas_thread():
        start = time.perf_counter()
        cost, grad0 = objective(x)
        evaluations = 1
        _check_finite(method, 0, cost)
        threshold = float(tol) * float(np.max(np.abs(grad0))) if tol > 0 else -1.0
        while done < int(max_iter) and not (state["converged"] or state["stopped"]):
            curvature = objective.curvature(x)
            scale = 1.0 / np.sqrt(np.where(curvature > 0, curvature, 1.0))
            scaled = ScaledObjective(objective, scale)
            first = done

            state["scaled"] = scaled

            # scipy passes an OptimizeResult only to a callback whose one parameter has this name.
            def scipy_callback(intermediate_result):
                scaled = state["scaled"]
                iteration = len(history["cost"]) + 1
                history["cost"].append(float(intermediate_result.fun))
                history["seconds"].append(time.perf_counter() - start)
                _check_finite(method, iteration, intermediate_result.fun)
                current = scaled.scale * intermediate_result.x
                last_x, last_cost, last_grad = scaled.last
                if last_cost != intermediate_result.fun or not np.array_equal(last_x, current):
                    last_cost, last_grad = scaled.at(current)
                if on_iteration is not None and on_iteration(iteration, current, history):
                    state["stopped"] = True
                    raise StopIteration
                if np.max(np.abs(last_grad)) <= threshold:
                    state["converged"] = True
                    raise StopIteration

            options = _scipy_options(method, min(segment, int(max_iter) - done))
            options["gtol"] = 0.0
            result = optimize.minimize(
                scaled, x / scale, method=method, jac=True, callback=scipy_callback,
                options=options,
            )
            x = scale * result.x
            cost = float(result.fun)
            evaluations += scaled.evaluations
            _check_finite(method, len(history["cost"]), cost)
            done = len(history["cost"])
            segments += 1
            segment *= 2
            # The last segment's reason stands when the budget ends the run.
            message = str(result.message)
            if done == first and not (state["converged"] or state["stopped"]):
                # A fresh start made no step: the line search can do no better from here.
                status, message = 2, f"no progress: {result.message}"
                break
    result = _segmented_result(method, tol, state, status, message, x=x, fun=cost, nit=done,
                               nfev=evaluations, segments=segments)
    return result, history


def _segmented_result(method, tol, state, status, message, **fields):
    """The `OptimizeResult` of a run in segments (`_minimize_preconditioned`,
    `_minimize_projected`): ``status`` and ``message`` as the last segment left them unless
    ``state`` says the gradient test was met or ``on_iteration`` stopped the run; warns when
    neither happened."""
    from scipy import optimize

    if state["converged"]:
        status, message = 0, "gradient test met"
    elif state["stopped"]:
        status, message = 99, "stopped by on_iteration"
    if status not in (0, 99):
        _warn(method, fields["nit"], tol, message)
    return optimize.OptimizeResult(status=status, success=status in (0, 99), message=message,
                                   **fields)


# The projected solvers solve with float32 reads (`RowSolves`) until the gradient falls below
# this fraction of its start, and with float64 reads from there: the float32 solves leave a
# gradient of about 1e-7 of its start in the solved side (tests/test_projected.py).
_FLOAT32_GRADIENT = 1e-4


def _minimize_projected(objective, x0, method, max_iter, tol, on_iteration):
    """`minimize_scipy` with ``precondition="projected"``."""
    from scipy import optimize

    params = np.array(x0, dtype=np.float64)
    history = {"cost": [], "seconds": []}
    state = {"converged": False, "stopped": False}
    done, segments, segment = 0, 0, _FIRST_SEGMENT
    status, message = 1, ""
    with threads(objective.n_threads), one_blas_thread():
        start = time.perf_counter()
        projected = ProjectedObjective(objective, params)
        last = {"v": projected.values()}
        last["cost"], last["grad"] = projected(last["v"])
        _check_finite(method, 0, last["cost"])
        largest = float(np.max(np.abs(last["grad"])))
        threshold = float(tol) * largest if tol > 0 else -1.0
        while done < int(max_iter) and not (state["converged"] or state["stopped"]):
            # Each segment moves from where the last one ended, v = origin + blocks z: z = 0 is
            # its start, and needs no inverse of the blocks.
            origin, blocks = last["v"], projected.preconditioners()
            # scipy's CG and L-BFGS-B first step 1 in z's units, and CG's line search tries no
            # step above 1 first. With z scaled by L = |blocks' g| and the cost by 1 / L^2,
            # the block Newton step -H^-1 g is a step of 1 along z's steepest descent, and its
            # length in z is 1.
            length = np.linalg.norm(np.einsum("nji,nj->ni", blocks, last["grad"]))
            length = length if length > 0 else 1.0
            blocks *= length
            units = 1.0 / length**2
            first = done

            def point(z, origin=origin, blocks=blocks):
                return origin + np.einsum("nij,nj->ni", blocks, z.reshape(origin.shape))

            def fun(z, origin=origin, blocks=blocks, units=units, point=point):
                # scipy starts by evaluating z = 0, where the parameters already are.
                if last["v"] is not origin or z.any():
                    v = point(z)
                    last["v"] = v
                    last["cost"], last["grad"] = projected(v)
                return (last["cost"] * units,
                        np.einsum("nji,nj->ni", blocks, last["grad"]).ravel() * units)

            # scipy passes an OptimizeResult only to a callback whose one parameter has this name.
            def scipy_callback(intermediate_result):
                iteration = len(history["cost"]) + 1
                _move_to(intermediate_result.x, last, point, fun)
                history["cost"].append(last["cost"])
                history["seconds"].append(time.perf_counter() - start)
                _check_finite(method, iteration, last["cost"])
                if on_iteration is not None and on_iteration(iteration, params, history):
                    state["stopped"] = True
                    raise StopIteration
                gradient = np.max(np.abs(last["grad"]))
                if projected.solves.single and gradient <= max(threshold,
                                                               _FLOAT32_GRADIENT * largest):
                    # Near the minimum the float32 solves' rounding would show in the gradient:
                    # a fresh segment on float64 solves.
                    projected.solves.read_float64()
                    last["cost"], last["grad"] = projected(last["v"])
                    raise StopIteration
                if gradient <= threshold:
                    state["converged"] = True
                    raise StopIteration

            options = _scipy_options(method, min(segment, int(max_iter) - done))
            options["gtol"] = 0.0
            result = optimize.minimize(fun, np.zeros(origin.size), method=method, jac=True,
                                       callback=scipy_callback, options=options)
            _move_to(result.x, last, point, fun)
            _check_finite(method, len(history["cost"]), last["cost"])
            done = len(history["cost"])
            segments += 1
            segment *= 2
            message = str(result.message)
            if result.status == 2 and projected.solves.single:
                # The line search failed, maybe on the float32 solves' rounding: go on with
                # float64 ones.
                projected.solves.read_float64()
                last["cost"], last["grad"] = projected(last["v"])
                continue
            if done == first and not (state["converged"] or state["stopped"]):
                status, message = 2, f"no progress: {result.message}"
                break
    result = _segmented_result(method, tol, state, status, message, x=params,
                               fun=last["cost"], nit=done, nfev=projected.evaluations,
                               segments=segments)
    return result, history


def _move_to(z, last, point, fun):
    """Leave the parameters at scipy's iterate ``z`` (the last evaluation may have been a
    line-search trial elsewhere); ``last`` then holds its point, cost and gradient."""
    if not np.array_equal(last["v"], point(z)):
        fun(z)


# Conjugate-gradient steps per row in a training sweep (see `minimize_als`): implicit's default
# too. A step costs two passes over the row's ratings; fewer steps save little of a sweep,
# whose gathers and exact solves stay, and slow the early sweeps.
CG_STEPS = 3


def minimize_als(objective, params, *, fit_bias, max_iter, tol, on_iteration=None):
    """Alternating least squares on ``objective``'s parameters, updated in place.

    Each iteration solves every user row with the items fixed, then every item row with the
    users fixed (closed-form regularized least squares, `fastcofi.kernels.rowsolve.solve_rows`,
    reading the fixed side through a float32 copy when every penalty is positive, a bfloat16
    one when that side is too large for the cache: `RowSolves`), so the cost never increases
    (to the rounding of those copies). A row of 12 to 16384 ratings with
    more unknowns than `CG_STEPS` takes that many preconditioned conjugate-gradient steps from
    its current values instead of an exact solve (Takacs, Pilaszy and Tikk, RecSys 2011; see
    `solve_rows`): they cost a fraction of solving its system, and repeated sweeps reach the
    same minimum. The row solves also give the cost after each sweep, so a sweep walks the
    ratings only twice, once per side. Stops when a sweep lowers the cost by less than ``tol`` times
    its value (0: only when it no longer lowers it at all), after ``max_iter`` iterations, or
    when ``on_iteration`` asks.

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
    solves = RowSolves(objective, params, half_reads=True)
    history = {"cost": [], "seconds": []}
    start = time.perf_counter()
    previous = np.inf
    converged = False
    singular = [0, 0]  # the most rows with ratings one sweep could not solve: users, items
    # The row solves call BLAS on small tiles from every kernel thread: BLAS threads of its own
    # would only oversubscribe the cores.
    with threads(objective.n_threads), one_blas_thread():
        for iteration in range(1, int(max_iter) + 1):
            users = solves.solve("users", CG_STEPS)
            # After the user solve: the item rows must see the user biases it just wrote (stale
            # ones let a sweep raise the cost, which ends training early).
            items = solves.solve("items", CG_STEPS)
            singular = [max(singular[0], solves.singular("users", users)),
                        max(singular[1], solves.singular("items", items))]
            # Every rating is an item's: the item solves' cost holds all the residuals and the
            # items' penalty, the user solves' the users' penalty.
            cost = items.cost + users.penalty
            _check_finite("ALS", iteration, cost)
            history["cost"].append(cost)
            history["seconds"].append(time.perf_counter() - start)
            if on_iteration is not None and on_iteration(iteration, params, history):
                converged = True
                break
            if cost >= previous or previous - cost < float(tol) * cost:
                converged = True
                break
            previous = cost
    _warn_singular("ALS", *singular)
    if not converged:
        _warn("ALS", len(history["cost"]), tol, "maximum number of iterations reached")
    return params, history, converged
