"""MovieLens releases on demand.

:func:`fetch` downloads a release once into a cache (``FASTCOFI_DATA``, else
``~/.cache/fastcofi``), checks it against the checksum GroupLens publishes, unpacks it and returns
the folder; :func:`load` reads its ratings.

MovieLens data belong to GroupLens (University of Minnesota): research use only, cite the dataset,
no redistribution and no commercial use without their permission. They are never shipped with
fastcofi; :func:`fetch` prints these terms when it unpacks a release.
"""

import hashlib
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

__all__ = ["DATASETS", "DownloadError", "ChecksumError", "fetch", "load", "data_home"]

BASE_URL = "https://files.grouplens.org/datasets/movielens/"

GROUPLENS_TERMS = """\
MovieLens data (c) GroupLens Research, University of Minnesota. Terms of use, in short: research
use only; acknowledge the dataset (F. M. Harper and J. A. Konstan, "The MovieLens Datasets:
History and Context", ACM TiiS 5(4), 2015); imply no endorsement; do not redistribute it without
GroupLens's permission; no commercial or revenue-bearing use without their permission.
The full text is in the README of the release."""

# md5: the value GroupLens publishes beside each archive (<url>.md5). Not reachable from where this
# registry was written, so each value was taken from public projects that pin it for the official
# file (e.g. eli-osherovich/papers_with_code datasets/movielens/dl_config.py; for ml-100k also
# several course and benchmark repositories). size: bytes of the archive as recorded by
# tensorflow/datasets (url_checksums/movielens.txt, beside a sha256 of each download; its ml-100k
# size, 4,924,029, is also the one a benchmark manifest pins with the md5 above); None for ml-10m,
# which no public record reachable here sizes, and then only the checksum is checked. ratings:
# the count the release's README states, checked after unpacking, which also pins a release that
# carries no checksum.
DATASETS = {
    "ml-100k": {
        "file": "ml-100k.zip",
        "md5": "0e33842e24a9c977be4e0107933c0723",
        "size": 4_924_029,
        "folder": "ml-100k",
        "ratings": "u.data",
        "titles": "u.item",
        "n_ratings": 100_000,
    },
    "ml-1m": {
        "file": "ml-1m.zip",
        "md5": "c4d9eecfca2ab87c1945afe126590906",
        "size": 5_917_549,
        "folder": "ml-1m",
        "ratings": "ratings.dat",
        "titles": "movies.dat",
        "n_ratings": 1_000_209,
    },
    "ml-10m": {
        "file": "ml-10m.zip",
        "md5": "ce571fd55effeba0271552578f2648bd",
        "size": None,
        # The 10M archive unpacks to a folder of another name.
        "folder": "ml-10M100K",
        "ratings": "ratings.dat",
        "titles": "movies.dat",
        "n_ratings": 10_000_054,
    },
    "ml-20m": {
        "file": "ml-20m.zip",
        "md5": "cd245b17a1ae2cc31bb14903e1204af3",
        "size": 198_702_078,
        "folder": "ml-20m",
        "ratings": "ratings.csv",
        "titles": "movies.csv",
        "n_ratings": 20_000_263,
    },
    "ml-25m": {
        "file": "ml-25m.zip",
        "md5": "6b51fb2759a8657d3bfcbfc42b592ada",
        "size": 261_978_986,
        "folder": "ml-25m",
        "ratings": "ratings.csv",
        "titles": "movies.csv",
        "n_ratings": 25_000_095,
    },
    # "latest-small" is republished under the same URL; this entry pins the September 2018
    # release (100,836 ratings, 9,742 movies, 610 users). Its published md5 could not be found in
    # any public record reachable here, so md5 is None: the download is checked by its size (as
    # tensorflow/datasets records it, with the sha256
    # 696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436) and by its rating count
    # after unpacking.
    "ml-latest-small": {
        "file": "ml-latest-small.zip",
        "md5": None,
        "size": 978_202,
        "folder": "ml-latest-small",
        "ratings": "ratings.csv",
        "titles": "movies.csv",
        "n_ratings": 100_836,
    },
}

_CHUNK = 1 << 16
_DONE = ".fastcofi-complete"


class DownloadError(OSError):
    """A release could not be fetched; the message says which file to place where by hand."""


class ChecksumError(DownloadError):
    """The downloaded bytes are not the release the registry pins."""


def data_home(data_home=None):
    """The cache folder: ``data_home``, else ``$FASTCOFI_DATA``, else ``~/.cache/fastcofi``."""
    return _cache_dir(data_home)


def _cache_dir(folder):
    if folder is None:
        folder = os.environ.get("FASTCOFI_DATA") or Path.home() / ".cache" / "fastcofi"
    return Path(folder).expanduser()


def _entry(name):
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    return DATASETS[name]


def fetch(name, data_home=None, *, base_url=None, url=None, md5=..., size=..., progress=True,
          timeout=60):
    """Download (once), verify and unpack a MovieLens release; return its folder.

    Parameters
    ----------
    name : str
        A key of :data:`DATASETS` (``"ml-100k"``, ``"ml-1m"``, ``"ml-10m"``, ``"ml-20m"``,
        ``"ml-25m"``, ``"ml-latest-small"``).
    data_home : str or os.PathLike, optional
        The cache; see :func:`data_home`.
    base_url : str, optional
        A mirror holding the archives under their official names (default GroupLens).
    url : str, optional
        The archive's full URL, overriding ``base_url``.
    md5, size : optional
        Override the registry's checksum / byte count (``None`` skips that check).
    progress : bool
        Draw a progress bar on stderr.
    timeout : float
        Seconds to wait for the server.

    Returns
    -------
    pathlib.Path
        The unpacked release, e.g. ``<cache>/ml-100k``.

    Raises
    ------
    DownloadError
        Offline, refused or interrupted: the message names the URL and where to put the archive
        by hand. A partial download never remains in the cache.
    ChecksumError
        The bytes differ from the pinned release.
    """
    entry = _entry(name)
    md5 = entry["md5"] if md5 is ... else md5
    size = entry["size"] if size is ... else size
    home = _cache_dir(data_home)
    folder = home / name
    if (folder / _DONE).is_file():
        return folder
    home.mkdir(parents=True, exist_ok=True)
    archive = home / entry["file"]
    url = url or (base_url or BASE_URL).rstrip("/") + "/" + entry["file"]
    if archive.is_file():
        # Placed by hand or left by an unpack that failed: verified, never fetched again.
        _verify(archive, md5, size, url, archive)
    else:
        _download(url, archive, md5, size, progress, timeout)
    _unpack(archive, folder, entry, name)
    print(GROUPLENS_TERMS, file=sys.stderr)
    return folder


def _hand_placement(url, archive):
    return f"download {url} by hand and place it at {archive} (fastcofi checks and unpacks it)"


def _download(url, archive, md5, size, progress, timeout):
    tmp = tempfile.NamedTemporaryFile(
        dir=archive.parent, prefix=f".{archive.name}.", suffix=".part", delete=False
    )
    try:
        digest = hashlib.md5()
        received = 0
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                length = response.headers.get("Content-Length")
                expected = int(length) if length and length.isdigit() else size
                bar = _Progress(expected, archive.name) if progress else None
                while True:
                    block = response.read(_CHUNK)
                    if not block:
                        break
                    tmp.write(block)
                    digest.update(block)
                    received += len(block)
                    if bar:
                        bar.update(received)
                if bar:
                    bar.close()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            if isinstance(exc, urllib.error.HTTPError):
                reason = f"HTTP {exc.code} {exc.reason}"
            else:
                reason = getattr(exc, "reason", None) or exc
            raise DownloadError(
                f"could not download {url} ({reason}); {_hand_placement(url, archive)}"
            ) from None
        tmp.close()
        if length and length.isdigit() and received != int(length):
            raise DownloadError(
                f"download of {url} stopped after {received} of {length} bytes; retry, or "
                f"{_hand_placement(url, archive)}"
            )
        _check(digest.hexdigest(), received, md5, size, url, archive)
        os.replace(tmp.name, archive)
    finally:
        tmp.close()
        if os.path.exists(tmp.name):
            os.unlink(tmp.name)


def _verify(archive, md5, size, url, where):
    digest = hashlib.md5()
    with open(archive, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    try:
        _check(digest.hexdigest(), archive.stat().st_size, md5, size, url, where)
    except ChecksumError:
        archive.unlink()
        raise


def _check(found_md5, found_size, md5, size, url, archive):
    if size is not None and found_size != size:
        raise ChecksumError(
            f"{url}: expected {size} bytes, received {found_size}; the file was discarded. "
            f"Retry, or {_hand_placement(url, archive)}"
        )
    if md5 is not None and found_md5 != md5.lower():
        raise ChecksumError(
            f"{url}: md5 mismatch, expected {md5}, found {found_md5}; the file was discarded. "
            f"Retry, or {_hand_placement(url, archive)}"
        )


def _unpack(archive, folder, entry, name):
    """Extract into a temporary folder, check it, then move it into place in one rename."""
    parent = folder.parent
    work = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}.unpack-"))
    try:
        try:
            with zipfile.ZipFile(archive) as zf:
                root = work.resolve()
                for member in zf.namelist():
                    target = (work / member).resolve()
                    if root not in target.parents and target != root:
                        raise DownloadError(
                            f"{archive}: member {member!r} would unpack outside the folder it is "
                            "extracted to; not a MovieLens release: remove it and fetch again"
                        )
                zf.extractall(work)
        except (zipfile.BadZipFile, EOFError) as exc:
            archive.unlink()
            raise DownloadError(f"{archive} is not a valid zip archive ({exc}); it was removed, "
                                "fetch again") from None
        inner = work / entry["folder"]
        if not inner.is_dir():
            entries = [p for p in work.iterdir()]
            inner = entries[0] if len(entries) == 1 and entries[0].is_dir() else work
        ratings_file = inner / entry["ratings"]
        if not ratings_file.is_file():
            raise DownloadError(f"{archive} holds no {entry['folder']}/{entry['ratings']}")
        n = _count_ratings(ratings_file)
        if entry.get("n_ratings") is not None and n != entry["n_ratings"]:
            raise ChecksumError(
                f"{archive}: {entry['ratings']} holds {n} ratings, expected {entry['n_ratings']} "
                "for the pinned release; remove the archive to fetch again"
            )
        (inner / _DONE).write_text(f"{name}\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(inner, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _count_ratings(path):
    lines = 0
    last = b"\n"
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            lines += block.count(b"\n")
            last = block[-1:]
    lines += last != b"\n"
    return lines - (path.suffix == ".csv")


class _Progress:
    """A one-line progress bar on stderr (stdlib only), redrawn at most 10 times a second."""

    def __init__(self, total, label):
        self.total = total
        self.label = label
        self.last = 0.0

    def update(self, done, force=False):
        now = time.monotonic()
        if not force and now - self.last < 0.1:
            return
        self.last = now
        mb = done / 1e6
        if self.total:
            frac = min(done / self.total, 1.0)
            bar = "#" * int(30 * frac)
            line = f"\r{self.label} [{bar:<30}] {100 * frac:5.1f}% {mb:.1f} MB"
        else:
            line = f"\r{self.label} {mb:.1f} MB"
        sys.stderr.write(line)
        sys.stderr.flush()

    def close(self):
        self.update(self.total or 0, force=True)
        sys.stderr.write("\n")
        sys.stderr.flush()


def load(name, data_home=None, **fetch_args):
    """Fetch a release (see :func:`fetch`) and read its ratings.

    Returns
    -------
    ratings : Ratings
    titles : dict
        ``{item id: title}``.
    """
    from .read import read_ratings
    from .titles import read_titles

    entry = _entry(name)
    folder = fetch(name, data_home, **fetch_args)
    return read_ratings(folder / entry["ratings"]), read_titles(folder / entry["titles"])
