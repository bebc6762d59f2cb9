"""How the Gibbs sampler's accuracy depends on its schedule: chain length, burn-in, kept draws.

    python3 bench/gibbs_length.py [--sweeps 1500] [--seeds 0,1,2] [--traces DIR] [--out NAME]

Runs one chain per (fold, seed) of ML-100K protocol A (u1..u5) and protocol B (80/20, seed 42)
for ``--sweeps`` sweeps, exactly as ``MatrixFactorization(solver="gibbs", random_state=seed)``
starts it (k = 10, the same initial factors and random streams), and records every sweep's
test predictions. A draw does not depend on how long the chain will run, so the test RMSE of
any schedule (``max_iter``, ``n_samples``, ``burn_in``, ``thin``: the average of its kept
draws, clipped to 1..5) is computed from these traces without refitting; the prefix of 300
sweeps with the defaults' kept draws reproduces the default model's predictions. Also: the RMSE
of 100 consecutive draws started at different sweeps (where the chain is stationary, windows
score alike) with the mean noise variance over each window, and the average of all three chains'
draws after sweep 200 (the best estimate here of the posterior mean's RMSE).

``--traces DIR`` keeps each chain's trace as ``DIR/<fold>_s<seed>.npz`` (float32 predictions,
about 120 MB per chain at 1500 sweeps) and reuses those already there. Writes
bench/results/NAME.json (``gibbs_length`` by default).
"""

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
from compare_peers import folds
from harness import RESULTS, environment, shared_data, write_json

from fastcofi import Ratings
from fastcofi.data.ids import lookup
from fastcofi.data.ratings import value_moments
from fastcofi.train import gibbs

# (max_iter, n_samples, burn_in, thin). The first is the defaults' schedule.
SCHEDULES = [
    (300, 100, 30, 2), (300, 270, 30, 1), (600, 200, 60, 2), (600, 200, 200, 2),
    (1000, 100, 100, 9), (1000, 200, 200, 4), (1000, 400, 200, 2), (1000, 800, 200, 1),
    (1500, 100, 150, 13), (1500, 260, 200, 5), (1500, 650, 200, 2), (1500, 1300, 200, 1),
]
WINDOWS = [(31, 130), (101, 200), (151, 250), (201, 300), (301, 400), (601, 700),
           (901, 1000), (1401, 1500)]


def trace(train, test, seed, n_sweeps, k=10, init_scale=0.1):
    """Every sweep's test predictions (n_sweeps, n_test) float32 and noise precisions of the
    chain ``MatrixFactorization(solver="gibbs", random_state=seed)`` runs (its defaults)."""
    ratings = Ratings.from_arrays(train[:, 0], train[:, 1], train[:, 2].astype(float))
    mu, variance = value_moments(ratings.values)
    # The start of fastcofi.train.gibbs.fit_gibbs, draw for draw.
    rng = np.random.default_rng(seed)
    items = np.column_stack([rng.normal(0.0, init_scale, (ratings.n_items, k)),
                             np.zeros(ratings.n_items)])
    users = np.column_stack([rng.normal(0.0, init_scale, (ratings.n_users, k)),
                             np.zeros(ratings.n_users)])
    chain_seed = int(rng.integers(0, 2**64, dtype=np.uint64))
    state = gibbs.GibbsState(items, users, 1.0 / variance, chain_seed, 1)
    u_index = lookup(ratings.user_ids, test[:, 0])[0]
    i_index = lookup(ratings.item_ids, test[:, 1])[0]
    predictions = np.empty((n_sweeps, test.shape[0]), np.float32)

    def record(_, state, __):
        predictions[state.sweep - 1] = gibbs.sample_predictions(
            state.item_rows, state.user_rows, mu, u_index, i_index)

    history = gibbs.run_chain(ratings, mu, state, max_iter=n_sweeps, keep=[],
                              on_sweep=record)
    return predictions, np.asarray(history["noise_precision"])


def rmse(mean, y):
    return float(np.sqrt(np.mean((np.clip(mean, 1, 5) - y) ** 2)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(shared_data() / "ml-100k"))
    parser.add_argument("--sweeps", type=int, default=1500)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--traces", default=None, help="keep and reuse the traces here")
    parser.add_argument("--out", default="gibbs_length")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        traces = Path(args.traces or tmp)
        os.makedirs(traces, exist_ok=True)
        chains = {}
        for protocol in ("A", "B"):
            for fold, train, test, _ in folds(Path(args.data), protocol):
                for seed in seeds:
                    path = traces / f"{fold}_s{seed}.npz"
                    if not path.exists():
                        predictions, tau = trace(train, test, seed, args.sweeps)
                        np.savez(path, P=predictions, tau=tau,
                                 y=test[:, 2].astype(np.float32))
                        print(fold, seed, "traced", flush=True)
                    chains[(fold, seed)] = path
        report = {"sweeps": args.sweeps, "seeds": seeds}
        schedules = [s for s in SCHEDULES if s[0] <= args.sweeps]
        windows = [w for w in WINDOWS if w[1] <= args.sweeps]
        by_schedule, by_window, noise, post = {}, {}, {}, {}
        for key, path in chains.items():  # one chain in memory at a time
            with np.load(path) as d:
                P, y, tau = d["P"][: args.sweeps], d["y"].astype(np.float64), d["tau"]
            if P.shape[0] < args.sweeps:
                raise SystemExit(f"{path}: {P.shape[0]} sweeps, fewer than --sweeps")
            for schedule in schedules:
                kept = gibbs.kept_sweeps(*schedule)
                by_schedule.setdefault(schedule, {})[key] = rmse(
                    P[kept - 1].mean(axis=0, dtype=np.float64), y)
            for first, last in windows:
                by_window.setdefault((first, last), {})[key] = rmse(
                    P[first - 1:last].mean(axis=0, dtype=np.float64), y)
                if key[0] != "B":
                    noise.setdefault((first, last), []).append(np.mean(1.0 / tau[first - 1:last]))
            post[key] = (P[200:].mean(axis=0, dtype=np.float64), y)
        report["schedules"] = []
        for schedule in schedules:
            kept = gibbs.kept_sweeps(*schedule)
            row = {"max_iter": schedule[0], "n_samples": len(kept), "burn_in": schedule[2],
                   "thin": schedule[3], "first_kept": int(kept[0]),
                   **_protocols(by_schedule[schedule], seeds)}
            report["schedules"].append(row)
            print(row, flush=True)
        report["windows"] = []
        for window in windows:
            row = {"first": window[0], "last": window[1],
                   "noise_variance_A": float(np.mean(noise[window])),
                   **_protocols(by_window[window], seeds)}
            report["windows"].append(row)
            print(row, flush=True)
        pooled = {}
        for fold in sorted({key[0] for key in post}):
            means = [m for key, (m, _) in post.items() if key[0] == fold]
            pooled[fold] = rmse(np.mean(means, axis=0), post[(fold, seeds[0])][1])
        report["pooled_after_200"] = {
            "per_fold": pooled,
            "A": float(np.mean([v for f, v in pooled.items() if f != "B"])),
        }
        print("pooled after sweep 200:", report["pooled_after_200"], flush=True)
    write_json(RESULTS / f"{args.out}.json", {**report, "environment": environment()})


def _protocols(per, seeds):
    """Protocol A's mean over u1..u5 for each seed and over seeds; protocol B's over seeds."""
    by_seed = {s: float(np.mean([v for (f, ss), v in per.items() if ss == s and f != "B"]))
               for s in seeds}
    return {"A_by_seed": by_seed, "A": float(np.mean(list(by_seed.values()))),
            "B": float(np.mean([v for (f, _), v in per.items() if f == "B"]))}


if __name__ == "__main__":
    main()
