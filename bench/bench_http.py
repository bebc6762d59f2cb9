"""HTTP benchmark: ``GET /recommend`` on `fastcofi serve` (uvicorn + Starlette) against the
standard-library ``http.server`` it replaced, at 8 and 64 clients, in one run.

Run as a script: ``python bench/bench_http.py [--seconds 5] [--clients 8 64]``. It

1. builds a model of ``--items`` items (default 20k) x ``--users`` users x ``--factors`` factors
   (default 64): a short real fit on a random rating set that declares every item, whose factors
   are then replaced by random ones of the same shapes (so the answers are not degenerate), and
   saves it to a temporary ``.npz``;
2. for each server, starts it as its own process (the server does not share a GIL with the
   clients) and reads the bound address from its first stdout line: ``new`` is
   ``python -m fastcofi serve MODEL --port 0``; ``old`` is the ``ThreadingHTTPServer`` the
   package used before (16 connection slots, a thread per connection), kept here only, in
   `legacy_serve`, serving ``GET /recommend`` with the same JSON document;
3. for each client count, runs that many threads for ``--seconds``, each on its own keep-alive
   connection, each sending ``GET /recommend?user=<random user>&n=10`` back to back;
4. reports requests per second, p50 / p99 latency seen by the clients, and the errors (any status
   but 200, or a connection failure); stops the server with SIGTERM and checks it exits 0.

Each result, with the environment, is appended as one JSON line to ``--out`` (default
``bench/results/http.jsonl``). Clients and server share the machine's cores: on a small machine
the figure is a floor for the server (the Python clients use a good part of the CPU), and noisy.
With 64 clients the old server's 16 slots make 48 connections wait in the listen backlog until a
connection closes: their requests time out or wait for the idle timeout, which shows in p99.
"""

import argparse
import http.client
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from harness import RESULTS, environment, output_path

from fastcofi import MatrixFactorization, Ratings


def build_model(path, n_users, n_items, n_factors, per_user=20, seed=0):
    """A saved model of the requested size: a 2-iteration ALS fit, then random factors."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), per_user)
    items = np.concatenate([rng.choice(n_items, per_user, replace=False) for _ in range(n_users)])
    values = rng.integers(1, 6, size=users.shape[0]).astype(np.float64)
    ratings = Ratings.from_arrays(users, items, values, all_items=np.arange(n_items))
    model = MatrixFactorization(n_factors, solver="als", max_iter=2, random_state=seed)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(ratings)
    model.item_factors_ = rng.normal(0.0, 0.3, size=(n_items, n_factors))
    model.user_factors_ = rng.normal(0.0, 0.3, size=(n_users, n_factors))
    model.save(path)


def legacy_serve(model_path):
    """The former `fastcofi serve` (``http.server``), reduced to ``GET /recommend`` and
    ``/health``, for comparison only; stops on SIGTERM."""
    import socketserver
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qs, urlsplit

    from threadpoolctl import threadpool_limits

    from fastcofi.app.documents import recommendation_rows
    from fastcofi.model_file import load_model

    model = load_model(model_path, warm=True)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        wbufsize = 1 << 16
        disable_nagle_algorithm = True
        timeout = 15.0

        def do_GET(self):
            url = urlsplit(self.path)
            if url.path == "/health":
                document, status = {"status": "ok"}, 200
            elif url.path == "/recommend":
                params = {k: v[0] for k, v in parse_qs(url.query).items()}
                try:
                    user, n = int(params["user"]), int(params.get("n", 10))
                    ids, scores = model.recommend(user, n=n)
                    document = {"user": user,
                                "recommendations": recommendation_rows(model, ids, scores, user)}
                    status = 200
                except (KeyError, ValueError) as exc:
                    document, status = {"error": str(exc)}, 400
            else:
                document, status = {"error": "unknown path"}, 404
            body = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 64

        def __init__(self, *args):
            self.slots = threading.BoundedSemaphore(16)
            super().__init__(*args)

        def server_bind(self):
            socketserver.TCPServer.server_bind(self)

        closing = False

        def process_request(self, request, client_address):
            # 16 connections at once, as before; the others wait in the listen backlog.
            while not self.slots.acquire(timeout=0.1):
                if self.closing:
                    self.shutdown_request(request)
                    return
            super().process_request(request, client_address)

        def process_request_thread(self, request, client_address):
            try:
                super().process_request_thread(request, client_address)
            finally:
                self.slots.release()

    server = Server(("127.0.0.1", 0), Handler)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              daemon=True)
    with threadpool_limits(limits=1, user_api="blas"):
        thread.start()
        print(f"fastcofi: serving {model_path} on http://127.0.0.1:{server.server_address[1]}",
              flush=True)
        stop.wait()
        server.closing = True
        server.shutdown()
        server.server_close()
    return 0


def start_server(model_path, threads, which="new"):
    if which == "old":
        cmd = [sys.executable, str(Path(__file__).resolve()), "--legacy-serve", str(model_path)]
    else:
        cmd = [sys.executable, "-m", "fastcofi", "serve", str(model_path), "--port", "0"]
    if threads and which == "new":
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 120)
    if not ready:
        proc.kill()
        raise RuntimeError("the server printed no address within 120 s")
    line = proc.stdout.readline()
    if not line.startswith("fastcofi: serving"):
        proc.kill()
        raise RuntimeError(f"unexpected first line {line!r}: {proc.stderr.read()}")
    return proc, int(line.rsplit(":", 1)[1])


def client(port, n_users, deadline, seed, latencies, errors, counts):
    rng = np.random.default_rng(seed)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    mine, failed = [], 0
    while True:
        start = time.perf_counter()
        if start >= deadline:
            break
        try:
            connection.request("GET", f"/recommend?user={int(rng.integers(n_users))}&n=10")
            response = connection.getresponse()
            body = response.read()
            if response.status != 200 or not body.startswith(b'{"user"'):
                failed += 1
        except (OSError, http.client.HTTPException):
            failed += 1
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        mine.append(time.perf_counter() - start)
    connection.close()
    latencies.extend(mine)
    errors.append(failed)
    counts.append(len(mine))


def _cpu_seconds(pid):
    """User + system CPU seconds of a process (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def run_clients(port, n_users, n_clients, seconds):
    """(requests/s, p50 ms, p99 ms, requests, errors, elapsed s) of ``n_clients`` threads."""
    latencies, errors, counts = [], [], []
    start = time.perf_counter()
    deadline = start + seconds
    threads = [
        threading.Thread(target=client, args=(port, n_users, deadline, seed, latencies, errors,
                                              counts))
        for seed in range(n_clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    lat = np.asarray(latencies) * 1e3
    return {
        "requests_per_second": round(sum(counts) / elapsed, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 3) if lat.size else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 3) if lat.size else None,
        "requests": int(sum(counts)), "errors": int(sum(errors)), "seconds": round(elapsed, 3),
    }


def bench_server(which, model_path, args):
    t = time.perf_counter()
    proc, port = start_server(model_path, args.threads, which)
    startup = time.perf_counter() - t
    print(f"{which} server up on port {port} in {startup:.2f} s", file=sys.stderr)
    rows = []
    try:
        client(port, args.users, time.perf_counter() + 1.0, 99, [], [], [])  # warm-up
        for n_clients in args.clients:
            cpu, own = _cpu_seconds(proc.pid), time.process_time()
            row = run_clients(port, args.users, n_clients, args.seconds)
            if cpu is not None and row["requests"]:
                # CPU per answer on each side: tells a slow server from slow (GIL-bound) clients.
                row["server_cpu_ms_per_request"] = round(
                    (_cpu_seconds(proc.pid) - cpu) * 1e3 / row["requests"], 3)
                row["client_cpu_ms_per_request"] = round(
                    (time.process_time() - own) * 1e3 / row["requests"], 3)
            row.update(server=which, clients=n_clients, startup_seconds=round(startup, 3))
            rows.append(row)
            print(f"{which:>3} {n_clients:3d} clients: {row['requests_per_second']:8.1f} req/s  "
                  f"p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms  {row['errors']} errors  "
                  f"server CPU {row.get('server_cpu_ms_per_request')} ms/request, clients "
                  f"{row.get('client_cpu_ms_per_request')}",
                  file=sys.stderr)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    if proc.returncode != 0 or "Traceback" in err:
        print(err, file=sys.stderr)
    for row in rows:
        row["server_exit_code"] = proc.returncode
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--servers", nargs="+", choices=("new", "old"), default=["new", "old"])
    parser.add_argument("--threads", type=int, default=None, help="the new server's --threads")
    parser.add_argument("--legacy-serve", metavar="MODEL", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=output_path, default=str(RESULTS / "http.jsonl"),
                        help="append the results as JSON lines here ('' to skip)")
    args = parser.parse_args(argv)
    if args.legacy_serve:
        return legacy_serve(args.legacy_serve)

    from threadpoolctl import threadpool_limits

    # The clients need no BLAS; idle OpenBLAS workers in this process would only steal CPU.
    with threadpool_limits(limits=1, user_api="blas"), tempfile.TemporaryDirectory() as folder:
        model_path = Path(folder) / "model.npz"
        t = time.perf_counter()
        build_model(model_path, args.users, args.items, args.factors)
        print(f"model {args.items} items x {args.users} users x {args.factors} factors "
              f"built in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        rows = [row for which in args.servers for row in bench_server(which, model_path, args)]
    env = environment()
    print("| server | clients | requests/s | p50 ms | p99 ms | errors | CPU ms/request: server, "
          "clients |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['server']} | {row['clients']} | {row['requests_per_second']:.0f} | "
              f"{row['p50_ms']} | {row['p99_ms']} | {row['errors']} | "
              f"{row.get('server_cpu_ms_per_request')}, {row.get('client_cpu_ms_per_request')} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            for row in rows:
                f.write(json.dumps({
                    "benchmark": "http_get_recommend", "items": args.items, "users": args.users,
                    "factors": args.factors, "n": 10, **row, "environment": env,
                }) + "\n")
    new_ok = all(r["errors"] == 0 and r["server_exit_code"] == 0 for r in rows
                 if r["server"] == "new")
    return 0 if new_ok else 1


if __name__ == "__main__":
    sys.exit(main())
