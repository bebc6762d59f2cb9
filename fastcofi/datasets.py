"""MovieLens releases on demand, and synthetic ratings with a planted low-rank truth.

:func:`fetch` downloads a release once into a cache (``FASTCOFI_DATA``, else
``~/.cache/fastcofi``), checks it against the checksum GroupLens publishes, unpacks it and returns
the folder; :func:`load` reads its ratings. :func:`synthetic` makes ratings of any size from
planted factors and biases, for tests and scaling benchmarks.

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

import numpy as np

__all__ = ["DATASETS", "DownloadError", "ChecksumError", "fetch", "load", "synthetic", "data_home"]

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
                        raise DownloadError(f"{archive}: member {member!r} would unpack outside")
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
    from .io import read_ratings, read_titles

    entry = _entry(name)
    folder = fetch(name, data_home, **fetch_args)
    return read_ratings(folder / entry["ratings"]), read_titles(folder / entry["titles"])


# -- synthetic ratings -----------------------------------------------------------------------
def synthetic(n_users, n_items, n_ratings, *, rank=10, noise=0.5, seed=None, rating_scale=(1, 5),
              step=1.0, signal=1.0, bias_scale=(0.3, 0.5), popularity=1.0, activity=1.0,
              chunk_size=1 << 20, dtype=np.float64, return_truth=False):
    """Ratings from planted low-rank factors plus biases, with power-law popularity and activity.

    A rating of item ``i`` by user ``u`` is
    ``clip(round_to_step(mu + b_u + b_i + x_i . theta_u + e))`` with ``e ~ N(0, noise**2)``
    and ``mu`` the middle of the scale. Which pairs are rated:

    - user ``u`` rates ``c_u`` items, ``(c_u)`` multinomial with ``n_ratings`` trials and
      probabilities proportional to ``rank(u) ** -activity`` (ranks in a random order), each
      capped at half the items (``ceil(n_items / 2)``; a capped user's surplus is redrawn
      among the others, so the counts sum to exactly ``n_ratings``);
    - a user's items are distinct, drawn with probability proportional to
      ``rank(i) ** -popularity``: repeated draws are dropped and more are drawn until the user
      has at least ``c_u``, then a random ``c_u`` of them are kept.

    Users are generated in chunks of about ``chunk_size`` ratings, written straight into the
    by-user CSR; the by-item CSR is its transpose. Memory is the two CSRs (``2 * (4 + 8)``
    bytes per rating in float64, ``2 * (4 + 4)`` in float32), plus one chunk's work: 1e8
    ratings fit in bounded memory. The result is fixed by ``seed`` and ``chunk_size``.

    Parameters
    ----------
    n_users, n_items, n_ratings : int
        ``n_ratings`` must not exceed half of ``n_users * n_items``.
    rank : int
        Rank of the planted factors.
    noise : float
        Standard deviation of the Gaussian noise added before quantization.
    seed : int or numpy.random.Generator, optional
    rating_scale : (float, float)
        Lowest and highest rating.
    step : float or None
        Quantization step from the lowest rating (1.0 whole stars, 0.5 half stars); None keeps
        continuous ratings (still clipped).
    signal : float
        Standard deviation of the interaction ``x_i . theta_u``.
    bias_scale : (float, float)
        Standard deviations of the user and item biases.
    popularity, activity : float
        Power-law exponents of item popularity and user activity (0: uniform).
    chunk_size : int
        Ratings generated at a time.
    dtype : {numpy.float64, numpy.float32}
        Storage type of the ratings.
    return_truth : bool
        Also return the planted truth.

    Returns
    -------
    ratings : Ratings
        User ids ``0..n_users-1`` and item ids ``0..n_items-1``, all declared (indices equal ids).
    truth : dict, only with ``return_truth``
        ``item_factors`` (n_items, rank), ``user_factors`` (n_users, rank), ``item_bias``
        (n_items,), ``user_bias`` (n_users,), ``global_mean``, ``noise``, and ``clean``: the
        noiseless, unquantized value of each rating (float64, shape (nnz,)), aligned with
        ``ratings.values``.

    Raises
    ------
    ValueError
        Arguments out of range, or a popularity so steep that a user's distinct items cannot
        be drawn.
    """
    from . import _kernels
    from .ratings import Ratings, _index_dtype

    n_users, n_items, n_ratings, rank = (int(v) for v in (n_users, n_items, n_ratings, rank))
    if n_users < 1 or n_items < 1 or n_ratings < 1 or rank < 1:
        raise ValueError(
            "n_users, n_items, n_ratings and rank must be positive; found "
            f"{n_users}, {n_items}, {n_ratings}, {rank}"
        )
    if n_ratings > n_users * n_items // 2:
        raise ValueError(
            f"n_ratings must be at most half of n_users * n_items = {n_users * n_items} "
            f"(distinct pairs), found {n_ratings}"
        )
    lo, hi = (float(v) for v in rating_scale)
    if not lo < hi:
        raise ValueError(f"rating_scale must be (low, high) with low < high, found {rating_scale}")
    if noise < 0 or signal < 0:
        raise ValueError(f"noise and signal must be >= 0, found {noise} and {signal}")
    if step is not None and not step > 0:
        raise ValueError(f"step must be positive or None, found {step}")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be positive, found {chunk_size}")
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise ValueError(f"dtype must be float64 or float32, found {dtype}")
    rng = np.random.default_rng(seed)
    scale = np.sqrt(signal / np.sqrt(rank))
    item_factors = rng.normal(0.0, scale, size=(n_items, rank))
    user_factors = rng.normal(0.0, scale, size=(n_users, rank))
    user_bias = rng.normal(0.0, bias_scale[0], size=n_users)
    item_bias = rng.normal(0.0, bias_scale[1], size=n_items)
    global_mean = (lo + hi) / 2
    item_cdf = np.cumsum(_power_law(n_items, popularity, rng))
    counts = _user_counts(n_ratings, _power_law(n_users, activity, rng), -(-n_items // 2), rng)

    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    user_items = np.empty(n_ratings, dtype=_index_dtype(n_items))
    values = np.empty(n_ratings, dtype=dtype)
    clean = np.empty(n_ratings, dtype=np.float64) if return_truth else None
    for first, last in _user_ranges(indptr, int(chunk_size)):
        start, stop = indptr[first], indptr[last]
        items = _distinct_items(counts[first:last], item_cdf, rng)
        users = np.repeat(np.arange(first, last), counts[first:last])
        user_items[start:stop] = items
        signal_part = np.einsum("ij,ij->i", item_factors[items], user_factors[users])
        exact = global_mean + user_bias[users] + item_bias[items] + signal_part
        if clean is not None:
            clean[start:stop] = exact
        r = exact + rng.normal(0.0, noise, size=stop - start) if noise else exact
        if step is not None:
            r = lo + np.round((r - lo) / step) * step
        values[start:stop] = np.clip(r, lo, hi)
    user_ids = np.arange(n_users, dtype=np.int64)
    item_ids = np.arange(n_items, dtype=np.int64)
    ratings = Ratings._from_user_csr(user_ids, item_ids, indptr, user_items, values)
    if not return_truth:
        return ratings
    # clean is in by-user order; Ratings.values in by-item order: the same transpose moves it.
    clean_by_item = np.empty_like(clean)
    _kernels.transpose_csr(indptr, user_items, clean, n_items,
                           np.empty(n_ratings, dtype=ratings.by_item[1].dtype), clean_by_item)
    truth = {
        "item_factors": item_factors,
        "user_factors": user_factors,
        "item_bias": item_bias,
        "user_bias": user_bias,
        "global_mean": global_mean,
        "noise": float(noise),
        "clean": clean_by_item,
    }
    return ratings, truth


def _power_law(n, exponent, rng):
    weights = np.arange(1, n + 1, dtype=np.float64) ** -float(exponent)
    weights = weights[rng.permutation(n)]
    return weights / weights.sum()


def _user_counts(n_ratings, user_p, cap, rng):
    """Ratings per user (int64, shape (n_users,)): multinomial, each at most ``cap``, sum exact."""
    counts = rng.multinomial(n_ratings, user_p)
    while True:
        over = counts > cap
        surplus = int((counts[over] - cap).sum())
        if surplus == 0:
            return counts
        counts[over] = cap
        # The surplus goes to users below the cap; n_users * cap >= n_ratings leaves room.
        p = np.where(counts < cap, user_p, 0.0)
        counts += rng.multinomial(surplus, p / p.sum())


def _user_ranges(indptr, chunk_size):
    """(first, last) user ranges holding about ``chunk_size`` ratings each (a heavy user alone)."""
    n_users = indptr.shape[0] - 1
    first = 0
    while first < n_users:
        last = int(np.searchsorted(indptr, indptr[first] + chunk_size, side="right")) - 1
        last = min(max(last, first + 1), n_users)
        yield first, last
        first = last


_MAX_DRAW_ROUNDS = 40


def _sorted_unique(keys):
    """Sorted distinct values of an int64 array, sorting it in place.

    ``np.unique`` hashes integers first in numpy 2.x, several times slower here than one sort.
    """
    keys.sort()
    if keys.shape[0] < 2:
        return keys
    return keys[np.concatenate([[True], keys[1:] != keys[:-1]])]


def _distinct_items(counts, item_cdf, rng):
    """Items for consecutive users: ``counts[u]`` distinct ones each, ascending within a user.

    Returns an int64 array of shape (counts.sum(),), users in order. Each round draws, for every
    user still short, twice as many items as in the round before (relative to what is missing),
    so users near the cap of a steep popularity curve need few rounds.
    """
    n_items = item_cdf.shape[0]
    m = counts.shape[0]
    done = []
    pending = np.empty(0, dtype=np.int64)  # distinct keys local_user * n_items + item
    active = np.flatnonzero(counts > 0)
    got = np.zeros(m, dtype=np.int64)  # distinct items so far of each user
    factor = 1.0
    limit = 16 * int(counts.sum()) + (1 << 20)
    for _ in range(_MAX_DRAW_ROUNDS):
        if active.shape[0] == 0:
            break
        draws = np.ceil((counts[active] - got[active]) * factor).astype(np.int64)
        if draws.sum() > limit:
            break
        items = np.searchsorted(
            item_cdf, rng.random(int(draws.sum())) * item_cdf[-1], side="right"
        )
        np.minimum(items, n_items - 1, out=items)
        pending = _sorted_unique(
            np.concatenate([pending, np.repeat(active, draws) * n_items + items])
        )
        owner = pending // n_items
        got = np.bincount(owner, minlength=m)
        full = got >= counts
        finished = full[owner]
        done.append(pending[finished])
        pending = pending[~finished]
        active = active[~full[active]]
        factor *= 2.0
    if active.shape[0]:
        raise ValueError(
            f"could not draw {int(counts[active[0]])} distinct items for a user (of "
            f"{item_cdf.shape[0]}): popularity concentrates the draws on too few items; lower "
            "popularity or n_ratings"
        )
    keys = np.concatenate(done) if done else pending
    users = keys // n_items
    got = np.bincount(users, minlength=m)
    if got.sum() > counts.sum():
        # Keep a random counts[u] of each user's distinct items.
        order = np.lexsort((rng.random(keys.shape[0]), users))
        starts = np.concatenate([[0], np.cumsum(got)[:-1]])
        rank_in_user = np.arange(keys.shape[0]) - np.repeat(starts, got)
        keys = np.sort(keys[order[rank_in_user < np.repeat(counts, got)]])
    else:
        keys.sort()
    return keys % n_items
