"""Data sets: MovieLens releases on demand, and synthetic ratings with a planted low-rank truth.

The public face of :mod:`fastcofi.data.movielens` (:func:`fetch`, :func:`load`) and
:mod:`fastcofi.data.synthetic` (:func:`synthetic`).
"""

from .data.movielens import DATASETS, ChecksumError, DownloadError, data_home, fetch, load
from .data.synthetic import synthetic

__all__ = ["DATASETS", "ChecksumError", "DownloadError", "data_home", "fetch", "load", "synthetic"]
