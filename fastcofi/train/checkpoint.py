"""Training checkpoints: the parameter vector, iteration count and history, written atomically.

A checkpoint is one ``.npz`` of arrays (no pickle). It records a fingerprint of the problem (the
hyperparameters that shape the parameter vector and the ratings' sizes) so that a resume with
other data or settings is refused instead of silently continuing from the wrong state.
"""

import json

import numpy as np

from .._npzfile import check_header, header, read_npz, write_npz

__all__ = ["CheckpointError", "write_checkpoint", "read_checkpoint"]

_FORMAT = "fastcofi-checkpoint"
# Version 2 marks the file like the model file does; version 1 ("format"/"version" members)
# still loads.
_VERSION = 2
_WHAT = "checkpoint"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from: unreadable, of another format or version, or
    written for other data or settings."""

    def __init__(self, path, message):
        super().__init__(f"{path}: {message}")
        self.path = str(path)


class _Unreadable(CheckpointError):
    """A class, not a function: `read_npz` catches what it raises with ``except error``."""

    def __init__(self, path, message):
        super().__init__(path, f"unreadable checkpoint: {message}")


def write_checkpoint(path, params, iteration, history, fingerprint, state=None):
    """Write atomically: a temporary file in the same folder, fsync, then rename over ``path``.

    ``state``: optional dict of named arrays a solver needs beyond ``params`` to continue (a
    Gibbs chain's hyperparameters, kept draws and stream position), stored as ``state_<name>``.
    """
    arrays = {
        **header(_FORMAT, _VERSION),
        "fingerprint": np.array(json.dumps(fingerprint, sort_keys=True)),
        "params": np.asarray(params, dtype=np.float64),
        "iteration": np.array(int(iteration)),
    }
    for key, values in history.items():
        arrays[f"history_{key}"] = np.asarray(values, dtype=np.float64)
    for key, values in (state or {}).items():
        arrays[f"state_{key}"] = np.asarray(values)
    write_npz(path, arrays, _WHAT)


def read_checkpoint(path, fingerprint, *, with_state=False):
    """Return ``(params, iteration, history)`` from ``path``, and with ``with_state`` a fourth
    item: the dict of ``state`` arrays `write_checkpoint` stored (None when it stored none).

    Raises
    ------
    CheckpointError
        A ``ValueError``: the file is not a readable fastcofi checkpoint, is of an unknown
        version, or was written for other data or settings.
    """
    arrays = read_npz(path, _Unreadable, _WHAT)
    if "fastcofi_format" not in arrays and "format" in arrays:
        if str(arrays["format"]) != _FORMAT or int(arrays.get("version", -1)) != 1:
            raise CheckpointError(path, "not a fastcofi checkpoint")
    else:
        check_header(path, arrays, _FORMAT, (1, _VERSION), CheckpointError, "fastcofi checkpoint")
    try:
        stored = json.loads(str(arrays["fingerprint"]))
        params = np.array(arrays["params"], dtype=np.float64)
        iteration = int(arrays["iteration"])
    except (KeyError, TypeError, ValueError) as exc:
        raise _Unreadable(path, f"a member is missing or malformed ({exc})") from None
    if stored != json.loads(json.dumps(fingerprint, sort_keys=True)):
        changed = sorted(k for k in set(stored) | set(fingerprint)
                         if stored.get(k) != fingerprint.get(k))
        raise CheckpointError(
            path, f"checkpoint was written for other data or settings "
            f"(differs in {', '.join(changed)}); remove it or train without resume"
        )
    history = {
        key[len("history_"):]: arrays[key].tolist() for key in arrays if key.startswith("history_")
    }
    if with_state:
        state = {key[len("state_"):]: np.array(arrays[key])
                 for key in arrays if key.startswith("state_")}
        return params, iteration, history, state or None
    return params, iteration, history
