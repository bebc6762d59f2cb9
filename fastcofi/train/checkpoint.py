"""Training checkpoints: the parameter vector, iteration count and history, written atomically.

A checkpoint is one ``.npz`` of arrays (no pickle). It records a fingerprint of the problem (the
hyperparameters that shape the parameter vector and the ratings' sizes) so that a resume with
other data or settings is refused instead of silently continuing from the wrong state.
"""

import json
import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["write_checkpoint", "read_checkpoint"]

_FORMAT = "fastcofi-checkpoint"
_VERSION = 1


def write_checkpoint(path, params, iteration, history, fingerprint):
    """Write atomically: a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    arrays = {
        "format": np.array(_FORMAT),
        "version": np.array(_VERSION),
        "fingerprint": np.array(json.dumps(fingerprint, sort_keys=True)),
        "params": np.asarray(params, dtype=np.float64),
        "iteration": np.array(int(iteration)),
    }
    for key, values in history.items():
        arrays[f"history_{key}"] = np.asarray(values, dtype=np.float64)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_checkpoint(path, fingerprint):
    """Return ``(params, iteration, history)`` from ``path``.

    Raises
    ------
    ValueError
        When the file is not a fastcofi checkpoint, or was written for other data or settings.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            if "format" not in data.files or str(data["format"]) != _FORMAT:
                raise ValueError(f"{path}: not a fastcofi checkpoint")
            if int(data["version"]) != _VERSION:
                raise ValueError(
                    f"{path}: checkpoint version {int(data['version'])} is not supported "
                    f"(this fastcofi reads version {_VERSION})"
                )
            stored = json.loads(str(data["fingerprint"]))
            if stored != json.loads(json.dumps(fingerprint, sort_keys=True)):
                changed = sorted(k for k in set(stored) | set(fingerprint)
                                 if stored.get(k) != fingerprint.get(k))
                raise ValueError(
                    f"{path}: checkpoint was written for other data or settings "
                    f"(differs in {', '.join(changed)}); remove it or train without resume"
                )
            history = {
                key[len("history_"):]: data[key].tolist()
                for key in data.files if key.startswith("history_")
            }
            return np.array(data["params"]), int(data["iteration"]), history
    except (OSError, EOFError, KeyError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(f"{path}: unreadable checkpoint ({exc})") from None
    except ValueError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ValueError(f"{path}: unreadable checkpoint ({exc})") from None
