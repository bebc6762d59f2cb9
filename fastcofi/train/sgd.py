"""Stochastic gradient descent on the objective (`minimize_sgd`): blocked, parallel, race-free.

Each rating's update is the stochastic gradient of its squared error plus its share of the
penalties: a row's penalty ``reg * w_r |x_r|^2`` spread over its ``n_r`` ratings as ``reg * w_r /
n_r`` per rating, so one epoch's expected step is the gradient of the tutorial's cost with the
weighting asked for (under count weighting ``w_r = n_r``, each rating's penalty is ``reg``: the
objective of LIBMF and of most SGD matrix factorization). Each row's step is AdaGrad's, ``eta /
sqrt(1 + sum of its mean squared gradients)``, so busy rows slow down first.

Stopped early (by epochs, or by a validation set), SGD from small factors learns the strong
directions of the data before the weak ones: on planted Netflix-shaped sets it reaches a lower
test error than the exact minimum of any penalty tried (bench/README.md, "Time to quality at
scale"), which is why `solver="auto"` picks it for large rating sets.
"""

import time

import numba as nb
import numpy as np

from .._parallel import threads
from ..data.ratings import balanced_bounds
from ..kernels.sgd import Blocks, Side, rows_sorted, sgd_epoch
from .solvers import _check_finite, _warn

__all__ = ["ETA", "N_BLOCKS", "WARM_UP", "SgdRun", "blocks_of", "minimize_sgd", "n_blocks"]

# Blocks per side, for up to this many threads (then the next multiple of it): one diagonal runs
# this many blocks in parallel, and a number that does not follow the threads keeps the result
# the same on 1 to 8 of them. Each block walks its users once, so every user's factors are read
# once per block: more blocks than threads need only cost reads; the items of one block (a few
# hundred kB of factors at 1e7) stay in cache.
N_BLOCKS = 8
# AdaGrad's base step. With the accumulators starting at 1, the first steps are at most this
# times the gradient, and later ones shrink as each row's gradients add up.
ETA = 0.05
# Epochs before the stopping test applies. From factors near zero the cost first drops as the
# biases learn, then stalls at the saddle at zero until the factors grow, which a per-epoch test
# mistakes for convergence (`test_the_estimator_trains_with_sgd_and_serves` fails without it).
WARM_UP = 10


def n_blocks(n_threads):
    """Blocks per side for ``n_threads`` threads: `N_BLOCKS`, or the next multiple above."""
    return N_BLOCKS * -(-max(int(n_threads), 1) // N_BLOCKS)


def blocks_of(ratings, per_side=N_BLOCKS):
    """The `Blocks` of ``ratings``' users' CSR: user and item ranges of about equal ratings."""
    indptr, indices, _ = ratings.by_user
    if not rows_sorted(indptr, indices):
        raise ValueError("the users' ratings must be sorted by item within each user")
    return Blocks(balanced_bounds(indptr, per_side), balanced_bounds(ratings.by_item[0], per_side))


def _per_rating(total, counts):
    """A row's penalty spread over its ratings, float32 (rows without ratings: 0, never used)."""
    return (total / np.maximum(counts, 1)).astype(np.float32)


class SgdRun:
    """What an SGD run needs beyond its parameters to go on exactly: each row's AdaGrad sum
    (``steps``, float32 ``(item_steps, user_steps)``, updated in place by `minimize_sgd`), the
    epochs done and the last epoch's cost. From a checkpoint's ``state`` and ``history`` when
    resuming (``done`` epochs), else fresh."""

    def __init__(self, objective, state=None, done=0, history=None):
        shapes = (objective.ratings.n_items, objective.ratings.n_users)
        if state is None:
            self.steps = tuple(np.ones(n, dtype=np.float32) for n in shapes)
        else:
            self.steps = tuple(np.array(state.get(name, ()), dtype=np.float32)
                               for name in ("item_steps", "user_steps"))
            if tuple(a.shape for a in self.steps) != tuple((n,) for n in shapes):
                raise ValueError("the checkpoint holds no SGD step sizes for these ratings")
        self.done = int(done)
        costs = (history or {}).get("cost", [])
        self.previous = float(costs[-1]) if len(costs) else np.inf

    def state(self):
        """The named arrays a checkpoint stores to resume this run."""
        return {"item_steps": self.steps[0], "user_steps": self.steps[1]}

    def to_arrays(self, params):
        """A checkpoint's ``(params, state)`` (`fastcofi.train.observers.Checkpointing`)."""
        return params, self.state()


def minimize_sgd(objective, params, *, fit_bias, max_iter, tol, eta=ETA, run=None,
                 on_iteration=None):
    """SGD epochs on ``objective``'s parameters, updated in place (float32 inside).

    Stops when an epoch after the first `WARM_UP` lowers the cost by less than ``tol`` times its
    value (0 disables the test), after ``max_iter`` epochs, or when ``on_iteration`` asks. With
    ``run`` (`SgdRun`) from an interrupted run's checkpoint it continues that run bit for bit.

    Parameters
    ----------
    objective : FlatObjective
        Supplies the ratings, penalties, their row weights and the parameter layout.
    params : ndarray of shape (objective.size,), float64
        Initial parameters; overwritten with each epoch's result.
    fit_bias : bool
        Learn the user and item biases (else the objective's fixed offsets stay).
    eta : float
        AdaGrad's base step. Larger steps run closer to the exact minimum (the tests use 0.2
        to reach it); the default's slower approach keeps the implicit regularization.
    run : SgdRun, optional
        The step sizes (updated in place), epochs done and last cost; a fresh run when None.

    Returns
    -------
    params : ndarray (the same array)
    history : dict of lists ``"cost"`` (half the epoch's squared errors, each taken before its
        update, plus the penalty at the epoch's end: what an epoch can report for free) and
        ``"seconds"``
    converged : bool
    """
    ratings = objective.ratings
    X, Theta, item_bias, user_bias = objective.unpack(params)
    item_counts, user_counts = np.diff(ratings.by_item[0]), np.diff(ratings.by_user[0])
    item_weights, user_weights = objective.weights
    reg, reg_bias = objective.reg, objective.reg_bias if fit_bias else 0.0

    run = SgdRun(objective) if run is None else run
    item_steps, user_steps = run.steps
    done = run.done

    def side(factors, bias, weights, counts, row_steps):
        return Side(factors.astype(np.float32), bias.astype(np.float32),
                    _per_rating(reg * weights, counts), _per_rating(reg_bias * weights, counts),
                    row_steps)

    items = side(X, item_bias, item_weights, item_counts, item_steps)
    users = side(Theta, user_bias, user_weights, user_counts, user_steps)
    rows = ratings.user_rows
    history = {"cost": [], "seconds": []}
    start = time.perf_counter()
    previous = run.previous
    converged = False
    with threads(objective.n_threads):
        blocks = blocks_of(ratings, n_blocks(nb.get_num_threads()))
        for epoch in range(1, int(max_iter) + 1):
            sse = sgd_epoch(rows, blocks, users, items, objective.mu, np.float32(eta),
                            bool(fit_bias), done + epoch - 1)
            X[...], Theta[...] = items.factors, users.factors
            if fit_bias:
                item_bias[...], user_bias[...] = items.bias, users.bias
            penalty = reg * (item_weights @ np.einsum("ij,ij->i", X, X)
                             + user_weights @ np.einsum("ij,ij->i", Theta, Theta))
            if fit_bias:
                penalty += reg_bias * (item_weights @ item_bias**2 + user_weights @ user_bias**2)
            cost = 0.5 * (float(sse) + float(penalty))
            _check_finite("SGD", epoch, cost)
            history["cost"].append(cost)
            history["seconds"].append(time.perf_counter() - start)
            if on_iteration is not None and on_iteration(epoch, params, history):
                converged = True
                break
            if tol > 0 and done + epoch >= WARM_UP and previous - cost < tol * cost:
                converged = True
                break
            previous = cost
    if not converged:
        _warn("SGD", len(history["cost"]), tol, "maximum number of iterations reached")
    return params, history, converged
