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
    """One line per iteration on stderr: iteration, cost, seconds (and validation RMSE)."""

    def __init__(self, out=None):
        self.out = out

    def __call__(self, iteration, params, history, info):
        extra = f"  val_rmse {info['val_rmse']:.4f}" if "val_rmse" in info else ""
        print(f"iter {iteration:4d}  cost {info['cost']:.6g}  {info['seconds']:.2f}s{extra}",
              file=self.out or sys.stderr)


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

