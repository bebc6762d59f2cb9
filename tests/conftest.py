import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

REPO = Path(__file__).resolve().parent.parent

settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# With NUMBA_DISABLE_JIT=1 the kernels run as plain Python: fewer, smaller examples.
settings.register_profile(
    "nojit",
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

JIT_DISABLED = os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0")


def shared_data_dir():
    """The shared real-data folder (FASTCOFI_TEST_DATA, default ../shared/data beside the repo)."""
    return Path(os.environ.get("FASTCOFI_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def ml100k():
    folder = shared_data_dir() / "ml-100k"
    if not all((folder / name).is_file() for name in ("u.data", "u1.base", "u.item")):
        pytest.skip(f"MovieLens 100K not found at {folder} (set FASTCOFI_TEST_DATA)")
    return folder


@pytest.fixture
def toy_data_dir():
    return REPO / "data" / "seed-toy"


try:
    import pyarrow  # noqa: F401

    HAVE_ARROW = True
except ImportError:
    HAVE_ARROW = False

# The two reader engines: results and errors must agree between them.
ENGINES = ["builtin", pytest.param("pyarrow", marks=pytest.mark.skipif(
    not HAVE_ARROW, reason="pyarrow not installed (fastcofi[io])"))]


@pytest.fixture(params=ENGINES)
def engine(request):
    return request.param


def write(tmp_path, name, data):
    """Write ``data`` (bytes) to ``tmp_path / name``, parents created; returns the path."""
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
