"""Reading speed and peak memory of ``read_ratings`` on a synthetic ML-25M-like ``ratings.csv``.

Usage::

    python bench/bench_io.py                      # 25M lines, both engines
    python bench/bench_io.py --lines 2000000 --engine pyarrow

Writes the file once into a temporary folder, then reads it in a fresh subprocess per engine
(so that peak RSS belongs to the read alone) and reports lines per second and the peak memory
growth relative to the bytes of the final ``Ratings`` arrays. The target of issue 3: >= 5 M
lines/s with peak memory under 3x the final arrays on a 2-core machine.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

CHILD = r"""
import json, resource, sys, time
import numpy as np
import fastcofi.io as fio
def rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
path, engine = sys.argv[1], sys.argv[2]
# Compile the builtin kernel (and warm imports) on a tiny file, outside the timing.
fio.read_ratings(sys.argv[3], engine=engine)
base = rss_kb()
t = time.perf_counter()
r = fio.read_ratings(path, engine=engine)
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
arrays = [*r.by_item, *r.by_user, r.user_ids, r.item_ids]
if r.timestamps is not None:
    arrays.append(r.timestamps)
final = sum(a.nbytes for a in arrays)
print(json.dumps({"nnz": r.nnz, "seconds": seconds, "base_rss": base * 1024,
                  "peak_rss": peak * 1024, "final_bytes": final}))
"""


def write_ratings_csv(path, n_lines, seed=0, chunk=1_000_000):
    """A ratings.csv shaped like ML-25M: 162k users, 62k movies, half stars, no repeated pair."""
    rng = np.random.default_rng(seed)
    n_users, n_items = 162_541, 62_423
    written = 0
    with open(path, "w", newline="\n") as f:
        f.write("userId,movieId,rating,timestamp\n")
        # Pairs walk users in order (as GroupLens writes them) with distinct items per user:
        # user u gets items (u * 7919 + k * 104729) mod n_items for consecutive k.
        per_user = max(1, -(-n_lines // n_users))
        while written < n_lines:
            m = min(chunk, n_lines - written)
            rows = np.arange(written, written + m, dtype=np.int64)
            users = rows // per_user + 1
            k = rows % per_user
            items = (users * 7919 + k * 104729) % n_items + 1
            ratings = rng.integers(1, 11, size=m) / 2
            stamps = rng.integers(789_652_009, 1_574_327_703, size=m)
            text = "\n".join(
                f"{u},{i},{r:g},{s}" for u, i, r, s in zip(
                    users.tolist(), items.tolist(), ratings.tolist(), stamps.tolist())
            )
            f.write(text + "\n")
            written += m
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=25_000_000)
    parser.add_argument("--engine", choices=["pyarrow", "builtin", "both"], default="both")
    parser.add_argument("--out", help="append the JSON result to this file")
    args = parser.parse_args(argv)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    engines = ["pyarrow", "builtin"] if args.engine == "both" else [args.engine]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ratings.csv")
        tiny = os.path.join(tmp, "tiny.csv")
        t = time.perf_counter()
        write_ratings_csv(path, args.lines)
        write_ratings_csv(tiny, 10)
        print(f"wrote {args.lines:,} lines ({os.path.getsize(path) / 1e6:.0f} MB) "
              f"in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        results = []
        for engine in engines:
            out = subprocess.run([sys.executable, "-c", CHILD, path, engine, tiny], env=env,
                                 capture_output=True, text=True)
            if out.returncode:
                print(f"{engine}: failed\n{out.stderr}", file=sys.stderr)
                continue
            res = json.loads(out.stdout.strip().splitlines()[-1])
            growth = res["peak_rss"] - res["base_rss"]
            res.update(
                engine=engine,
                lines=args.lines,
                file_bytes=os.path.getsize(path),
                lines_per_second=args.lines / res["seconds"],
                peak_over_final=growth / res["final_bytes"],
                cpu_count=os.cpu_count(),
                python=platform.python_version(),
                numpy=np.__version__,
            )
            results.append(res)
            print(f"{engine:8s} {args.lines:>11,} lines  {res['seconds']:6.2f} s  "
                  f"{res['lines_per_second'] / 1e6:5.2f} M lines/s  peak growth "
                  f"{growth / 1e6:7.0f} MB = {res['peak_over_final']:.2f} x final arrays "
                  f"({res['final_bytes'] / 1e6:.0f} MB)")
    if args.out:
        with open(args.out, "a") as f:
            for res in results:
                f.write(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
