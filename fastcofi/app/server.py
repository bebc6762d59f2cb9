"""`fastcofi serve`: a small HTTP JSON service over a fitted model.

Why the standard library
------------------------
The service is ``http.server.ThreadingHTTPServer`` with a ``BaseHTTPRequestHandler``: no dependency
to install, audit or keep up to date, and enough for what it is meant to be, an endpoint embedded
next to a model file (a sidecar, an internal service, a demo). Each answer is a numpy product plus a
partial sort, which releases the GIL, so a thread per connection uses the cores. A production
deployment that needs TLS, authentication, rate limiting or many thousands of connections puts a
reverse proxy (nginx, Envoy, a cloud load balancer) in front of it, or embeds the library in its own
application server; the JSON documents stay the same.

Endpoints (JSON in and out; ids are matched to the model's id type, so an integer-id model reads
``user=42`` and ``"42"`` as 42, and ids come back as JSON integers or strings like the model's)
---------------------------------------------------------------------------------------------------
``GET /recommend?user=ID&n=10``
    ``{"user": ID, "recommendations": [{"item": ID, "score": float, "title": str}, ...]}``, best
    first, the items the user rated in training left out; ``"title"`` only for items the model has a
    title for. 404 for a user not in the model.
``POST /recommend`` with ``{"ratings": [{"item": ID, "rating": float}, ...], "n": 10}``
    A new user folded in from their ratings (`MatrixFactorization.recommend_new_user`); the answer
    has ``"user": null`` and the rated items left out.
``GET /similar?item=ID&n=10``
    ``{"item": ID, "similar": [{"item": ID, "similarity": float, "title": str}, ...]}``: cosine
    similarity of the item factors, most similar first, the query item left out. 404 for an item
    not in the model.
``GET /predict?user=ID&item=ID``
    ``{"user": ID, "item": ID, "prediction": float, "known": bool}``; an unknown user or item gets
    the library's fallback (`MatrixFactorization.predict`) and ``"known": false``.
``GET /health``
    ``{"status": "ok"}``.

Errors are ``{"error": "<message>"}``: 400 for a malformed request (missing, repeated or unexpected
parameters, an id of the wrong type, ``n`` not an integer in ``1..max_n``, a body that is not the
JSON object above, ratings that are not finite numbers), 404 for an unknown path, user or item, 405
for a method a path does not take (with ``Allow``), 411 for a POST without ``Content-Length``, 413
for a body over ``max_body`` bytes (refused before it is read) and 500 ``"internal error"`` for
anything unexpected (the traceback goes to stderr, never to the client).

Concurrency and shutdown: at most ``threads`` connections are served at once (HTTP/1.1 keep-alive,
idle connections closed after ``idle_timeout`` seconds); further connections wait in the listen
backlog. The fitted model is shared read-only by all threads. `serve` caps BLAS at one thread per
call (threadpoolctl) while it runs, since concurrent requests already use the cores; an application
embedding `make_server` decides that for itself. `serve` stops on SIGTERM or SIGINT:
it stops accepting, lets the requests in progress finish (a few seconds at most) and returns 0.
"""

import json
import math
import signal
import socket
import socketserver
import sys
import threading
import time
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np

from .._parallel import one_blas_thread
from ..data.ids import _parse_int, lookup

__all__ = ["ModelServer", "make_server", "serve"]

DEFAULT_MAX_N = 1000
DEFAULT_MAX_BODY = 1 << 20
DEFAULT_THREADS = 16
DEFAULT_N = 10


class _RequestError(Exception):
    """An answer other than 200: status, message, extra headers."""

    def __init__(self, status, message, headers=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


# -- request parsing -------------------------------------------------------------------------
def _model_id(model_ids, value, name):
    """``value`` (query text or a JSON value) as an id of the model's id type; 400 otherwise."""
    if model_ids.dtype.kind == "U":
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        raise _RequestError(400, f"{name} {value!r}: expected a string id")
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        parsed = _parse_int(value)
        if parsed is not None and -(2**63) <= parsed < 2**63:
            return parsed
    raise _RequestError(
        400, f"{name} {value!r}: expected an integer id (the model's ids are integers)"
    )


def _is_known(model_ids, value):
    return bool(lookup(model_ids, np.array([value]))[1][0])


def _check_n(value, max_n, where):
    """``n`` from a query string (text) or a JSON body (an int, not a string), in ``1..max_n``."""
    if isinstance(value, str) and where == "in the query":
        text = value.strip()
        n = int(text) if text.isascii() and text.isdigit() else None
    elif isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        n = None
    if n is None or n < 1:
        raise _RequestError(400, f"n {value!r} {where}: expected a positive integer")
    if n > max_n:
        raise _RequestError(400, f"n {n} {where}: at most {max_n} (the server's --max-n)")
    return n


def _query(url_query, required, optional=()):
    """One value per name from a query string; 400 for missing, repeated or unexpected names."""
    try:
        params = parse_qs(url_query, keep_blank_values=True, errors="strict")
    except (ValueError, UnicodeDecodeError) as exc:
        raise _RequestError(400, f"malformed query string: {exc}") from None
    unexpected = sorted(set(params) - set(required) - set(optional))
    if unexpected:
        allowed = ", ".join(list(required) + list(optional))
        raise _RequestError(
            400, f"unexpected query parameter {unexpected[0]!r}: expected {allowed}"
        )
    out = {}
    for name, values in params.items():
        if len(values) > 1:
            raise _RequestError(400, f"query parameter {name!r} given {len(values)} times")
        out[name] = values[0]
    for name in required:
        if name not in out or out[name] == "":
            raise _RequestError(400, f"missing query parameter {name!r}")
    return out


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _parse_new_user(model, body, max_n):
    """(items, values, n) from a POST /recommend body."""
    try:
        document = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise _RequestError(400, "request body: expected UTF-8 encoded JSON") from None
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise _RequestError(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise _RequestError(400, "request body: JSON nested too deeply") from None
    expected = 'expected {"ratings": [{"item": ID, "rating": number}, ...], "n": int}'
    if not isinstance(document, dict):
        raise _RequestError(400, f"request body: {expected}, found a {type(document).__name__}")
    unexpected = sorted(set(document) - {"ratings", "n"})
    if unexpected:
        raise _RequestError(400, f"request body: unexpected key {unexpected[0]!r}; {expected}")
    if "ratings" not in document:
        raise _RequestError(400, f"request body: missing key 'ratings'; {expected}")
    ratings = document["ratings"]
    if not isinstance(ratings, list):
        raise _RequestError(400, f"request body: 'ratings' must be a list; {expected}")
    n = _check_n(document.get("n", min(DEFAULT_N, max_n)), max_n, "in the request body")
    items, values = [], []
    for position, entry in enumerate(ratings):
        where = f"ratings[{position}]"
        if not isinstance(entry, dict) or set(entry) != {"item", "rating"}:
            raise _RequestError(
                400, f"{where}: expected an object with exactly the keys 'item' and 'rating'"
            )
        rating = entry["rating"]
        if isinstance(rating, bool) or not isinstance(rating, (int, float)):
            raise _RequestError(400, f"{where}.rating {rating!r}: expected a number")
        try:
            finite = math.isfinite(rating)
        except OverflowError:  # an integer too large for a float
            finite = False
        if not finite:
            raise _RequestError(400, f"{where}.rating {rating!r}: expected a finite number")
        items.append(_model_id(model.item_ids_, entry["item"], f"{where}.item"))
        values.append(float(rating))
    return items, values, n


# -- answers ---------------------------------------------------------------------------------
def _number(value):
    value = float(value)
    return value if math.isfinite(value) else None


def _rows(model, ids, values, key):
    titles = getattr(model, "titles_", None) or {}
    rows = []
    for item, value in zip(np.asarray(ids).tolist(), np.asarray(values).tolist()):
        row = {"item": item, key: _number(value)}
        title = titles.get(item)
        if title is not None:
            row["title"] = title
        rows.append(row)
    return rows


def _recommend(server, query):
    model = server.model
    params = _query(query, ("user",), ("n",))
    user = _model_id(model.user_ids_, params["user"], "user")
    n = _check_n(params.get("n", min(DEFAULT_N, server.max_n)), server.max_n, "in the query")
    if not _is_known(model.user_ids_, user):
        raise _RequestError(404, f"unknown user {user!r}: not in the model")
    ids, scores = model.recommend(user, n=n)
    return {"user": user, "recommendations": _rows(model, ids, scores, "score")}


def _recommend_new_user(server, body):
    model = server.model
    items, values, n = _parse_new_user(model, body, server.max_n)
    if items:
        item_array = np.array(items)  # no dtype=model's: "<U3" would truncate longer ids
    else:
        item_array = np.array([], dtype=str if model.item_ids_.dtype.kind == "U" else np.int64)
    ids, scores = model.recommend_new_user(item_array, np.array(values, dtype=np.float64), n=n)
    return {"user": None, "recommendations": _rows(model, ids, scores, "score")}


def _similar(server, query):
    model = server.model
    params = _query(query, ("item",), ("n",))
    item = _model_id(model.item_ids_, params["item"], "item")
    n = _check_n(params.get("n", min(DEFAULT_N, server.max_n)), server.max_n, "in the query")
    if not _is_known(model.item_ids_, item):
        raise _RequestError(404, f"unknown item {item!r}: not in the model")
    ids, similarities = model.similar_items(item, n=n)
    return {"item": item, "similar": _rows(model, ids, similarities, "similarity")}


def _predict(server, query):
    model = server.model
    params = _query(query, ("user", "item"))
    user = _model_id(model.user_ids_, params["user"], "user")
    item = _model_id(model.item_ids_, params["item"], "item")
    known = _is_known(model.user_ids_, user) and _is_known(model.item_ids_, item)
    prediction = _number(model.predict(user, item))
    return {"user": user, "item": item, "prediction": prediction, "known": known}


def _health(server, query):
    _query(query, ())
    return {"status": "ok"}


# path -> {method: handler(server, query_or_body)}; POST handlers get the body bytes.
_ROUTES = {
    "/recommend": {"GET": _recommend, "POST": _recommend_new_user},
    "/similar": {"GET": _similar},
    "/predict": {"GET": _predict},
    "/health": {"GET": _health},
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fastcofi"
    sys_version = ""
    # Headers and body leave in one send (a buffered writer, flushed once per answer), and
    # TCP_NODELAY: otherwise Nagle's algorithm and the client's delayed ACK add ~40 ms to every
    # answer on a keep-alive connection.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    def setup(self):
        self.timeout = self.server.idle_timeout
        super().setup()

    # -- one request ------------------------------------------------------------------------
    def _dispatch(self):
        url = urlsplit(self.path)
        routes = _ROUTES.get(url.path)
        if routes is None:
            raise _RequestError(404, f"unknown path {url.path!r}: expected one of "
                                     + ", ".join(sorted(_ROUTES)))
        handler = routes.get(self.command)
        if handler is None:
            allow = ", ".join(sorted(routes))
            raise _RequestError(
                405, f"method {self.command} not allowed on {url.path}: expected {allow}",
                {"Allow": allow},
            )
        if self.command == "POST":
            return handler(self.server, self._read_body())
        return handler(self.server, url.query)

    def _read_body(self):
        if "Transfer-Encoding" in self.headers:
            self.close_connection = True
            raise _RequestError(411, "chunked request bodies are not supported: "
                                     "send the body with a Content-Length")
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True
            raise _RequestError(411, "missing Content-Length: expected the body's size in bytes")
        text = length.strip()
        if not (text.isascii() and text.isdigit()):
            self.close_connection = True
            raise _RequestError(400, f"Content-Length {length!r}: expected a byte count")
        size = int(text)
        if size > self.server.max_body:
            self.close_connection = True  # the body stays unread
            raise _RequestError(
                413, f"request body of {size} bytes: at most {self.server.max_body} "
                     "(the server's --max-body)"
            )
        body = self.rfile.read(size)
        if len(body) < size:
            self.close_connection = True
            raise _RequestError(400, f"request body ended after {len(body)} of {size} bytes")
        return body

    def handle_expect_100(self):
        # Refuse an oversized body before the client sends it (curl asks first above 1 MiB).
        length = (self.headers.get("Content-Length") or "").strip()
        if length.isascii() and length.isdigit() and int(length) > self.server.max_body:
            self.close_connection = True
            self._send_json(413, {"error": f"request body of {int(length)} bytes: at most "
                                           f"{self.server.max_body} (the server's --max-body)"})
            return False
        super().handle_expect_100()
        self.wfile.flush()  # the writer is buffered: the client waits for this line
        return True

    def _answer(self):
        try:
            try:
                status, document, headers = 200, self._dispatch(), {}
            except _RequestError as exc:
                status, document, headers = exc.status, {"error": exc.message}, exc.headers
            except KeyError as exc:  # the library's unknown-id errors
                message = exc.args[0] if exc.args else "unknown id"
                status, document, headers = 404, {"error": str(message)}, {}
            except ValueError as exc:  # the library's validation of what the client sent
                status, document, headers = 400, {"error": " ".join(str(exc).split())}, {}
            self._send_json(status, document, headers)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:  # noqa: BLE001 - the handler boundary: log it, answer 500
            self.close_connection = True
            print(f"fastcofi: internal error answering {self.command} {self.path!r}:",
                  file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
            sys.stderr.flush()
            try:
                self._send_json(500, {"error": "internal error"})
            except Exception:  # noqa: BLE001, S110 - the connection is gone or headers were sent
                pass

    def _send_json(self, status, document, headers=None):
        body = json.dumps(document, allow_nan=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection or getattr(self.server, "closing", False):
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _answer

    # -- protocol-level errors (bad request line, oversized headers, unknown method) --------
    def send_error(self, code, message=None, explain=None):
        try:
            short = HTTPStatus(code).phrase
        except ValueError:
            short = "error"
        self.close_connection = True
        self._send_json(code, {"error": message or short})

    def log_message(self, format, *args):
        if self.server.verbose:
            super().log_message(format, *args)


class ModelServer(ThreadingHTTPServer):
    """A `ThreadingHTTPServer` answering the endpoints of this module for one fitted model.

    Attributes
    ----------
    model : MatrixFactorization
    max_n, max_body, threads, verbose, idle_timeout : the settings given to `make_server`
    url : str, the address it listens on (``http://host:port``, the bound port)
    """

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address, model, *, max_n=DEFAULT_MAX_N, max_body=DEFAULT_MAX_BODY,
                 threads=DEFAULT_THREADS, verbose=False, idle_timeout=15.0):
        self.model = model
        self.max_n = max_n
        self.max_body = max_body
        self.threads = threads
        self.verbose = verbose
        self.idle_timeout = idle_timeout
        self.closing = False
        self._slots = threading.BoundedSemaphore(threads)
        self._connections = set()
        self._connections_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self):
        # HTTPServer.server_bind also asks DNS for the host's full name; not needed here.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = host, port

    @property
    def url(self):
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    # -- bounded concurrency ----------------------------------------------------------------
    def process_request(self, request, client_address):
        # Wait for a free slot: while all are busy the accept loop pauses and new connections
        # wait in the kernel's listen backlog.
        while not self._slots.acquire(timeout=0.1):
            if self.closing:
                self.shutdown_request(request)
                return
        with self._connections_lock:
            self._connections.add(request)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(request)
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def _release(self, request):
        with self._connections_lock:
            self._connections.discard(request)
        self._slots.release()

    def shutdown(self):
        """Stop `serve_forever` (from another thread); the requests in progress go on."""
        self.closing = True
        super().shutdown()

    def server_close(self, grace=5.0):
        """Close the listening socket, end idle keep-alive connections, and wait up to ``grace``
        seconds for the requests in progress to finish."""
        self.closing = True
        super().server_close()
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:  # a handler waiting for the next request sees EOF
            try:
                connection.shutdown(socket.SHUT_RD)
            except OSError:
                pass
        deadline = time.monotonic() + grace
        taken = 0
        while taken < self.threads and time.monotonic() < deadline:
            if self._slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
                taken += 1
        for _ in range(taken):
            self._slots.release()


def _check_settings(port, max_n, max_body, threads):
    for name, value, low in (("port", port, 0), ("max_n", max_n, 1), ("max_body", max_body, 0),
                             ("threads", threads, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{name} ({flag}) must be an integer >= {low}, found {value!r}")
    if port > 65535:
        raise ValueError(f"port (--port) must be at most 65535, found {port}")


def make_server(model, host="127.0.0.1", port=0, *, max_n=DEFAULT_MAX_N,
                max_body=DEFAULT_MAX_BODY, threads=DEFAULT_THREADS, verbose=False,
                idle_timeout=15.0):
    """A `ModelServer` for a fitted model, bound and listening (call ``serve_forever()``).

    Parameters
    ----------
    model : MatrixFactorization, fitted
    host : str, default "127.0.0.1"
    port : int, default 0 (a free port; read it from ``server.server_address`` or ``server.url``)
    max_n : int, default 1000
        Largest ``n`` a request may ask for.
    max_body : int, default 1 MiB
        Largest POST body, in bytes.
    threads : int, default 16
        Connections served at once.
    verbose : bool, default False
        Log each request to stderr.
    idle_timeout : float, default 15
        Seconds an idle keep-alive connection is kept open.
    """
    _check_settings(port, max_n, max_body, threads)
    if not hasattr(model, "item_factors_"):
        raise ValueError("model is not fitted: expected a fitted MatrixFactorization")
    try:
        return ModelServer((host, port), model, max_n=max_n, max_body=max_body, threads=threads,
                           verbose=verbose, idle_timeout=idle_timeout)
    except OSError as exc:
        raise ValueError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from None


def serve(model_path, host="127.0.0.1", port=8000, *, max_n=DEFAULT_MAX_N,
          max_body=DEFAULT_MAX_BODY, threads=DEFAULT_THREADS, verbose=False, out=None):
    """Load a model file and serve it until SIGTERM or SIGINT; returns 0.

    Prints one line, ``fastcofi: serving MODEL on http://HOST:PORT``, to ``out`` (stdout) once
    the socket listens, so that a caller who asked for port 0 can read the port.
    """
    from ..model_file import load_model

    _check_settings(port, max_n, max_body, threads)
    out = sys.stdout if out is None else out
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        model = load_model(model_path, warm=True)
        server = make_server(model, host, port, max_n=max_n, max_body=max_body,
                             threads=threads, verbose=verbose)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                  name="fastcofi-serve", daemon=True)
        # One BLAS thread per request: the requests are the parallelism. OpenBLAS's own threads,
        # shared by concurrent callers, spin against each other (bench/bench_http.py on 2 cores,
        # 8 clients: about 75 requests/s with numpy's default BLAS threads, 750-1300 with one).
        with one_blas_thread():
            thread.start()
            try:
                print(f"fastcofi: serving {model_path} on {server.url}", file=out, flush=True)
                while not stop.wait(0.5):
                    if not thread.is_alive():  # pragma: no cover - serve_forever does not fail
                        break
            finally:
                server.shutdown()
                server.server_close()
                thread.join(timeout=5.0)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if verbose:
        print("fastcofi: stopped", file=sys.stderr, flush=True)
    return 0
