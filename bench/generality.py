"""Do the defaults generalize? fastcofi's defaults on sets of other shapes, densities and scales.

    python3 bench/generality.py            # fastcofi only
    /path/to/peers-venv/bin/python bench/generality.py   # plus Surprise SVD++ when importable
    python3 bench/generality.py --sets movielens         # only the sets cut from ML-100K

Synthetic sets (``--sets synthetic``) have planted low-rank factors plus biases, power-law
popularity and activity, and ratings rounded to a scale; the noise-free value of each rating
gives the floor no model can beat (the RMSE of the planted truth after rounding). Their signal is
far stronger than real ratings' (the planted interaction's variance is 1, about the noise's),
so they show where a penalty tuned on real data over-shrinks.

The MovieLens-derived sets (``--sets movielens``, when ``../shared/data/ml-100k`` or
``$FASTCOFI_TEST_DATA/ml-100k`` is present) are real ratings of other densities and sizes: the
dense core (the 300 busiest users x the 300 most rated items), a sparse random quarter of all
ratings, and every user cut to at most 20 random ratings (many light users).

A random 20 % of each set is held out. Writes bench/results/generality.json (the sets run are
replaced, the others kept).
"""

import argparse
import json
import sys
import time
import warnings

import numpy as np
from harness import RESULTS, environment, shared_data, write_json

from fastcofi import MatrixFactorization, Ratings
from fastcofi.datasets import synthetic
from fastcofi.evaluate.split import random_split

SETS = {
    # name: (users, items, ratings, rank, noise, step, scale)
    "small dense, whole stars": (600, 400, 60_000, 5, 0.6, 1.0, (1, 5)),
    "sparse, half stars": (20_000, 5_000, 400_000, 10, 0.7, 0.5, (0.5, 5)),
    "long tail, 1-10 scale": (50_000, 20_000, 1_000_000, 8, 1.0, 1.0, (1, 10)),
}

MODELS = {
    "defaults (CG)": {},
    "defaults, ALS": {"solver": "als"},
    "variational Bayes (solver='vb')": {"solver": "vb"},
    "previous defaults (count weighting, reg 0.13, reg_bias 0.05)": {
        "reg": 0.13, "reg_bias": 0.05, "reg_weighting": "count"},
    "item means only": {"normalize": "item_mean", "reg": 1e9, "reg_weighting": "none",
                        "max_iter": 1},
    "tutorial (item mean, reg 10)": {"normalize": "item_mean", "reg": 10.0,
                                     "reg_weighting": "none"},
}


# Surprise's SVD++ takes minutes per million ratings on this machine.
SVDPP_MAX_RATINGS = 500_000


def surprise_models(train, test_users, test_items, test_values, scale):
    """Surprise's SVD++ and SVD (defaults) on the same split, when Surprise is installed."""
    try:
        import pandas as pd
        from surprise import SVD, Dataset, Reader, SVDpp
    except ImportError:
        return {}
    u, i, v = train.coo()
    frame = pd.DataFrame({"u": train.user_ids[u], "i": train.item_ids[i], "r": v})
    data = Dataset.load_from_df(frame, Reader(rating_scale=scale)).build_full_trainset()
    out = {}
    for name, algo in (("Surprise SVD++ (defaults)", SVDpp(random_state=0)),
                       ("Surprise SVD (defaults)", SVD(random_state=0))):
        t = time.perf_counter()
        algo.fit(data)
        fit = time.perf_counter() - t
        pred = np.array([algo.predict(a, b).est for a, b in zip(test_users, test_items)])
        out[name] = {"rmse": float(np.sqrt(np.mean((pred - test_values) ** 2))), "fit_s": fit}
    return out


def synthetic_set(name):
    """The planted set ``SETS[name]``: (ratings, its truth as `synthetic` returns it)."""
    users, items, n, rank, noise, step, scale = SETS[name]
    return synthetic(users, items, n, rank=rank, noise=noise, seed=0, step=step,
                     rating_scale=scale, return_truth=True)


def synthetic_sets():
    """name -> (ratings, rating scale, floor RMSE) for the planted sets."""
    for name in SETS:
        ratings, truth = synthetic_set(name)
        scale = SETS[name][-1]
        clean = np.clip(truth["clean"], *scale)
        # the floor: predicting the noise-free value of every rating
        floor = float(np.sqrt(np.mean((clean - ratings.coo()[2]) ** 2)))
        yield name, ratings, scale, floor


def movielens_sets():
    """name -> (ratings, rating scale, None) cut from ML-100K's u.data, when it is present."""
    path = shared_data() / "ml-100k" / "u.data"
    if not path.exists():
        print(f"skipping the MovieLens-derived sets: {path} not found", file=sys.stderr)
        return
    users, items, values = np.loadtxt(path, dtype=np.int64)[:, :3].T
    rng = np.random.default_rng(0)
    busiest_users = np.argsort(-np.bincount(users), kind="stable")[:300]
    busiest_items = np.argsort(-np.bincount(items), kind="stable")[:300]
    core = np.isin(users, busiest_users) & np.isin(items, busiest_items)
    quarter = rng.random(users.shape[0]) < 0.25
    light = np.zeros(users.shape[0], dtype=bool)
    for u in np.unique(users):
        rows = np.flatnonzero(users == u)
        light[rng.permutation(rows)[:20]] = True
    for name, keep in (("ML-100K dense core (300 x 300 busiest)", core),
                       ("ML-100K sparse quarter", quarter),
                       ("ML-100K light users (<= 20 ratings each)", light)):
        yield name, Ratings.from_arrays(users[keep], items[keep], values[keep].astype(float)), \
            (1, 5), None


SET_GROUPS = {"synthetic": synthetic_sets, "movielens": movielens_sets}


def run_set(ratings, scale, floor):
    train, test = random_split(ratings, 0.2, random_state=0)
    u, i, y = test.coo()
    tu, ti = test.user_ids[u], test.item_ids[i]
    row = {"shape": [ratings.n_users, ratings.n_items, ratings.nnz], "floor_rmse": floor,
           "models": {}}
    for model_name, params in MODELS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = MatrixFactorization(random_state=0, **params)
            t = time.perf_counter()
            model.fit(train)
            fit = time.perf_counter() - t
        rmse = float(np.sqrt(np.mean((model.predict(tu, ti) - y) ** 2)))
        row["models"][model_name] = {"rmse": rmse, "fit_s": fit}
    if ratings.nnz <= SVDPP_MAX_RATINGS:
        row["models"].update(surprise_models(train, tu, ti, y, scale))
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="synthetic,movielens")
    args = parser.parse_args()
    path = RESULTS / "generality.json"
    out = json.loads(path.read_text()) if path.exists() else {}
    for group in args.sets.split(","):
        for name, ratings, scale, floor in SET_GROUPS[group]():
            out[name] = run_set(ratings, scale, floor)
            print(name, json.dumps(out[name]), flush=True)
    out["environment"] = environment()
    write_json(path, out)


if __name__ == "__main__":
    main()
