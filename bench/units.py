"""Does the default penalty follow the ratings' units? The same ratings in other units.

    python3 bench/units.py

Planted sets with continuous ratings (`fastcofi.datasets.synthetic`, no rounding, a scale wide
enough that nothing is clipped), 20 % held out, multiplied by c = 0.25, 1 and 4 before fitting.
Test RMSE is divided by c, so a unit-free default gives the same figure in every column. Fitted
with the defaults (``reg=None``: 1.15 x the ratings' standard deviation) and with the penalty
fixed at 1.3 (the default before it followed the units). Prints and writes
``bench/results/units.json``.
"""

import argparse
import json
import warnings

import numpy as np
from harness import RESULTS, environment, write_json

from fastcofi import MatrixFactorization, Ratings
from fastcofi.datasets import synthetic
from fastcofi.evaluate.split import random_split

# name: (users, items, ratings, rank, noise)
SETS = {
    "300 x 200 x 12k, rank 3": (300, 200, 12_000, 3, 0.6),
    "600 x 400 x 60k, rank 5": (600, 400, 60_000, 5, 0.6),
    "5000 x 2000 x 200k, rank 10": (5_000, 2_000, 200_000, 10, 0.9),
}
UNITS = (0.25, 1.0, 4.0)
PENALTIES = {"defaults (reg=None)": {}, "fixed reg=1.3": {"reg": 1.3}}


def main():
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    out = {}
    for name, (users, items, n, rank, noise) in SETS.items():
        ratings = synthetic(users, items, n, rank=rank, noise=noise, seed=0, step=None,
                            rating_scale=(-100, 100))
        train, test = random_split(ratings, 0.2, random_state=0)
        u, i, y = train.coo()
        tu, ti, ty = test.coo()
        row = {}
        for label, params in PENALTIES.items():
            row[label] = {}
            for c in UNITS:
                scaled = Ratings.from_arrays(train.user_ids[u], train.item_ids[i], y * c)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model = MatrixFactorization(random_state=0, **params).fit(scaled)
                pred = model.predict(test.user_ids[tu], test.item_ids[ti]) / c
                row[label][f"x{c:g}"] = float(np.sqrt(np.mean((pred - ty) ** 2)))
        out[name] = row
        print(name, json.dumps(row), flush=True)
    write_json(RESULTS / "units.json", {**out, "environment": environment()})


if __name__ == "__main__":
    main()
