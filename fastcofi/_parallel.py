"""Threads: numba's thread count for a block, the lock around parallel kernels where numba's
threading layer is not thread-safe, and BLAS held to one thread while kernels or requests use the
cores. Results never depend on any of these."""

import threading
from contextlib import contextmanager, nullcontext

import numba
import numpy as np

__all__ = ["check_n_threads", "one_blas_thread", "parallel_kernels", "threads"]

_THREAD_SAFE_LAYERS = ("tbb", "omp")
_PARALLEL_LOCK = threading.Lock()
_layer_safe = False


def check_n_threads(n_threads, name="n_threads"):
    """``n_threads`` as an int, or None; ValueError naming ``name`` for anything else."""
    if n_threads is None:
        return None
    if isinstance(n_threads, bool) or not isinstance(n_threads, (int, np.integer)) or n_threads < 1:
        raise ValueError(f"{name} must be a positive integer or None, found {n_threads!r}")
    return int(n_threads)


@contextmanager
def threads(n_threads):
    """Run numba's parallel kernels on ``n_threads`` threads inside the block (None: numba's
    default).

    numba's thread count is per calling thread, so this does not affect other threads.
    """
    n_threads = check_n_threads(n_threads)
    if n_threads is None:
        yield
        return
    previous = numba.get_num_threads()
    numba.set_num_threads(min(n_threads, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def _parallel_guard():
    """A lock around parallel kernel calls unless numba runs on a thread-safe threading layer."""
    return nullcontext() if _layer_safe else _PARALLEL_LOCK


def _note_layer():
    global _layer_safe
    try:
        _layer_safe = numba.threading_layer() in _THREAD_SAFE_LAYERS
    except ValueError:  # no parallel kernel has run yet
        pass


@contextmanager
def parallel_kernels(n_threads=None):
    """The block calls numba's parallel kernels, possibly from several threads at once (serving).

    Numba's parallel kernels may only be entered from several threads at once under the ``tbb``
    or ``omp`` threading layers; under ``workqueue`` (or before numba has chosen a layer) the
    calls are serialized by a lock.
    """
    with threads(n_threads), _parallel_guard():
        yield
        _note_layer()


def one_blas_thread():
    """Hold BLAS to one thread inside the block: numba's threads (or concurrent requests) already
    use the cores, and OpenBLAS's own threads would spin against them (measured 5x slower CG on
    ML-100K with 2 cores)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")
