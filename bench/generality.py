"""Do the defaults generalize? fastcofi's defaults on synthetic sets of other shapes and scales.

    python3 bench/generality.py            # fastcofi only
    /path/to/peers-venv/bin/python bench/generality.py   # plus Surprise SVD++ when importable

Each set has planted low-rank factors plus biases, power-law popularity and activity, and
ratings rounded to a scale; the noise-free value of each rating gives the floor no model can
beat (the RMSE of the planted truth after rounding). A random 20 % of each set is held out.
Writes bench/results/generality.json.
"""

import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastcofi import MatrixFactorization  # noqa: E402
from fastcofi.datasets import synthetic  # noqa: E402
from fastcofi.split import random_split  # noqa: E402

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


def surprise_svdpp(train, test_users, test_items, test_values, scale):
    """Surprise's SVD++ (defaults) on the same split, when Surprise is installed."""
    try:
        import pandas as pd
        from surprise import Dataset, Reader, SVDpp
    except ImportError:
        return {}
    u, i, v = train.coo()
    frame = pd.DataFrame({"u": train.user_ids[u], "i": train.item_ids[i], "r": v})
    data = Dataset.load_from_df(frame, Reader(rating_scale=scale)).build_full_trainset()
    algo = SVDpp(random_state=0)
    t = time.perf_counter()
    algo.fit(data)
    fit = time.perf_counter() - t
    pred = np.array([algo.predict(a, b).est for a, b in zip(test_users, test_items)])
    rmse = float(np.sqrt(np.mean((pred - test_values) ** 2)))
    return {"Surprise SVD++ (defaults)": {"rmse": rmse, "fit_s": fit}}


def main():
    out = {}
    for name, (users, items, n, rank, noise, step, scale) in SETS.items():
        ratings, truth = synthetic(users, items, n, rank=rank, noise=noise, seed=0, step=step,
                                   rating_scale=scale, return_truth=True)
        train, test = random_split(ratings, 0.2, random_state=0)
        u, i, y = test.coo()
        tu, ti = test.user_ids[u], test.item_ids[i]
        clean = np.clip(truth["clean"], *scale)
        # the floor: predicting the noise-free value of every rating
        ru, ri, rv = ratings.coo()
        floor = float(np.sqrt(np.mean((clean - rv) ** 2)))
        row = {"shape": [users, items, ratings.nnz], "floor_rmse": floor, "models": {}}
        for model_name, params in MODELS.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = MatrixFactorization(random_state=0, **params)
                t = time.perf_counter()
                model.fit(train)
                fit = time.perf_counter() - t
            rmse = float(np.sqrt(np.mean((model.predict(tu, ti) - y) ** 2)))
            row["models"][model_name] = {"rmse": rmse, "fit_s": fit}
        if n <= SVDPP_MAX_RATINGS:
            row["models"].update(surprise_svdpp(train, tu, ti, y, scale))
        out[name] = row
        print(name, json.dumps(row), flush=True)
    path = Path(__file__).resolve().parent / "results" / "generality.json"
    path.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
