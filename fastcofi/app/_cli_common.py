"""What the `fastcofi` subcommands share: the usage error, reading ratings with the column flags,
ids typed on the command line, and JSON and file output."""

import argparse
import json
import os
import re
from pathlib import Path


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        command = self.prog.partition(" ")[2]  # "fastcofi train" -> "train"
        raise _UsageError(f"{command}: {message}" if command else message)


class _UsageError(Exception):
    pass


# -- helpers: output and ids -----------------------------------------------------------------
def _print_json(document):
    from .documents import json_value

    print(json.dumps(json_value(document), allow_nan=False))


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


# -- reading ratings: the column flags -------------------------------------------------------
_COL_FLAGS = {"user": "--user-col", "item": "--item-col", "rating": "--rating-col",
              "timestamp": "--time-col"}


def _add_read_flags(parser):
    """The flags of every command that reads a rating file."""
    from ..data.read import FORMATS

    group = parser.add_argument_group(
        "reading ratings", "Without flags, CSV/TSV columns are found by their header names "
        "(case-insensitive): user/userId/user_id, item/itemId/movieId/item_id, rating/score, "
        "timestamp/time; a header-less file is user, item, rating[, timestamp]."
    )
    group.add_argument("--format", choices=FORMATS, help="file format (detected when not given)")
    for role, flag in _COL_FLAGS.items():
        group.add_argument(flag, metavar="COL", dest=f"{role}_col",
                           help=f"the {role} column: a header name or a 0-based position")
    group.add_argument("--sep", metavar="SEP",
                       help="field separator, one character or '::' (\\t for tab; default: the "
                            "format's, ',' for CSV)")
    group.add_argument("--no-header", action="store_true",
                       help="the first line is a rating, not column names")
    group.add_argument("--duplicates", choices=("error", "last", "mean"), default="error",
                       help="a repeated (user, item) pair: an error (default), the last "
                            "rating, or the mean")


def _column(text):
    """A column flag's value: a 0-based position when it is digits, else a header name."""
    if text is None:
        return None
    stripped = text.strip()
    return int(stripped) if stripped.isascii() and stripped.isdigit() else text


_LIBRARY_ARGS = re.compile(r"\b(user|item|rating|timestamp|sep|format|duplicates)=")


def _flag_message(message):
    """A reader message as a CLI user reads it: the flags, not the library's argument names."""
    message = re.sub(r"\bduplicates='(\w+)'", r"--duplicates \1", message)
    message = message.replace("timestamp=False", "another --time-col")
    message = message.replace("give a column position (an int)", "give a 0-based position")
    flags = dict(_COL_FLAGS, sep="--sep", format="--format", duplicates="--duplicates")
    message = _LIBRARY_ARGS.sub(lambda m: flags[m.group(1)] + " ", message)
    return message.replace(" )", ")").replace(" ;", ";").replace(" ,", ",")


def _read(args, path):
    from ..data.read import read_ratings

    sep = args.sep
    if sep is not None:
        sep = {"\\t": "\t", "tab": "\t"}.get(sep, sep)
    try:
        return read_ratings(
            path, format=args.format, user=_column(args.user_col), item=_column(args.item_col),
            rating=_column(args.rating_col), timestamp=_column(args.timestamp_col), sep=sep,
            header=False if args.no_header else None, duplicates=args.duplicates,
        )
    except ValueError as exc:
        raise ValueError(_flag_message(str(exc))) from None
