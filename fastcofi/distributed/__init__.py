"""The objective and training over a Dask cluster: ratings sharded by blocks of items (or users).

Dask is an optional dependency: ``pip install 'fastcofi[distributed]'``.

Each shard holds every rating of one contiguous block of items (items renumbered from the block's
start, users renumbered to the shard's own rated users), as a `Ratings` with both CSRs, and lives
in a worker's memory for as long as the `ShardedRatings` handle does. An evaluation sends each
shard its item rows and the rows of its users (factors and biases), runs the same fused Numba
kernel there (`fastcofi.objective._evaluate`) and returns the shard's cost and gradients; the
driver adds them up in shard order, so the result does not depend on where Dask ran the tasks.

Why blocks of one side: a shard that owns all ratings of its items yields the complete gradient of
those items, regularization included, so only the user side needs summing. The user penalty is the
one term that would be counted once per shard; the shards get user weights of zero and the driver
adds that term once, with the real weights. ``by="users"`` is the same with the roles swapped; the
side that is not blocked travels to every shard that has ratings of it, so the side with fewer
rows is the one to replicate.

ALS is not offered here: its user sweep needs every rating of a user in one place and its item
sweep every rating of an item, i.e. both partitionings held at once (twice the workers' memory),
and each iteration moves what one evaluation by users plus one by items move. CG and L-BFGS need
only the objective, which one partitioning gives.
"""

import asyncio
import os
import warnings

import numpy as np

from ..data.ratings import (
    Ratings,
    check_duplicates_policy,
)
from ..train.objective import FlatObjective, _check_factor_shapes
from ._worker import (
    _block_bounds,
    _build_shard,
    _file_arrays,
    _frame_arrays,
    _ids_summary,
    _shard_arrays,
    _shard_evaluate,
    _shard_summary,
    _split_partition,
)

__all__ = ["DistributedObjective", "ShardedRatings", "cost_and_grad", "fit", "scatter"]

# How long to wait for a scheduler given by address before calling it unreachable.
_CONNECT_TIMEOUT = "10s"


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise ImportError(
            "fastcofi.distributed needs Dask's distributed scheduler: "
            "pip install 'fastcofi[distributed]'"
        ) from None
    return distributed


def _connect(client):
    """``(client, owned)``: a Dask client for ``client`` (None, a Client or an address)."""
    distributed = _import_distributed()
    if client is None:
        # The embedded default: worker processes on the loopback only, no dashboard. The
        # scheduler's health endpoint still listens (on 127.0.0.1 too) and moves to a free port
        # when another cluster holds 8787, which Dask warns about; nothing to act on here.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Port .* is already in use")
            cluster = distributed.LocalCluster(
                host="127.0.0.1", dashboard_address=None, processes=True
            )
        try:
            return distributed.Client(cluster), True
        except BaseException:
            cluster.close()
            raise
    if isinstance(client, distributed.Client):
        return client, False
    if isinstance(client, (str, os.PathLike)):
        address = os.fspath(client)
        try:
            return distributed.Client(address, timeout=_CONNECT_TIMEOUT), True
        except (OSError, TimeoutError, ValueError, TypeError) as exc:
            raise ValueError(
                f"cannot connect to the Dask scheduler at {address!r}; expected an address such "
                f"as tcp://host:8786 of a running scheduler ({type(exc).__name__}: "
                f"{' '.join(str(exc).split())})"
            ) from None
    raise TypeError(
        f"client must be None, a dask.distributed.Client or a scheduler address, "
        f"found {type(client).__name__}"
    )


def _close_client(client):
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()














def _check_frame_columns(frame, columns):
    """Raise unless the DataFrame has every column of ``columns`` ({role: name}); checked on the
    driver against the frame's metadata, before any cluster work."""
    from ..data.frames import column_names

    labels = list(frame.columns)  # the labels themselves: a frame may have integer labels
    for role, name in columns.items():
        if name not in labels:
            found = column_names(frame)
            raise ValueError(
                f"the ratings DataFrame has no {role} column {name!r}; found the columns {found} "
                "(pass user=, item=, rating= to scatter)"
            )












# -- the driver's handle ----------------------------------------------------------------------
class ShardedRatings:
    """Ratings held by the workers of a Dask cluster, one block of items (or users) per shard;
    see `scatter`.

    Close it (or use it in a ``with`` block) to free the workers' memory and, when `scatter`
    started the cluster, the cluster.

    Attributes
    ----------
    client : distributed.Client
    by : {"items", "users"}
        The side cut into blocks; each shard holds every rating of its block's rows.
    n_users, n_items, nnz, n_shards : int
    user_ids : ndarray of shape (n_users,)
        External ids, sorted, as `Ratings.user_ids` for the same ratings.
    item_ids : ndarray of shape (n_items,)
    bounds : ndarray of shape (n_shards + 1,), int64
        Shard ``s`` holds the rows ``bounds[s]`` to ``bounds[s + 1] - 1`` of the ``by`` side.
    item_counts, user_counts : ndarray of shape (n_items,) / (n_users,), int64
        Ratings per item and per user.
    ratings : Ratings or None
        The in-memory ratings it was scattered from (None for a DataFrame or files).
    """

    def __init__(self, client, owned, by, shards, summaries, user_ids, item_ids, bounds,
                 ratings):
        self.client = client
        self._owned = owned
        self.by = by
        self._shards = shards
        self.user_ids = user_ids
        self.item_ids = item_ids
        self.bounds = np.asarray(bounds, dtype=np.int64)
        self.ratings = ratings
        self._gathered = None
        # Each shard's rows of the item and user arrays. On the blocked side a shard's rows are
        # the contiguous range of its block, so a slice: a view, no copy on the driver per
        # evaluation. On the other side, the index of the rows it has ratings of.
        blocks = [slice(int(a), int(b)) for a, b in zip(self.bounds[:-1], self.bounds[1:])]
        others = [s["user_index" if by == "items" else "item_index"] for s in summaries]
        self._item_rows, self._user_rows = (blocks, others) if by == "items" else (others, blocks)
        self.item_counts = np.zeros(len(item_ids), dtype=np.int64)
        self.user_counts = np.zeros(len(user_ids), dtype=np.int64)
        for s in summaries:
            # Indices are unique within a shard, so += is a scatter-add here.
            self.item_counts[s["item_index"]] += s["item_counts"]
            self.user_counts[s["user_index"]] += s["user_counts"]
        self.nnz = int(sum(s["nnz"] for s in summaries))

    @property
    def n_users(self):
        return int(self.user_ids.shape[0])

    @property
    def n_items(self):
        return int(self.item_ids.shape[0])

    @property
    def n_shards(self):
        return 0 if self._shards is None else len(self._shards)

    def __repr__(self):
        return (f"ShardedRatings(n_users={self.n_users}, n_items={self.n_items}, nnz={self.nnz}, "
                f"by={self.by!r}, n_shards={self.n_shards})")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Release the shards; close the client and cluster when `scatter` opened them."""
        if self._shards is None:
            return
        shards, self._shards = self._shards, None
        if self._owned:
            _close_client(self.client)
        else:
            for future in shards:
                future.release()

    def _check_open(self):
        if self._shards is None:
            raise ValueError("this ShardedRatings is closed")

    def bytes_per_evaluation(self, n_factors):
        """Payload of one evaluation: float64 rows sent to the shards and gradients sent back.

        Each shard receives the rows (factors and bias; biases are sent even when fixed) of its
        block and of the other side's rows it has ratings of, and returns gradients of the same
        shapes. Scalars and message framing are not counted.

        Returns
        -------
        dict
            ``"sent"`` and ``"received"`` (bytes), ``"item_rows"`` and ``"user_rows"`` (rows
            sent, summed over shards: the non-blocked side is replicated).
        """
        item_rows = int(sum(_n_rows(rows) for rows in self._item_rows))
        user_rows = int(sum(_n_rows(rows) for rows in self._user_rows))
        sent = 8 * (int(n_factors) + 1) * (item_rows + user_rows)
        return {"sent": sent, "received": sent, "item_rows": item_rows, "user_rows": user_rows}

    def to_ratings(self):
        """The ratings gathered to the driver as one `Ratings` (the scattered one if kept).

        Gathered once per handle (kept for the next call); timestamps are not kept by shards.
        """
        if self.ratings is not None:
            return self.ratings
        if self._gathered is not None:
            return self._gathered
        self._check_open()
        parts = self.client.gather(
            [self.client.submit(_shard_arrays, shard, pure=False) for shard in self._shards]
        )
        items, users, values = (np.concatenate([p[n] for p in parts]) for n in range(3))
        self._gathered = Ratings._from_indices(
            self.user_ids, self.item_ids, users, items, values, None, "error"
        )
        return self._gathered

    def _evaluate(self, X, Theta, item_bias, user_bias, mu, reg, reg_bias, weights,
                  reg_weighting, n_threads, grads):
        """Cost and gradients into ``grads`` (X, Theta, item bias, user bias), as
        `fastcofi.objective._evaluate` on the whole ratings."""
        self._check_open()
        futures = [
            self.client.submit(
                _shard_evaluate, shard, X[items], Theta[users], item_bias[items],
                user_bias[users], float(mu), float(reg), float(reg_bias), reg_weighting,
                n_threads, self.by, pure=False,
            )
            for shard, items, users in zip(self._shards, self._item_rows, self._user_rows)
        ]
        try:
            results = self.client.gather(futures)
        except (Exception, asyncio.CancelledError) as exc:
            for future in futures:
                future.cancel()
            raise RuntimeError(
                f"the distributed evaluation failed on the Dask cluster "
                f"({type(exc).__name__}: {' '.join(str(exc).split())}); no result was used"
            ) from exc
        # The penalty of the side that is not blocked, once: the shards weighted it by zero.
        # The blocked side's rows are each in one shard, penalty included.
        for grad in grads:
            grad[...] = 0.0
        items = (X, item_bias, weights[0], grads[0], grads[2])
        users = (Theta, user_bias, weights[1], grads[1], grads[3])
        F, bias, weight, F_grad, bias_grad = users if self.by == "items" else items
        row_reg = reg * weight
        F_grad[...] = row_reg[:, None] * F
        bias_grad[...] = (reg_bias * weight) * bias
        cost = 0.5 * float(
            np.dot(row_reg, np.einsum("ij,ij->i", F, F)) + np.dot(reg_bias * weight, bias * bias)
        )
        X_grad, Theta_grad, item_bias_grad, user_bias_grad = grads
        # Shard order, whatever order the workers finished in: the same sums every run.
        for (shard_cost, (gx, gt, gib, gub)), items, users in zip(
            results, self._item_rows, self._user_rows
        ):
            X_grad[items] += gx
            item_bias_grad[items] += gib
            Theta_grad[users] += gt
            user_bias_grad[users] += gub
            cost += shard_cost
        return cost


def _n_rows(rows):
    """Rows a slice or an index array selects."""
    return rows.stop - rows.start if isinstance(rows, slice) else rows.shape[0]


def _check_data_kind(data):
    if isinstance(data, (Ratings, ShardedRatings)):
        return
    if isinstance(data, (str, os.PathLike)):
        return
    if isinstance(data, (list, tuple)) and data and all(
        isinstance(p, (str, os.PathLike)) for p in data
    ):
        return
    if hasattr(data, "to_delayed") and hasattr(data, "columns"):
        return
    raise TypeError(
        "expected a fastcofi.Ratings, a dask DataFrame, or a list of rating file paths "
        f"(CSV/Parquet), found {type(data).__name__}"
    )


def scatter(ratings, client=None, *, by="items", n_shards=None, user="user", item="item",
            rating="rating", duplicates="error", **read_kwargs):
    """Shard ratings over a Dask cluster's workers by blocks of items; a persistent handle.

    Parameters
    ----------
    ratings : Ratings, dask DataFrame, or list of paths
        In-memory ratings are cut into blocks on the driver and sent to the workers. A dask
        DataFrame (columns ``user``, ``item``, ``rating``) or rating files (one partition per
        file, each parsed by a worker as `fastcofi.read_ratings` parses it, rows kept as they
        are for the duplicates rule below) never pass through the driver:
        the workers read them, the driver collects only the sorted unique ids and the counts per
        id, and the partitions are cut into blocks and sent worker to worker. Ids are indexed as
        `Ratings.from_arrays` indexes them (sorted unique); files and DataFrames cannot declare
        ids without ratings.
    client : distributed.Client, str or None
        The cluster to use: a client, a scheduler address, or None to start a `LocalCluster` of
        worker processes on 127.0.0.1 (closed with the handle).
    by : {"items", "users"}
        The side cut into blocks. Every shard is sent, per evaluation, the rows of the other side
        that it has ratings of, so that side's rows travel up to ``n_shards`` times: block the
        side with more rows (users, usually, at scale; see the estimate in bench/README.md).
    n_shards : int, optional
        Blocks (default: one per worker), of about equal numbers of ratings.
    user, item, rating : str
        Column names in a DataFrame, checked before any cluster work; the columns are converted
        and validated as `Ratings.from_dataframe` does.
    duplicates : {"error", "last", "mean"}
        A repeated (user, item) pair, within or across partitions, as in `Ratings.from_arrays`
        on all the rows: files give the ratings of one file holding their rows in list order.
    **read_kwargs
        For files: `fastcofi.read_ratings`' options (``format=``, ``sep=``...).

    Returns
    -------
    ShardedRatings

    Notes
    -----
    A shard is built by a task whose inputs Dask keeps, so when a worker dies Dask rebuilds its
    shards on another worker and reruns the evaluation; what Dask cannot recover raises.
    """
    _check_data_kind(ratings)
    if isinstance(ratings, ShardedRatings):
        return ratings
    if by not in ("items", "users"):
        raise ValueError(f"by must be 'items' or 'users', found {by!r}")
    check_duplicates_policy(duplicates)
    if n_shards is not None and (
        isinstance(n_shards, bool) or not isinstance(n_shards, (int, np.integer)) or n_shards < 1
    ):
        raise ValueError(f"n_shards must be a positive integer, found {n_shards!r}")
    columns = {"user": user, "item": item, "rating": rating}
    if hasattr(ratings, "to_delayed"):
        _check_frame_columns(ratings, columns)
    client, owned = _connect(client)
    try:
        workers = sorted(client.scheduler_info()["workers"])
        if not workers:
            client.wait_for_workers(1, timeout=60)
            workers = sorted(client.scheduler_info()["workers"])
        n_shards = int(n_shards or len(workers))
        if isinstance(ratings, Ratings):
            return _scatter_ratings(client, owned, ratings, by, n_shards, workers)
        if isinstance(ratings, (str, os.PathLike)):
            ratings = [ratings]
        if isinstance(ratings, (list, tuple)):
            parts = [
                client.submit(_file_arrays, os.fspath(p), duplicates, read_kwargs, pure=False)
                for p in ratings
            ]
        else:
            import dask

            parts = client.compute(
                [dask.delayed(_frame_arrays)(d, columns) for d in ratings.to_delayed()]
            )
        return _scatter_partitions(client, owned, parts, by, n_shards, workers, duplicates)
    except BaseException:
        if owned:
            _close_client(client)
        raise


def _as_task(client, array):
    """``array`` as the result of a task that holds it, not as scattered data.

    Dask can rerun a task for a shard lost with its worker only while every input still has a
    task behind it. Scattered data has none, and the Active Memory Manager may cut a broadcast
    down to the one copy on the worker that dies. One task also sends the array once, instead of
    once in every shard task.
    """
    return client.submit(_getitem, (array,), 0, pure=False)


def _submit_builds(client, owned, by, piece_lists, user_ids, item_ids, other_ids, bounds,
                   workers, duplicates, ratings):
    block_ids = item_ids if by == "items" else user_ids
    shards = [
        # Pinned for balance, free to move: a lost worker's shard is rebuilt elsewhere.
        client.submit(
            _build_shard, by, int(bounds[s]), block_ids[bounds[s] : bounds[s + 1]], other_ids,
            duplicates, *pieces, workers=[workers[s % len(workers)]], allow_other_workers=True,
            pure=False,
        )
        for s, pieces in enumerate(piece_lists)
    ]
    summaries = client.gather([client.submit(_shard_summary, f, pure=False) for f in shards])
    return ShardedRatings(
        client, owned, by, shards, summaries, user_ids, item_ids, bounds, ratings
    )


def _scatter_ratings(client, owned, ratings, by, n_shards, workers):
    indptr, others, values = ratings.by_item if by == "items" else ratings.by_user
    bounds = _block_bounds(np.diff(indptr), n_shards)
    piece_lists = []
    for s in range(bounds.shape[0] - 1):
        a, b = int(bounds[s]), int(bounds[s + 1])
        lo, hi = int(indptr[a]), int(indptr[b])
        local = np.repeat(np.arange(b - a, dtype=np.int64), np.diff(indptr[a : b + 1]))
        other, vals = np.asarray(others[lo:hi]), np.asarray(values[lo:hi])
        piece_lists.append([(local, other, vals) if by == "items" else (other, local, vals)])
    other_ids = _as_task(client, ratings.user_ids if by == "items" else ratings.item_ids)
    return _submit_builds(
        client, owned, by, piece_lists, ratings.user_ids, ratings.item_ids, other_ids, bounds,
        workers, "error", ratings,
    )


def _scatter_partitions(client, owned, parts, by, n_shards, workers, duplicates):
    summaries = client.gather([client.submit(_ids_summary, p, pure=False) for p in parts])
    if not summaries or sum(int(s[0][1].sum()) for s in summaries) == 0:
        raise ValueError("no ratings: the input has no rows")
    kinds = {(s[0][0].dtype.kind == "U", s[1][0].dtype.kind == "U")
             for s in summaries if s[0][0].size}
    if len(kinds) > 1:
        raise ValueError("the partitions disagree on the id types (strings in some, integers in "
                         "others); expected one kind of user id and one kind of item id")
    ids, counts = [], []
    for side in (0, 1):
        uniq = np.unique(np.concatenate([s[side][0] for s in summaries]))
        total = np.zeros(uniq.shape[0], dtype=np.int64)
        for s in summaries:
            total[np.searchsorted(uniq, s[side][0])] += s[side][1]
        ids.append(uniq)
        counts.append(total)
    user_ids, item_ids = ids
    bounds = _block_bounds(counts[1] if by == "items" else counts[0], n_shards)
    user_ids_f, item_ids_f = _as_task(client, user_ids), _as_task(client, item_ids)
    splits = [
        client.submit(_split_partition, p, user_ids_f, item_ids_f, bounds, by, pure=False)
        for p in parts
    ]
    piece_lists = [
        [client.submit(_getitem, f, s, pure=False) for f in splits]
        for s in range(bounds.shape[0] - 1)
    ]
    return _submit_builds(
        client, owned, by, piece_lists, user_ids, item_ids,
        user_ids_f if by == "items" else item_ids_f, bounds, workers, duplicates, None,
    )


def _getitem(sequence, index):
    return sequence[index]


# -- the objective ------------------------------------------------------------------------------
class DistributedObjective(FlatObjective):
    """`fastcofi.objective.FlatObjective` evaluated on a `ShardedRatings`: same vector layout,
    same parameters, same ``fun(params) -> (cost, gradient)`` contract (a fresh gradient array
    per call).

    Parameters
    ----------
    sharded : ShardedRatings
    n_factors, reg, mu, item_bias, user_bias, learn_biases, reg_bias, reg_weighting
        As for `FlatObjective`.
    n_threads : int, optional
        Numba threads per evaluation task on a worker (default: the worker's Dask thread count).
    """

    def _row_counts(self):
        return self.ratings.item_counts, self.ratings.user_counts

    def _evaluate_into(self, X, Theta, item_bias, user_bias, grads, single=False):
        # The shards read float64 whatever ``single`` asks: only local ratings are projected,
        # and only the projected solvers ask for float32 reads.
        return self.ratings._evaluate(
            X, Theta, item_bias, user_bias, self.mu, self.reg, self.reg_bias, self.weights,
            self.reg_weighting, self.n_threads, grads,
        )


# -- the public functions -----------------------------------------------------------------------
def cost_and_grad(item_factors, user_factors, ratings_or_sharded, reg, client=None, *,
                  by="items", n_threads=None):
    """`fastcofi.objective.cost_and_grad` evaluated on a Dask cluster.

    Parameters
    ----------
    item_factors : ndarray of shape (n_items, n_factors)
    user_factors : ndarray of shape (n_users, n_factors)
    ratings_or_sharded : ShardedRatings or anything `scatter` takes
        Anything but a `ShardedRatings` is scattered for this call only.
    reg : float
    client : distributed.Client, str or None
        For scattering (see `scatter`); a `ShardedRatings` uses its own client.
    by : {"items", "users"}
        For scattering (see `scatter`).
    n_threads : int, optional
        Numba threads per worker task.

    Returns
    -------
    cost : float
    item_grad : ndarray of shape (n_items, n_factors), float64
    user_grad : ndarray of shape (n_users, n_factors), float64
    """
    _check_data_kind(ratings_or_sharded)
    owned = not isinstance(ratings_or_sharded, ShardedRatings)
    if owned and isinstance(ratings_or_sharded, Ratings):
        _check_factor_shapes(item_factors, user_factors, ratings_or_sharded)
    sharded = scatter(ratings_or_sharded, client, by=by)
    try:
        X, Theta = _check_factor_shapes(item_factors, user_factors, sharded)
        n_items, n_users = sharded.n_items, sharded.n_users
        grads = (np.empty_like(X), np.empty_like(Theta), np.empty(n_items), np.empty(n_users))
        cost = sharded._evaluate(
            X, Theta, np.zeros(n_items), np.zeros(n_users), 0.0, float(reg), 0.0,
            (np.ones(n_items), np.ones(n_users)), "none", n_threads, grads,
        )
    finally:
        if owned:
            sharded.close()
    return float(cost), grads[0], grads[1]


def fit(model, data, client=None, *, by="items", **fit_kwargs):
    """Fit ``model`` with its CG or L-BFGS solver, each objective evaluation on a Dask cluster.

    The cluster runs CG or L-BFGS-B on both sides' curvature-rescaled parameters
    (`fastcofi.train.solvers.minimize_scipy`'s ``precondition="curvature"``): a local fit
    solves the larger side exactly at each evaluation instead, which needs every rating in one
    process. The result is the model a local fit on that path gives on the same ratings and
    seed, up to rounding (the shards sum the user gradients in another order).

    Parameters
    ----------
    model : MatrixFactorization
        Its ``solver`` must be ``"cg"``, ``"lbfgs"`` or ``"auto"`` (CG here, whatever the size).
    data : ShardedRatings or anything `scatter` takes
        Anything but a `ShardedRatings` is scattered for this fit and released after. The model's
        fitted state needs the ratings on the driver (means, the seen items `recommend`
        excludes): a DataFrame or files are gathered once for it, not per evaluation.
    client : distributed.Client, str or None
        As for `scatter`; ignored for a `ShardedRatings`.
    by : {"items", "users"}
        As for `scatter`; ignored for a `ShardedRatings`.
    **fit_kwargs
        Passed to `MatrixFactorization.fit` (``validation``, ``callback``, ``checkpoint``...).

    Returns
    -------
    model : the fitted ``model``
    """
    from ..model import MatrixFactorization

    if not isinstance(model, MatrixFactorization):
        raise TypeError(
            f"model must be a fastcofi.MatrixFactorization, found {type(model).__name__}"
        )
    model._check_params()
    if model.solver not in ("auto", "cg", "lbfgs"):
        raise ValueError(
            "fastcofi.distributed.fit supports solver 'cg' or 'lbfgs' ('auto' trains with cg "
            f"here), found {model.solver!r} "
            "(ALS and VB would need the ratings partitioned by users as well as by items)"
        )
    _check_data_kind(data)
    owned = not isinstance(data, ShardedRatings)
    sharded = scatter(data, client, by=by)
    try:
        ratings = sharded.to_ratings()

        def make_objective(_ratings, n_factors, reg, **kwargs):
            return DistributedObjective(sharded, n_factors, reg, **kwargs)

        model.fit(ratings, make_objective=make_objective, **fit_kwargs)
    finally:
        if owned:
            sharded.close()
    return model

