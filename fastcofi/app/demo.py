"""The tutorial's toy example: 10 movies, 5 users, and a new user who rated three movies."""

from importlib import resources
from pathlib import Path

import numpy as np

from ..data.ratings import Ratings
from ..model import MatrixFactorization

__all__ = ["load_toy", "run_demo", "NEW_USER_RATINGS", "DEMO_REG"]

# The new user's ratings in the tutorial: movie id -> rating.
NEW_USER_RATINGS = {1: 7.0, 5: 8.0, 8: 3.0}
NEW_USER_ID = 6
# The tutorial's reg of 30 shrinks every factor to zero once ratings are mean-normalized; at 1 the
# factors still carry the users' tastes on this 10 x 6 example (see test_demo).
DEMO_REG = 1.0


def _toy_dir():
    packaged = resources.files("fastcofi") / "_data" / "seed-toy"
    if packaged.is_dir():
        return packaged
    # Running from a source checkout: the files live in the repository's data/ folder.
    return Path(__file__).resolve().parents[2] / "data" / "seed-toy"


def load_toy():
    """The toy ratings (movies x users, 0 = unrated) and the titles.

    Returns
    -------
    matrix : ndarray of shape (10, 5), float64
    titles : dict of int -> str
        Movie id (1-based) to title.
    """
    folder = _toy_dir()
    titles = {}
    for line in (folder / "movies.txt").read_text(encoding="utf-8").splitlines():
        movie_id, title = line.split(" ", 1)
        titles[int(movie_id)] = title
    matrix = np.zeros((len(titles), 5))
    for line in (folder / "ratings.tsv").read_text(encoding="utf-8").splitlines():
        movie, user, rating = line.split("\t")
        matrix[int(movie) - 1, int(user) - 1] = float(rating)
    return matrix, titles


def toy_ratings_with_new_user():
    """The toy ratings plus the new user (id 6), as `Ratings` with movie ids 1..10."""
    matrix, titles = load_toy()
    new_column = np.zeros((matrix.shape[0], 1))
    for movie, rating in NEW_USER_RATINGS.items():
        new_column[movie - 1, 0] = rating
    full = np.hstack([matrix, new_column])
    ratings = Ratings.from_dense(
        full,
        user_ids=np.arange(1, full.shape[1] + 1),
        item_ids=np.arange(1, full.shape[0] + 1),
    )
    return ratings, titles


def run_demo(reg=DEMO_REG, n_factors=3, max_iter=100, random_state=0):
    """Train on the toy example and rank every movie for the new user.

    Returns
    -------
    model : MatrixFactorization
    ranking : list of (title, predicted rating), highest first
    """
    ratings, titles = toy_ratings_with_new_user()
    # The tutorial's model: item-mean normalization and a plain (unweighted) penalty.
    model = MatrixFactorization(
        n_factors, reg=reg, normalize="item_mean", reg_weighting="none", max_iter=max_iter,
        tol=1e-4, random_state=random_state, n_threads=1,
    )
    model.fit(ratings)
    movies = model.item_ids_
    # Unclipped scores: the toy's 0..10 scale makes clipping irrelevant, and raw scores keep ties
    # apart the way the tutorial prints them.
    item_ids, scores = model.recommend(NEW_USER_ID, n=len(movies), exclude_seen=False)
    return model, [(titles[int(m)], float(s)) for m, s in zip(item_ids, scores)]
