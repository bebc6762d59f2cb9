"""Dataset registry, the download code against a local HTTP server, and synthetic ratings."""

import hashlib
import http.server
import io
import re
import threading
import zipfile

import numpy as np
import pytest

from fastcofi.data import movielens as datasets
from fastcofi.data.movielens import ChecksumError, DownloadError, fetch, load
from fastcofi.data.synthetic import synthetic

RATINGS = b"1\t1\t5\t881250949\n1\t2\t3\t881250950\n2\t1\t4\t881250951\n"


def make_zip(n_lines=None):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ml-100k/u.data", RATINGS)
        zf.writestr("ml-100k/u.item", "1|Toy Story (1995)|x\n2|Misérables, Les (1995)|y\n"
                    .encode("latin-1"))
        zf.writestr("ml-100k/README", b"research use only")
    return buf.getvalue()


class Server:
    """Serves one archive on 127.0.0.1; counts requests; can cut the transfer short."""

    def __init__(self, payload):
        self.payload = payload
        self.requests = 0
        self.truncate = None
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the stdlib's name)
                server.requests += 1
                if not self.path.endswith("ml-100k.zip"):
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(server.payload)))
                self.end_headers()
                body = server.payload
                if server.truncate is not None:
                    body = body[: server.truncate]
                self.wfile.write(body)
                self.wfile.flush()
                if server.truncate is not None:
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server(make_zip())
    yield s
    s.close()


def fetch_test(server, home, **kwargs):
    md5 = hashlib.md5(server.payload).hexdigest()
    kwargs.setdefault("md5", md5)
    kwargs.setdefault("size", len(server.payload))
    return fetch("ml-100k", home, base_url=server.url, progress=True, **kwargs)


def leftovers(home):
    return sorted(p.name for p in home.iterdir() if p.name.startswith("."))


def patch_count(monkeypatch, n=3):
    # The registry pins the real release's 100,000 ratings; the test archive holds 3.
    entry = dict(datasets.DATASETS["ml-100k"], n_ratings=n)
    monkeypatch.setitem(datasets.DATASETS, "ml-100k", entry)


# -- registry --------------------------------------------------------------------------------
def test_registry_entries_are_official_and_well_formed():
    assert set(datasets.DATASETS) == {"ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m",
                                      "ml-latest-small"}
    for name, entry in datasets.DATASETS.items():
        assert entry["file"] == f"{name}.zip"
        assert entry["md5"] is None or re.fullmatch(r"[0-9a-f]{32}", entry["md5"])
        assert entry["n_ratings"] > 0
        # every archive is pinned by a checksum or, where none is published, by its size
        assert entry["md5"] is not None or entry["size"] is not None, name
    assert datasets.BASE_URL == "https://files.grouplens.org/datasets/movielens/"
    with pytest.raises(ValueError, match="unknown dataset 'ml-2m'"):
        fetch("ml-2m")


def test_data_home_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTCOFI_DATA", str(tmp_path / "cache"))
    assert datasets.data_home() == tmp_path / "cache"
    monkeypatch.delenv("FASTCOFI_DATA")
    assert datasets.data_home().parts[-2:] == (".cache", "fastcofi")


# -- download against a local server ---------------------------------------------------------
def test_fetch_downloads_verifies_unpacks_once(server, tmp_path, monkeypatch, capsys):
    patch_count(monkeypatch)
    folder = fetch_test(server, tmp_path)
    assert folder == tmp_path / "ml-100k" and (folder / "u.data").read_bytes() == RATINGS
    err = capsys.readouterr().err
    assert "ml-100k.zip [" in err and "100.0%" in err  # the progress bar
    assert "research" in err and "redistribute" in err  # the GroupLens terms
    assert server.requests == 1
    assert leftovers(tmp_path) == []
    assert fetch_test(server, tmp_path) == folder
    assert server.requests == 1  # never twice
    assert "redistribute" not in capsys.readouterr().err  # terms shown once


def test_fetch_uses_fastcofi_data(server, tmp_path, monkeypatch):
    patch_count(monkeypatch)
    monkeypatch.setenv("FASTCOFI_DATA", str(tmp_path / "env-cache"))
    assert fetch_test(server, None) == tmp_path / "env-cache" / "ml-100k"


def test_load_reads_ratings_and_titles(server, tmp_path, monkeypatch):
    patch_count(monkeypatch)
    md5 = hashlib.md5(server.payload).hexdigest()
    ratings, titles = load("ml-100k", tmp_path, base_url=server.url, md5=md5, size=None)
    assert ratings.nnz == 3 and titles[2] == "Misérables, Les (1995)"


def test_checksum_mismatch_leaves_nothing(server, tmp_path, monkeypatch):
    patch_count(monkeypatch)
    with pytest.raises(ChecksumError, match="md5 mismatch") as info:
        fetch_test(server, tmp_path, md5="0" * 32)
    assert "place it at" in str(info.value) and str(tmp_path / "ml-100k.zip") in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_size_mismatch(server, tmp_path, monkeypatch):
    patch_count(monkeypatch)
    with pytest.raises(ChecksumError, match="expected 12 bytes"):
        fetch_test(server, tmp_path, size=12)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_transfer_leaves_no_partial_file(server, tmp_path, monkeypatch):
    patch_count(monkeypatch)
    server.truncate = len(server.payload) // 2
    with pytest.raises(DownloadError) as info:
        fetch_test(server, tmp_path)
    assert "ml-100k.zip" in str(info.value)
    assert list(tmp_path.iterdir()) == []
    server.truncate = None  # a retry then succeeds and downloads once more
    assert (fetch_test(server, tmp_path) / "u.data").is_file()
    assert server.requests == 2


def test_offline_says_what_to_place_where(tmp_path, server, monkeypatch):
    patch_count(monkeypatch)
    url = server.url
    server.close()
    with pytest.raises(DownloadError, match="place it at") as info:
        fetch("ml-100k", tmp_path, base_url=url, timeout=5)
    assert "ml-100k.zip" in str(info.value) and str(tmp_path) in str(info.value)
    assert list(tmp_path.iterdir()) == []
    server.httpd = type(
        "Closed", (), {"shutdown": lambda s: None, "server_close": lambda s: None}
    )()


def test_not_found_is_a_download_error(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch("ml-100k", tmp_path, url=server.url + "missing.zip")


def test_archive_placed_by_hand_is_used_without_download(server, tmp_path, monkeypatch):
    patch_count(monkeypatch)
    (tmp_path / "ml-100k.zip").write_bytes(server.payload)
    folder = fetch_test(server, tmp_path)
    assert (folder / "u.item").is_file() and server.requests == 0


def test_wrong_release_count_is_rejected(server, tmp_path, monkeypatch):
    patch_count(monkeypatch, n=100_000)
    with pytest.raises(ChecksumError, match="holds 3 ratings, expected 100000"):
        fetch_test(server, tmp_path)
    assert not (tmp_path / "ml-100k").exists()


# -- synthetic -------------------------------------------------------------------------------
@pytest.mark.parametrize("member", ["../escaped.txt", "ml-100k/../../escaped.txt",
                                    "/tmp/fastcofi-escaped.txt"])
def test_an_archive_member_outside_the_folder_is_refused(tmp_path, monkeypatch, member):
    """Zip slip: nothing is extracted when any member's path leads out of the unpack folder."""
    patch_count(monkeypatch)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ml-100k/u.data", RATINGS)
        zf.writestr(member, b"outside")
    home = tmp_path / "home"
    home.mkdir()
    (home / "ml-100k.zip").write_bytes(buf.getvalue())
    message = (f"ml-100k.zip: member {member!r} would unpack outside the folder it is extracted "
               "to; not a MovieLens release: remove it and fetch again")
    with pytest.raises(DownloadError, match=re.escape(message) + "$"):
        fetch("ml-100k", home, md5=None, size=None, url="http://127.0.0.1:9/never-used")
    assert sorted(p.name for p in home.iterdir()) == ["ml-100k.zip"]  # no unpack folder left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_synthetic_shapes_scale_and_determinism():
    r, truth = synthetic(300, 200, 6000, rank=4, noise=0.3, seed=7, return_truth=True)
    assert (r.n_users, r.n_items, r.nnz) == (300, 200, 6000)
    assert r.user_ids.tolist() == list(range(300)) and r.item_ids.tolist() == list(range(200))
    assert set(np.unique(r.values).tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert truth["item_factors"].shape == (200, 4) and truth["user_factors"].shape == (300, 4)
    again = synthetic(300, 200, 6000, rank=4, noise=0.3, seed=7)
    np.testing.assert_array_equal(r.values, again.values)
    np.testing.assert_array_equal(r.by_item[1], again.by_item[1])
    other = synthetic(300, 200, 6000, rank=4, noise=0.3, seed=8)
    assert not np.array_equal(r.by_item[1], other.by_item[1])


def test_synthetic_truth_explains_ratings_up_to_noise():
    noise = 0.4
    r, truth = synthetic(2000, 500, 40000, rank=5, noise=noise, seed=1, step=None,
                         rating_scale=(-100, 100), return_truth=True)
    users, items, values = r.coo()
    model = (truth["global_mean"] + truth["user_bias"][users] + truth["item_bias"][items]
             + np.einsum("ij,ij->i", truth["item_factors"][items], truth["user_factors"][users]))
    np.testing.assert_allclose(model, truth["clean"], atol=1e-12)
    residual = values - truth["clean"]
    assert abs(residual.std() - noise) < 0.02 and abs(residual.mean()) < 0.02


def test_synthetic_half_stars_and_power_law():
    r = synthetic(1000, 1000, 30000, seed=2, step=0.5, rating_scale=(0.5, 5), popularity=1.2)
    assert set(np.unique(r.values).tolist()) <= {x / 2 for x in range(1, 11)}
    counts = np.sort(np.diff(r.by_item[0]))[::-1]
    assert counts[:10].sum() > 10 * counts[500:510].sum()  # a long tail
    pairs = r.by_item[1].astype(np.int64) + 1000 * np.repeat(np.arange(1000), np.diff(r.by_item[0]))
    assert np.unique(pairs).shape[0] == r.nnz  # no repeated (user, item) pairs


def test_synthetic_bad_arguments():
    with pytest.raises(ValueError, match="at most half"):
        synthetic(10, 10, 60)
    with pytest.raises(ValueError, match="positive"):
        synthetic(0, 10, 5)
    with pytest.raises(ValueError, match="rating_scale"):
        synthetic(10, 10, 5, rating_scale=(5, 1))


def _pairs(r):
    users = np.repeat(np.arange(r.n_users), np.diff(r.by_user[0]))
    return users * r.n_items + r.by_user[1]


@pytest.mark.parametrize("chunk_size", [1, 37, 1 << 20])
def test_synthetic_chunked_matches_its_documented_shape(chunk_size):
    n_users, n_items, n = 400, 50, 6000
    r = synthetic(n_users, n_items, n, seed=3, chunk_size=chunk_size, activity=1.5,
                  dtype=np.float32)
    assert (r.n_users, r.n_items, r.nnz) == (n_users, n_items, n)
    assert r.values.dtype == np.float32 and r.by_item[2].dtype == np.float32
    per_user = np.diff(r.by_user[0])
    assert per_user.sum() == n and per_user.max() == 25  # capped at ceil(n_items / 2)
    pairs = _pairs(r)
    assert np.all(np.diff(pairs) > 0)  # distinct, ascending within each user
    # The by-item CSR holds the same ratings, users ascending within each item.
    items = np.repeat(np.arange(n_items), np.diff(r.by_item[0]))
    by_item = r.by_item[1].astype(np.int64) * n_items + items
    np.testing.assert_array_equal(np.sort(by_item), pairs)
    order = np.argsort(by_item)
    np.testing.assert_array_equal(r.by_item[2][order], r.by_user[2])
    again = synthetic(n_users, n_items, n, seed=3, chunk_size=chunk_size, activity=1.5,
                      dtype=np.float32)
    np.testing.assert_array_equal(_pairs(again), pairs)
    np.testing.assert_array_equal(again.values, r.values)


def test_synthetic_activity_and_popularity_follow_their_power_laws():
    r = synthetic(2000, 2000, 100_000, seed=4, activity=1.0, popularity=1.0, noise=0.0)
    users = np.sort(np.diff(r.by_user[0]))[::-1].astype(np.float64)
    # Zipf with exponent 1: the 20th most active user rates about 10x the 200th (both below
    # the cap of 1000, which the top users reach).
    assert users[0] == 1000 and 7 < users[19] / users[199] < 14
    # Items are drawn without repeats per user, which flattens the head; the tail stays long.
    items = np.sort(np.diff(r.by_item[0]))[::-1].astype(np.float64)
    assert items[19] / items[199] > 3 and items[0] > 20 * items[-1]


def test_synthetic_truth_aligned_across_chunks():
    r, truth = synthetic(300, 80, 5000, rank=3, noise=0.0, step=None, seed=5, chunk_size=100,
                         rating_scale=(-50, 50), return_truth=True)
    np.testing.assert_allclose(r.values, truth["clean"], atol=1e-12)


def test_synthetic_steep_popularity_is_a_clear_error():
    with pytest.raises(ValueError, match="distinct items for a user"):
        synthetic(4, 1000, 2000, seed=0, popularity=8.0, activity=0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        synthetic(10, 10, 5, chunk_size=0)
    with pytest.raises(ValueError, match="dtype"):
        synthetic(10, 10, 5, dtype=np.int32)
