"""The `fastcofi` command line: argparse subcommands that read input, call the library, print."""

import math
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

from ._cli_common import (
    _add_read_flags,
    _check_output,
    _Parser,
    _print_json,
    _rating_metrics,
    _read,
    _title,
    _UsageError,
)
from .documents import typed_id

__all__ = ["main"]






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
























# -- train -----------------------------------------------------------------------------------
def _cmd_train(args):
    from ..model import MatrixFactorization

    _check_output(args.output)
    if args.validation_fraction is not None and not 0 < args.validation_fraction < 1:
        raise ValueError(
            f"--validation-fraction must be in (0, 1), found {args.validation_fraction:g}"
        )
    params = {
        "n_factors": args.factors, "reg": args.reg, "max_iter": args.max_iter,
        "solver": args.solver, "normalize": args.normalize, "random_state": args.seed,
    }
    model = MatrixFactorization(**{k: v for k, v in params.items() if v is not None})
    model._check_params()  # a bad flag fails before any file is read
    if args.dask is None:
        return _train(args, model, None)
    from ..distributed import _close_client, _connect

    if model.solver not in ("auto", "cg", "lbfgs"):
        raise ValueError(f"--dask trains with --solver cg or lbfgs, found --solver {model.solver}")
    # Connect before reading: a wrong address fails in seconds, not after the parse.
    dask_client, _ = _connect(args.dask)
    try:
        return _train(args, model, dask_client)
    finally:
        _close_client(dask_client)


class _Interrupted(Exception):
    """SIGINT during training: the callback stopped the solver at an iteration's end."""


class _Diverged(Exception):
    pass


def _split_for_training(args, ratings):
    """(train, validation, test): the test set is set aside first and never seen by training;
    the validation set, for early stopping, is carved from what is left with ``--seed``."""
    from ..evaluate.split import random_split

    test = None
    if args.test is not None:
        test = _read(args, args.test)
        train = ratings
    elif args.test_fraction is not None:
        train, test = random_split(ratings, args.test_fraction, random_state=args.seed)
    else:
        train = ratings
    validation = None
    if args.validation_fraction is not None:
        # Its own stream: the carve must not depend on whether a test set was set aside.
        train, validation = random_split(train, args.validation_fraction,
                                         random_state=[args.seed, 1])
    return train, validation, test


def _train(args, model, dask_client):
    from ..data.titles import read_titles

    ratings = _read(args, args.data)
    titles = read_titles(args.titles) if args.titles else None
    train, validation, test = _split_for_training(args, ratings)
    if args.save_split is not None:
        _save_split(args.save_split, train=train, validation=validation, test=test)
    print(f"training on {train.nnz} ratings ({train.n_users} users, {train.n_items} items)"
          + (f", early stopping on {validation.nnz}" if validation is not None else "")
          + (f", testing on {test.nnz} afterwards" if test is not None else ""), file=sys.stderr)
    start = time.perf_counter()
    interrupted = []
    last = [0]

    def progress(iteration, info):
        last[0] = iteration
        if not math.isfinite(info["cost"]):
            raise _Diverged(
                f"training diverged: solver {getattr(model, 'solver_', model.solver)} reached "
                f"a non-finite cost ({info['cost']}) at iteration {iteration}; nothing was "
                "written (try a larger --reg, or check the ratings' scale)"
            )
        elapsed = time.perf_counter() - start
        line = f"iter {iteration:4d}  cost {info['cost']:.6g}  elapsed {elapsed:.2f}s"
        if "val_rmse" in info:
            line += f"  val_rmse {info['val_rmse']:.4f}"
        print(line, file=sys.stderr, flush=True)
        return bool(interrupted)

    fit_kwargs = {
        "validation": validation, "callback": progress, "checkpoint": args.checkpoint,
        "checkpoint_every": args.checkpoint_every, "resume": args.resume,
    }
    with warnings.catch_warnings(record=True) as caught, _stop_on_sigint(interrupted):
        warnings.simplefilter("always")
        try:
            if dask_client is None:
                model.fit(train, **fit_kwargs)
            else:
                from ..distributed import fit

                try:
                    fit(model, train, client=dask_client, **fit_kwargs)
                except RuntimeError as exc:
                    raise ValueError(f"training on the Dask cluster failed: {exc}") from None
        except _Diverged as exc:
            raise ValueError(str(exc)) from None
    if interrupted:
        saved = f"; the checkpoint {args.checkpoint} holds it (continue with --resume)" \
            if args.checkpoint else ""
        raise _Interrupted(f"at iteration {last[0]}{saved}; no model written")
    for warning in caught:
        print(f"fastcofi: warning: {str(warning.message).splitlines()[0]}", file=sys.stderr)
    _check_finite_model(model)
    if titles:
        model.titles_ = titles
    train_scores = _rating_metrics(model, train)
    print(f"train RMSE {train_scores['rmse']:.4f}  MAE {train_scores['mae']:.4f}  "
          f"({train_scores['n']} ratings, {model.n_iter_} iterations"
          + (f", kept iteration {model.best_iteration_}" if validation is not None else "")
          + ")")
    if validation is not None:
        val_scores = _rating_metrics(model, validation)
        print(f"validation RMSE {val_scores['rmse']:.4f}  ({val_scores['n']} ratings, "
              "used for early stopping)")
    if test is not None:
        test_scores = _rating_metrics(model, test)
        print(f"test RMSE {test_scores['rmse']:.4f}  MAE {test_scores['mae']:.4f}  "
              f"({test_scores['n']} ratings, not seen by training)")
    model.save(args.output)
    print(f"wrote {args.output}")
    return 0


def _check_finite_model(model):
    """A solver can end on non-finite factors without a callback seeing the cost (ALS, VB)."""
    import numpy as np

    arrays = [model.item_factors_, model.user_factors_]
    arrays += [a for a in (model.item_bias_, model.user_bias_) if a is not None]
    if not all(np.isfinite(a).all() for a in arrays):
        raise ValueError(
            f"training diverged: solver {getattr(model, 'solver_', model.solver)} ended with "
            f"non-finite factors after iteration {model.n_iter_}; nothing was written (try a "
            "larger --reg, or check the ratings' scale)"
        )


class _stop_on_sigint:
    """Within: the first SIGINT asks the solver to stop at the end of its iteration (so the
    checkpoint is written as at any end of training); a second one interrupts at once."""

    def __init__(self, flag):
        self.flag = flag
        self.previous = None

    def _handler(self, signum, frame):
        if self.flag:
            raise KeyboardInterrupt
        self.flag.append(signum)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


def _save_split(folder, **parts):
    """Each non-empty part as ``folder/<name>.csv`` (user,item,rating), written atomically."""
    import numpy as np

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--save-split {folder}: exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    for name, ratings in parts.items():
        if ratings is None:
            continue
        users, items, values = ratings.coo()
        columns = []
        for ids in (ratings.user_ids[users], ratings.item_ids[items]):
            text = ids.astype(str)
            if ids.dtype.kind == "U" and text.size and (
                    np.char.find(text, ",").max() >= 0 or np.char.find(text, '"').max() >= 0):
                raise ValueError("--save-split: an id holds ',' or '\"' and cannot be written "
                                 "as CSV")
            columns.append(text)
        columns.append(np.array([repr(float(v)) for v in values.tolist()], dtype=str))
        body = "\n".join(",".join(row) for row in zip(*columns))
        target = folder / f"{name}.csv"
        temporary = folder / f".{name}.csv.tmp"
        temporary.write_text("user,item,rating\n" + body + ("\n" if body else ""),
                             encoding="utf-8")
        os.replace(temporary, target)
    print(f"wrote the split to {folder}/ ("
          + ", ".join(f"{n}.csv" for n, r in parts.items() if r is not None) + ")",
          file=sys.stderr)


# -- evaluate --------------------------------------------------------------------------------
def default_relevance_threshold(rating_range):
    """The upper quarter of the training rating range: ``min + 0.75 (max - min)`` (4 on a 1-5
    scale, 3.875 on 0.5-5, 1.5 on 0-2)."""
    low, high = (float(v) for v in rating_range)
    return low + 0.75 * (high - low)


def _unknown_share_warning(model, test):
    from ..data.ids import lookup

    shares = {
        "users": 1.0 - float(lookup(model.user_ids_, test.user_ids)[1].mean()),
        "items": 1.0 - float(lookup(model.item_ids_, test.item_ids)[1].mean()),
    }
    high = {side: share for side, share in shares.items() if share > 0.5}
    if not high:
        return None
    parts = " and ".join(f"{share:.0%} of the test {side}" for side, share in high.items())
    return (f"{parts} are unknown to the model: their predictions are fallbacks; is this data "
            "from the population the model was trained on?")


def _cmd_evaluate(args):
    from ..evaluate.metrics import evaluate
    from ..model_file import load_model

    if args.k < 1:
        raise ValueError(f"--k must be a positive integer, found {args.k}")
    model = load_model(args.model)
    test = _read(args, args.data)
    threshold = args.relevance_threshold
    if threshold is None:
        threshold = default_relevance_threshold(model.rating_range_)
    result = evaluate(model, test, k=args.k, relevance_threshold=threshold)
    warning = _unknown_share_warning(model, test)
    if warning is not None:
        print(f"fastcofi: warning: {warning}", file=sys.stderr)
    if args.json:
        result["warnings"] = [] if warning is None else [warning]
        _print_json(result)
        return 0
    for key, value in result.items():
        shown = f"{value:.4f}" if isinstance(value, float) else value
        print(f"{key}: {shown}")
    return 0


# -- recommend / predict ---------------------------------------------------------------------
def _cmd_recommend(args):
    from ..model_file import load_model

    if args.min_ratings is not None and args.min_ratings < 0:
        raise ValueError(f"--min-ratings must be an integer >= 0, found {args.min_ratings}")
    model = load_model(args.model)
    if args.cluster is not None:
        return _recommend_cluster(model, args)
    user = typed_id(model.user_ids_, args.user, "--user")
    ids, scores = model.recommend(user, n=args.n, exclude_seen=not args.include_seen,
                                  min_item_ratings=args.min_ratings)
    rows = _item_rows(model, ids, scores, user)
    if args.json:
        _print_json({"user": user, "recommendations": rows})
        return 0
    if not rows:
        print(f"no items to recommend to user {user}")
    _print_rows(rows)
    return 0


def _recommend_cluster(model, args):
    import numpy as np

    clusters = model.cluster_users(args.clusters, random_state=args.seed)
    ids, scores = clusters.recommend(args.cluster, n=args.n)
    if args.min_ratings:
        from .. import serving

        keep = serving.state_of(model).item_counts()[
            np.searchsorted(model.item_ids_, ids)] >= args.min_ratings
        ids, scores = ids[keep], scores[keep]
    rows = _item_rows(model, ids, scores)
    size = int((clusters.labels == args.cluster).sum())
    if args.json:
        _print_json({"cluster": args.cluster, "n_clusters": args.clusters, "n_users": size,
                     "recommendations": rows})
        return 0
    print(f"cluster {args.cluster} of {args.clusters} ({size} users)")
    _print_rows(rows)
    return 0


def _item_rows(model, ids, scores, user=None):
    from .documents import recommendation_rows

    return recommendation_rows(model, ids, scores, user)


def _print_rows(rows):
    for rank, row in enumerate(rows, start=1):
        title = f"  {row['title']}" if "title" in row else ""
        print(f"{rank:3d}. item {row['item']}  score {row['score']:.3f}  "
              f"prediction {row['prediction']:.3f}{title}")


def _cmd_predict(args):
    from ..data.ids import lookup
    from ..model_file import load_model

    model = load_model(args.model)
    user = typed_id(model.user_ids_, args.user, "--user")
    item = typed_id(model.item_ids_, args.item, "--item")
    std = None
    if args.std:
        try:
            prediction, std = model.predict(user, item, return_std=True)
        except ValueError as exc:
            raise ValueError(f"--std: {exc}") from None
        std = float(std)
    else:
        prediction = model.predict(user, item)
    prediction = float(prediction)
    user_known = bool(lookup(model.user_ids_, [user])[1][0])
    item_known = bool(lookup(model.item_ids_, [item])[1][0])
    known = user_known and item_known
    if args.json:
        document = {"user": user, "item": item, "prediction": prediction, "known": known}
        if std is not None:
            document["std"] = std
        _print_json(document)
        return 0
    title = _title(model, item)
    unknown = [what for what, ok in (("user", user_known), ("item", item_known)) if not ok]
    note = f"  (fallback: unknown {' and '.join(unknown)})" if unknown else ""
    spread = f" +- {std:.3f}" if std is not None else ""
    print(f"user {user}, item {item}{f' ({title})' if title else ''}: "
          f"{prediction:.3f}{spread}{note}")
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
    print(f"training data {info['n_ratings']} ratings, {info['n_users']} users, "
          f"{info['n_items']} items, ratings in [{info['rating_range'][0]:g}, "
          f"{info['rating_range'][1]:g}]")
    kept = info["best_iteration"]
    print(f"training      {info['n_iter']} iterations, kept iteration {kept}"
          + (" (the best on the validation set)" if kept != info["n_iter"] else ""))
    print(f"penalties     reg_ {info['reg']:.6g}, reg_bias_ {info['reg_bias']:.6g} (as used)")
    print(f"titles        {info['n_titles']}")
    params = ", ".join(f"{k}={v!r}" for k, v in info["params"].items())
    print(f"parameters    {params}")
    return 0


# -- serve -----------------------------------------------------------------------------------
def _cmd_serve(args):
    try:
        from .server import serve
    except ImportError as exc:
        raise ImportError(f"fastcofi serve needs the web stack ({exc.name or exc} is missing): "
                          "pip install 'fastcofi[serve]'") from None

    limits = {"max_n": args.max_n, "max_body": args.max_body, "threads": args.threads,
              "timeout": args.timeout}
    return serve(args.model, args.host, args.port, verbose=args.verbose,
                 **{name: value for name, value in limits.items() if value is not None})


# -- parser ----------------------------------------------------------------------------------
_JSON_COMMANDS = ("evaluate", "recommend", "predict", "info")


def _sub(sub, name, summary, description=None):
    """A subcommand with a one-line summary (the command list) and a description (its --help)."""
    parser = sub.add_parser(name, help=summary,
                            description=description or summary[0].upper() + summary[1:] + ".")
    if name in _JSON_COMMANDS:
        parser.add_argument("--json", action="store_true",
                            help="print one JSON document on stdout")
    return parser


def _build_parser():
    from .. import __version__

    parser = _Parser(
        prog="fastcofi", description="Collaborative filtering by matrix factorization: train a "
        "model on a rating file, evaluate it, recommend, predict, serve it over HTTP.",
        epilog="Run 'fastcofi COMMAND --help' for a command's flags.",
    )
    parser.add_argument("--version", action="version", version=f"fastcofi {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser,
                                metavar="COMMAND", title="commands")

    demo = _sub(sub, "demo", "the tutorial's toy example: rank movies for a new user")
    demo.add_argument("--reg", type=float, default=None,
                      help="regularization (default 1; 30 reproduces the tutorial's setting)")
    demo.add_argument("--factors", type=int, default=3, help="number of features (default 3)")
    demo.add_argument("--max-iter", type=int, default=100, help="CG iterations (default 100)")
    demo.set_defaults(func=_cmd_demo)

    train = _sub(sub, "train", "fit a model on a rating file and write it (.npz)",
                 "Fit a model on a rating file and write it (.npz). A test set (--test or "
                 "--test-fraction) is only scored after training; early stopping uses "
                 "--validation-fraction of the training ratings.")
    train.add_argument("data", metavar="DATA",
                       help="rating file (MovieLens, CSV/TSV, Parquet, .gz, .zip)")
    _add_read_flags(train)
    train.add_argument("--factors", type=int, help="number of latent factors (default 10)")
    train.add_argument("--reg", type=float,
                       help="regularization (default: 1.15 x the std of the training ratings; "
                       "0.02 x from 500,000 ratings, where SGD weights each row's penalty by "
                       "its number of ratings)")
    train.add_argument("--max-iter", type=int, help="iterations at most (default 300)")
    train.add_argument("--solver", choices=("auto", "cg", "lbfgs", "als", "sgd", "vb"),
                       help="optimizer (default auto: cg below 500,000 ratings, sgd from there; "
                       "vb: variational Bayes, learns its own regularization)")
    train.add_argument("--normalize", choices=("item_mean", "biases", "none"),
                       help="normalization (default biases)")
    held_out = train.add_mutually_exclusive_group()
    held_out.add_argument("--test-fraction", type=float, metavar="F",
                          help="hold out this random fraction of the ratings as a test set, "
                               "scored after training")
    held_out.add_argument("--test", metavar="FILE",
                          help="a rating file scored after training (never used to train)")
    train.add_argument("--validation-fraction", type=float, metavar="F",
                       help="carve this random fraction of the training ratings for early "
                            "stopping (the model keeps its best iteration on it)")
    train.add_argument("--save-split", metavar="DIR",
                       help="write the ratings used as DIR/train.csv, validation.csv and "
                            "test.csv (for 'fastcofi evaluate MODEL DIR/test.csv')")
    train.add_argument("--seed", type=int, default=0,
                       help="seed of the splits and the initial factors (default 0)")
    train.add_argument("--titles", metavar="FILE",
                       help="item titles (u.item, movies.dat, movies.csv)")
    train.add_argument("-o", "--output", metavar="MODEL", required=True, help="model file to write")
    train.add_argument("--checkpoint", metavar="FILE",
                       help="write the training state to FILE every --checkpoint-every "
                            "iterations, at the end, and on Ctrl-C")
    train.add_argument("--checkpoint-every", type=int, default=10, metavar="N",
                       help="iterations between checkpoints (default 10)")
    train.add_argument("--resume", action="store_true",
                       help="continue from --checkpoint when it exists (CG restarts its direction)")
    train.add_argument("--dask", metavar="SCHEDULER_ADDRESS",
                       help="evaluate the objective on this Dask cluster (tcp://host:8786); "
                            "needs pip install 'fastcofi[distributed]'")
    train.set_defaults(func=_cmd_train)

    evaluate = _sub(sub, "evaluate", "RMSE, MAE and ranking metrics of a model on a rating file")
    evaluate.add_argument("model", metavar="MODEL", help="model file (.npz) written by train")
    evaluate.add_argument("data", metavar="DATA", help="held-out rating file")
    _add_read_flags(evaluate)
    evaluate.add_argument("-k", "--k", type=int, default=10, dest="k",
                          help="length of the ranked lists (default 10)")
    evaluate.add_argument("--relevance-threshold", type=float, metavar="R",
                          help="a test rating >= R is relevant for the ranking metrics "
                               "(default: the upper quarter of the training rating range, "
                               "min + 0.75 (max - min): 4 on a 1-5 scale)")
    evaluate.set_defaults(func=_cmd_evaluate)

    recommend = _sub(sub, "recommend", "top items for a user (or a user cluster)",
                     "Top items for a user (or a user cluster), best first: each with its raw "
                     "score (the ranking) and its prediction (the score clipped to the training "
                     "rating range, as 'predict' gives it).")
    recommend.add_argument("model", metavar="MODEL", help="model file (.npz) written by train")
    who = recommend.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", metavar="ID", help="the user's id (as in the training file)")
    who.add_argument("--cluster", type=int, metavar="C",
                     help="items cluster C of --clusters k-means user groups rates highest")
    recommend.add_argument("--clusters", type=int, default=8, metavar="K",
                           help="number of user clusters for --cluster (default 8)")
    recommend.add_argument("--seed", type=int, default=0, help="k-means seed (default 0)")
    recommend.add_argument("-n", type=int, default=10, help="number of items (default 10)")
    recommend.add_argument("--min-ratings", type=int, metavar="N",
                           help="leave out items with fewer than N training ratings")
    recommend.add_argument("--include-seen", action="store_true",
                           help="also rank the items the user rated in training")
    recommend.set_defaults(func=_cmd_recommend)

    predict = _sub(sub, "predict", "predicted rating of a user for an item",
                   "Predicted rating of a user for an item, clipped to the training rating "
                   "range; an unknown user or item gets the fallback (global mean plus what is "
                   "known).")
    predict.add_argument("model", metavar="MODEL", help="model file (.npz) written by train")
    predict.add_argument("--user", required=True, metavar="ID", help="the user's id")
    predict.add_argument("--item", required=True, metavar="ID", help="the item's id")
    predict.add_argument("--std", action="store_true",
                         help="also the posterior predictive standard deviation (models with "
                              "a posterior only)")
    predict.set_defaults(func=_cmd_predict)

    info = _sub(sub, "info", "sizes, penalties, training data and format version of a model file")
    info.add_argument("model", metavar="MODEL", help="model file (.npz) written by train")
    info.set_defaults(func=_cmd_info)

    serve = _sub(sub, "serve", "HTTP JSON service over a model file (until SIGTERM or Ctrl-C)",
                 "HTTP JSON service over a model file, until SIGTERM or Ctrl-C (an ASGI app run "
                 "by uvicorn; needs pip install 'fastcofi[serve]').")
    serve.add_argument("model", metavar="MODEL", help="model file (.npz) written by train")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8000,
                       help="port (default 8000; 0 picks a free one, printed on stdout)")
    # Defaults live in fastcofi.app.server (not imported here: the web stack slows every command).
    serve.add_argument("--max-n", type=int, help="largest n a request may ask for (default 1000)")
    serve.add_argument("--max-body", type=int, metavar="BYTES",
                       help="largest POST body in bytes (default 1048576)")
    serve.add_argument("--threads", type=int,
                       help="worker threads for model calls (default 8)")
    serve.add_argument("--timeout", type=float, metavar="SECONDS",
                       help="longest time to receive a request body and answer it (default 10)")
    serve.add_argument("--verbose", action="store_true", help="log each request to stderr")
    serve.set_defaults(func=_cmd_serve)
    return parser


def _one_line(message):
    return " ".join(str(message).split())


def _os_message(exc):
    if exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)


def _quiet_stdout():
    """After EPIPE: point stdout at /dev/null so the interpreter's final flush stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # pragma: no cover - stdout without a fd
        pass


def main(argv=None):
    """Run the command line; returns the exit code (0 success, 2 usage or input error, 130 for
    Ctrl-C)."""
    parser = _build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        parser.print_help(sys.stderr)
        return 2
    try:
        args = parser.parse_args(argv)
        return args.func(args)
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0
    except BrokenPipeError:
        # The reader went away (`fastcofi recommend ... | head -1`): like other Unix tools,
        # stop quietly.
        _quiet_stdout()
        return 0
    except (KeyboardInterrupt, _Interrupted) as exc:
        detail = f": {exc}" if isinstance(exc, _Interrupted) else ""
        print(f"fastcofi: interrupted{detail}", file=sys.stderr)
        return 130
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
    code = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_stdout()
        code = 0
    sys.exit(code)
