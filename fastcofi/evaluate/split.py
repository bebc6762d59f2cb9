"""Train/test splits of ratings: random holdout, k-fold, per-user leave-k-out, temporal, and the
official MovieLens 100K folds.

Every splitter takes its ratings either as a :class:`~fastcofi.ratings.Ratings` or as a tuple of
COO arrays ``(users, items, values)`` or ``(users, items, values, timestamps)`` of external ids.
The two differ only in what "row order" means, and seeded splits permute rows:

- a ``Ratings`` has no memory of its input order; its rows are taken in storage order, the order
  of :meth:`Ratings.coo` (by item index, then user index);
- a tuple keeps its own order, so a split defined on a file's line order (BENCHMARKS.md protocol
  B, Surprise's 5-fold) is reproduced by passing the file's columns as read.

Protocol B (ML-100K, random 80/20 with seed 42), exactly::

    users, items, values, ts = np.loadtxt("ml-100k/u.data", dtype=np.int64, unpack=True)
    train, test = random_split((users, items, values, ts), 0.2, random_state=42)

Train and test share the id space where it matters: a train set declares every user and item id of
the whole input (``all_users`` / ``all_items``), so a model fitted on it has a row for every id and
can rank items for every test user; a test set holds only the ids of its own ratings.
"""

from pathlib import Path

import numpy as np

from ..data.ids import lookup
from ..data.ratings import Ratings

__all__ = [
    "random_split",
    "random_split_indices",
    "kfold",
    "leave_k_out",
    "temporal_split",
    "official_folds",
]

_COMPAT = (None, "surprise")
_LEAVE_BY = ("random", "time")
_OFFICIAL = {"u": [f"u{i}" for i in range(1, 6)], "ua": ["ua"], "ub": ["ub"]}


class _Rows:
    """Ratings as parallel arrays in a fixed row order, with the id space of the whole input."""

    __slots__ = ("users", "items", "values", "timestamps", "all_users", "all_items", "dtype",
                 "user_index")

    def __init__(self, data, name="ratings"):
        if isinstance(data, Ratings):
            u, i, v = data.coo()
            self.users = data.user_ids[u]
            self.items = data.item_ids[i]
            self.values = v
            self.timestamps = data.timestamps
            self.all_users = data.user_ids
            self.all_items = data.item_ids
            self.dtype = v.dtype
            self.user_index = np.asarray(u, dtype=np.int64)
            return
        if not isinstance(data, (tuple, list)) or len(data) not in (3, 4):
            raise TypeError(
                f"{name} must be a fastcofi.Ratings or a tuple (users, items, values"
                f"[, timestamps]) of arrays, found {type(data).__name__}"
                + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else "")
            )
        users, items, values = data[0], data[1], data[2]
        timestamps = data[3] if len(data) == 4 else None
        # Building the whole set once validates ids, lengths, values and duplicated pairs, and
        # gives the id space that every train set declares.
        full = Ratings.from_arrays(users, items, values, timestamps=timestamps)
        self.users = np.asarray(users)
        self.items = np.asarray(items)
        self.values = np.asarray(values)
        self.timestamps = None if timestamps is None else np.asarray(timestamps)
        self.all_users = full.user_ids
        self.all_items = full.item_ids
        self.dtype = np.float64
        self.user_index = lookup(full.user_ids, self.users)[0]

    @property
    def n(self):
        return int(self.values.shape[0])

    def take(self, rows, declare_all):
        """A Ratings of the given rows; ``declare_all`` gives it the id space of the whole input."""
        ts = None if self.timestamps is None else self.timestamps[rows]
        return Ratings.from_arrays(
            self.users[rows],
            self.items[rows],
            self.values[rows],
            all_users=self.all_users if declare_all else None,
            all_items=self.all_items if declare_all else None,
            dtype=self.dtype,
            timestamps=ts,
        )

    def split(self, test_mask):
        """(train, test) from a boolean mask over rows."""
        train = self.take(np.flatnonzero(~test_mask), True)
        return train, self.take(np.flatnonzero(test_mask), False)


def _check_fraction(test_fraction, n):
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float, np.number)):
        raise ValueError(f"test_fraction must be a number in (0, 1), found {test_fraction!r}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), found {test_fraction!r}")
    n_test = int(n * test_fraction)
    if n_test < 1 or n_test >= n:
        raise ValueError(
            f"test_fraction={test_fraction!r} of {n} ratings gives {n_test} test and "
            f"{n - n_test} train ratings; both must be at least 1"
        )
    return n_test


def _check_int(value, name, low):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, found {value!r}")
    return int(value)


def random_split_indices(n, test_fraction=0.2, random_state=None):
    """Row positions of a seeded random holdout of ``n`` ratings.

    ``perm = numpy.random.default_rng(random_state).permutation(n)``; the test rows are
    ``perm[:int(n * test_fraction)]``, the train rows the rest (BENCHMARKS.md protocol B).

    Parameters
    ----------
    n : int
        Number of ratings.
    test_fraction : float in (0, 1)
    random_state : int, numpy.random.Generator or None

    Returns
    -------
    train_rows, test_rows : ndarray of int64, sorted ascending
        Shapes ``(n - n_test,)`` and ``(n_test,)``.
    """
    n = _check_int(n, "n", 2)
    n_test = _check_fraction(test_fraction, n)
    perm = np.random.default_rng(random_state).permutation(n)
    return np.sort(perm[n_test:]).astype(np.int64), np.sort(perm[:n_test]).astype(np.int64)


def random_split(ratings, test_fraction=0.2, random_state=None):
    """Seeded random holdout over ratings.

    The rows of ``ratings`` (see the module notes on row order) are split as in
    :func:`random_split_indices`: with the columns of ML-100K's ``u.data`` in file order and
    ``random_state=42`` this is BENCHMARKS.md protocol B.

    Parameters
    ----------
    ratings : Ratings or tuple (users, items, values[, timestamps])
    test_fraction : float in (0, 1), default 0.2
        The test set gets ``int(nnz * test_fraction)`` ratings.
    random_state : int, numpy.random.Generator or None

    Returns
    -------
    train : Ratings
        The other ratings, declaring every user and item id of ``ratings``.
    test : Ratings
        The held-out ratings, with only their own ids.
    """
    rows = _Rows(ratings)
    train_rows, test_rows = random_split_indices(rows.n, test_fraction, random_state)
    return rows.take(train_rows, True), rows.take(test_rows, False)


def kfold(ratings, n_splits=5, shuffle=True, random_state=None, *, compat=None):
    """K-fold cross-validation over ratings: every rating is tested exactly once.

    Rows are (optionally) shuffled, then cut into ``n_splits`` consecutive folds; the first
    ``nnz % n_splits`` folds hold one rating more than the others (as Surprise and scikit-learn).

    Parameters
    ----------
    ratings : Ratings or tuple (users, items, values[, timestamps])
    n_splits : int >= 2
    shuffle : bool, default True
        Without shuffling, folds are consecutive blocks of rows and ``random_state`` is unused.
    random_state : int, numpy.random.Generator or None
        Seed of the shuffle (a ``numpy.random.RandomState`` or int under ``compat="surprise"``).
    compat : {None, "surprise"}
        ``"surprise"`` shuffles with ``numpy.random.RandomState(random_state).shuffle`` as
        Surprise's ``KFold`` does, so the folds of a tuple in file order are Surprise's folds of the
        same file (BENCHMARKS.md, Surprise's 5-fold table: ``random_state=0``). ``None`` uses
        ``numpy.random.default_rng(random_state).permutation``.

    Yields
    ------
    (train, test) : tuple of Ratings
        ``train`` declares every id of ``ratings``; ``test`` holds only its own ids.
    """
    rows = _Rows(ratings)
    n = rows.n
    n_splits = _check_int(n_splits, "n_splits", 2)
    if n_splits > n:
        raise ValueError(f"n_splits must be at most the number of ratings {n}, found {n_splits}")
    if compat not in _COMPAT:
        raise ValueError(f"compat must be one of {_COMPAT}, found {compat!r}")
    order = np.arange(n, dtype=np.int64)
    if shuffle:
        if compat == "surprise":
            rng = random_state
            if not isinstance(rng, np.random.RandomState):
                if isinstance(rng, np.random.Generator):
                    raise ValueError(
                        "random_state must be an int, a numpy.random.RandomState or None under "
                        "compat='surprise', found a numpy.random.Generator"
                    )
                rng = np.random.RandomState(random_state)
            rng.shuffle(order)
        else:
            order = np.random.default_rng(random_state).permutation(n).astype(np.int64)
    sizes = np.full(n_splits, n // n_splits, dtype=np.int64)
    sizes[: n % n_splits] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    for fold in range(n_splits):
        test_mask = np.zeros(n, dtype=bool)
        test_mask[order[bounds[fold] : bounds[fold + 1]]] = True
        yield rows.split(test_mask)


def leave_k_out(ratings, k=1, random_state=None, *, by="random"):
    """Per-user holdout: ``k`` ratings of every user go to the test set.

    A user with at most ``k`` ratings keeps them all in train (so every test user has at least one
    training rating) and does not appear in the test set.

    Parameters
    ----------
    ratings : Ratings or tuple (users, items, values[, timestamps])
    k : int >= 1
    random_state : int, numpy.random.Generator or None
        Seed of the choice under ``by="random"``.
    by : {"random", "time"}
        ``"random"``: ``k`` ratings drawn uniformly per user. ``"time"``: each user's ``k``
        latest ratings (needs timestamps; among equal timestamps the later row counts as later).

    Returns
    -------
    train, test : Ratings
        ``train`` declares every id of ``ratings``; ``test`` holds only its own ids.
    """
    rows = _Rows(ratings)
    k = _check_int(k, "k", 1)
    if by not in _LEAVE_BY:
        raise ValueError(f"by must be one of {_LEAVE_BY}, found {by!r}")
    n = rows.n
    user = rows.user_index
    position = np.arange(n, dtype=np.int64)
    if by == "random":
        primary = np.random.default_rng(random_state).random(n)
    else:
        if rows.timestamps is None:
            raise ValueError("leave_k_out(by='time') needs timestamps; these ratings have none")
        primary = -np.asarray(rows.timestamps, dtype=np.float64)
    # Sorted by user, then by the key (latest first under "time"), ties by later row first.
    order = np.lexsort((-position, primary, user))
    counts = np.bincount(user)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(n, dtype=np.int64)
    rank[order] = position - starts[user[order]]
    test_mask = (rank < k) & (counts[user] > k)
    if not test_mask.any():
        raise ValueError(
            f"no user has more than k={k} ratings (the most is {int(counts.max())}); "
            "the test set would be empty"
        )
    return rows.split(test_mask)


def temporal_split(ratings, test_fraction=0.2):
    """Holdout by time: the latest ``int(nnz * test_fraction)`` ratings form the test set.

    Among equal timestamps at the cut the later row goes to the test set (a stable sort by time),
    so the test set has exactly the asked size.

    Parameters
    ----------
    ratings : Ratings or tuple (users, items, values, timestamps)
        Must have timestamps.
    test_fraction : float in (0, 1), default 0.2

    Returns
    -------
    train, test : Ratings
        ``train`` declares every id of ``ratings``; ``test`` holds only its own ids.
    """
    rows = _Rows(ratings)
    if rows.timestamps is None:
        raise ValueError("temporal_split needs timestamps; these ratings have none")
    n_test = _check_fraction(test_fraction, rows.n)
    by_time = np.argsort(rows.timestamps, kind="stable")
    test_mask = np.zeros(rows.n, dtype=bool)
    test_mask[by_time[rows.n - n_test :]] = True
    return rows.split(test_mask)


def official_folds(folder, which="u"):
    """The official MovieLens 100K splits: ``u1..u5`` (5-fold) or ``ua`` / ``ub`` (10 per user).

    Each train set is the ``*.base`` file as it is: ids that occur only in the ``*.test`` file are
    unknown to a model fitted on it, which predicts them with its fallback (BENCHMARKS.md protocol
    A: 22-34 such test items per fold, not dropped) and cannot rank items for such users.

    Parameters
    ----------
    folder : str or os.PathLike
        The ``ml-100k`` folder holding ``u1.base``, ``u1.test``, ...
    which : {"u", "ua", "ub"}

    Returns
    -------
    list of (train, test) tuples of Ratings
        Five pairs for ``"u"``, one for ``"ua"`` or ``"ub"``; with timestamps.

    Raises
    ------
    FileNotFoundError
        A base or test file is missing from ``folder``.
    """
    if which not in _OFFICIAL:
        raise ValueError(f"which must be one of {tuple(_OFFICIAL)}, found {which!r}")
    folder = Path(folder)
    paths = []
    for stem in _OFFICIAL[which]:
        pair = (folder / f"{stem}.base", folder / f"{stem}.test")
        for path in pair:
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found; expected the MovieLens 100K files")
        paths.append(pair)
    from ..data.read import read_ratings  # deferred: the reader is only needed here

    return [
        (read_ratings(base, format="ml-100k"), read_ratings(test, format="ml-100k"))
        for base, test in paths
    ]
