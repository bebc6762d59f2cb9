"""fastcofi side by side with Surprise, cornac and myFM on MovieLens 100K (BENCHMARKS.md protocols).

    python3 bench/compare_peers.py [--data ../shared/data/ml-100k] \
        [--peers-python /path/to/venv/bin/python] [--myfm-python /path/to/venv/bin/python] \
        [--configs cg,als,vb,tutorial,gibbs] [--out peers]

Protocol A: official folds u1..u5, mean RMSE/MAE, median fit seconds. Protocol B: u.data in file
order, test rows ``default_rng(42).permutation(n)[:20000]``, fit seeds 0, 1, 2 averaged.
Predictions are clipped to 1..5. Fit time excludes reading files and JIT compilation (the
kernels are loaded from numba's cache by one warm-up fit first).

The peers are optional and never dependencies: they run in a separate interpreter
(``--peers-python``, a virtualenv with scikit-surprise and cornac) that reads the same arrays;
when it is missing their rows are left out. As BENCHMARKS.md asks, each peer model fits each fold
in a fresh process: Surprise's fit time grows with its process's history (in one process for all
folds and models it took 0.85 s per fold under protocol A, against 0.47-0.70 s in fresh ones).
fastcofi's fits share one process. myFM (pip package ``myfm``, Bayesian factorization machine by
Gibbs sampling, C++, one thread) runs from its own interpreter (``--myfm-python``) on one-hot
user and item columns, as ``MyFMRegressor(rank=10)`` with the sweeps and kept samples of
fastcofi's ``solver="gibbs"`` defaults (300 and 100, ``myfm``) and with any others named
``myfm_<sweeps>_<kept>`` (BENCHMARKS.md's: ``myfm_200_180``); a
test user or item unseen in training has no column (myFM then uses what it has). Writes
bench/results/<out>.json and <out>.md (``--out``, default peers).
"""

import argparse
import json
import os
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from harness import RESULTS, environment, shared_data, write_json

from fastcofi import MatrixFactorization, Ratings

PEER_SCRIPT = r"""
import json, sys, time
import numpy as np
spec = json.load(open(sys.argv[1]))
out = []
for fold in spec["folds"]:
    train = np.load(fold["train"]); test = np.load(fold["test"])
    for name in spec["models"]:
        for seed in fold["seeds"]:
            if name.startswith("myfm"):
                import scipy.sparse as sps
                from myfm import MyFMRegressor
                # "myfm": our defaults' counts; "myfm_<sweeps>_<kept>": any others.
                n_iter, n_kept = ((300, 100) if name == "myfm"
                                  else tuple(int(v) for v in name.split("_")[1:3]))
                users = {u: j for j, u in enumerate(np.unique(train[:, 0]))}
                items = {i: j for j, i in enumerate(np.unique(train[:, 1]))}
                def onehot(rows):
                    r, c = [], []
                    for n, (u, i) in enumerate(rows[:, :2]):
                        if u in users:
                            r.append(n); c.append(users[u])
                        if i in items:
                            r.append(n); c.append(len(users) + items[i])
                    return sps.csr_matrix((np.ones(len(r)), (r, c)),
                                          shape=(len(rows), len(users) + len(items)))
                x_train, x_test = onehot(train), onehot(test)
                fm = MyFMRegressor(rank=10, random_seed=seed)
                t = time.perf_counter()
                fm.fit(x_train, train[:, 2].astype(float), n_iter=n_iter, n_kept_samples=n_kept)
                fit = time.perf_counter() - t
                pred = fm.predict(x_test)
            elif name.startswith("surprise"):
                import pandas as pd
                from surprise import SVD, SVDpp, BaselineOnly, Dataset, Reader
                df = pd.DataFrame(train[:, :3], columns=["u", "i", "r"])
                data = Dataset.load_from_df(df, Reader(rating_scale=(1, 5)))
                trainset = data.build_full_trainset()
                algo = {"surprise_svd": lambda: SVD(random_state=seed),
                        "surprise_svdpp": lambda: SVDpp(random_state=seed),
                        "surprise_baseline": lambda: BaselineOnly(verbose=False)}[name]()
                t = time.perf_counter(); algo.fit(trainset); fit = time.perf_counter() - t
                pred = np.array([algo.predict(int(u), int(i)).est for u, i in test[:, :2]])
            else:
                import cornac
                from cornac.models import MF
                triples = [(str(u), str(i), float(r)) for u, i, r in train[:, :3]]
                ds = cornac.data.Dataset.from_uir(triples, seed=seed)
                model = MF(seed=seed, verbose=False)
                t = time.perf_counter(); model.fit(ds); fit = time.perf_counter() - t
                pred = []
                for u, i in test[:, :2]:
                    uid = ds.uid_map.get(str(u)); iid = ds.iid_map.get(str(i))
                    if uid is None or iid is None:
                        pred.append(ds.global_mean)
                    else:
                        pred.append(float(model.score(uid, iid)))
                pred = np.array(pred)
            pred = np.clip(pred, 1, 5)
            err = pred - test[:, 2]
            out.append({"model": name, "fold": fold["name"], "seed": seed, "fit_s": fit,
                        "rmse": float(np.sqrt(np.mean(err ** 2))),
                        "mae": float(np.mean(np.abs(err)))})
            print(json.dumps(out[-1]), flush=True)
json.dump(out, open(sys.argv[2], "w"))
"""


CONFIGS = {
    "cg": ("fastcofi (defaults, CG)", {}),
    "als": ("fastcofi (defaults, ALS)", {"solver": "als"}),
    "sgd": ("fastcofi (SGD, solver=sgd: count weighting, 0.02 std)", {"solver": "sgd"}),
    "vb": ("fastcofi (variational Bayes, solver=vb)", {"solver": "vb"}),
    "tutorial": ("fastcofi (tutorial: item mean, k=10, reg 10, CG)", {
        "normalize": "item_mean", "reg": 10.0, "reg_weighting": "none", "tol": 1e-4,
    }),
    "gibbs": ("fastcofi (Gibbs, solver=gibbs: 300 sweeps, 100 kept)", {"solver": "gibbs"}),
    "gibbs600": ("fastcofi (Gibbs, max_iter=600: 200 kept)",
                 {"solver": "gibbs", "max_iter": 600, "n_samples": 200}),
    "gibbs1000": ("fastcofi (Gibbs, 1000 sweeps: burn-in 200, 200 kept, every 4th)",
                  {"solver": "gibbs", "max_iter": 1000, "n_samples": 200, "burn_in": 200,
                   "thin": 4}),
}


def load_tab(path):
    return np.loadtxt(path, dtype=np.int64)


def folds(data, protocol):
    if protocol == "A":
        for k in range(1, 6):
            yield f"u{k}", load_tab(data / f"u{k}.base"), load_tab(data / f"u{k}.test"), [0]
    else:
        rows = load_tab(data / "u.data")
        perm = np.random.default_rng(42).permutation(rows.shape[0])
        n_test = int(rows.shape[0] * 0.2)
        yield "B", rows[perm[n_test:]], rows[perm[:n_test]], [0, 1, 2]


def fastcofi_rows(data, protocol, configs):
    out = []
    tiny = Ratings.from_arrays([0, 1, 1], [0, 0, 1], [1.0, 2.0, 3.0])
    for name, params in configs.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            MatrixFactorization(**params, random_state=0).fit(tiny)  # load the cached kernels
        for fold, train, test, seeds in folds(data, protocol):
            ratings = Ratings.from_arrays(train[:, 0], train[:, 1], train[:, 2].astype(float))
            for seed in seeds:
                model = MatrixFactorization(**params, random_state=seed)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    t = time.perf_counter()
                    model.fit(ratings)
                    fit = time.perf_counter() - t
                err = model.predict(test[:, 0], test[:, 1]) - test[:, 2]
                out.append({"model": name, "fold": fold, "seed": seed, "fit_s": fit,
                            "rmse": float(np.sqrt(np.mean(err**2))),
                            "mae": float(np.mean(np.abs(err))), "n_iter": model.n_iter_,
                            "converged": not caught})
    return out


def peer_rows(data, protocol, python, models):
    """One fresh peer process per (fold, seed, model)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "peers.py")
        Path(script).write_text(PEER_SCRIPT)
        spec_path, out_path = os.path.join(tmp, "spec.json"), os.path.join(tmp, "out.json")
        for fold, train, test, seeds in folds(data, protocol):
            paths = {}
            for part, arr in (("train", train), ("test", test)):
                paths[part] = os.path.join(tmp, f"{fold}_{part}.npy")
                np.save(paths[part], arr)
            for model in models:
                for seed in seeds:
                    spec = {"models": [model],
                            "folds": [{"name": fold, "seeds": [seed], **paths}]}
                    Path(spec_path).write_text(json.dumps(spec))
                    subprocess.run([python, script, spec_path, out_path], check=True)
                    rows += json.loads(Path(out_path).read_text())
    return rows


def summarize(rows):
    table = {}
    for row in rows:
        table.setdefault(row["model"], []).append(row)
    return {
        name: {
            "rmse": float(np.mean([r["rmse"] for r in rs])),
            "mae": float(np.mean([r["mae"] for r in rs])),
            "fit_s_median": float(np.median([r["fit_s"] for r in rs])),
            "n_fits": len(rs),
        }
        for name, rs in table.items()
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(shared_data() / "ml-100k"))
    parser.add_argument("--peers-python", default=None)
    parser.add_argument("--peers", default="surprise_svd,surprise_svdpp,cornac_mf")
    parser.add_argument("--myfm-python", default=None,
                        help="a virtualenv's python with myfm installed (its own: never ours)")
    parser.add_argument("--myfm", default="myfm,myfm_200_180")
    parser.add_argument("--protocols", default="A,B")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"fastcofi configurations, of {', '.join(CONFIGS)}")
    parser.add_argument("--out", default="peers", help="results file stem in bench/results")
    args = parser.parse_args()
    data = Path(args.data)
    configs = {CONFIGS[key][0]: CONFIGS[key][1] for key in args.configs.split(",") if key}
    report = {}
    for protocol in args.protocols.split(","):
        rows = fastcofi_rows(data, protocol, configs)
        if args.peers_python:
            rows += peer_rows(data, protocol, args.peers_python, args.peers.split(","))
        if args.myfm_python:
            rows += peer_rows(data, protocol, args.myfm_python, args.myfm.split(","))
        report[protocol] = {"summary": summarize(rows), "rows": rows}
        print(json.dumps({protocol: report[protocol]["summary"]}, indent=1), flush=True)
    write_json(RESULTS / f"{args.out}.json", {**report, "environment": environment()})
    lines = []
    for protocol, doc in report.items():
        lines += [f"Protocol {protocol}", "", "| model | RMSE | MAE | fit s (median) |",
                  "|---|---|---|---|"]
        for name, s in sorted(doc["summary"].items(), key=lambda kv: kv[1]["rmse"]):
            lines.append(
                f"| {name} | {s['rmse']:.4f} | {s['mae']:.4f} | {s['fit_s_median']:.3f} |"
            )
        lines.append("")
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
