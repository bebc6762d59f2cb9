"""Test RMSE against training seconds on ML-100K u1: Gibbs (the running average of its kept
draws), VB and CG, each with its defaults (k = 10).

    python3 bench/gibbs_convergence.py [--data ../shared/data/ml-100k] [--max-iter 300]

The curves are each solver's ``history_["val_rmse"]`` against ``history_["seconds"]`` with
``u1.test`` as the validation set: for Gibbs the running average of the kept draws (dotted before
the first kept sweep: the current draw), for VB and CG the current iterate. Observing costs a
prediction of the 20,000 test ratings per iteration, included in the seconds. CG stops early
once the test RMSE has not improved for ``patience`` iterations, as fit does with a validation
set. One process, one run: compare the curves' shapes and ratios, not absolute seconds (others
may load the machine). Writes bench/results/gibbs_convergence.json and .png.
"""

import argparse
import warnings
from pathlib import Path

import numpy as np
from harness import RESULTS, environment, shared_data, write_json

from fastcofi import MatrixFactorization, Ratings
from fastcofi.train.gibbs import kept_sweeps, schedule


def load(path):
    rows = np.loadtxt(path, dtype=np.int64)
    return Ratings.from_arrays(rows[:, 0], rows[:, 1], rows[:, 2].astype(float))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(shared_data() / "ml-100k"))
    parser.add_argument("--max-iter", type=int, default=300, help="Gibbs sweeps")
    args = parser.parse_args()
    data = Path(args.data)
    train, test = load(data / "u1.base"), load(data / "u1.test")
    tiny = Ratings.from_arrays([0, 1, 1], [0, 0, 1], [1.0, 2.0, 3.0])
    configs = {
        "Gibbs (running average)": {"solver": "gibbs", "max_iter": args.max_iter},
        "VB": {"solver": "vb"},
        "CG": {},
    }
    curves = {}
    for name, params in configs.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            MatrixFactorization(**params, random_state=0).fit(tiny)  # compile / load the cache
            model = MatrixFactorization(**params, random_state=0).fit(train, validation=test)
        curves[name] = {"seconds": model.history_["seconds"],
                        "val_rmse": model.history_["val_rmse"]}
        if params.get("solver") == "gibbs":
            # Sweeps before this one score the current draw, not an average.
            curves[name]["first_kept_sweep"] = int(
                kept_sweeps(model.max_iter, model.n_samples,
                            *schedule(model.max_iter, model.n_samples, model.burn_in,
                                      model.thin))[0])
        best = int(np.argmin(model.history_["val_rmse"]))
        print(f"{name}: {len(model.history_['seconds'])} iterations, "
              f"{model.history_['seconds'][-1]:.2f} s, final test RMSE "
              f"{model.history_['val_rmse'][-1]:.4f} (best {model.history_['val_rmse'][best]:.4f}"
              f" at {model.history_['seconds'][best]:.2f} s)", flush=True)
    write_json(RESULTS / "gibbs_convergence.json", {"curves": curves, "environment": environment()})

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, curve in curves.items():
        first = curve.get("first_kept_sweep", 1) - 1
        line, = ax.plot(curve["seconds"][first:], curve["val_rmse"][first:], label=name)
        if first:
            ax.plot(curve["seconds"][:first + 1], curve["val_rmse"][:first + 1], ":",
                    color=line.get_color(), label="Gibbs (current draw, before the first kept)")
    ax.set_xscale("log")
    ax.set_ylim(0.9, 1.0)
    ax.set_xlabel("training seconds (log scale)")
    ax.set_ylabel("test RMSE (u1.test)")
    ax.set_title("ML-100K u1, k = 10, defaults")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "gibbs_convergence.png", dpi=110)


if __name__ == "__main__":
    main()
