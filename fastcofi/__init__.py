"""fastcofi: collaborative filtering by low-rank matrix factorization.

Importing the package does no work and changes no environment variable.
"""

from . import datasets
from .data._source import RatingsFileError
from .data.ratings import Ratings
from .data.read import read_ratings
from .data.titles import read_titles
from .evaluate import metrics, split
from .evaluate.cross_validation import cross_validate
from .model import MatrixFactorization
from .model_file import ModelFileError, load_model
from .train.solvers import ConvergenceWarning, DivergenceError

__all__ = [
    "MatrixFactorization",
    "Ratings",
    "read_ratings",
    "read_titles",
    "RatingsFileError",
    "load_model",
    "ModelFileError",
    "ConvergenceWarning",
    "DivergenceError",
    "datasets",
    "metrics",
    "split",
    "cross_validate",
    "__version__",
]
__version__ = "0.1.0"
