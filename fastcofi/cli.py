"""The `fastcofi` command line: argparse subcommands that read input, call the library, print."""

import argparse
import sys

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _UsageError(message)


class _UsageError(Exception):
    pass


def _cmd_demo(args):
    from .demo import NEW_USER_RATINGS, run_demo

    model, ranking = run_demo(reg=args.reg, n_factors=args.factors, max_iter=args.max_iter)
    rated = ", ".join(f"movie {m}: {r:g}" for m, r in NEW_USER_RATINGS.items())
    print(f"New user rated {rated}; trained {args.factors} features, reg {args.reg:g}, "
          f"{model.n_iter_} iterations.")
    for title, score in ranking:
        print(f"Predicting rating {score:.1f} for movie {title}")
    return 0


def _build_parser():
    parser = _Parser(prog="fastcofi", description="Collaborative filtering by matrix factorization.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = sub.add_parser("demo", help="the tutorial's toy example: rank movies for a new user")
    demo.add_argument("--reg", type=float, default=None,
                      help="regularization (default 1; 30 reproduces the tutorial's setting)")
    demo.add_argument("--factors", type=int, default=3, help="number of features (default 3)")
    demo.add_argument("--max-iter", type=int, default=100, help="CG iterations (default 100)")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv=None):
    """Run the command line; returns the exit code (0 success, 2 usage or input error)."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        if getattr(args, "reg", 0) is None:
            from .demo import DEMO_REG

            args.reg = DEMO_REG
        return args.func(args)
    except _UsageError as exc:
        print(f"fastcofi: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"fastcofi: error: {message}", file=sys.stderr)
        return 2


def console_main():
    sys.exit(main())
