"""`fastcofi serve`: every endpoint and error code over real HTTP on loopback, id types, titles,
caps, concurrent load, slow clients, timeouts, and the command as a process stopped by SIGTERM /
SIGINT. One server per module fixture: each start costs a fraction of a second."""

import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

from fastcofi import MatrixFactorization, Ratings
from fastcofi.app.cli import main
from fastcofi.app.server import make_server

REPO = Path(__file__).resolve().parent.parent
N_USERS, N_ITEMS = 30, 25

needs_fold_in = pytest.mark.skipif(
    not hasattr(MatrixFactorization, "recommend_new_user"),
    reason="MatrixFactorization.recommend_new_user not implemented yet",
)
needs_similar = pytest.mark.skipif(
    not hasattr(MatrixFactorization, "similar_items"),
    reason="MatrixFactorization.similar_items not implemented yet",
)


def planted(n_users=N_USERS, n_items=N_ITEMS, per_user=8, seed=0):
    rng = np.random.default_rng(seed)
    u, v = rng.normal(size=(n_users, 2)), rng.normal(size=(n_items, 2))
    users, items, values = [], [], []
    for user in range(n_users):
        for item in rng.choice(n_items, per_user, replace=False):
            users.append(user)
            items.append(item)
            values.append(float(np.clip(np.round(3 + u[user] @ v[item]), 1, 5)))
    return np.array(users), np.array(items), np.array(values)


@pytest.fixture(scope="module")
def int_model():
    """Integer ids 1..N (item 100 declared without ratings), titles for items 1..10."""
    users, items, values = planted()
    ratings = Ratings.from_arrays(users + 1, items + 1, values,
                                  all_items=np.arange(1, N_ITEMS + 1).tolist() + [100])
    model = MatrixFactorization(4, random_state=0).fit(ratings)
    model.titles_ = {item: f"Movie {item} (1999)" for item in range(1, 11)}
    return model


@pytest.fixture(scope="module")
def str_model():
    """String ids of different lengths ("u3", "item-17"), no titles."""
    users, items, values = planted(seed=1)
    ratings = Ratings.from_arrays([f"u{u}" for u in users], [f"item-{i}" for i in items], values)
    return MatrixFactorization(4, random_state=0).fit(ratings)


@contextmanager
def running(model, **settings):
    server = make_server(model, "127.0.0.1", 0, **settings)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        assert not thread.is_alive()


@pytest.fixture(scope="module")
def int_server(int_model):
    with running(int_model, max_n=50, max_body=4096) as server:
        yield server


@pytest.fixture(scope="module")
def str_server(str_model):
    with running(str_model) as server:
        yield server


def call(server, path, method="GET", body=None, headers=None, connection=None):
    """(status, headers, JSON document) of one request; ``body`` a dict is sent as JSON."""
    own = connection is None
    if own:
        connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode("utf-8")
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        raw = response.read()
        assert response.getheader("Content-Type") == "application/json"
        document = json.loads(raw) if raw else None
        return response.status, response, document
    finally:
        if own:
            connection.close()


def assert_error(result, status, *fragments):
    code, _, document = result
    assert code == status, document
    assert set(document) == {"error"}, document
    assert "Traceback" not in document["error"]
    for fragment in fragments:
        assert fragment in document["error"], document["error"]


def expected_recs(model, ids, scores, user=None):
    """Recommendation rows: the raw score, and the prediction `predict` gives for the pair (for
    a folded-in user, the score clipped to the rating range)."""
    titles = getattr(model, "titles_", None) or {}
    low, high = model.rating_range_
    rows = []
    for item, score in zip(ids.tolist(), scores.tolist()):
        prediction = (float(model.predict(user, item)) if user is not None
                      else min(max(score, low), high))
        row = {"item": item, "score": score, "prediction": prediction}
        if item in titles:
            row["title"] = titles[item]
        rows.append(row)
    return rows


def expected_rows(model, ids, values, key):
    titles = getattr(model, "titles_", None) or {}
    rows = []
    for item, value in zip(ids.tolist(), values.tolist()):
        row = {"item": item, key: value}
        if item in titles:
            row["title"] = titles[item]
        rows.append(row)
    return rows


# -- GET /recommend --------------------------------------------------------------------------
def test_recommend_matches_library_with_titles(int_server, int_model):
    status, _, document = call(int_server, "/recommend?user=3&n=12")
    assert status == 200
    ids, scores = int_model.recommend(3, n=12)
    assert document == {"user": 3, "recommendations": expected_recs(int_model, ids, scores, 3)}
    rows = document["recommendations"]
    assert len(rows) == 12
    assert all(isinstance(row["item"], int) for row in rows)
    assert any("title" in row for row in rows) and any("title" not in row for row in rows)
    for row in rows:
        assert ("title" in row) == (row["item"] <= 10)
    # default n is 10; "007" and "7.0" name the integer user 7
    assert len(call(int_server, "/recommend?user=3")[2]["recommendations"]) == 10
    for text in ("007", "7.0", "+7", "%207"):
        status, _, document = call(int_server, f"/recommend?user={text}&n=3")
        assert status == 200 and document["user"] == 7, (text, document)


def test_recommend_n_cap_and_bad_parameters(int_server):
    assert call(int_server, "/recommend?user=3&n=50")[0] == 200  # the cap itself is allowed
    assert_error(call(int_server, "/recommend?user=3&n=51"), 400, "at most 50", "--max-n")
    assert_error(call(int_server, "/recommend?user=3&n=10000000000000000000000"), 400, "at most")
    for bad in ("0", "-1", "abc", "1.5", "", "1e2"):
        assert_error(call(int_server, f"/recommend?user=3&n={bad}"), 400, "n ")
    assert_error(call(int_server, "/recommend"), 400, "missing", "user")
    assert_error(call(int_server, "/recommend?user="), 400, "missing", "user")
    assert_error(call(int_server, "/recommend?user=abc"), 400, "integer id")
    assert_error(call(int_server, "/recommend?user=1.5"), 400, "integer id")
    assert_error(call(int_server, "/recommend?user=3&user=4"), 400, "'user' given 2 times")
    assert_error(call(int_server, "/recommend?user=3&limit=4"), 400, "unexpected", "'limit'")
    assert_error(call(int_server, "/recommend?user=%ff"), 400, "malformed query")


def test_recommend_unknown_user_is_404(int_server, str_server):
    assert_error(call(int_server, "/recommend?user=999"), 404, "unknown user 999")
    assert_error(call(int_server, "/recommend?user=99999999999999999999999"), 400, "integer id")
    assert_error(call(str_server, "/recommend?user=nobody"), 404, "unknown user 'nobody'")
    assert_error(call(str_server, "/recommend?user=3"), 404, "unknown user '3'")


def test_string_ids(str_server, str_model):
    user = str(str_model.user_ids_[5])
    status, _, document = call(str_server, f"/recommend?user={quote(user)}&n=5")
    assert status == 200
    ids, scores = str_model.recommend(user, n=5)
    assert document == {"user": user,
                        "recommendations": expected_recs(str_model, ids, scores, user)}
    assert all(isinstance(row["item"], str) and "title" not in row
               for row in document["recommendations"])
    item = str(str_model.item_ids_[0])
    status, _, document = call(str_server, f"/predict?user={user}&item={item}")
    assert status == 200
    assert document == {"user": user, "item": item, "known": True,
                        "prediction": float(str_model.predict(user, item))}


# -- POST /recommend (fold-in) ---------------------------------------------------------------
@needs_fold_in
def test_post_recommend_new_user(int_server, int_model):
    ratings = [{"item": 1, "rating": 5}, {"item": "2", "rating": 1.5}, {"item": 7, "rating": 4}]
    status, _, document = call(int_server, "/recommend", "POST", {"ratings": ratings, "n": 5})
    assert status == 200, document
    ids, scores = int_model.recommend_new_user(np.array([1, 2, 7]), np.array([5.0, 1.5, 4.0]), n=5)
    assert document == {"user": None, "unknown_items": [],
                        "recommendations": expected_recs(int_model, ids, scores)}
    assert not {1, 2, 7} & {row["item"] for row in document["recommendations"]}
    # n defaults to 10
    status, _, document = call(int_server, "/recommend", "POST", {"ratings": ratings})
    assert status == 200 and len(document["recommendations"]) == 10
    # Unknown items do not shape the new user, and are listed, never dropped silently.
    status, _, document = call(int_server, "/recommend", "POST",
                               {"ratings": [{"item": 5000, "rating": 2}] + ratings
                                + [{"item": 4000, "rating": 1}], "n": 5})
    assert status == 200 and [r["item"] for r in document["recommendations"]] == ids.tolist()
    assert document["unknown_items"] == [5000, 4000]
    # Only unknown items: nothing to recommend from, 404 naming them.
    assert_error(call(int_server, "/recommend", "POST",
                      {"ratings": [{"item": 5000, "rating": 2}, {"item": 4000, "rating": 1}]}),
                 404, "5000", "4000")
    # No ratings at all is a cold start, not an error.
    status, _, document = call(int_server, "/recommend", "POST", {"ratings": [], "n": 3})
    ids, scores = int_model.recommend_new_user(np.array([], dtype=np.int64), np.array([]), n=3)
    assert status == 200 and document["unknown_items"] == []
    assert document["recommendations"] == expected_recs(int_model, ids, scores)
    assert_error(call(int_server, "/recommend", "POST", {"ratings": ratings + ratings[:1]}), 400,
                 "repeat")


@needs_fold_in
def test_post_recommend_string_ids(str_server, str_model):
    items = [str(i) for i in str_model.item_ids_[:3]]
    body = {"ratings": [{"item": i, "rating": r} for i, r in zip(items, (5, 3, 1))], "n": 4}
    status, _, document = call(str_server, "/recommend", "POST", body)
    assert status == 200, document
    ids, scores = str_model.recommend_new_user(np.array(items), np.array([5.0, 3.0, 1.0]), n=4)
    assert document == {"user": None, "unknown_items": [],
                        "recommendations": expected_recs(str_model, ids, scores)}
    body["ratings"].append({"item": "no-such-item", "rating": 2})
    assert call(str_server, "/recommend", "POST", body)[2]["unknown_items"] == ["no-such-item"]


def test_post_recommend_malformed_bodies(int_server, str_server):
    def post(body, server=int_server, **kw):
        return call(server, "/recommend", "POST", body, **kw)

    ok = {"item": 1, "rating": 4}
    assert_error(post("{not json"), 400, "not valid JSON")
    assert_error(post(b"\xff\xfe{}"), 400, "UTF-8")
    assert_error(post("[1, 2]"), 400, "expected {\"ratings\"")
    assert_error(post({}), 400, "missing key 'ratings'")
    assert_error(post({"ratings": [ok], "user": 3}), 400, "unexpected key 'user'")
    assert_error(post({"ratings": {"1": 4}}), 400, "'ratings' must be a list")
    assert_error(post({"ratings": [ok, [1, 4]]}), 400, "ratings[1]", "'item' and 'rating'")
    assert_error(post({"ratings": [{"item": 1}]}), 400, "ratings[0]")
    assert_error(post({"ratings": [{"item": 1, "rating": 4, "x": 0}]}), 400, "ratings[0]")
    assert_error(post({"ratings": [{"item": 1, "rating": "4"}]}), 400, "ratings[0].rating",
                 "number")
    assert_error(post({"ratings": [{"item": 1, "rating": True}]}), 400, "number")
    assert_error(post({"ratings": [{"item": 1, "rating": None}]}), 400, "number")
    for literal in ("NaN", "Infinity", "-Infinity", "1e999", "1" + "0" * 400):
        body = f'{{"ratings": [{{"item": 1, "rating": {literal}}}]}}'
        assert_error(post(body), 400)
    assert_error(post({"ratings": [{"item": "one", "rating": 4}]}), 400, "ratings[0].item",
                 "integer id")
    assert_error(post({"ratings": [{"item": True, "rating": 4}]}), 400, "integer id")
    assert_error(post({"ratings": [{"item": 1.5, "rating": 4}]}), 400, "integer id")
    assert_error(post({"ratings": [{"item": [1], "rating": 4}]}, str_server), 400, "string id")
    for n in (0, -3, 2.5, "5", True, None):
        assert_error(post({"ratings": [ok], "n": n}), 400, "n ")
    assert_error(post({"ratings": [ok], "n": 51}), 400, "at most 50")
    assert_error(post("[" * 2000 + "]" * 2000), 400)  # deeply nested: no RecursionError 500


def test_post_body_cap_and_length(int_server):
    port = int_server.server_address[1]
    big = json.dumps({"ratings": [{"item": 1, "rating": 4}] * 200})  # > 4096 bytes
    assert_error(call(int_server, "/recommend", "POST", big), 413, "at most 4096", "--max-body")
    # A huge Content-Length is refused before any body is read (the client never sends it).
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
        reply = sock.makefile("rb").read()  # the server answers and closes
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert b"connection: close" in head.lower()
    assert "at most 4096" in json.loads(body)["error"]
    # "Expect: 100-continue" with too large a body gets the 413 instead of the 100.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        reply = sock.makefile("rb").read()
    assert reply.startswith(b"HTTP/1.1 413") and b"100 Continue" not in reply
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        body = b'{"ratings": "not a list"}'
        sock.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                     b"Expect: 100-continue\r\nConnection: close\r\n\r\n" % len(body))
        stream = sock.makefile("rb")
        assert stream.readline().startswith(b"HTTP/1.1 100")
        assert stream.readline() == b"\r\n"
        sock.sendall(body)
        reply = stream.read()
    assert reply.startswith(b"HTTP/1.1 400") and b"must be a list" in reply  # the body was read
    # No Content-Length, chunked, or a bad Content-Length.
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.putrequest("POST", "/recommend")
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 411 and "Content-Length" in json.loads(response.read())["error"]
    connection.close()
    # A chunked body is read up to the cap, then refused.
    def chunked(payload, end=True):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                         b"Connection: close\r\n\r\n")
            for start in range(0, len(payload), 1000):
                piece = payload[start:start + 1000]
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            if end:
                sock.sendall(b"0\r\n\r\n")
            return sock.makefile("rb").read()

    reply = chunked(json.dumps({"ratings": [{"item": 1, "rating": 4}], "n": 2}).encode())
    assert reply.startswith(b"HTTP/1.1 200") and b'"recommendations"' in reply
    # 5000 bytes and no final chunk: the server answers once the cap is passed (all that was
    # sent is read, so the close is clean).
    reply = chunked(big.encode()[:5000], end=False)
    assert reply.startswith(b"HTTP/1.1 413") and b"at most 4096" in reply
    # Malformed HTTP (a negative Content-Length) is refused by the HTTP layer itself.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}")
        reply = sock.makefile("rb").read()
    assert reply.startswith(b"HTTP/1.1 400") and b"Traceback" not in reply


# -- GET /similar ----------------------------------------------------------------------------
@needs_similar
def test_similar_matches_library(int_server, int_model, str_server, str_model):
    status, _, document = call(int_server, "/similar?item=3&n=6")
    assert status == 200, document
    ids, similarities = int_model.similar_items(3, n=6)
    assert document == {"item": 3,
                        "similar": expected_rows(int_model, ids, similarities, "similarity")}
    assert 3 not in [row["item"] for row in document["similar"]]
    assert any("title" in row for row in document["similar"])
    item = str(str_model.item_ids_[2])
    status, _, document = call(str_server, f"/similar?item={item}")
    assert status == 200, document
    ids, similarities = str_model.similar_items(item, n=10)
    assert document == {"item": item,
                        "similar": expected_rows(str_model, ids, similarities, "similarity")}


def test_similar_errors(int_server, str_server):
    assert_error(call(int_server, "/similar?item=555"), 404, "unknown item 555")
    assert_error(call(str_server, "/similar?item=nothing"), 404, "unknown item 'nothing'")
    assert_error(call(int_server, "/similar?item=x"), 400, "integer id")
    assert_error(call(int_server, "/similar"), 400, "missing", "item")
    assert_error(call(int_server, "/similar?item=3&n=51"), 400, "at most 50")
    assert_error(call(int_server, "/similar?item=3&n=0"), 400)


# -- GET /predict ----------------------------------------------------------------------------
def test_predict_known_and_fallback(int_server, int_model):
    cases = [(3, 4, True), (999, 4, False), (3, 999, False), (999, 999, False), (3, 100, True)]
    for user, item, known in cases:
        status, _, document = call(int_server, f"/predict?user={user}&item={item}")
        assert status == 200, document
        assert document == {"user": user, "item": item, "known": known,
                            "prediction": float(int_model.predict(user, item))}
    assert_error(call(int_server, "/predict?user=3"), 400, "missing", "item")
    assert_error(call(int_server, "/predict?item=3"), 400, "missing", "user")
    assert_error(call(int_server, "/predict?user=3&item=b"), 400, "item 'b'", "integer id")
    assert_error(call(int_server, "/predict?user=3&item=4&n=5"), 400, "unexpected", "'n'")


# -- /health, paths, methods, protocol errors -------------------------------------------------
def test_health_paths_and_methods(int_server):
    status, response, document = call(int_server, "/health")
    assert (status, document) == (200, {"status": "ok"})
    assert_error(call(int_server, "/"), 404, "unknown path")
    assert_error(call(int_server, "/recommend/3"), 404, "unknown path")
    result = call(int_server, "/health", "POST", "{}")
    assert_error(result, 405, "POST")
    assert result[1].getheader("Allow") == "GET"
    for method in ("PUT", "DELETE", "PATCH"):
        result = call(int_server, "/recommend?user=3", method, "{}")
        assert_error(result, 405, method)
        assert result[1].getheader("Allow") == "GET, POST"
    result = call(int_server, "/predict?user=1&item=1", "POST", "{}")
    assert_error(result, 405)
    # HEAD gets the status and headers without a body
    connection = http.client.HTTPConnection("127.0.0.1", int_server.server_address[1], timeout=10)
    connection.request("HEAD", "/health")
    response = connection.getresponse()
    assert response.status == 405 and response.read() == b""
    connection.close()
    # An unknown method and a garbled request line: the HTTP layer refuses them (httptools) or
    # the app does in JSON (h11 passes any token as a method).
    with socket.create_connection(("127.0.0.1", int_server.server_address[1]), timeout=10) as s:
        s.sendall(b"BREW /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = s.makefile("rb").read()
    assert reply.startswith((b"HTTP/1.1 400", b"HTTP/1.1 405")) and b"Traceback" not in reply
    with socket.create_connection(("127.0.0.1", int_server.server_address[1]), timeout=10) as s:
        s.sendall(b"GET /an unescaped space HTTP/1.1\r\n\r\n")
        reply = s.makefile("rb").read()
    assert reply.startswith(b"HTTP/1.1 400") and b"Traceback" not in reply


def test_keep_alive_connection_serves_many_requests(int_server, int_model):
    connection = http.client.HTTPConnection("127.0.0.1", int_server.server_address[1], timeout=10)
    try:
        for user in range(1, 21):
            status, _, document = call(int_server, f"/recommend?user={user}&n=3",
                                       connection=connection)
            assert status == 200
            assert [row["item"] for row in document["recommendations"]] == \
                int_model.recommend(user, n=3)[0].tolist()
        assert call(int_server, "/nowhere", connection=connection)[0] == 404  # still usable
        assert call(int_server, "/health", connection=connection)[0] == 200
    finally:
        connection.close()


# -- internal errors -------------------------------------------------------------------------
class _Broken:
    """Looks fitted, fails inside the library call."""

    def __init__(self, model):
        self.item_factors_ = model.item_factors_
        self.user_ids_ = model.user_ids_
        self.item_ids_ = model.item_ids_

    def recommend(self, user, n=10, **kwargs):
        raise RuntimeError("secret detail")


def test_unexpected_exception_is_a_json_500(int_model, capsys):
    with running(_Broken(int_model)) as server:
        assert_error(call(server, "/recommend?user=3"), 500, "internal error")
        document = call(server, "/recommend?user=3")[2]
        assert "secret" not in document["error"]
        assert call(server, "/health")[0] == 200  # the server goes on
    err = capsys.readouterr().err
    assert "Traceback" in err and "secret detail" in err  # logged server side only


def test_quiet_by_default_verbose_logs(int_model, capsys):
    with running(int_model) as server:
        call(server, "/health")
    assert capsys.readouterr().err == ""
    with running(int_model, verbose=True) as server:
        call(server, "/health")
    assert "GET /health" in capsys.readouterr().err


# -- concurrency -----------------------------------------------------------------------------
def test_concurrent_load_matches_serial(int_server):
    paths = [f"/recommend?user={1 + k % N_USERS}&n={1 + k % 20}" for k in range(25)]
    paths += [f"/predict?user={1 + k % 33}&item={1 + (7 * k) % 27}" for k in range(20)]
    paths += ["/health", "/recommend?user=999", "/recommend?user=3&n=99"]
    if hasattr(MatrixFactorization, "similar_items"):
        paths += [f"/similar?item={1 + k}&n=5" for k in range(5)]
    serial = {path: call(int_server, path)[::2] for path in paths}

    def client(seed):
        rng = np.random.default_rng(seed)
        connection = http.client.HTTPConnection(
            "127.0.0.1", int_server.server_address[1], timeout=30)
        try:
            return [(path, call(int_server, path, connection=connection)[::2])
                    for path in rng.choice(paths, 50)]
        finally:
            connection.close()

    with ThreadPoolExecutor(8) as pool:
        results = [r for batch in pool.map(client, range(8)) for r in batch]
    assert len(results) == 400
    for path, answer in results:
        assert answer == serial[path], path


def test_bounded_threads_queue_extra_connections(int_model):
    with running(int_model, threads=2) as server:
        def client(k):
            return call(server, f"/recommend?user={1 + k}&n=3")[0]

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(client, range(24))) == [200] * 24


# -- the command -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_file(int_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "model.npz"
    int_model.save(path)
    return path


def _readline(stream, timeout):
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, f"no line on stdout within {timeout} s"
    return stream.readline()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_subprocess_stops_cleanly(model_file, int_model, signum):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastcofi", "serve", str(model_file), "--port", "0",
         "--max-n", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        line = _readline(proc.stdout, 60)
        assert line.startswith(f"fastcofi: serving {model_file} on http://127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        server = type("Address", (), {"server_address": ("127.0.0.1", port)})
        assert call(server, "/health")[::2] == (200, {"status": "ok"})
        status, _, document = call(server, "/recommend?user=5&n=4")
        ids, scores = int_model.recommend(5, n=4)
        assert status == 200
        assert document == {"user": 5, "recommendations": expected_recs(int_model, ids, scores, 5)}
        assert_error(call(server, "/recommend?user=5&n=21"), 400, "at most 20")
        # an idle keep-alive connection must not hold the shutdown up
        idle = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        idle.request("GET", "/health")
        idle.getresponse().read()
        start = time.monotonic()
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
        idle.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert time.monotonic() - start < 10
    assert "Traceback" not in err and "Error" not in err, err
    assert out == ""


def test_serve_stops_cleanly_on_sigterm_right_after_the_port_line(model_file):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for _ in range(2):  # the signal may land before uvicorn's own handlers are in place
        proc = subprocess.Popen([sys.executable, "-m", "fastcofi", "serve", str(model_file),
                                 "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
        try:
            assert _readline(proc.stdout, 60).startswith("fastcofi: serving")
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0 and "Traceback" not in err, err


def test_serve_command_errors(tmp_path, model_file, capsys):
    def run(*argv):
        code = main(["serve", *map(str, argv)])
        err = capsys.readouterr().err
        assert code == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("fastcofi: error: "), err
        return lines[0]

    assert "missing.npz" in run(tmp_path / "missing.npz", "--port", "0")
    assert "--port" in run(model_file, "--port", "70000")
    assert "--max-n" in run(model_file, "--port", "0", "--max-n", "0")
    assert "--threads" in run(model_file, "--port", "0", "--threads", "0")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert "cannot listen" in run(model_file, "--port", taken.getsockname()[1])
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


# -- the ASGI server: slow clients, timeouts, worker threads (issue 15) -----------------------
def _percentile(values, q):
    return float(np.percentile(np.asarray(values) * 1e3, q))


def _health_latencies(port, count=60):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    latencies = []
    try:
        for _ in range(count):
            start = time.perf_counter()
            connection.request("GET", "/health")
            response = connection.getresponse()
            assert response.status == 200 and json.loads(response.read()) == {"status": "ok"}
            latencies.append(time.perf_counter() - start)
    finally:
        connection.close()
    return latencies


def test_slow_and_idle_clients_do_not_delay_health(int_server):
    port = int_server.server_address[1]
    held = []
    try:
        for k in range(200):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            held.append(sock)
            if k % 3 == 1:  # headers begun, never finished
                sock.sendall(b"GET /recommend?user=3 HTTP/1.1\r\nHost: x\r\n")
            elif k % 3 == 2:  # a body promised, a tenth of it sent
                sock.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Length: 300\r\n"
                             b"\r\n" + b'{"ratings": [' + b" " * 17)
            # k % 3 == 0: connected, silent
        latencies = _health_latencies(port)
    finally:
        for sock in held:
            sock.close()
    assert _percentile(latencies, 99) < 100, sorted(latencies)[-5:]
    # Not 40 ms: TCP_NODELAY is on (else Nagle meets the client's delayed ACK on each answer).
    assert _percentile(latencies, 50) < 30
    assert call(int_server, "/recommend?user=3&n=2")[0] == 200  # and the model still answers


class _Slow:
    """A fitted model whose recommend takes ``seconds`` (sleeping, as a long BLAS call would)."""

    def __init__(self, model, seconds):
        self._model, self._seconds = model, seconds
        self.item_factors_ = model.item_factors_
        self.user_ids_, self.item_ids_ = model.user_ids_, model.item_ids_
        self.calls = 0

    def recommend(self, user, n=10, **kwargs):
        self.calls += 1
        time.sleep(self._seconds)
        return self._model.recommend(user, n=n, **kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)


def test_model_calls_run_in_worker_threads_with_a_deadline(int_model):
    slow = _Slow(int_model, 1.5)
    with running(slow, threads=1, timeout=0.5) as server:
        port = server.server_address[1]
        results = []
        worker = threading.Thread(
            target=lambda: results.append(call(server, "/recommend?user=3&n=2")))
        start = time.perf_counter()
        worker.start()
        while slow.calls == 0 and time.perf_counter() - start < 10:
            time.sleep(0.01)
        # The loop is free while the model call sleeps in its thread: /health answers at once.
        latencies = _health_latencies(port, count=20)
        worker.join(timeout=10)
        assert _percentile(latencies, 99) < 100
        assert_error(results[0], 503, "0.5 s", "--timeout")
        assert time.perf_counter() - start < 1.4  # answered at the deadline, not after the call
        # A body that does not arrive in time: 408, and the connection is closed.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{")
            reply = sock.makefile("rb").read()
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408") and b"connection: close" in head.lower()
        assert "not received within 0.5 s" in json.loads(body)["error"]


def test_min_ratings_and_std_over_http(int_server, int_model, monkeypatch):
    counts = dict(zip(int_model.item_ids_.tolist(), np.bincount(
        int_model.seen_indices_, minlength=len(int_model.item_ids_)).tolist()))
    status, _, document = call(int_server, "/recommend?user=3&n=20&min_ratings=10")
    assert status == 200
    ids, scores = int_model.recommend(3, n=20, min_item_ratings=10)
    assert document["recommendations"] == expected_recs(int_model, ids, scores, 3)
    assert all(counts[row["item"]] >= 10 for row in document["recommendations"])
    assert len(document["recommendations"]) < len(call(int_server, "/recommend?user=3&n=20")[2][
        "recommendations"])
    assert_error(call(int_server, "/recommend?user=3&min_ratings=-1"), 400, "min_ratings")
    # "std" only from a model with a posterior.
    assert "std" not in call(int_server, "/predict?user=3&item=4")[2]
    monkeypatch.setattr(MatrixFactorization, "_predictive_std",
                        lambda self, u, i: np.full(np.shape(u), 0.75), raising=False)
    status, _, document = call(int_server, "/predict?user=3&item=4")
    assert status == 200 and document["std"] == 0.75
    assert document["prediction"] == float(int_model.predict(3, 4))


def test_make_app_mounts_in_another_asgi_app(int_model):
    import anyio
    import httpx
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from fastcofi.app.server import make_app

    outer = Starlette(routes=[Mount("/recs", app=make_app(int_model, max_n=5))])

    async def session():
        transport = httpx.ASGITransport(app=outer)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            health = await client.get("/recs/health")
            recs = await client.get("/recs/recommend", params={"user": 3, "n": 2})
            capped = await client.get("/recs/recommend", params={"user": 3, "n": 6})
            return health, recs, capped

    health, recs, capped = anyio.run(session)
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ids, scores = int_model.recommend(3, n=2)
    assert recs.json() == {"user": 3, "recommendations": expected_recs(int_model, ids, scores, 3)}
    assert capped.status_code == 400 and "at most 5" in capped.json()["error"]


def test_importing_fastcofi_leaves_the_web_stack_alone():
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = ("import sys, fastcofi, fastcofi.app.cli; "
            "print([m for m in ('starlette', 'uvicorn', 'anyio', 'httpx', 'fastcofi.app.server') "
            "if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=60, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
