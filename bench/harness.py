"""What every benchmark shares: where results go, the timing helper and the environment record.

Study scripts import it as a sibling (``from harness import ...``): run as ``python3
bench/NAME.py``, a script's own folder is first on ``sys.path``, and the pytest-benchmark suites
in this folder (no ``__init__.py``) are collected the same way. fastcofi itself comes from the
installed package (``pip install -e .`` for the working tree's code).
"""

import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"


def output_path(value):
    """A script's ``--out`` path: a relative one is taken from this folder, not from the current
    directory, so that ``results/NAME.json`` (as bench/README.md writes its commands) lands in
    bench/results wherever the script is run from; an absolute one is kept as given, an empty
    one (no file) too."""
    if not value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else BENCH / path)


def write_json(path, doc, indent=1):
    """Write ``doc`` as JSON to ``path`` through a temporary file, so that a run cut short
    never leaves half a result behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=indent))
    os.replace(tmp, path)


def shared_data():
    """The shared real-data folder: ``$FASTCOFI_TEST_DATA``, default ``../shared/data`` beside
    the repository (as the tests find it)."""
    default = BENCH.parents[1] / "shared" / "data"
    return Path(os.environ.get("FASTCOFI_TEST_DATA", default))


def sample_seconds(fn, repeats, *, warmup=1, budget=None, min_repeats=3):
    """Wall seconds of ``repeats`` calls of ``fn()``, after ``warmup`` untimed calls (which
    compile kernels and fill caches).

    With ``budget`` (seconds), stops early once the timed calls have taken that long and at
    least ``min_repeats`` were made. Returns the list of seconds, one per timed call.
    """
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if budget is not None and time.perf_counter() - start > budget and len(times) >= min_repeats:
            break
    return times


def median_seconds(fn, repeats, *, warmup=1, budget=None):
    """The median of `sample_seconds` and the number of timed calls: ``(seconds, n)``."""
    times = sample_seconds(fn, repeats, warmup=warmup, budget=budget)
    return float(np.median(times)), len(times)


def _threading_layer():
    import numba

    try:
        return numba.threading_layer()
    except ValueError:
        return "not initialized"


def _cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _git_commit():
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=BENCH, check=False)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def environment(**extra):
    """The environment a result was measured in, recorded beside it in every results file:
    versions, CPU, thread settings, load, commit and date. ``extra`` adds or overrides fields.

    Call it after the timed work, so that numba's threading layer is the one that ran.
    """
    import numba
    import scipy

    import fastcofi

    doc = {
        "fastcofi": fastcofi.__version__,
        "commit": _git_commit(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "numba": numba.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
        "threading_layer": _threading_layer(),
        "load_average_1min": os.getloadavg()[0],
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    doc.update(extra)
    return doc
