"""Fit time of ``solver="gibbs"`` against myFM on ML-100K u1, alternated in one run.

    python3 bench/gibbs_time.py --myfm-python /path/to/venv/bin/python [--repeats 3] [--out NAME]

Each repeat fits, one after the other: fastcofi's Gibbs sampler with its defaults (300 sweeps,
100 kept) on 1 and on 2 threads (in this process, kernels compiled beforehand), then myFM
(``MyFMRegressor(rank=10)``, 300 sweeps, 100 kept, C++, one thread) in a fresh process, as
bench/compare_peers.py runs it. Alternating puts the same machine load on all of them, so the
ratios of the medians compare even when others load the machine. Prints the fit seconds, their
medians and the ratios; writes bench/results/NAME.json (``gibbs_time`` by default).
"""

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from compare_peers import PEER_SCRIPT, load_tab
from harness import RESULTS, environment, shared_data, write_json

from fastcofi import MatrixFactorization, Ratings


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(shared_data() / "ml-100k"))
    parser.add_argument("--myfm-python", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="gibbs_time")
    args = parser.parse_args()
    data = Path(args.data)
    train, test = load_tab(data / "u1.base"), load_tab(data / "u1.test")
    ratings = Ratings.from_arrays(train[:, 0], train[:, 1], train[:, 2].astype(float))
    MatrixFactorization(solver="gibbs", max_iter=3, random_state=0).fit(ratings)  # compile
    times = {"fastcofi gibbs, 1 thread": [], "fastcofi gibbs, 2 threads": [], "myfm": []}
    rmse = {}
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "peers.py")
        Path(script).write_text(PEER_SCRIPT)
        paths = {}
        for part, arr in (("train", train), ("test", test)):
            paths[part] = os.path.join(tmp, f"u1_{part}.npy")
            np.save(paths[part], arr)
        spec_path, out_path = os.path.join(tmp, "spec.json"), os.path.join(tmp, "out.json")
        Path(spec_path).write_text(json.dumps(
            {"models": ["myfm"], "folds": [{"name": "u1", "seeds": [0], **paths}]}))
        for _ in range(args.repeats):
            for threads in (1, 2):
                model = MatrixFactorization(solver="gibbs", random_state=0, n_threads=threads)
                start = time.perf_counter()
                model.fit(ratings)
                name = f"fastcofi gibbs, {threads} thread{'s' if threads > 1 else ''}"
                times[name].append(time.perf_counter() - start)
                err = model.predict(test[:, 0], test[:, 1]) - test[:, 2]
                rmse[name] = float(np.sqrt(np.mean(err**2)))
            subprocess.run([args.myfm_python, script, spec_path, out_path], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            row = json.loads(Path(out_path).read_text())[0]
            times["myfm"].append(row["fit_s"])
            rmse["myfm"] = row["rmse"]
            print({name: round(values[-1], 2) for name, values in times.items()}, flush=True)
    medians = {name: float(np.median(values)) for name, values in times.items()}
    ratios = {name: medians[name] / medians["myfm"] for name in medians}
    print("medians (s):", {k: round(v, 2) for k, v in medians.items()})
    print("ratio to myFM:", {k: round(v, 2) for k, v in ratios.items()})
    print("u1 RMSE:", {k: round(v, 4) for k, v in rmse.items()})
    write_json(RESULTS / f"{args.out}.json", {"seconds": times, "medians": medians,
                                              "ratio_to_myfm": ratios, "u1_rmse": rmse,
                                              "environment": environment()})


if __name__ == "__main__":
    main()
