"""Variational Bayes from each of its two starts, and the start its free energy keeps.

    python3 bench/vb_starts.py

``solver="vb"`` runs from an initial noise variance of the ratings' variance and of a sixteenth
of it, and keeps the run with the higher free energy (`fastcofi.train.vb.minimize_vb`). This
fits each start alone and both, on the planted sets of ``fastcofi.data.synthetic.planted`` (rank 3, noise 0.3,
1.0 and 1.5, k = 8, 10 and 20; RMSE as a multiple of the noise floor), on ML-100K u1 and u2 and
on the small dense set of `bench/generality.py`, beside CG with its default penalty. Prints and
writes ``bench/results/vb_starts.json``.
"""

import argparse
import json

import numpy as np
from generality import synthetic_set
from harness import RESULTS, environment, write_json
from vb_penalty import ML100K, rmse, vb_fit

from fastcofi import MatrixFactorization, Ratings, read_ratings
from fastcofi.data.synthetic import planted
from fastcofi.evaluate.split import random_split

STARTS = {"first start (1)": 1.0, "second start (1/16)": 1.0 / 16, "both (kept)": (1.0, 1.0 / 16)}


def sets():
    for noise in (0.3, 1.0, 1.5):
        train, (users, items, values, truth) = planted(noise=noise)
        test = Ratings.from_arrays(users, items, values)
        floor = float(np.sqrt(np.mean((truth - values) ** 2)))
        for k in (8, 10, 20):
            yield f"planted, noise {noise}, k={k}", train, test, k, floor
    for fold in ("u1", "u2"):
        yield (f"ML-100K {fold}", read_ratings(ML100K / f"{fold}.base"),
               read_ratings(ML100K / f"{fold}.test"), 10, None)
    ratings = synthetic_set("small dense, whole stars")[0]
    yield ("small dense", *random_split(ratings, 0.2, random_state=0), 10, None)


def main():
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    out = {}
    for name, train, test, k, floor in sets():
        row = {"floor": floor}
        scale = floor or 1.0
        for start, init_noise in STARTS.items():
            model, _ = vb_fit(train, k, init_noise)
            row[start] = {"rmse": rmse(model, test) / scale,
                          "free_energy": -model.history_["cost"][-1]}
        cg = MatrixFactorization(n_factors=k, random_state=0).fit(train)
        row["CG, default penalty"] = {"rmse": rmse(cg, test) / scale}
        out[name] = row
        print(name, json.dumps(row), flush=True)
    write_json(RESULTS / "vb_starts.json", {**out, "environment": environment()})


if __name__ == "__main__":
    main()
