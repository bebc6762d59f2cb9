"""`fastcofi serve`: the HTTP JSON service over a fitted model, an ASGI application.

`make_app(model)` returns a Starlette application; `fastcofi serve` runs it with uvicorn
(``pip install 'fastcofi[serve]'``), and a service that already runs an ASGI server can mount it
(``Mount("/recs", app=make_app(model))``). Importing ``fastcofi`` does not import this module or
the web stack.

Why an event loop and worker threads
------------------------------------
Connections live on one asyncio event loop, which only parses requests and writes answers, so
any number of slow or idle clients cost a socket each and delay nobody: ``/health`` answers from
the loop itself. Every model call (a numpy product plus a partial sort, microseconds to
milliseconds) runs in a bounded pool of worker threads (``threads``), so the loop never blocks
on it; BLAS and the Numba kernels release the GIL, so the threads use the cores.

Endpoints (JSON in and out; ids are matched to the model's id type, so an integer-id model reads
``user=42`` and ``"42"`` as 42, and ids come back as JSON integers or strings like the model's)
---------------------------------------------------------------------------------------------------
``GET /recommend?user=ID&n=10[&min_ratings=N]``
    ``{"user": ID, "recommendations": [{"item": ID, "score": float, "prediction": float,
    "title": str}, ...]}``, best first, the items the user rated in training left out.
    ``"score"`` is the raw ranking score, ``"prediction"`` what ``GET /predict`` answers for the
    pair (the score clipped to the training rating range); ``"title"`` only for items the model
    has a title for; ``min_ratings`` leaves out items with fewer training ratings. 404 for a
    user not in the model.
``POST /recommend`` with ``{"ratings": [{"item": ID, "rating": float}, ...], "n": 10}``
    A new user folded in from their ratings (`MatrixFactorization.recommend_new_user`); the answer
    has ``"user": null``, the rated items left out, and ``"unknown_items"``: the ids the model
    does not know, in request order (they do not shape the new user). 404 when every rated item
    is unknown.
``GET /similar?item=ID&n=10``
    ``{"item": ID, "similar": [{"item": ID, "similarity": float, "title": str}, ...]}``: cosine
    similarity of the item factors, most similar first, the query item left out. 404 for an item
    not in the model.
``GET /predict?user=ID&item=ID``
    ``{"user": ID, "item": ID, "prediction": float, "known": bool}``, plus ``"std"`` for models
    with a posterior; an unknown user or item gets the library's fallback
    (`MatrixFactorization.predict`) and ``"known": false``.
``GET /health``
    ``{"status": "ok"}``, answered on the event loop.

Errors are ``{"error": "<message>"}``: 400 for a malformed request (missing, repeated or unexpected
parameters, an id of the wrong type, ``n`` not an integer in ``1..max_n``, a body that is not the
JSON object above, ratings that are not finite numbers), 404 for an unknown path, user or item, 405
for a method a path does not take (with ``Allow``), 408 for a body not received within
``timeout`` seconds, 411 for a POST with neither ``Content-Length`` nor chunked encoding, 413 for a
body over ``max_body`` bytes (refused on its ``Content-Length`` before it is read, or as soon as a
chunked body passes the cap), 503 for an answer not ready within ``timeout`` seconds, and 500
``"internal error"`` for anything unexpected (the traceback goes to stderr, never to the client).
Malformed HTTP itself (a garbled request line, an invalid header) is answered by uvicorn.

Shutdown: on SIGTERM or SIGINT `serve` stops accepting, closes idle keep-alive connections, lets
the requests in progress finish (up to ``grace`` seconds) and returns 0.
"""

import functools
import json
import math
import signal
import socket
import sys
import threading
import traceback
from urllib.parse import parse_qs

import anyio
import anyio.to_thread
import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from .._parallel import one_blas_thread
from ..data.ids import lookup
from .documents import number, recommendation_rows, split_known, titled_rows, typed_id

__all__ = ["ModelServer", "make_app", "make_server", "serve"]

DEFAULT_MAX_N = 1000
DEFAULT_MAX_BODY = 1 << 20
DEFAULT_THREADS = 8
DEFAULT_TIMEOUT = 10.0
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
    """``value`` as an id of the model's id type; 400 otherwise."""
    try:
        return typed_id(model_ids, value, name)
    except ValueError as exc:
        raise _RequestError(400, str(exc)) from None


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


# -- answers (run in a worker thread) --------------------------------------------------------
def _min_ratings(value):
    text = value.strip()
    if not (text.isascii() and text.isdigit()):
        raise _RequestError(400, f"min_ratings {value!r} in the query: expected an integer >= 0")
    return int(text)


def _recommend(state, query):
    model = state.model
    params = _query(query, ("user",), ("n", "min_ratings"))
    user = _model_id(model.user_ids_, params["user"], "user")
    n = _check_n(params.get("n", min(DEFAULT_N, state.max_n)), state.max_n, "in the query")
    min_ratings = _min_ratings(params["min_ratings"]) if "min_ratings" in params else None
    if not _is_known(model.user_ids_, user):
        raise _RequestError(404, f"unknown user {user!r}: not in the model")
    if min_ratings is None:
        ids, scores = model.recommend(user, n=n)
    else:
        ids, scores = model.recommend(user, n=n, min_item_ratings=min_ratings)
    return {"user": user, "recommendations": recommendation_rows(model, ids, scores, user)}


def _recommend_new_user(state, body):
    model = state.model
    items, values, n = _parse_new_user(model, body, state.max_n)
    if items:
        item_array = np.array(items)  # no dtype=model's: "<U3" would truncate longer ids
    else:
        item_array = np.array([], dtype=str if model.item_ids_.dtype.kind == "U" else np.int64)
    _, unknown = split_known(model.item_ids_, item_array)
    if items and len(unknown) == len(items):
        shown = ", ".join(repr(i) for i in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise _RequestError(404, f"none of the rated items is in the model (unknown: {shown})")
    ids, scores = model.recommend_new_user(item_array, np.array(values, dtype=np.float64), n=n)
    return {"user": None, "recommendations": recommendation_rows(model, ids, scores),
            "unknown_items": unknown}


def _similar(state, query):
    model = state.model
    params = _query(query, ("item",), ("n",))
    item = _model_id(model.item_ids_, params["item"], "item")
    n = _check_n(params.get("n", min(DEFAULT_N, state.max_n)), state.max_n, "in the query")
    if not _is_known(model.item_ids_, item):
        raise _RequestError(404, f"unknown item {item!r}: not in the model")
    ids, similarities = model.similar_items(item, n=n)
    return {"item": item, "similar": titled_rows(model, ids, similarity=similarities)}


def _predict(state, query):
    model = state.model
    params = _query(query, ("user", "item"))
    user = _model_id(model.user_ids_, params["user"], "user")
    item = _model_id(model.item_ids_, params["item"], "item")
    known = _is_known(model.user_ids_, user) and _is_known(model.item_ids_, item)
    document = {"user": user, "item": item, "known": known}
    try:
        prediction, std = model.predict(user, item, return_std=True)
        document["std"] = number(std)
    except (ValueError, TypeError):  # no posterior: the point prediction alone
        prediction = model.predict(user, item)
    document["prediction"] = number(prediction)
    return document


def _health(state, query):
    _query(query, ())
    return {"status": "ok"}


# path -> {method: handler(state, query_or_body)}; POST handlers get the body bytes. /health
# answers on the event loop (no model call); the others in a worker thread.
_ROUTES = {
    "/recommend": {"GET": _recommend, "POST": _recommend_new_user},
    "/similar": {"GET": _similar},
    "/predict": {"GET": _predict},
    "/health": {"GET": _health},
}
_ON_LOOP = {_health}


# -- the ASGI application ------------------------------------------------------------------------
class _State:
    def __init__(self, model, max_n, max_body, threads, timeout, verbose):
        self.model = model
        self.max_n = max_n
        self.max_body = max_body
        self.timeout = timeout
        self.verbose = verbose
        self.threads = threads
        self._limiter = None

    @property
    def limiter(self):
        # Created on first use: a CapacityLimiter belongs to the running event loop.
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.threads)
        return self._limiter


def _json_response(status, document, headers=None, close=False):
    body = json.dumps(document, allow_nan=False).encode("utf-8")
    headers = dict(headers or {})
    if close:
        headers["Connection"] = "close"
    return Response(body, status_code=status, headers=headers, media_type="application/json")


async def _read_body(state, request):
    headers = request.headers
    length = headers.get("content-length")
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    if length is None and not chunked:
        raise _RequestError(411, "missing Content-Length: expected the body's size in bytes "
                                 "(or a chunked body)")
    too_large = f"at most {state.max_body} (the server's --max-body)"
    if length is not None:
        text = length.strip()
        if not (text.isascii() and text.isdigit()):
            raise _RequestError(400, f"Content-Length {length!r}: expected a byte count")
        if int(text) > state.max_body:
            # Refused before a byte is read; with "Expect: 100-continue" no 100 is sent either.
            raise _RequestError(413, f"request body of {int(text)} bytes: {too_large}")
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > state.max_body:
            raise _RequestError(413, f"request body of more than {state.max_body} bytes: "
                                     f"{too_large}")
        parts.append(chunk)
    return b"".join(parts)


def _log(state, request, status):
    if state.verbose:
        client = request.client.host if request.client else "-"
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        print(f"{client} - {request.method} {target} {status}", file=sys.stderr, flush=True)


async def _answer(state, request):
    # The path inside this app (under a Mount, the part after the mount point).
    path, method = "/" + request.path_params.get("path", ""), request.method
    routes = _ROUTES.get(path)
    if routes is None:
        raise _RequestError(404, f"unknown path {path!r}: expected one of "
                                 + ", ".join(sorted(_ROUTES)))
    handler = routes.get(method)
    if handler is None:
        allow = ", ".join(sorted(routes))
        raise _RequestError(405, f"method {method} not allowed on {path}: expected {allow}",
                            {"Allow": allow})
    query = request.scope.get("query_string", b"").decode("latin-1")
    if handler in _ON_LOOP:
        return handler(state, query)
    argument = query
    if method == "POST":
        try:
            with anyio.fail_after(state.timeout):
                argument = await _read_body(state, request)
        except TimeoutError:
            raise _RequestError(408, f"request body not received within {state.timeout:g} s "
                                     "(the server's --timeout)") from None
    try:
        with anyio.fail_after(state.timeout):
            # abandon_on_cancel: at the deadline the client gets its answer; the thread's call
            # finishes on its own and its result is dropped.
            return await anyio.to_thread.run_sync(
                functools.partial(handler, state, argument), limiter=state.limiter,
                abandon_on_cancel=True,
            )
    except TimeoutError:
        raise _RequestError(503, f"no answer within {state.timeout:g} s (the server's "
                                 "--timeout)") from None


class _Endpoint:
    """The one ASGI endpoint (a class, not a function: Starlette then passes every method)."""

    def __init__(self, state):
        self.state = state

    async def __call__(self, scope, receive, send):
        request = Request(scope, receive, send)
        response = await _respond(self.state, request)
        await response(scope, receive, send)


async def _respond(state, request):
    """The JSON answer to one request, errors included (never a traceback to the client)."""
    close = False
    try:
        try:
            status, document, headers = 200, await _answer(state, request), {}
        except _RequestError as exc:
            status, document, headers = exc.status, {"error": exc.message}, exc.headers
            close = status in (408, 411, 413)  # the body may be left unread
        except KeyError as exc:  # the library's unknown-id errors
            message = exc.args[0] if exc.args else "unknown id"
            status, document, headers = 404, {"error": str(message)}, {}
        except ValueError as exc:  # the library's validation of what the client sent
            status, document, headers = 400, {"error": " ".join(str(exc).split())}, {}
    except ClientDisconnect:
        return Response(status_code=400)  # nobody reads it
    except Exception:  # noqa: BLE001 - the handler boundary: log it, answer 500
        print(f"fastcofi: internal error answering {request.method} "
              f"{str(request.url)!r}:", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()
        status, document, headers, close = 500, {"error": "internal error"}, {}, True
    _log(state, request, status)
    return _json_response(status, document, headers, close)


def make_app(model, *, max_n=DEFAULT_MAX_N, max_body=DEFAULT_MAX_BODY, threads=DEFAULT_THREADS,
             timeout=DEFAULT_TIMEOUT, verbose=False):
    """The ASGI application (Starlette) serving a fitted model's JSON API.

    Parameters
    ----------
    model : MatrixFactorization, fitted
        Shared read-only by the worker threads.
    max_n : int, default 1000
        Largest ``n`` a request may ask for.
    max_body : int, default 1 MiB
        Largest POST body, in bytes.
    threads : int, default 8
        Model calls running at once (worker threads); more wait their turn.
    timeout : float, default 10
        Seconds to receive a request's body (408 after) and to answer it (503 after).
    verbose : bool, default False
        Log each request to stderr.

    Returns
    -------
    starlette.applications.Starlette
        Mountable in another ASGI application, or run by any ASGI server.
    """
    _check_settings(0, max_n, max_body, threads, timeout)
    if not hasattr(model, "item_factors_"):
        raise ValueError("model is not fitted: expected a fitted MatrixFactorization")
    state = _State(model, max_n, max_body, threads, timeout, verbose)
    # One route taking every method: _answer dispatches, so that unknown paths and methods get
    # JSON errors (with a sorted Allow) like every other answer.
    app = Starlette(routes=[Route("/{path:path}", _Endpoint(state))])
    app.state.fastcofi = state
    return app


# -- running it: uvicorn over a socket bound here ----------------------------------------------
class _Server(uvicorn.Server):
    """uvicorn's server, except that a signal it shut down on is not raised again afterwards:
    `serve` returns 0 after a graceful stop instead of dying of the signal."""

    def capture_signals(self):
        return _Signals(self)


class _Signals:
    def __init__(self, server):
        self.server = server
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self.server.handle_exit)

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        return False


class ModelServer:
    """uvicorn serving `make_app(model)` on a socket bound when this is made.

    Attributes
    ----------
    app : the ASGI application
    server_address : (host, port), the bound port
    url : str, ``http://host:port``
    """

    def __init__(self, app, sock, *, idle_timeout=5, grace=5.0):
        self.app = app
        self.socket = sock
        self.server_address = sock.getsockname()[:2]
        config = uvicorn.Config(
            # http="auto": httptools' C parser when installed (the [serve] extra), else h11.
            app, lifespan="off", http="auto", loop="asyncio", access_log=False,
            log_level="warning", server_header=False, timeout_keep_alive=idle_timeout,
            timeout_graceful_shutdown=grace,
        )
        self._server = _Server(config)
        self._done = threading.Event()

    @property
    def url(self):
        host, port = self.server_address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def serve_forever(self):
        """Serve until `shutdown` (from another thread) or, in the main thread, SIGTERM/SIGINT."""
        try:
            self._server.run(sockets=[self.socket])
        finally:
            self._done.set()

    def shutdown(self, wait=10.0):
        """Ask the server to stop (from another thread) and wait for it to finish."""
        self._server.should_exit = True
        self._done.wait(wait)

    def server_close(self):
        self.socket.close()


def _check_settings(port, max_n, max_body, threads, timeout=DEFAULT_TIMEOUT):
    for name, value, low in (("port", port, 0), ("max_n", max_n, 1), ("max_body", max_body, 0),
                             ("threads", threads, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{name} ({flag}) must be an integer >= {low}, found {value!r}")
    if port > 65535:
        raise ValueError(f"port (--port) must be at most 65535, found {port}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0 \
            or not math.isfinite(timeout):
        raise ValueError(f"timeout (--timeout) must be a positive number of seconds, "
                         f"found {timeout!r}")


def _listen(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it Nagle's algorithm and the client's delayed ACK add ~40 ms to every answer
    # (uvicorn writes the headers and the body in two sends).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def make_server(model, host="127.0.0.1", port=0, *, max_n=DEFAULT_MAX_N,
                max_body=DEFAULT_MAX_BODY, threads=DEFAULT_THREADS, timeout=DEFAULT_TIMEOUT,
                verbose=False, idle_timeout=5, grace=5.0):
    """A `ModelServer` for a fitted model, its socket bound and listening (call
    ``serve_forever()``, in a thread of its own to embed it).

    Parameters
    ----------
    model, max_n, max_body, threads, timeout, verbose
        As for `make_app`.
    host : str, default "127.0.0.1"
    port : int, default 0 (a free port; read it from ``server.server_address`` or ``server.url``)
    idle_timeout : int, default 5
        Seconds an idle keep-alive connection is kept open.
    grace : float, default 5
        Seconds the requests in progress get to finish on shutdown.
    """
    _check_settings(port, max_n, max_body, threads, timeout)
    app = make_app(model, max_n=max_n, max_body=max_body, threads=threads, timeout=timeout,
                   verbose=verbose)
    return ModelServer(app, _listen(host, port), idle_timeout=idle_timeout, grace=grace)


def _warm(model):
    """Run each endpoint's library call once, so that the first requests do not load kernels.

    Only what the endpoints call: `MatrixFactorization.warm_up` also loads the parallel batch
    and add_users kernels (about a second from numba's cache), which no endpoint uses.
    """
    if model.item_factors_.shape[0] == 0:
        return
    item = model.item_ids_[0]
    if model.user_factors_.shape[0]:
        user = model.user_ids_[0]
        model.recommend(user, n=1)
        model.recommend(user, n=1, min_item_ratings=1)
        model.predict(user, item)
    model.similar_items(item, n=1)
    model.recommend_new_user(model.item_ids_[:1], [model.rating_range_[1]], n=1)


def serve(model_path, host="127.0.0.1", port=8000, *, max_n=DEFAULT_MAX_N,
          max_body=DEFAULT_MAX_BODY, threads=DEFAULT_THREADS, timeout=DEFAULT_TIMEOUT,
          verbose=False, out=None):
    """Load a model file and serve it until SIGTERM or SIGINT; returns 0.

    Prints one line, ``fastcofi: serving MODEL on http://HOST:PORT``, to ``out`` (stdout) once
    the socket listens, so that a caller who asked for port 0 can read the port.
    """
    from ..model_file import load_model

    _check_settings(port, max_n, max_body, threads, timeout)
    model = load_model(model_path)
    server = make_server(model, host, port, max_n=max_n, max_body=max_body, threads=threads,
                         timeout=timeout, verbose=verbose)
    out = sys.stdout if out is None else out
    previous = {}
    if threading.current_thread() is threading.main_thread():
        # From the moment the port is printed a SIGTERM is a graceful stop, also in the instant
        # before uvicorn installs its own handlers.
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, server._server.handle_exit)
    try:
        # One BLAS thread per request: the requests are the parallelism. OpenBLAS's own threads,
        # shared by concurrent callers, spin against each other (about 10x fewer requests/s
        # with 8 clients on 2 cores).
        with one_blas_thread():
            # The kernels load from numba's cache while the server already answers: the first
            # kernel call of a process costs about a second (numba's own start-up), which would
            # otherwise come before the port is printed. A request that needs a kernel before
            # then waits for it; /health never does.
            threading.Thread(target=_warm, args=(model,), name="fastcofi-warm",
                             daemon=True).start()
            print(f"fastcofi: serving {model_path} on {server.url}", file=out, flush=True)
            server.serve_forever()
    finally:
        server.server_close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if verbose:
        print("fastcofi: stopped", file=sys.stderr, flush=True)
    return 0
