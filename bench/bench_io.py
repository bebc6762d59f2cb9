"""Reading speed and peak memory of ``read_ratings`` on a synthetic ML-25M-like ``ratings.csv``.

Usage::

    python bench/bench_io.py                      # 25M lines, both engines
    python bench/bench_io.py --lines 5000000 --engine pyarrow --repeat 3
    python bench/bench_io.py --file ratings.csv --keep   # reuse / keep a written file
    python bench/bench_io.py --source synthetic --lines 10000000   # datasets.synthetic's data

Writes the file once into a temporary folder (``--file`` to choose the path; it is deleted at
the end unless ``--keep``), then reads it in a fresh subprocess per engine and repeat
(so that peak RSS belongs to the read alone, with the Numba cache warm from a tiny read) and
reports lines per second, the CPU seconds of the read, and the peak memory growth relative to
the bytes of the final ``Ratings`` arrays. The target of issue 3: >= 5 M lines/s with peak
memory under 3x the final arrays on a 2-core machine. The load average is recorded beside each
result: on a shared machine, wall time is only meaningful when it is low.

``--source ml25m`` (the default) writes user-ordered lines shaped like ML-25M: 162,541 users,
62,423 movies, half stars, no repeated pair. ``--source synthetic`` writes the ratings of
:func:`fastcofi.datasets.synthetic` (480,189 users x 17,770 items, power-law popularity and
activity) user by user, in chunks: see `write_synthetic_csv`.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from harness import environment, output_path

CHILD = r"""
import json, os, resource, sys, time
import numpy as np
from fastcofi import read_ratings
def rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
path, engine, tiny, dtype = sys.argv[1:5]
# Compile the builtin kernel (and warm imports) on a tiny file, outside the timing.
read_ratings(tiny, engine=engine)
base = rss_kb()
cpu = cpu_seconds()
t = time.perf_counter()
r = read_ratings(path, engine=engine, dtype=np.dtype(dtype))
seconds = time.perf_counter() - t
cpu = cpu_seconds() - cpu
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
arrays = [*r.by_item, *r.by_user, r.user_ids, r.item_ids]
if r.timestamps is not None:
    arrays.append(r.timestamps)
final = sum(a.nbytes for a in arrays)
print(json.dumps({"nnz": r.nnz, "seconds": seconds, "cpu_seconds": cpu, "base_rss": base * 1024,
                  "peak_rss": peak * 1024, "final_bytes": final,
                  "load_average": os.getloadavg()[0]}))
"""


def write_ratings_csv(path, n_lines, seed=0, chunk=1_000_000, order="user-item"):
    """A ratings.csv shaped like ML-25M: 162k users, 62k movies, half stars, no repeated pair.

    ``order="user-item"`` sorts the lines by user, then movie, as GroupLens writes ML-20M/25M;
    ``"user"`` leaves each user's movies unordered (as in ML-1M), which takes the readers' general
    path (a sort by item) instead of their fast path for user-major files.
    """
    rng = np.random.default_rng(seed)
    n_users, n_items = 162_541, 62_423
    written = 0
    with open(path, "w", newline="\n") as f:
        f.write("userId,movieId,rating,timestamp\n")
        # Pairs walk users in order with distinct items per user: user u gets items
        # (u * 7919 + k * 104729) mod n_items for consecutive k (104729 is prime).
        per_user = max(1, -(-n_lines // n_users))
        # Chunks of whole users, so that sorting a chunk sorts each user's movies.
        chunk = per_user * max(1, chunk // per_user)
        while written < n_lines:
            m = min(chunk, n_lines - written)
            rows = np.arange(written, written + m, dtype=np.int64)
            users = rows // per_user + 1
            k = rows % per_user
            items = (users * 7919 + k * 104729) % n_items + 1
            if order == "user-item":
                items = items[np.lexsort((items, users))]
            ratings = rng.integers(1, 11, size=m) / 2
            stamps = rng.integers(789_652_009, 1_574_327_703, size=m)
            text = "\n".join(
                f"{u},{i},{r:.1f},{s}" for u, i, r, s in zip(
                    users.tolist(), items.tolist(), ratings.tolist(), stamps.tolist())
            )
            f.write(text + "\n")
            written += m
    return path


def write_synthetic_csv(path, n_ratings, *, n_users=480_189, n_items=17_770, seed=0,
                        dtype=np.float32):
    """Write the ratings of `fastcofi.datasets.synthetic` as ``userId,movieId,rating``, in chunks.

    The ratings are generated in memory (``dtype`` float32: 16 bytes per rating for both CSRs),
    then written chunk by chunk (``large_scale.write_ratings_csv``): a 1e8-rating file needs
    about 1.6 GB beside the file itself.
    """
    from large_scale import write_ratings_csv

    from fastcofi.datasets import synthetic

    write_ratings_csv(synthetic(n_users, n_items, n_ratings, seed=seed, dtype=dtype), path)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=25_000_000)
    parser.add_argument("--engine", choices=["pyarrow", "builtin", "both"], default="both")
    parser.add_argument("--source", choices=["ml25m", "synthetic"], default="ml25m")
    parser.add_argument("--order", choices=["user-item", "user"], default="user-item",
                        help="line order of the ml25m file (see write_ratings_csv)")
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--repeat", type=int, default=1, help="fresh-process reads per engine")
    parser.add_argument("--file", help="the file to read: written first unless it exists")
    parser.add_argument("--keep", action="store_true",
                        help="keep the file written to --file (without --file it is temporary)")
    parser.add_argument("--out", type=output_path,
                        help="append the JSON result to this file")
    args = parser.parse_args(argv)
    if args.keep and not args.file:
        parser.error("--keep needs --file: without it the file lives in a temporary folder")
    engines = ["pyarrow", "builtin"] if args.engine == "both" else [args.engine]
    with tempfile.TemporaryDirectory() as tmp:
        path = args.file or os.path.join(tmp, "ratings.csv")
        tiny = os.path.join(tmp, "tiny.csv")
        write_ratings_csv(tiny, 10)
        written = not os.path.exists(path)
        if written:
            t = time.perf_counter()
            if args.source == "synthetic":
                write_synthetic_csv(path, args.lines)
            else:
                write_ratings_csv(path, args.lines, order=args.order)
            print(f"wrote {args.lines:,} lines ({os.path.getsize(path) / 1e6:.0f} MB) "
                  f"in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        results = []
        try:
            for engine in engines:
                for _ in range(args.repeat):
                    res = _read_in_child(path, engine, tiny, args)
                    if res is not None:
                        results.append(res)
        finally:
            if written and not args.keep and args.file:
                os.unlink(path)
    if args.out:
        with open(args.out, "a") as f:
            for res in results:
                f.write(json.dumps(res) + "\n")
    return 0


def _read_in_child(path, engine, tiny, args):
    out = subprocess.run([sys.executable, "-c", CHILD, path, engine, tiny, args.dtype],
                         capture_output=True, text=True, check=False)
    if out.returncode:
        print(f"{engine}: failed\n{out.stderr}", file=sys.stderr)
        return None
    res = json.loads(out.stdout.strip().splitlines()[-1])
    growth = res["peak_rss"] - res["base_rss"]
    res.update(
        engine=engine,
        lines=res["nnz"],
        source=args.source,
        order=args.order if args.source == "ml25m" else "user-item",
        dtype=args.dtype,
        file_bytes=os.path.getsize(path),
        lines_per_second=res["nnz"] / res["seconds"],
        lines_per_cpu_second=res["nnz"] / res["cpu_seconds"],
        peak_over_final=growth / res["final_bytes"],
        environment=environment(),
    )
    print(f"{engine:8s} {res['nnz']:>11,} lines  {res['seconds']:6.2f} s "
          f"({res['cpu_seconds']:6.2f} CPU s)  {res['lines_per_second'] / 1e6:5.2f} M lines/s  "
          f"peak growth {growth / 1e6:7.0f} MB = {res['peak_over_final']:.2f} x final arrays "
          f"({res['final_bytes'] / 1e6:.0f} MB)  load {res['load_average']:.1f}", flush=True)
    return res


if __name__ == "__main__":
    sys.exit(main())
