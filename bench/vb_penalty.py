"""Can variational Bayes set the penalty that CG and ALS minimize with? (issue #4's open lead)

    python3 bench/vb_penalty.py

On ML-100K u1 and the first two sets of `bench/generality.py`: fit ``solver="vb"``, turn its
learned variances into penalties (per factor dimension ``noise / sqrt(item prior x user prior)``,
one scalar by their geometric mean), then fit ALS and CG with that penalty, unweighted and under
the default square-root count weighting (the penalty divided by the square root of the mean
rating counts' geometric mean). Prints and writes ``bench/results/vb_penalty.json``.
"""

import argparse
import json
import time
import warnings

import numpy as np
from generality import SETS, synthetic_set
from harness import RESULTS, environment, shared_data, write_json

from fastcofi import MatrixFactorization, read_ratings
from fastcofi.data.ratings import value_moments
from fastcofi.evaluate.split import random_split
from fastcofi.train.objective import FlatObjective
from fastcofi.train.vb import minimize_vb

ML100K = shared_data() / "ml-100k"


def vb_fit(train, k=10, init_noise=(1.0, 1.0 / 16)):
    """What ``fit`` runs for ``solver="vb"``, through the public training functions, so that
    its starts can be chosen and the solver's whole state kept (a fitted model keeps only part
    of it). Returns the fitted model (its predictions are fit's) and the state."""
    model = MatrixFactorization(n_factors=k, solver="vb", random_state=0)
    mu, _ = value_moments(train.values)
    objective = FlatObjective(train, k, 0.0, mu=mu, learn_biases=True, reg_bias=0.0)
    rng = np.random.default_rng(model.random_state)
    params = objective.pack(
        rng.normal(0.0, model.init_scale, size=(train.n_items, k)),
        rng.normal(0.0, model.init_scale, size=(train.n_users, k)),
        np.zeros(train.n_items), np.zeros(train.n_users),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        params, history, state = minimize_vb(objective, params, max_iter=model.max_iter,
                                             tol=model.tol, init_noise=init_noise)
    X, Theta, item_bias, user_bias = objective.unpack(params)
    model.item_factors_, model.user_factors_ = np.array(X), np.array(Theta)
    model.item_bias_, model.user_bias_ = np.array(item_bias), np.array(user_bias)
    model.item_ids_, model.user_ids_ = train.item_ids, train.user_ids
    model.global_mean_, model.item_means_ = mu, None
    model.rating_range_ = (float(train.values.min()), float(train.values.max()))
    model.seen_indptr_, model.seen_indices_ = train.by_user[:2]
    model.reg_ = model.reg_bias_ = 0.0
    model.solver_, model.reg_weighting_ = "vb", "none"
    model.n_iter_, model.history_ = len(history["cost"]), history
    return model, state


def sets():
    yield "ML-100K u1", read_ratings(ML100K / "u1.base"), read_ratings(ML100K / "u1.test")
    for name in list(SETS)[:2]:
        yield (name, *random_split(synthetic_set(name)[0], 0.2, random_state=0))


def rmse(model, test):
    u, i, y = test.coo()
    return float(np.sqrt(np.mean((model.predict(test.user_ids[u], test.item_ids[i]) - y) ** 2)))


def main():
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    out = {}
    for name, train, test in sets():
        t = time.perf_counter()
        vb, state = vb_fit(train)
        vb_s = time.perf_counter() - t
        k = vb.n_factors
        noise = state["noise_variance"]
        item_var, user_var = state["item_variances"], state["user_variances"]
        per_dim = noise / np.sqrt(item_var[:k] * user_var[:k])
        reg = float(np.exp(np.mean(np.log(per_dim))))
        reg_bias = float(noise / np.sqrt(item_var[k] * user_var[k]))
        # the geometric mean of the mean rating counts per user and per item, square-rooted
        sqrt_scale = float(np.sqrt(train.nnz / np.sqrt(train.n_users * train.n_items)))
        row = {"vb_rmse": rmse(vb, test), "vb_s": vb_s, "noise_variance": float(noise),
               "penalty_per_dimension": sorted(per_dim.tolist()), "reg": reg,
               "reg_bias": reg_bias, "sqrt_scale": sqrt_scale, "fits": {}}
        fits = {
            "defaults": {},
            "unweighted, VB penalty": {"reg": reg, "reg_bias": reg_bias, "reg_weighting": "none"},
            "square-root weighted, VB penalty": {"reg": reg / sqrt_scale,
                                                 "reg_bias": reg_bias / sqrt_scale},
        }
        for fit_name, params in fits.items():
            for solver in ("als", "cg"):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model = MatrixFactorization(solver=solver, random_state=0, **params)
                    model.fit(train)
                row["fits"][f"{fit_name}, {solver}"] = rmse(model, test)
        out[name] = row
        print(name, json.dumps(row), flush=True)
    write_json(RESULTS / "vb_penalty.json", {**out, "environment": environment()})


if __name__ == "__main__":
    main()
