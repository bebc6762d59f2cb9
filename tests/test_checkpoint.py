import signal
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

from fastcofi import ConvergenceWarning, MatrixFactorization
from fastcofi.data.synthetic import synthetic
from fastcofi.train.checkpoint import read_checkpoint, write_checkpoint

from .conftest import REPO

PARAMS = dict(n_factors=5, reg=0.13, solver="cg", tol=0, random_state=0)


def _data():
    return synthetic(300, 200, 6000, rank=4, noise=0.3, seed=1)


def _fit(max_iter, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return MatrixFactorization(**PARAMS, max_iter=max_iter).fit(_data(), **kwargs)


def test_checkpoint_is_written_and_resume_continues(tmp_path):
    path = tmp_path / "ckpt.npz"
    full = _fit(40)
    first = _fit(20, checkpoint=path, checkpoint_every=10)
    params, iteration, history = read_checkpoint(path, _stored_fingerprint(path))
    assert iteration == 20 and len(history["cost"]) == 20
    resumed = _fit(40, checkpoint=path, resume=True)
    assert resumed.n_iter_ == 40 and len(resumed.history_["cost"]) == 40
    assert resumed.history_["cost"][:20] == first.history_["cost"]
    assert np.all(np.diff(resumed.history_["seconds"]) >= 0)
    # CG restarts its direction on resume, so the path differs a little from an unbroken run
    assert resumed.history_["cost"][-1] == pytest.approx(full.history_["cost"][-1], rel=0.01)
    again = _fit(40, checkpoint=path, resume=True)  # budget already spent: nothing to do
    np.testing.assert_array_equal(again.item_factors_, resumed.item_factors_)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.npz"]


def _stored_fingerprint(path):
    import json

    with np.load(path, allow_pickle=False) as data:
        return json.loads(str(data["fingerprint"]))


def test_resume_refuses_other_settings_and_needs_a_path(tmp_path):
    path = tmp_path / "ckpt.npz"
    _fit(10, checkpoint=path)
    with pytest.raises(ValueError, match="differs in reg"):
        MatrixFactorization(**{**PARAMS, "reg": 0.5}, max_iter=20).fit(
            _data(), checkpoint=path, resume=True
        )
    with pytest.raises(ValueError, match="needs a checkpoint"):
        MatrixFactorization().fit(_data(), resume=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a fastcofi checkpoint"):
        _fit(20, checkpoint=path, resume=True)


KILLED = textwrap.dedent(
    """
    import os, signal, sys, warnings
    sys.path.insert(0, {repo!r})
    from fastcofi import MatrixFactorization
    from fastcofi.datasets import synthetic
    warnings.simplefilter("ignore")

    def die(iteration, info):
        if iteration == {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)

    MatrixFactorization(**{params!r}, max_iter={budget}).fit(
        synthetic(300, 200, 6000, rank=4, noise=0.3, seed=1),
        checkpoint={path!r}, checkpoint_every=7, callback=die,
    )
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("budget, tol, rel", [(80, 0, 0.01), (3000, 1e-6, 0.001)])
def test_sigkill_mid_training_then_resume(tmp_path, budget, tol, rel):
    path = tmp_path / "ckpt.npz"
    params = {**PARAMS, "tol": tol}
    script = KILLED.format(repo=str(REPO), kill_at=40, params=params, budget=budget, path=str(path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.npz"]  # no partial file left
    _, iteration, saved = read_checkpoint(path, _stored_fingerprint(path))
    assert iteration == 35
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        resumed = MatrixFactorization(**params, max_iter=budget).fit(
            _data(), checkpoint=path, resume=True
        )
        unbroken = MatrixFactorization(**params, max_iter=budget).fit(_data())
    assert resumed.history_["cost"][:35] == saved["cost"]  # the first 35 replayed
    # The killed process ran what an unbroken run does, bit for bit, though one of the two may
    # have compiled the kernels and the other loaded them (tests/test_reproducible.py).
    assert saved["cost"][34] == unbroken.history_["cost"][34]
    assert resumed.history_["cost"][-1] == pytest.approx(unbroken.history_["cost"][-1], rel=rel)


def _failing_savez(monkeypatch, fail_on_call):
    """np.savez that writes half of its bytes and then fails (a full disk) on call
    ``fail_on_call``; the calls before it write normally."""
    import io

    real = np.savez
    calls = []

    def savez(file, **arrays):
        calls.append(1)
        if len(calls) < fail_on_call:
            return real(file, **arrays)
        buffer = io.BytesIO()
        real(buffer, **arrays)
        file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", savez)


def test_a_write_that_fails_halfway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    write_checkpoint(path, np.arange(6.0), 10, {"cost": [3.0, 2.0]}, {"n_factors": 2})
    before = path.read_bytes()
    _failing_savez(monkeypatch, fail_on_call=1)
    with pytest.raises(OSError, match="No space left"):
        write_checkpoint(path, np.ones(6), 20, {"cost": [3.0, 2.0, 1.0]}, {"n_factors": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.npz"]  # no temporary file left


def test_training_whose_checkpoint_write_fails_can_resume_from_the_last_good_one(tmp_path,
                                                                              monkeypatch):
    path = tmp_path / "ckpt.npz"
    seen = {}

    def remember(iteration, info):
        seen[iteration] = info["cost"]

    _failing_savez(monkeypatch, fail_on_call=2)
    with pytest.raises(OSError, match="No space left"):
        _fit(30, checkpoint=path, checkpoint_every=5, callback=remember)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.npz"]
    _, iteration, history = read_checkpoint(path, _stored_fingerprint(path))
    assert iteration == 5 and history["cost"] == [seen[i] for i in range(1, 6)]
    resumed = _fit(8, checkpoint=path, resume=True)
    assert resumed.n_iter_ == 8 and resumed.history_["cost"][:5] == history["cost"]


def test_resume_from_files_that_are_not_checkpoints_of_this_version(tmp_path):
    path = tmp_path / "ckpt.npz"
    np.savez(path, params=np.zeros(3))  # an .npz, but not a checkpoint
    with pytest.raises(ValueError, match=r"ckpt\.npz: not a fastcofi checkpoint: an \.npz "
                                         r"without the 'fastcofi_format' marker \(it holds "
                                         r"\['params'\]\)$"):
        _fit(5, checkpoint=path, resume=True)
    _fit(5, checkpoint=path)
    with np.load(path) as data:
        arrays = dict(data)
    np.savez(path, **{**arrays, "format_version": np.array(7)})
    with pytest.raises(ValueError, match=r"ckpt\.npz: a newer fastcofi checkpoint format "
                                         r"version 7; this fastcofi reads"):
        _fit(5, checkpoint=path, resume=True)
    del arrays["fingerprint"]
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=r"ckpt\.npz: unreadable checkpoint: a member is missing "
                                         r"or malformed \(.*fingerprint"):
        _fit(5, checkpoint=path, resume=True)
    path.write_bytes(path.read_bytes()[:200])  # truncated
    with pytest.raises(ValueError, match=r"ckpt\.npz: unreadable checkpoint: corrupted or "
                                         r"truncated"):
        _fit(5, checkpoint=path, resume=True)
    path.write_bytes(b"iteration,cost\n1,2.0\n")
    with pytest.raises(ValueError, match=r"ckpt\.npz: unreadable checkpoint: not a fastcofi "
                                         r"checkpoint: expected an \.npz \(zip\) archive, found a "
                                         r"file starting with b'iter'"):
        _fit(5, checkpoint=path, resume=True)
    path.unlink()
    # No checkpoint yet: resume starts from scratch and writes one.
    assert _fit(5, checkpoint=path, resume=True).n_iter_ == 5 and path.exists()
