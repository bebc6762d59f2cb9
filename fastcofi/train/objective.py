"""The tutorial's objective over sparse ratings, for tests, benchmarks and the solvers."""

from typing import NamedTuple, Optional

import numba
import numpy as np

from .._parallel import threads
from ..data.ratings import Ratings, balanced_bounds
from ..kernels._jit import _LINE
from ..kernels.bfloat16 import to_bfloat16
from ..kernels.objective import (
    Gradient,
    Side,
    cost_and_grad_buffered,
    cost_and_grad_two_pass,
)
from ..kernels.rowsolve import Other, Penalty, Solved, row_preconditioners, solve_rows
from ..kernels.rowsolve import row_weights as row_weights_kernel

__all__ = ["FlatObjective", "ProjectedObjective", "RowSolves", "cost_and_grad", "row_weights"]

# Each row's penalty is multiplied by (its number of ratings) ** power.
WEIGHT_POWERS = {"none": 0.0, "count": 1.0, "sqrt": 0.5}


def row_weights(counts, reg_weighting):
    """Penalty weight of each row from its number of ratings (float64).

    ``"none"``: 1; ``"count"``: the count (ALS-WR); ``"sqrt"``: its square root. Under the last
    two a row with no rating has no penalty (and no data: its factors stay at zero).
    """
    counts = np.ascontiguousarray(counts, dtype=np.float64)
    out = np.empty(counts.shape[0])
    row_weights_kernel(counts, WEIGHT_POWERS[reg_weighting], out)
    return out


def _check_factors(item_factors, user_factors, ratings):
    if not isinstance(ratings, Ratings):
        raise TypeError(f"ratings must be a fastcofi.Ratings, found {type(ratings).__name__}")
    return _check_factor_shapes(item_factors, user_factors, ratings)


def _check_factor_shapes(item_factors, user_factors, ratings):
    """Contiguous float64 factors whose rows match ``ratings.n_items`` / ``ratings.n_users``
    (a `Ratings` or anything with those two attributes, such as a Dask handle)."""
    X = np.ascontiguousarray(item_factors, dtype=np.float64)
    Theta = np.ascontiguousarray(user_factors, dtype=np.float64)
    if X.ndim != 2 or Theta.ndim != 2:
        raise ValueError(
            f"item_factors and user_factors must be 2-dimensional, found shapes {X.shape} and "
            f"{Theta.shape}"
        )
    if X.shape[0] != ratings.n_items or Theta.shape[0] != ratings.n_users:
        raise ValueError(
            f"expected item_factors with {ratings.n_items} rows and user_factors with "
            f"{ratings.n_users} rows, found shapes {X.shape} and {Theta.shape}"
        )
    if X.shape[1] != Theta.shape[1]:
        raise ValueError(
            f"item_factors and user_factors must have the same number of columns, found "
            f"{X.shape[1]} and {Theta.shape[1]}"
        )
    return X, Theta


# The one-pass kernel's buffers may take this much memory, or as much as the ratings' values
# when that is more, before the buffer-free two-pass kernel is used instead.
_BUFFER_ALLOWANCE = 64 << 20


def _use_buffers(ratings, n_factors):
    smaller = min(ratings.n_items, ratings.n_users)
    buffer_bytes = numba.config.NUMBA_NUM_THREADS * smaller * (n_factors + 1) * 8
    return buffer_bytes <= max(_BUFFER_ALLOWANCE, 8 * ratings.nnz)


# The one-pass kernel walks its rows once per block of the other side's columns, each block's
# factor and buffer rows taking about this many bytes. At 1e7 ratings (30k x 400k), k = 32, a
# single walk took 1.4-1.6x the time of two 8 MiB blocks, 4 MiB blocks 1.03-1.09x; at 1e8 in
# the Netflix prize's shape blocks and one walk were even, 4 MiB blocks 1.05x (bench/kernel_ab.py
# --block-mib, bench/README.md).
_BLOCK_BYTES = 8 << 20


def column_blocks(n_cols, n_factors, block_bytes=_BLOCK_BYTES, itemsize=8):
    """Column boundaries (int64, from 0 to ``n_cols``) of blocks whose factor and buffer rows
    ((2 k + 1) floats of ``itemsize`` bytes per column) take about ``block_bytes`` each."""
    total = n_cols * (2 * n_factors + 1) * itemsize
    n_blocks = int(max(1, min(n_cols, -(-total // block_bytes))))
    return (np.arange(n_blocks + 1, dtype=np.int64) * n_cols) // n_blocks


class _Plan(NamedTuple):
    """How `_evaluate` walks ``ratings`` for ``n_factors``: the one-pass kernel's walked side,
    row groups and column blocks (``blocks`` for float64 reads, ``single_blocks`` for float32
    ones), or ``walk_items`` None for the two-pass kernel."""

    ratings: Ratings
    n_factors: int
    walk_items: Optional[bool]
    groups: Optional[np.ndarray]
    blocks: Optional[np.ndarray]
    single_blocks: Optional[np.ndarray]


def _plan(ratings, n_factors, block_bytes=_BLOCK_BYTES, buffered=None):
    """The `_Plan` for ``ratings`` and ``n_factors``; ``buffered`` as in `_evaluate`."""
    if buffered is None:
        buffered = _use_buffers(ratings, n_factors)
    if not buffered:
        return _Plan(ratings, n_factors, None, None, None, None)
    # Walk the side with more rows; the other side's rows are read at random and buffered.
    walk_items = ratings.n_items >= ratings.n_users
    indptr, n_cols = (
        (ratings.by_item[0], ratings.n_users) if walk_items
        else (ratings.by_user[0], ratings.n_items)
    )
    # One group per thread numba may start (not per thread running now), so the grouping and
    # hence every rounding is the same whatever n_threads is set to.
    groups = balanced_bounds(indptr, min(numba.config.NUMBA_NUM_THREADS, indptr.shape[0] - 1))
    return _Plan(ratings, n_factors, walk_items, groups,
                 column_blocks(n_cols, n_factors, block_bytes),
                 column_blocks(n_cols, n_factors, block_bytes, itemsize=4))


def _plan_fits(plan, ratings, n_factors):
    """Whether ``plan`` was made for these ratings and this k: a plan for other ratings would
    send the kernel out of bounds."""
    return plan is not None and plan.ratings is ratings and plan.n_factors == n_factors


def _sides(ratings, X, Theta, item_bias, user_bias, weights):
    """The items' and the users' `Side` as the objective kernels read them."""
    items = Side(X, item_bias, weights[0], *ratings.by_item, ratings._item_chunks)
    users = Side(Theta, user_bias, weights[1], *ratings.by_user, ratings._user_chunks)
    return items, users


def _evaluate(
    X, Theta, item_bias, user_bias, mu, ratings, reg, reg_bias, weights, grads, buffered=None,
    block_bytes=_BLOCK_BYTES, plan=None, single=False,
):
    """Cost of the factors on ``ratings``; writes ``grads`` (X, Theta, item bias, user bias).

    ``buffered`` picks the kernel (default: the one-pass kernel when its buffers fit, see
    ``_BUFFER_ALLOWANCE``); both give the same result up to rounding. ``block_bytes`` sizes the
    one-pass kernel's column blocks (see `column_blocks`); the other side's gradients do not
    depend on it, the walked side's only by rounding.
    ``plan``, from `_plan` for these ratings and k, replaces both (solvers make it once).
    ``single``: the one-pass kernel reads the side it reads at random through a float32 copy
    (`cost_and_grad_buffered`): cost and gradients to about 1e-7 of their terms' size, not to
    float64 rounding; the two-pass kernel ignores it.
    """
    if not _plan_fits(plan, ratings, X.shape[1]):
        plan = _plan(ratings, X.shape[1], block_bytes, buffered)
    mu, reg, reg_bias = float(mu), float(reg), float(reg_bias)
    items, users = _sides(ratings, X, Theta, item_bias, user_bias, weights)
    item_grad, user_grad = Gradient(grads[0], grads[2]), Gradient(grads[1], grads[3])
    if plan.walk_items is None:
        return cost_and_grad_two_pass(items, users, item_grad, user_grad, mu, reg, reg_bias)
    walked, other, walked_grad, other_grad = (
        (items, users, item_grad, user_grad) if plan.walk_items
        else (users, items, user_grad, item_grad)
    )
    reads = (_copy_into(_line_aligned_empty(other.factors.shape, np.float32), other.factors)
             if single else other.factors)
    return cost_and_grad_buffered(walked, other, walked_grad, other_grad, plan.groups,
                                  plan.single_blocks if single else plan.blocks, mu, reg,
                                  reg_bias, reads)


def cost_and_grad(item_factors, user_factors, ratings, reg, *, n_threads=None):
    """The tutorial's cost and both gradients over the observed ratings only.

    ``1/2 sum_observed (x_i . theta_j - y_ij)^2 + reg/2 (|X|^2 + |Theta|^2)`` on ``ratings.values``
    as stored (no normalization, no biases).

    Parameters
    ----------
    item_factors : ndarray of shape (n_items, n_factors)
        Rows ordered as ``ratings.item_ids``.
    user_factors : ndarray of shape (n_users, n_factors)
        Rows ordered as ``ratings.user_ids``.
    ratings : Ratings
    reg : float
    n_threads : int, optional
        Threads for the parallel kernel; the result does not depend on it.

    Returns
    -------
    cost : float
    item_grad : ndarray of shape (n_items, n_factors), float64
    user_grad : ndarray of shape (n_users, n_factors), float64
    """
    X, Theta = _check_factors(item_factors, user_factors, ratings)
    X_grad = np.empty_like(X)
    Theta_grad = np.empty_like(Theta)
    item_zeros, user_zeros = np.zeros(ratings.n_items), np.zeros(ratings.n_users)
    weights = (np.ones(ratings.n_items), np.ones(ratings.n_users))
    grads = (X_grad, Theta_grad, np.empty(ratings.n_items), np.empty(ratings.n_users))
    with threads(n_threads):
        cost = _evaluate(X, Theta, item_zeros, user_zeros, 0.0, ratings, reg, 0.0, weights, grads)
    return float(cost), X_grad, Theta_grad


def _mean_squares(*factors):
    """Each factor matrix's mean square per column ((k,) float64; zeros for no rows), without a
    squared copy of the matrix."""
    return [np.einsum("nf,nf->f", F, F) / F.shape[0] if F.shape[0] else np.zeros(F.shape[1])
            for F in factors]


# What `ProjectedObjective`'s preconditioner blocks may take at least (see
# `FlatObjective.projectable`): 155 MB for the Netflix prize's 17,770 items at k = 32.
_BLOCK_ALLOWANCE = 256 << 20


class FlatObjective:
    """``fun(params) -> (cost, gradient)`` over one flat float64 parameter vector, for scipy.

    The vector is ``[X.ravel(), Theta.ravel()]``, followed by ``[item_bias, user_bias]`` when the
    biases are learned. The prediction is ``X[i] . Theta[j] + mu + item_bias[i] + user_bias[j]``;
    with fixed biases (mean normalization: ``item_bias`` = item means, ``mu`` = 0) the biases are
    constants. The gradient is a fresh array on every call: scipy's CG keeps the previous gradient
    by reference and subtracts it from the new one.

    Parameters
    ----------
    ratings : Ratings
    n_factors : int
    reg : float
        Regularization of the factors.
    mu : float
        Global offset.
    item_bias, user_bias : ndarray, optional
        Fixed biases (zeros by default); ignored when ``learn_biases``.
    learn_biases : bool
        Optimize the biases too, regularized by ``reg_bias``.
    reg_bias : float
    reg_weighting : {"none", "count", "sqrt"}
        Multiply each row's penalty by 1, its number of ratings (ALS-WR's weighting) or the
        square root of that number (see `row_weights`).
    n_threads : int, optional
    """

    def __init__(
        self,
        ratings,
        n_factors,
        reg,
        *,
        mu=0.0,
        item_bias=None,
        user_bias=None,
        learn_biases=False,
        reg_bias=0.0,
        reg_weighting="none",
        n_threads=None,
    ):
        self.ratings = ratings
        self.n_factors = int(n_factors)
        self.reg = float(reg)
        self.mu = float(mu)
        self.learn_biases = bool(learn_biases)
        self.reg_bias = float(reg_bias) if learn_biases else 0.0
        self.item_bias = (
            np.zeros(ratings.n_items) if item_bias is None
            else np.ascontiguousarray(item_bias, dtype=np.float64)
        )
        self.user_bias = (
            np.zeros(ratings.n_users) if user_bias is None
            else np.ascontiguousarray(user_bias, dtype=np.float64)
        )
        self.reg_weighting = reg_weighting
        self.weights = tuple(row_weights(c, reg_weighting) for c in self._row_counts())
        self.n_threads = n_threads
        self._plan = None

    def _row_counts(self):
        """Ratings per item and per user."""
        return np.diff(self.ratings.by_item[0]), np.diff(self.ratings.by_user[0])

    def _current_plan(self):
        """The kernel's plan, made once (and again only if ``ratings`` or ``n_factors`` were
        replaced)."""
        if not _plan_fits(self._plan, self.ratings, self.n_factors):
            self._plan = _plan(self.ratings, self.n_factors)
        return self._plan

    def _evaluate_into(self, X, Theta, item_bias, user_bias, grads, single=False):
        """The cost; writes ``grads`` (X, Theta, item bias, user bias); ``single`` as
        `_evaluate` takes it. Subclasses evaluate elsewhere (``fastcofi.distributed``) with
        the same layout and contract."""
        with threads(self.n_threads):
            return _evaluate(
                X, Theta, item_bias, user_bias, self.mu, self.ratings, self.reg, self.reg_bias,
                self.weights, grads, plan=self._current_plan(), single=single,
            )

    @property
    def positive_penalties(self):
        """Whether every penalty that applies is positive: then every row with ratings has a
        positive definite least-squares system (`RowSolves`)."""
        return self.reg > 0 and (self.reg_bias > 0 or not self.learn_biases)

    @property
    def projectable(self):
        """Whether `ProjectedObjective` applies: ratings in this process (not shards evaluated
        elsewhere), positive penalties (so the solved side's minimum is unique), and one
        (k + 1) x (k + 1) preconditioner block per row of the smaller side within
        `_BLOCK_ALLOWANCE`, or the ratings' values' size when that is more."""
        if not isinstance(self.ratings, Ratings) or not self.positive_penalties:
            return False
        d = self.n_factors + (1 if self.learn_biases else 0)
        smaller = min(self.ratings.n_items, self.ratings.n_users)
        return smaller * d * d * 8 <= max(_BLOCK_ALLOWANCE, 8 * self.ratings.nnz)

    @property
    def size(self):
        r = self.ratings
        return (r.n_items + r.n_users) * (self.n_factors + (1 if self.learn_biases else 0))

    def pack(self, item_factors, user_factors, item_bias=None, user_bias=None):
        parts = [np.ravel(item_factors), np.ravel(user_factors)]
        if self.learn_biases:
            parts += [np.ravel(item_bias), np.ravel(user_bias)]
        return np.concatenate(parts, dtype=np.float64)

    def unpack(self, params):
        """Views of ``params`` as (item_factors, user_factors, item_bias, user_bias)."""
        n_items, n_users, k = self.ratings.n_items, self.ratings.n_users, self.n_factors
        split = n_items * k
        end = split + n_users * k
        X = params[:split].reshape(n_items, k)
        Theta = params[split:end].reshape(n_users, k)
        if not self.learn_biases:
            return X, Theta, self.item_bias, self.user_bias
        return X, Theta, params[end : end + n_items], params[end + n_items :]

    def curvature(self, params):
        """An estimate of the cost's second derivative in each parameter (the preconditioner of
        `fastcofi.train.solvers.minimize_scipy`), float64 of shape (size,), >= 0.

        The exact diagonal is, for factor f of item i, the sum of the squared factor f of the
        users who rated it plus its penalty; the estimate replaces the sum by the item's number
        of ratings times the mean over all users of that square, and likewise for users. A
        bias's diagonal is exact: its number of ratings plus its penalty. Needs only the row
        counts, so it costs one pass over the factors, not over the ratings.
        """
        out = np.empty(self.size)
        for where, block in self._curvature_blocks(params):
            out[where] = block
        return out

    # Rows of the curvature estimate made at a time: blocks of a few MB at k = 32.
    _CURVATURE_ROWS = 1 << 14

    def _curvature_blocks(self, params):
        """``(slice of the parameter vector, its curvature estimate)`` in blocks of rows, each
        block a fresh float64 array (see `curvature`)."""
        X, Theta, _, _ = self.unpack(np.asarray(params, dtype=np.float64))
        k = self.n_factors
        counts = [np.asarray(c, dtype=np.float64) for c in self._row_counts()]
        mean_square = _mean_squares(Theta, X)
        starts = [0, X.size, X.size + Theta.size]
        step = self._CURVATURE_ROWS
        for side in (0, 1):
            count, weight = counts[side], self.weights[side]
            for lo in range(0, count.shape[0], step):
                hi = min(lo + step, count.shape[0])
                block = np.outer(count[lo:hi], mean_square[side])
                block += (self.reg * weight[lo:hi])[:, None]
                yield slice(starts[side] + lo * k, starts[side] + hi * k), block.ravel()
        if self.learn_biases:
            offset = starts[2]
            for side in (0, 1):
                count, weight = counts[side], self.weights[side]
                yield (slice(offset, offset + count.shape[0]),
                       count + self.reg_bias * weight)
                offset += count.shape[0]

    def _views(self, params):
        """``(grad, params' views, grad's views)`` for an evaluation at ``params`` (checked:
        float64 of shape ``(size,)``): a fresh gradient, and (X, Theta, item bias, user bias)
        of each; with fixed biases the gradient's bias entries are scratch arrays, not the
        objective's biases that `unpack` returns."""
        params = np.ascontiguousarray(params, dtype=np.float64)
        if params.shape != (self.size,):
            raise ValueError(
                f"expected a parameter vector of shape ({self.size},), found {params.shape}"
            )
        grad = np.empty_like(params)
        values = self.unpack(params)
        grads = self.unpack(grad)
        if not self.learn_biases:
            grads = (grads[0], grads[1], np.empty_like(values[2]), np.empty_like(values[3]))
        return grad, values, grads

    def __call__(self, params):
        grad, values, grads = self._views(params)
        return float(self._evaluate_into(*values, grads)), grad


# A fixed side whose float32 copy is larger than this is read through a bfloat16 copy when
# `RowSolves` is asked for ``half_reads``: beyond a server's last-level cache its rows come from
# memory, where half the bytes is what a half sweep saves (`bench/rowsolve_ab.py`). A smaller
# side stays in the cache, where widening each value costs more than the bytes it saves.
_HALF_READS_BYTES = 32 << 20


def _line_aligned_empty(shape, dtype):
    """``np.empty(shape, dtype)`` starting on a cache line. numpy's own buffers start 16 bytes
    past one, so a 64-byte row (k = 32 in bfloat16) would span two lines and every random read
    of it would miss twice: the items' half sweep at 1e7 ratings took a tenth longer."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buffer = np.empty(size + _LINE, np.uint8)
    start = -buffer.ctypes.data % _LINE
    return buffer[start:start + size].view(dtype).reshape(shape)


def _read_copy(factors, single, half_reads):
    """An empty array, starting on a cache line, for a copy of ``factors`` that row solves read
    (`RowSolves`): float64 unless ``single``; with it, bfloat16 bits (uint16) when
    ``half_reads`` and the float32 copy would exceed `_HALF_READS_BYTES`, float32 otherwise."""
    if not single:
        dtype = np.float64
    elif half_reads and factors.size * 4 > _HALF_READS_BYTES:
        dtype = np.uint16
    else:
        dtype = np.float32
    return _line_aligned_empty(factors.shape, dtype)


def _copy_into(copy, factors):
    """``factors`` into ``copy``: converted to its type, or rounded to bfloat16 bits (uint16)."""
    if copy.dtype == np.uint16:
        to_bfloat16(factors, copy)
    else:
        copy[...] = factors
    return copy


class RowSolves:
    """Every row of one side solved with the other side held fixed (`solve_rows`), on
    ``params`` (``objective``'s layout), which are written in place: ALS's half sweeps and
    the projected solvers' evaluations.

    The fixed side is read through a float32 copy when every penalty is positive: it halves
    the random reads and lets the Gram products run in single precision (sums and solves stay
    float64). Without a penalty a row with too few ratings must fail its factorization, not
    pass it on float32 rounding, so the copy is float64 then. With ``half_reads`` (ALS), a
    fixed side larger than `_HALF_READS_BYTES` in float32 is read through a bfloat16 copy
    instead (`to_bfloat16`, within 2^-8 of each value): each row is then solved exactly for
    the rounded factors, and the cost the solves report is the objective at them.
    """

    def __init__(self, objective, params, half_reads=False):
        ratings = objective.ratings
        self.objective = objective
        self.X, self.Theta, self.item_bias, self.user_bias = objective.unpack(params)
        self.fit_bias = objective.learn_biases
        self.penalty = Penalty(objective.reg, objective.reg_bias, self.fit_bias)
        self.rows = {"users": ratings.user_rows,
                     "items": ratings.item_rows}
        self.weights = {"items": objective.weights[0], "users": objective.weights[1]}
        single = objective.positive_penalties
        # Solving the users reads the items' factors, and the other way round.
        self._copies = {"users": _read_copy(self.X, single, half_reads),
                        "items": _read_copy(self.Theta, single, half_reads)}
        self._zeros = {"users": np.zeros(ratings.n_users), "items": np.zeros(ratings.n_items)}
        # A row without ratings and without penalty has an all-zero system: it fails every
        # solve and stays at 0, as documented; only failures beyond those are worth a warning.
        self._empty = {
            side: int(np.count_nonzero((np.diff(rows.indptr) == 0) & (
                (objective.reg * self.weights[side] == 0)
                | (self.fit_bias & (objective.reg_bias * self.weights[side] == 0)))))
            for side, rows in self.rows.items()
        }

    @property
    def single(self):
        """Whether the fixed side is read through float32 (or bfloat16) copies."""
        return self._copies["users"].dtype != np.float64

    def read_float64(self):
        """Read the fixed side through float64 copies from now on: solutions exact to float64
        rounding, not float32's."""
        self._copies = {side: _read_copy(copy, single=False, half_reads=False)
                        for side, copy in self._copies.items()}

    def fixed(self, side):
        """``(Other, row offsets)`` for solving ``side`` ("users" or "items"): a fresh copy of
        the other side's factors with what each of its rows adds to a prediction, and what
        each of ``side``'s rows adds. Biases learned: they sit beside the factors in each row
        solve. Fixed (item means): a user's targets subtract the item's mean, an item's
        targets its own mean."""
        mu = self.objective.mu
        if side == "users":
            copy = _copy_into(self._copies["users"], self.X)
            return (Other(copy, mu + self.item_bias),
                    self._zeros["users"] if self.fit_bias else self.user_bias)
        copy = _copy_into(self._copies["items"], self.Theta)
        if self.fit_bias:
            return Other(copy, mu + self.user_bias), self._zeros["items"]
        return Other(copy, self.user_bias), mu + self.item_bias

    def solve(self, side, cg_steps=0):
        """Solve every row of ``side`` given the other side's current values (``cg_steps`` as
        `solve_rows` takes them); returns its `SolveSummary`."""
        other, row_offset = self.fixed(side)
        out = (Solved(self.Theta, self.user_bias) if side == "users"
               else Solved(self.X, self.item_bias))
        return solve_rows(self.rows[side], other, self.penalty, row_offset, self.weights[side],
                          out, cg_steps)

    def singular(self, side, summary):
        """Rows of ``side`` with ratings whose system was not positive definite in the solve
        that gave ``summary``."""
        return summary.failures - self._empty[side]


class ProjectedObjective:
    """The objective as a function of the smaller side's rows alone, the other side at its
    exact minimum given them (variable projection).

    ``f(v) = min_w F(v, w)`` for the free rows ``v`` (the side with fewer rows, the items for
    the Netflix prize's shape) and the solved rows ``w``: each evaluation solves every solved
    row exactly (`RowSolves`, the ALS row solve) and returns the cost there with ``F``'s
    gradient in ``v`` (its gradient in ``w`` is zero at that minimum). ``f`` has the minima
    of ``F``, is better conditioned than ``F`` on both sides jointly, and its vectors are the
    free side's only. The solves read the free side as float32 (``F``'s gradient in ``w`` is
    then about 1e-7 of its scale, not 0), and the evaluation the free side too (`_evaluate`'s
    ``single``), until ``solves.read_float64()``. Needs ``objective.projectable``.

    Parameters
    ----------
    objective : FlatObjective
    params : ndarray of shape (objective.size,), float64
        Written in place: every evaluation leaves its point's free and solved rows there.

    Attributes
    ----------
    free, solved : {"items", "users"}
    shape : (n_free, d)
        ``v``'s shape: a free row's factors, then its bias when ``objective.learn_biases``.
    evaluations : int
        Calls so far.
    """

    def __init__(self, objective, params):
        ratings = objective.ratings
        self.objective = objective
        self.solves = RowSolves(objective, params)
        self.free = "items" if ratings.n_items <= ratings.n_users else "users"
        self.solved = "users" if self.free == "items" else "items"
        self._values = objective.unpack(params)
        # Where the free side's factors and bias sit in `unpack`'s (X, Theta, item bias, user
        # bias), and so in the gradients.
        self._free = (0, 2) if self.free == "items" else (1, 3)
        self._factors, self._bias = (self._values[i] for i in self._free)
        self._k = objective.n_factors
        self.shape = (self._factors.shape[0], self._k + (1 if objective.learn_biases else 0))
        # Every evaluation writes the whole gradient (the walk that gives the free side's gives
        # the solved side's too, zero up to the solves' rounding); the solved side's is scratch.
        self._grads = tuple(np.empty_like(part) for part in self._values)
        self._blocks = None
        self.evaluations = 0

    def values(self):
        """The free rows' current parameters, a fresh (n_free, d) float64 array."""
        v = np.empty(self.shape)
        v[:, : self._k] = self._factors
        if self.shape[1] > self._k:
            v[:, self._k] = self._bias
        return v

    def __call__(self, v):
        """``(cost, gradient)`` at the free rows ``v`` (n_free, d): the gradient a fresh
        (n_free, d) float64 array."""
        k = self._k
        learned = self.shape[1] > k
        self.evaluations += 1
        self._factors[...] = v[:, :k]
        if learned:
            self._bias[...] = v[:, k]
        self.solves.solve(self.solved)
        cost = self.objective._evaluate_into(*self._values, self._grads,
                                             single=self.solves.single)
        grad = np.empty(self.shape)
        grad[:, :k] = self._grads[self._free[0]]
        if learned:
            grad[:, k] = self._grads[self._free[1]]
        return float(cost), grad

    def preconditioners(self):
        """``(n_free, d, d)`` float64: each free row's upper-triangular inverse Cholesky factor
        of its curvature at the solved side's current values (`row_preconditioners`). One
        array, overwritten by every call: at 1e7 ratings its fresh pages cost a third as
        much again as its sums."""
        other, _ = self.solves.fixed(self.free)
        if self._blocks is None:
            self._blocks = np.empty(self.shape + (self.shape[1],))
        out = self._blocks
        row_preconditioners(self.solves.rows[self.free], other, self.solves.penalty,
                            self.solves.weights[self.free], out)
        return out
