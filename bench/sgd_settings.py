"""How SGD's defaults were chosen: probe RMSE by epoch for other penalties and starting scales.

    python3 bench/sgd_settings.py --data DIR [--sizes 1e6,1e7] [--epochs 25] [--out NAME]

On protocol S's planted sets (``DIR/<size>/`` as bench/compare_scale.py writes them), fits
``MatrixFactorization(n_factors=32, solver="sgd", tol=0, max_iter=EPOCHS)`` with the probe set
as validation (its curve only: ``patience`` above the budget) for the default penalty times
0.5, 1, 1.5 and 2, and for ``init_scale=0.1`` (the other solvers' start) against the default
0.01. Prints and writes each variant's probe RMSE after every epoch, its best and where.
Writes bench/results/NAME.json (``sgd_settings`` by default).
"""

import argparse
import warnings
from pathlib import Path

import numpy as np
from harness import RESULTS, environment, write_json

from fastcofi import MatrixFactorization, Ratings
from fastcofi._params import SGD_REG_PER_STD
from fastcofi.data.ratings import value_moments

VARIANTS = {"reg x0.5": {"reg": 0.5}, "defaults": {}, "reg x1.5": {"reg": 1.5},
            "reg x2": {"reg": 2.0}, "init_scale 0.1": {"init_scale": 0.1}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--sizes", default="1e6,1e7")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--out", default="sgd_settings")
    args = parser.parse_args()
    out = {"environment": environment(), "epochs": args.epochs, "sizes": {}}
    for size in args.sizes.split(","):
        folder = Path(args.data) / f"{float(size):.0e}"
        arrays = {name: np.load(folder / f"{name}.npy") for name in (
            "train_users", "train_items", "train_values", "probe_users", "probe_items",
            "probe_values")}
        train = Ratings.from_arrays(arrays["train_users"], arrays["train_items"],
                                    arrays["train_values"])
        probe = Ratings.from_arrays(arrays["probe_users"], arrays["probe_items"],
                                    arrays["probe_values"])
        default_reg = SGD_REG_PER_STD * np.sqrt(value_moments(train.values)[1])
        rows = {}
        for name, change in VARIANTS.items():
            params = dict(change)
            if "reg" in params:
                params["reg"] = params["reg"] * default_reg
            model = MatrixFactorization(32, solver="sgd", tol=0, max_iter=args.epochs,
                                        patience=args.epochs + 1, random_state=0, **params)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.fit(train, validation=probe)
            curve = [float(v) for v in model.history_["val_rmse"]]
            best = int(np.argmin(curve))
            rows[name] = {"reg": model.reg_, "init_scale": params.get("init_scale", 0.01),
                          "probe_rmse": curve, "best": curve[best], "best_epoch": best + 1}
            print(f"{size} {name}: reg {model.reg_:.4f}, best {curve[best]:.4f} at epoch "
                  f"{best + 1}, after {len(curve)} epochs {curve[-1]:.4f}", flush=True)
        out["sizes"][size] = rows
    write_json(RESULTS / f"{args.out}.json", out)


if __name__ == "__main__":
    main()
