"""What watches a training run: one object per concern, each called once per iteration.

A solver reports each iteration through ``on_iteration(iteration, params, history) -> stop``;
`Observers` turns that into ``observer(iteration, params, history, info) -> stop`` calls on
the observers asked for, in order (a later one sees what earlier ones added to ``info``), and
carries a resumed run's earlier iterations so that numbering, seconds and history continue.
The optimizers' ``params`` is their parameter vector; the Gibbs sampler's is its chain's state
(`fastcofi.train.gibbs.GibbsState`), whose iterations are sweeps.
"""

import logging
import sys

import numpy as np

from .checkpoint import write_checkpoint

__all__ = [
    "Checkpointing",
    "EarlyStopping",
    "Observers",
    "Progress",
    "RunningAverageRMSE",
    "UserCallback",
    "debug_log",
    "kept_draws",
    "progress_line",
]

logger = logging.getLogger("fastcofi")


class Observers:
    """The per-iteration hook of one run.

    Parameters
    ----------
    observers : list of callables ``(iteration, params, history, info) -> stop``
    done : int
        Iterations run before (a resumed checkpoint), added to the solver's own count.
    prior : dict of lists
        Their history; their last ``"seconds"`` is added to this run's.
    """

    def __init__(self, observers, done=0, prior=None):
        self.observers = list(observers)
        self.done = int(done)
        self.prior = prior or {}
        self.prior_seconds = self.prior["seconds"][-1] if self.prior.get("seconds") else 0.0
        self.checkpointing = None

    @classmethod
    def for_run(cls, done, prior, *, first=(), validation=None, progress=None, callback=None,
                checkpoint=None):
        """A training run's observers, in their order.

        Parameters
        ----------
        done, prior : int, dict of lists
            As for `Observers`.
        first : sequence of observers
            Run first (observers that add to ``info``).
        validation : observer, optional
            `EarlyStopping`, or a sampler's `RunningAverageRMSE`.
        progress : dict, optional
            `Progress`'s keyword arguments (its start is the run's): a line per iteration.
        callback : callable, optional
            The user's ``callback(iteration, info) -> stop`` (`UserCallback`).
        checkpoint : dict, optional
            `Checkpointing`'s keyword arguments but ``observers``; the instance is kept as
            ``checkpointing``.

        A DEBUG record per iteration (`debug_log`) is added when the ``fastcofi`` logger shows
        DEBUG.
        """
        observers = cls([], done, prior)
        found = [*first, validation]
        if progress is not None:
            found.append(Progress(start_iteration=done, start_seconds=observers.prior_seconds,
                                  **progress))
        if logger.isEnabledFor(logging.DEBUG):
            found.append(debug_log)
        if callback is not None:
            found.append(UserCallback(callback))
        if checkpoint is not None:
            observers.checkpointing = Checkpointing(observers=observers, **checkpoint)
            found.append(observers.checkpointing)
        observers.observers = [o for o in found if o is not None]
        return observers

    def merged(self, history):
        """The whole run's history: the resumed iterations', then this run's (seconds shifted)."""
        out = {key: list(self.prior.get(key, [])) for key in history}
        for key, values in history.items():
            shift = self.prior_seconds if key == "seconds" else 0.0
            out[key] += [v + shift for v in values]
        return out

    def __call__(self, local_iteration, params, history):
        iteration = self.done + local_iteration
        info = {key: values[-1] for key, values in history.items()}
        info["seconds"] += self.prior_seconds
        # Every observer runs (no short cut): a checkpoint is written even when a callback stops.
        stops = [bool(observer(iteration, params, history, info)) for observer in self.observers]
        return any(stops)

    @property
    def hook(self):
        """The solver's ``on_iteration``, or None when nothing observes (VB then skips replaying
        its kept start)."""
        return self if self.observers else None


class EarlyStopping:
    """Validation RMSE after each iteration; stops once it has not improved for ``patience``
    iterations (counted from the start of this run), keeping the best parameters.

    Parameters
    ----------
    rmse : callable ``params -> float``
    patience : int
    start : int
        The iteration this run starts from (a resumed run's earlier ones do not count).
    """

    def __init__(self, rmse, patience, start=0):
        self.rmse = rmse
        self.patience = int(patience)
        self.start = int(start)
        self.best_rmse = np.inf
        self.best_iteration = 0
        self.best_params = None

    def __call__(self, iteration, params, history, info):
        _record_val_rmse(self.rmse(params), history, info)
        if info["val_rmse"] < self.best_rmse:
            self.best_rmse, self.best_iteration = info["val_rmse"], iteration
            # Copied into the same buffer: a fresh copy would hold two at once.
            if self.best_params is None:
                self.best_params = np.array(params, copy=True)
            else:
                self.best_params[...] = params
        return iteration - max(self.best_iteration, self.start) >= self.patience


def _record_val_rmse(rmse, history, info):
    info["val_rmse"] = float(rmse)
    history.setdefault("val_rmse", []).append(info["val_rmse"])


class RunningAverageRMSE:
    """A sampler's validation RMSE: of the average of the draws kept so far (of the current draw
    before the first is kept), clipped to ``bounds``; it records and stops nothing.

    Parameters
    ----------
    predict : callable ``(item_rows, user_rows) -> ndarray of shape (m,)``
        One draw's predictions of the validation pairs.
    values : ndarray of shape (m,), float64
        The validation ratings.
    bounds : (float, float), optional
        Where predictions are clipped, as the fitted model clips them.

    Notes
    -----
    The state's kept draws (``kept_items[:n_kept]``, ``kept_users[:n_kept]``) are added to the
    running sum as they appear, so a chain resumed with draws already kept starts from their sum.
    """

    def __init__(self, predict, values, bounds=None):
        self.predict, self.values, self.bounds = predict, np.asarray(values), bounds
        self.total = np.zeros(self.values.shape[0])
        self.count = 0

    def __call__(self, iteration, state, history, info):
        while self.count < state.n_kept:
            self.total += self.predict(state.kept_items[self.count], state.kept_users[self.count])
            self.count += 1
        if self.count:
            pred = self.total / self.count
        else:
            pred = self.predict(state.item_rows, state.user_rows)
        if self.bounds is not None:
            pred = np.clip(pred, *self.bounds)
        _record_val_rmse(np.sqrt(np.mean((pred - self.values) ** 2)), history, info)


def kept_draws(iteration, state, history, info):
    """A sampler's count of draws kept so far, as ``info["kept"]``."""
    info["kept"] = state.n_kept


class Progress:
    """One line per iteration on stderr (`progress_line`): iteration of the budget, its
    figures (the cost by default), the iteration's time, the time so far, the validation RMSE,
    and the time the rest of the budget would take.

    Parameters
    ----------
    max_iter : int
        The budget, counted over the resumed iterations too.
    start_iteration, start_seconds : int, float
        Where this run starts (a resumed checkpoint's iterations and seconds).
    out : file, optional
        Default: sys.stderr at the time of each line.
    unit : str, default "iter"
        What an iteration is called ("sweep" for a sampler).
    figures : sequence of (key, format spec), default (("cost", ".6g"),)
        The entries of ``info`` shown, in order.
    """

    def __init__(self, max_iter=None, start_iteration=0, start_seconds=0.0, out=None, *,
                 unit="iter", figures=(("cost", ".6g"),)):
        self.max_iter = max_iter
        self.start_iteration, self.start_seconds = int(start_iteration), float(start_seconds)
        self.previous_seconds = self.start_seconds
        self.out = out
        self.unit, self.figures = unit, tuple(figures)

    def __call__(self, iteration, params, history, info):
        budget = iteration if self.max_iter is None else self.max_iter
        shown = [(key, format(info[key], spec)) for key, spec in self.figures]
        print(progress_line(iteration, budget, None, info["seconds"], self.previous_seconds,
                            start_iteration=self.start_iteration,
                            start_seconds=self.start_seconds, val_rmse=info.get("val_rmse"),
                            unit=self.unit, figures=shown),
              file=self.out or sys.stderr, flush=True)
        self.previous_seconds = info["seconds"]


def _duration(seconds):
    """``12.3s``, ``4m05s`` or ``2h03m``: short, and readable at any length of run."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def progress_line(iteration, max_iter, cost, seconds, previous_seconds, *, start_iteration=0,
                  start_seconds=0.0, val_rmse=None, unit="iter", figures=None):
    """One line: the iteration of the budget ``max_iter``, the cost, this iteration's time
    (``seconds - previous_seconds``), the time so far, the validation RMSE when there is one,
    and the time left if the whole budget is used (an upper bound: the convergence test
    usually stops sooner), from the mean time per iteration since this run started at
    ``start_iteration`` / ``start_seconds`` (past 0 when resumed from a checkpoint).

    ``unit`` names an iteration; ``figures``, (name, text) pairs, are shown in place of the cost.
    """
    done = max(1, iteration - start_iteration)
    mean = (seconds - start_seconds) / done
    left = max(0, int(max_iter) - iteration) * mean
    if figures is None:
        figures = [("cost", f"{cost:.6g}")]
    parts = [
        f"{unit} {iteration:4d}/{int(max_iter)}",
        *(f"{name} {text}" for name, text in figures),
        f"{_duration(seconds - previous_seconds)}/{unit}",
        f"elapsed {_duration(seconds)}",
    ]
    if val_rmse is not None:
        parts.append(f"val_rmse {val_rmse:.4f}")
    parts.append(f"eta <= {_duration(left)}")
    return "  ".join(parts)


def debug_log(iteration, params, history, info):
    """Each iteration's figures as a DEBUG record of the ``fastcofi`` logger."""
    logger.debug("iteration %d: %s", iteration, info)


class UserCallback:
    """``callback(iteration, info) -> stop``, the user's."""

    def __init__(self, callback):
        self.callback = callback

    def __call__(self, iteration, params, history, info):
        return self.callback(iteration, info)


class Checkpointing:
    """The parameters, iteration and whole history written every ``every`` iterations.

    ``to_arrays``, when given, turns what the solver reports as its parameters into ``(params
    vector, state)``, the named arrays a run needs beyond the vector to continue (a Gibbs
    chain's); without it the parameters are the vector and there is no state.
    """

    def __init__(self, path, every, fingerprint, observers, to_arrays=None):
        self.path, self.every, self.fingerprint = path, int(every), fingerprint
        self.observers = observers
        self.to_arrays = to_arrays

    def __call__(self, iteration, params, history, info):
        if iteration % self.every == 0:
            self.write(params, iteration, history)

    def write(self, params, iteration, history):
        state = None
        if self.to_arrays is not None:
            params, state = self.to_arrays(params)
        write_checkpoint(self.path, params, iteration, self.observers.merged(history),
                         self.fingerprint, state=state)

