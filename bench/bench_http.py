"""HTTP benchmark: requests per second of ``GET /recommend`` on `fastcofi serve`, many clients.

Run as a script: ``python bench/bench_http.py [--seconds 10] [--clients 8]``. It

1. builds a model of ``--items`` items (default 20k) x ``--users`` users x ``--factors`` factors
   (default 64): a short real fit on a random rating set that declares every item, whose factors
   are then replaced by random ones of the same shapes (so the answers are not degenerate), and
   saves it to a temporary ``.npz``;
2. starts ``python -m fastcofi serve MODEL --port 0`` as its own process (the server does not share
   a GIL with the clients) and reads the bound address from its first stdout line;
3. runs ``--clients`` threads for ``--seconds``, each on its own keep-alive connection, each
   sending ``GET /recommend?user=<random user>&n=10`` back to back;
4. reports requests per second, p50 / p99 latency seen by the clients, and the errors (any status
   but 200, or a connection failure); stops the server with SIGTERM and checks it exits 0.

The result, with the environment, is appended as one JSON line to ``--out`` (default
``bench/results/http.jsonl``). Clients and server share the machine's cores: on a small machine
the figure is a floor for the server (the Python clients use a good part of the CPU), and noisy.
"""

import argparse
import http.client
import json
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from harness import RESULTS, environment

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


def start_server(model_path, threads):
    cmd = [sys.executable, "-m", "fastcofi", "serve", str(model_path), "--port", "0"]
    if threads:
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
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
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
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine.append(time.perf_counter() - start)
    connection.close()
    latencies.extend(mine)
    errors.append(failed)
    counts.append(len(mine))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=None, help="the server's --threads")
    parser.add_argument("--out", default=str(RESULTS / "http.jsonl"),
                        help="append the result as a JSON line here ('' to skip)")
    args = parser.parse_args(argv)

    from threadpoolctl import threadpool_limits

    # The clients need no BLAS; idle OpenBLAS workers in this process would only steal CPU.
    with threadpool_limits(limits=1, user_api="blas"), tempfile.TemporaryDirectory() as folder:
        model_path = Path(folder) / "model.npz"
        t = time.perf_counter()
        build_model(model_path, args.users, args.items, args.factors)
        print(f"model {args.items} items x {args.users} users x {args.factors} factors "
              f"built in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        t = time.perf_counter()
        proc, port = start_server(model_path, args.threads)
        print(f"server up on port {port} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        try:
            # warm-up: a few requests on each of the clients' future connections' code paths
            warm = []
            client(port, args.users, time.perf_counter() + 1.0, 99, warm, [], [])
            latencies, errors, counts = [], [], []
            start = time.perf_counter()
            deadline = start + args.seconds
            threads = [
                threading.Thread(target=client, args=(port, args.users, deadline, seed,
                                                      latencies, errors, counts))
                for seed in range(args.clients)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - start
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
    lat = np.asarray(latencies) * 1e3
    result = {
        "benchmark": "http_get_recommend",
        "items": args.items, "users": args.users, "factors": args.factors, "n": 10,
        "clients": args.clients, "seconds": round(elapsed, 3), "requests": int(sum(counts)),
        "requests_per_second": round(sum(counts) / elapsed, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 3),
        "p99_ms": round(float(np.percentile(lat, 99)), 3),
        "errors": int(sum(errors)), "server_exit_code": proc.returncode,
        "environment": environment(),
    }
    print(f"GET /recommend, {args.items} items x {args.factors} factors, {args.clients} clients, "
          f"{elapsed:.1f} s: {result['requests']} requests, {result['requests_per_second']:.0f} "
          f"req/s, p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
          f"{result['errors']} errors; server exit code {proc.returncode}")
    if proc.returncode != 0 or "Traceback" in err:
        print(err, file=sys.stderr)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(result) + "\n")
    return 0 if result["errors"] == 0 and proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
