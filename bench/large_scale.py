"""Netflix-prize-scale training on one machine: 100M ratings, k = 32, early stopping.

    python3 bench/large_scale.py [all|prepare|train] [--ratings 1e8] [--factors 32] [--solver auto]
        [--folder DIR] [--record]

Two steps, each in its own process so that each peak memory is its own:

1. ``prepare``: ``fastcofi.datasets.synthetic`` (480,189 users x 17,770 items, power-law
   popularity, planted rank-10 factors, noise 0.5, float32) written chunk by chunk to
   ``train.csv`` and ``probe.csv``, 1% of the ratings (drawn per rating) going to the probe file,
   as the Netflix prize shipped its probe set.
2. ``train``: both files read with ``fastcofi.read_ratings(dtype=np.float32)``, then
   ``MatrixFactorization(n_factors=32).fit(train, validation=probe)``, every other parameter
   the library's default unless given (``solver="auto"``: SGD at this size), then the probe
   predicted; ``end_to_end_s`` is those three steps.

Writes bench/results/large_scale.json: seconds per step, peak RSS per process, seconds per
objective evaluation or sweep, iterations, probe RMSE against the planted noise level.
"""

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import RESULTS, environment, output_path, sample_seconds, write_json

NOISE = 0.5


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def write_ratings_csv(ratings, path, *, probe_path=None, probe_fraction=0.0, seed=0,
                      chunk=4_000_000):
    """Write ``ratings`` as ``userId,movieId,rating`` lines from its by-user CSR, chunk by chunk.

    With ``probe_path``, each rating goes there instead with probability ``probe_fraction``.
    Each file is written under a temporary name and renamed when complete. Returns the line
    counts ``(written to path, written to probe_path)``.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    indptr, items, values = ratings.by_user
    user_ids, item_ids = ratings.user_ids, ratings.item_ids
    integral = bool(np.all(values == np.round(values)))
    targets = [Path(path)] + ([Path(probe_path)] if probe_path is not None else [])
    counts = [0] * len(targets)
    options = pacsv.WriteOptions(include_header=False)
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(open(t.with_name(t.name + ".tmp"), "wb"))
                   for t in targets]
        for f in handles:
            f.write(b"userId,movieId,rating\n")
        for start in range(0, ratings.nnz, chunk):
            stop = min(start + chunk, ratings.nnz)
            users = np.searchsorted(indptr, np.arange(start, stop), side="right") - 1
            held = (rng.random(stop - start) < probe_fraction if probe_path is not None
                    else np.zeros(stop - start, bool))
            for n, (f, rows) in enumerate(zip(handles, (~held, held))):
                part = values[start:stop][rows]
                table = pa.table({
                    "userId": user_ids[users[rows]],
                    "movieId": item_ids[items[start:stop][rows]],
                    "rating": part.astype(np.int16) if integral else part,
                })
                pacsv.write_csv(table, f, options)
                counts[n] += int(rows.sum())
    for t in targets:
        os.replace(t.with_name(t.name + ".tmp"), t)
    return tuple(counts) if probe_path is not None else (counts[0], 0)


def prepare(args):
    from fastcofi.datasets import synthetic

    t0 = time.perf_counter()
    ratings = synthetic(args.users, args.items, int(args.ratings), noise=NOISE, seed=args.seed,
                        dtype=np.float32)
    generated = time.perf_counter() - t0
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    n_train, n_probe = write_ratings_csv(
        ratings, folder / "train.csv", probe_path=folder / "probe.csv",
        probe_fraction=args.probe_fraction, seed=args.seed + 1,
    )
    return {
        "generate_s": generated,
        "prepare_s": time.perf_counter() - t0,
        "train_ratings": n_train,
        "probe_ratings": n_probe,
        "file_bytes": sum((folder / f"{n}.csv").stat().st_size for n in ("train", "probe")),
        "peak_rss_bytes": peak_rss_bytes(),
    }


def train(args):
    from fastcofi import MatrixFactorization, metrics, read_ratings

    folder = Path(args.folder)
    t0 = time.perf_counter()
    train_set = read_ratings(folder / "train.csv", dtype=np.float32)
    probe = read_ratings(folder / "probe.csv", dtype=np.float32)
    read_s = time.perf_counter() - t0
    after_read_rss = peak_rss_bytes()
    given = {"solver": args.solver, "max_iter": args.max_iter, "tol": args.tol,
             "patience": args.patience}
    model = MatrixFactorization(n_factors=args.factors, random_state=args.seed,
                                **{k: v for k, v in given.items() if v is not None})
    t1 = time.perf_counter()
    model.fit(train_set, validation=probe)
    fit_s = time.perf_counter() - t1
    users, items, values = probe.coo()
    probe_rmse = metrics.rmse(values, model.predict(probe.user_ids[users], probe.item_ids[items]))
    end_to_end_s = time.perf_counter() - t0
    history = model.history_
    result = model.result_
    n_evals = int(result.nfev) if result is not None else None
    evaluation_s = _evaluation_seconds(model, train_set)
    return {
        "nnz": train_set.nnz,
        "n_users": train_set.n_users,
        "n_items": train_set.n_items,
        "factors": args.factors,
        "solver": model.solver_,
        "reg_weighting": model.reg_weighting_,
        "reg": model.reg_,
        "reg_bias": model.reg_bias_,
        "read_s": read_s,
        "fit_s": fit_s,
        "end_to_end_s": end_to_end_s,
        "val_rmse": [float(v) for v in history["val_rmse"]],
        "seconds": [float(v) for v in history["seconds"]],
        "iterations": int(model.n_iter_),
        "objective_evaluations": n_evals,
        "seconds_per_evaluation": fit_s / n_evals if n_evals else None,
        "seconds_per_iteration": fit_s / max(1, int(model.n_iter_)),
        "one_objective_evaluation_s": evaluation_s,
        "probe_rmse": float(probe_rmse),
        "planted_noise": NOISE,
        "best_val_rmse": float(np.min(history["val_rmse"])),
        "peak_rss_after_read_bytes": after_read_rss,
        "peak_rss_bytes": peak_rss_bytes(),
        "ratings_bytes": sum(a.nbytes for a in (*train_set.by_item, *train_set.by_user)),
    }


def _evaluation_seconds(model, ratings, repeats=3):
    """Median seconds of one cost + gradient evaluation at the fitted point, whatever solver
    trained the model, as the projected CG and L-BFGS pay it (gradients written into arrays
    reused from call to call): ``{"float64": s, "float32": s}``, the one-pass kernel reading
    the other side's factors, or a float32 copy of them (far from the minimum)."""
    from fastcofi.train.objective import FlatObjective

    objective = FlatObjective(
        ratings, model.n_factors, model.reg_, mu=model.global_mean_, learn_biases=True,
        reg_bias=model.reg_bias_, reg_weighting=model.reg_weighting_,
    )
    params = objective.pack(model.item_factors_, model.user_factors_, model.item_bias_,
                            model.user_bias_)
    values = objective.unpack(params)
    grads = [np.empty_like(part) for part in values]
    return {
        name: float(np.median(sample_seconds(
            lambda single=single: objective._evaluate_into(*values, grads, single=single),
            repeats, warmup=1)))
        for name, single in (("float64", False), ("float32", True))
    }


def recorded_argv(argv):
    """The command line as the results record it: the data folder as ``DIR`` and the output by
    its file name, not paths of the machine that ran it."""
    hidden = {"--folder": lambda path: "DIR", "--out": lambda path: Path(path).name}
    shown = []
    for previous, arg in zip([None, *argv], argv):
        name, equals, value = arg.partition("=")
        if equals and name in hidden:
            shown.append(f"{name}={hidden[name](value)}")
        elif previous in hidden:
            shown.append(hidden[previous](arg))
        else:
            shown.append(arg)
    return shown


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", nargs="?", choices=["all", "prepare", "train"], default="all")
    parser.add_argument("--ratings", type=float, default=1e8)
    parser.add_argument("--users", type=int, default=480_189)
    parser.add_argument("--items", type=int, default=17_770)
    parser.add_argument("--factors", type=int, default=32)
    parser.add_argument("--solver", choices=["auto", "cg", "lbfgs", "als", "sgd"], default=None,
                        help="(default: the library's)")
    parser.add_argument("--max-iter", type=int, default=None, help="(default: the library's)")
    parser.add_argument("--tol", type=float, default=None, help="(default: the library's)")
    parser.add_argument("--patience", type=int, default=None, help="(default: the library's)")
    parser.add_argument("--probe-fraction", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folder", default=str(Path(tempfile.gettempdir()) / "fastcofi-large"),
                        help="where prepare writes train.csv and probe.csv and train reads them "
                             "(default: fastcofi-large in the temporary directory)")
    parser.add_argument("--out", type=output_path,
                        default=str(RESULTS / "large_scale.json"))
    parser.add_argument("--record", action="store_true",
                        help="with prepare or train alone: write that step's result into --out "
                             "(all always writes)")
    args = parser.parse_args(argv)

    if args.step in ("prepare", "train"):
        result = prepare(args) if args.step == "prepare" else train(args)
        print(json.dumps(result), flush=True)
        if args.record:
            # One step rerun: its entry in --out is replaced, the other step's kept.
            out = Path(args.out)
            doc = json.loads(out.read_text()) if out.exists() else {}
            doc[args.step] = {**result, "argv": recorded_argv(sys.argv[1:]),
                              "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                              "environment": environment()}
            write_json(args.out, doc, indent=2)
        return 0

    doc = {"argv": recorded_argv(sys.argv[1:]), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    for step in ("prepare", "train"):
        t = time.perf_counter()
        out = subprocess.run(
            [sys.executable, __file__, step, *(a for a in sys.argv[1:] if a != "all")],
            check=True, capture_output=True, text=True,
        ).stdout
        doc[step] = json.loads(out.strip().splitlines()[-1])
        doc[step]["process_s"] = time.perf_counter() - t
        print(step, json.dumps(doc[step]), flush=True)
    doc["environment"] = environment()
    write_json(args.out, doc, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
