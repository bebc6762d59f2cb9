"""The `fastcofi` command line: argparse subcommands that read input, call the library, print."""

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _UsageError(f"{self.prog}: {message}")


class _UsageError(Exception):
    pass


def _cmd_demo(args):
    from .demo import DEMO_REG, NEW_USER_RATINGS, run_demo

    reg = DEMO_REG if args.reg is None else args.reg
    model, ranking = run_demo(reg=reg, n_factors=args.factors, max_iter=args.max_iter)
    rated = ", ".join(f"movie {m}: {r:g}" for m, r in NEW_USER_RATINGS.items())
    print(f"New user rated {rated}; trained {args.factors} features, reg {reg:g}, "
          f"{model.n_iter_} iterations.")
    for title, score in ranking:
        print(f"Predicting rating {score:.1f} for movie {title}")
    return 0


# -- helpers: output and ids -----------------------------------------------------------------
def _json_value(value):
    """Plain JSON values: numpy scalars to Python, NaN / inf to null, tuples to lists."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value


def _print_json(document):
    print(json.dumps(_json_value(document), allow_nan=False))


def _typed_id(model_ids, text, option):
    """The command-line id ``text`` as the type of the model's ids (str or int)."""
    from ..data.ids import _parse_int

    if model_ids.dtype.kind == "U":
        return text
    value = _parse_int(text)
    if value is None:
        raise ValueError(
            f"{option} {text!r}: expected an integer id (the model's ids are integers)"
        )
    return value


def _title(model, item):
    titles = getattr(model, "titles_", None) or {}
    return titles.get(item)


def _check_output(path):
    """Fail before any work when the model cannot be written to ``path``."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a directory; expected a model file path for -o")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(
            f"{path}: the folder {folder} does not exist; expected -o in an existing folder"
        )
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{path}: the folder {folder} is not writable")


def _rating_metrics(model, ratings):
    from ..evaluate.metrics import rating_metrics

    return rating_metrics(model, ratings)


# -- train -----------------------------------------------------------------------------------
def _cmd_train(args):
    from ..model import MatrixFactorization

    _check_output(args.output)
    params = {
        "n_factors": args.factors, "reg": args.reg, "max_iter": args.max_iter,
        "solver": args.solver, "normalize": args.normalize, "random_state": args.seed,
    }
    model = MatrixFactorization(**{k: v for k, v in params.items() if v is not None})
    model._check_params()  # a bad flag fails before any file is read
    if args.dask is None:
        return _train(args, model, None)
    from ..distributed import _close_client, _connect

    if model.solver not in ("cg", "lbfgs"):
        raise ValueError(f"--dask trains with --solver cg or lbfgs, found --solver {model.solver}")
    # Connect before reading: a wrong address fails in seconds, not after the parse.
    dask_client, _ = _connect(args.dask)
    try:
        return _train(args, model, dask_client)
    finally:
        _close_client(dask_client)


def _train(args, model, dask_client):
    from ..data.read import read_ratings
    from ..data.titles import read_titles

    ratings = read_ratings(args.data, format=args.format)
    titles = read_titles(args.titles) if args.titles else None
    test = None
    if args.test is not None:
        test = read_ratings(args.test, format=args.format)
        train = ratings
    elif args.test_fraction is not None:
        from ..evaluate.split import random_split

        train, test = random_split(ratings, args.test_fraction, random_state=args.seed)
    else:
        train = ratings
    print(f"training on {train.nnz} ratings ({train.n_users} users, {train.n_items} items)"
          + (f", validating on {test.nnz}" if test is not None else ""), file=sys.stderr)
    start = time.perf_counter()

    def progress(iteration, info):
        elapsed = time.perf_counter() - start
        line = f"iter {iteration:4d}  cost {info['cost']:.6g}  elapsed {elapsed:.2f}s"
        if "val_rmse" in info:
            line += f"  val_rmse {info['val_rmse']:.4f}"
        print(line, file=sys.stderr, flush=True)
        return False

    fit_kwargs = {
        "validation": test, "callback": progress, "checkpoint": args.checkpoint,
        "checkpoint_every": args.checkpoint_every, "resume": args.resume,
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if dask_client is None:
            model.fit(train, **fit_kwargs)
        else:
            from ..distributed import fit

            try:
                fit(model, train, client=dask_client, **fit_kwargs)
            except RuntimeError as exc:
                raise ValueError(f"training on the Dask cluster failed: {exc}") from None
    for warning in caught:
        print(f"fastcofi: warning: {str(warning.message).splitlines()[0]}", file=sys.stderr)
    if titles:
        model.titles_ = titles
    train_scores = _rating_metrics(model, train)
    print(f"train RMSE {train_scores['rmse']:.4f}  MAE {train_scores['mae']:.4f}  "
          f"({train_scores['n']} ratings, {model.n_iter_} iterations"
          + (f", kept iteration {model.best_iteration_}" if test is not None else "") + ")")
    if test is not None:
        test_scores = _rating_metrics(model, test)
        print(f"test RMSE {test_scores['rmse']:.4f}  MAE {test_scores['mae']:.4f}  "
              f"({test_scores['n']} ratings)")
    model.save(args.output)
    print(f"wrote {args.output}")
    return 0


# -- evaluate --------------------------------------------------------------------------------
def _cmd_evaluate(args):
    from ..data.read import read_ratings
    from ..model_file import load_model

    model = load_model(args.model)
    test = read_ratings(args.data, format=args.format)
    try:
        from ..evaluate.metrics import evaluate
    except ImportError:  # pragma: no cover - metrics ships with fastcofi
        evaluate = None
    if evaluate is not None:
        result = evaluate(model, test, k=args.k)
    else:  # pragma: no cover
        result = _rating_metrics(model, test)
    if args.json:
        _print_json(result)
        return 0
    for key, value in result.items():
        shown = f"{value:.4f}" if isinstance(value, float) else value
        print(f"{key}: {shown}")
    return 0


# -- recommend / predict ---------------------------------------------------------------------
def _cmd_recommend(args):
    from ..model_file import load_model

    model = load_model(args.model)
    if args.cluster is not None:
        return _recommend_cluster(model, args)
    user = _typed_id(model.user_ids_, args.user, "--user")
    ids, scores = model.recommend(user, n=args.n, exclude_seen=not args.include_seen)
    rows = _item_rows(model, ids, scores)
    if args.json:
        _print_json({"user": user, "recommendations": rows})
        return 0
    if not rows:
        print(f"no items to recommend to user {user}")
    _print_rows(rows)
    return 0


def _recommend_cluster(model, args):
    clusters = model.cluster_users(args.clusters, random_state=args.seed)
    ids, scores = clusters.recommend(args.cluster, n=args.n)
    rows = _item_rows(model, ids, scores)
    size = int((clusters.labels == args.cluster).sum())
    if args.json:
        _print_json({"cluster": args.cluster, "n_clusters": args.clusters, "n_users": size,
                     "recommendations": rows})
        return 0
    print(f"cluster {args.cluster} of {args.clusters} ({size} users)")
    _print_rows(rows)
    return 0


def _item_rows(model, ids, scores):
    rows = []
    for item, score in zip(ids.tolist(), scores.tolist()):
        row = {"item": item, "score": float(score)}
        title = _title(model, item)
        if title is not None:
            row["title"] = title
        rows.append(row)
    return rows


def _print_rows(rows):
    for rank, row in enumerate(rows, start=1):
        title = f"  {row['title']}" if "title" in row else ""
        print(f"{rank:3d}. item {row['item']}  score {row['score']:.3f}{title}")


def _cmd_predict(args):
    from ..data.ids import lookup
    from ..model_file import load_model

    model = load_model(args.model)
    user = _typed_id(model.user_ids_, args.user, "--user")
    item = _typed_id(model.item_ids_, args.item, "--item")
    prediction = float(model.predict(user, item))
    user_known = bool(lookup(model.user_ids_, [user])[1][0])
    item_known = bool(lookup(model.item_ids_, [item])[1][0])
    known = user_known and item_known
    if args.json:
        _print_json({"user": user, "item": item, "prediction": prediction, "known": known})
        return 0
    title = _title(model, item)
    unknown = [what for what, ok in (("user", user_known), ("item", item_known)) if not ok]
    note = f"  (fallback: unknown {' and '.join(unknown)})" if unknown else ""
    print(f"user {user}, item {item}{f' ({title})' if title else ''}: {prediction:.3f}{note}")
    return 0


# -- info ------------------------------------------------------------------------------------
def _cmd_info(args):
    from ..model_file import model_info

    info = model_info(args.model)
    if args.json:
        _print_json(info)
        return 0
    print(f"model file    {args.model}")
    print(f"format        version {info['format_version']} (written by fastcofi "
          f"{info['fastcofi_version']})")
    print(f"size          {info['n_users']} users ({info['user_id_type']} ids) x {info['n_items']} "
          f"items ({info['item_id_type']} ids), {info['n_factors']} factors")
    print(f"training      {info['n_ratings']} ratings in [{info['rating_range'][0]:g}, "
          f"{info['rating_range'][1]:g}], {info['n_iter']} iterations")
    print(f"titles        {info['n_titles']}")
    params = ", ".join(f"{k}={v!r}" for k, v in info["params"].items())
    print(f"parameters    {params}")
    return 0


# -- serve -----------------------------------------------------------------------------------
def _cmd_serve(args):
    from .server import serve

    limits = {"max_n": args.max_n, "max_body": args.max_body, "threads": args.threads}
    return serve(args.model, args.host, args.port, verbose=args.verbose,
                 **{name: value for name, value in limits.items() if value is not None})


# -- parser ----------------------------------------------------------------------------------
def _build_parser():
    parser = _Parser(
        prog="fastcofi", description="Collaborative filtering by matrix factorization."
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = sub.add_parser("demo", help="the tutorial's toy example: rank movies for a new user")
    demo.add_argument("--reg", type=float, default=None,
                      help="regularization (default 1; 30 reproduces the tutorial's setting)")
    demo.add_argument("--factors", type=int, default=3, help="number of features (default 3)")
    demo.add_argument("--max-iter", type=int, default=100, help="CG iterations (default 100)")
    demo.set_defaults(func=_cmd_demo)

    from ..data.read import FORMATS

    train = sub.add_parser("train", help="fit a model on a rating file and write it (.npz)")
    train.add_argument("data", metavar="DATA",
                       help="rating file (MovieLens, CSV/TSV, Parquet, .gz, .zip)")
    train.add_argument("--format", choices=FORMATS, help="file format (detected when not given)")
    train.add_argument("--factors", type=int, help="number of latent factors (default 10)")
    train.add_argument("--reg", type=float,
                       help="regularization (default: 1.15 x the std of the training ratings)")
    train.add_argument("--max-iter", type=int, help="iterations at most (default 300)")
    train.add_argument("--solver", choices=("cg", "lbfgs", "als", "vb"),
                       help="optimizer (default cg; vb: variational Bayes, learns its own "
                       "regularization)")
    train.add_argument("--normalize", choices=("item_mean", "biases", "none"),
                       help="normalization (default biases)")
    held_out = train.add_mutually_exclusive_group()
    held_out.add_argument("--test-fraction", type=float,
                          help="hold out this random fraction of the ratings as a test set")
    held_out.add_argument("--test", metavar="FILE", help="a rating file to use as the test set")
    train.add_argument("--seed", type=int, default=0,
                       help="seed of the split and the initial factors (default 0)")
    train.add_argument("--titles", metavar="FILE",
                       help="item titles (u.item, movies.dat, movies.csv)")
    train.add_argument("-o", "--output", metavar="MODEL", required=True, help="model file to write")
    train.add_argument("--checkpoint", metavar="FILE",
                       help="write the training state to FILE every --checkpoint-every iterations")
    train.add_argument("--checkpoint-every", type=int, default=10, metavar="N")
    train.add_argument("--resume", action="store_true",
                       help="continue from --checkpoint when it exists (CG restarts its direction)")
    train.add_argument("--dask", metavar="SCHEDULER_ADDRESS",
                       help="evaluate the objective on this Dask cluster (tcp://host:8786); "
                            "needs pip install 'fastcofi[distributed]'")
    train.set_defaults(func=_cmd_train)

    evaluate = sub.add_parser("evaluate", help="RMSE, MAE and ranking metrics on a rating file")
    evaluate.add_argument("model", metavar="MODEL")
    evaluate.add_argument("data", metavar="DATA")
    evaluate.add_argument("--format", choices=FORMATS, help="file format (detected when not given)")
    evaluate.add_argument("-k", type=int, default=10,
                          help="length of the ranked lists (default 10)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON document")
    evaluate.set_defaults(func=_cmd_evaluate)

    recommend = sub.add_parser("recommend", help="top items for a user (or a user cluster)")
    recommend.add_argument("model", metavar="MODEL")
    who = recommend.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", metavar="ID")
    who.add_argument("--cluster", type=int, metavar="C",
                     help="items cluster C of --clusters k-means user groups rates highest")
    recommend.add_argument("--clusters", type=int, default=8, metavar="K",
                           help="number of user clusters for --cluster (default 8)")
    recommend.add_argument("--seed", type=int, default=0, help="k-means seed (default 0)")
    recommend.add_argument("-n", type=int, default=10, help="number of items (default 10)")
    recommend.add_argument("--include-seen", action="store_true",
                           help="also rank the items the user rated in training")
    recommend.add_argument("--json", action="store_true", help="print one JSON document")
    recommend.set_defaults(func=_cmd_recommend)

    predict = sub.add_parser("predict", help="predicted rating of a user for an item")
    predict.add_argument("model", metavar="MODEL")
    predict.add_argument("--user", required=True, metavar="ID")
    predict.add_argument("--item", required=True, metavar="ID")
    predict.add_argument("--json", action="store_true", help="print one JSON document")
    predict.set_defaults(func=_cmd_predict)

    info = sub.add_parser("info", help="sizes, hyperparameters and format version of a model file")
    info.add_argument("model", metavar="MODEL")
    info.add_argument("--json", action="store_true", help="print one JSON document")
    info.set_defaults(func=_cmd_info)

    serve = sub.add_parser("serve", help="HTTP JSON service over a model file (until SIGTERM)")
    serve.add_argument("model", metavar="MODEL")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8000,
                       help="port (default 8000; 0 picks a free one, printed on stdout)")
    # Defaults live in fastcofi.server (not imported here: http.server slows every command).
    serve.add_argument("--max-n", type=int, help="largest n a request may ask for (default 1000)")
    serve.add_argument("--max-body", type=int, metavar="BYTES",
                       help="largest POST body in bytes (default 1048576)")
    serve.add_argument("--threads", type=int, help="connections served at once (default 16)")
    serve.add_argument("--verbose", action="store_true", help="log each request to stderr")
    serve.set_defaults(func=_cmd_serve)
    return parser


def _one_line(message):
    return " ".join(str(message).split())


def _os_message(exc):
    if exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)


def main(argv=None):
    """Run the command line; returns the exit code (0 success, 2 usage or input error)."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        return args.func(args)
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0
    except _UsageError as exc:
        message = exc
    except OSError as exc:
        message = _os_message(exc)
    except KeyError as exc:
        message = exc.args[0] if exc.args else exc
    except (ValueError, ImportError) as exc:
        message = exc
    print(f"fastcofi: error: {_one_line(message)}", file=sys.stderr)
    return 2


def console_main():
    sys.exit(main())
