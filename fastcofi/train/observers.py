"""What watches a training run: one object per concern, each called once per iteration.

A solver reports each iteration through ``on_iteration(iteration, params, history) -> stop``;
`Observers` turns that into ``observer(iteration, params, history, info) -> stop`` calls on
the observers asked for, in order (a later one sees what earlier ones added to ``info``), and
carries a resumed run's earlier iterations so that numbering, seconds and history continue.
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
    "UserCallback",
    "debug_log",
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
        info["val_rmse"] = float(self.rmse(params))
        history.setdefault("val_rmse", []).append(info["val_rmse"])
        if info["val_rmse"] < self.best_rmse:
            self.best_rmse, self.best_iteration = info["val_rmse"], iteration
            self.best_params = np.array(params, copy=True)
        return iteration - max(self.best_iteration, self.start) >= self.patience


class Progress:
    """One line per iteration on stderr (`progress_line`): iteration of the budget, cost, the
    iteration's time, the time so far, the validation RMSE, and the time the rest of the budget
    would take.

    Parameters
    ----------
    max_iter : int
        The budget, counted over the resumed iterations too.
    start_iteration, start_seconds : int, float
        Where this run starts (a resumed checkpoint's iterations and seconds).
    out : file, optional
        Default: sys.stderr at the time of each line.
    """

    def __init__(self, max_iter=None, start_iteration=0, start_seconds=0.0, out=None):
        self.max_iter = max_iter
        self.start_iteration, self.start_seconds = int(start_iteration), float(start_seconds)
        self.previous_seconds = self.start_seconds
        self.out = out

    def __call__(self, iteration, params, history, info):
        budget = iteration if self.max_iter is None else self.max_iter
        print(progress_line(iteration, budget, info["cost"], info["seconds"],
                            self.previous_seconds, start_iteration=self.start_iteration,
                            start_seconds=self.start_seconds, val_rmse=info.get("val_rmse")),
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
                  start_seconds=0.0, val_rmse=None):
    """One line: the iteration of the budget ``max_iter``, the cost, this iteration's time
    (``seconds - previous_seconds``), the time so far, the validation RMSE when there is one,
    and the time left if the whole budget is used (an upper bound: the convergence test
    usually stops sooner), from the mean time per iteration since this run started at
    ``start_iteration`` / ``start_seconds`` (past 0 when resumed from a checkpoint).
    """
    done = max(1, iteration - start_iteration)
    mean = (seconds - start_seconds) / done
    left = max(0, int(max_iter) - iteration) * mean
    parts = [
        f"iter {iteration:4d}/{int(max_iter)}",
        f"cost {cost:.6g}",
        f"{_duration(seconds - previous_seconds)}/iter",
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
    """The parameters, iteration and whole history written every ``every`` iterations."""

    def __init__(self, path, every, fingerprint, observers):
        self.path, self.every, self.fingerprint = path, int(every), fingerprint
        self.observers = observers

    def __call__(self, iteration, params, history, info):
        if iteration % self.every == 0:
            self.write(params, iteration, history)

    def write(self, params, iteration, history):
        write_checkpoint(self.path, params, iteration, self.observers.merged(history),
                         self.fingerprint)

