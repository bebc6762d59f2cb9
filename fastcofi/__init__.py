"""fastcofi: collaborative filtering by low-rank matrix factorization.

Importing the package does no work and changes no environment variable.
"""

from . import datasets, metrics, split
from .evaluation import cross_validate
from .io import ModelFileError, RatingsFileError, load_model, read_ratings, read_titles
from .model import MatrixFactorization
from .ratings import Ratings
from .solvers import ConvergenceWarning

__all__ = [
    "MatrixFactorization",
    "Ratings",
    "read_ratings",
    "read_titles",
    "RatingsFileError",
    "load_model",
    "ModelFileError",
    "ConvergenceWarning",
    "datasets",
    "metrics",
    "split",
    "cross_validate",
    "__version__",
]
__version__ = "0.1.0"
