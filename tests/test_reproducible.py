"""The same fit gives the same bits in any process, whether it compiles the kernels or loads
them from numba's cache."""

import importlib
import pkgutil
import subprocess
import sys
import textwrap
import warnings

import pytest
from numba.core.caching import NullCache
from numba.core.registry import CPUDispatcher

import fastcofi.kernels
from fastcofi import MatrixFactorization
from fastcofi.datasets import synthetic

from .conftest import JIT_DISABLED, REPO

FIT = textwrap.dedent(
    """
    import sys, warnings
    sys.path.insert(0, {repo!r})
    from fastcofi import MatrixFactorization
    from fastcofi.datasets import synthetic
    warnings.simplefilter("ignore")
    ratings = synthetic(300, 200, 6000, rank=4, noise=0.3, seed=1)
    for solver, budget in (("cg", 40), ("als", 10)):
        model = MatrixFactorization(5, reg=0.13, solver=solver, tol=0, max_iter=budget,
                                    random_state=0).fit(ratings)
        print(solver, [float(c).hex() for c in model.history_["cost"]])
    """
)


@pytest.mark.slow  # the first process compiles every kernel it runs: half a minute
def test_a_fit_compiled_afresh_matches_one_from_the_cache(tmp_path):
    """With FMA contraction allowed, LLVM fused other multiply-adds in a kernel compiled in the
    process (its callees inlined) than in one loaded from the cache: the projected CG's cost
    differed at 1e-9 after 35 iterations."""
    env = {"NUMBA_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    script = FIT.format(repo=str(REPO))
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           env=env, check=True).stdout for _ in range(2)]
    assert any(tmp_path.rglob("*.nbi"))  # the second process read the first one's cache
    assert runs[0] == runs[1] and runs[0].count("\n") == 2


@pytest.mark.skipif(JIT_DISABLED, reason="nothing is compiled with the JIT off")
def test_every_kernel_a_fit_compiles_can_be_cached():
    """numba leaves a kernel it cannot cache (one that calls numba.get_num_threads(), say) to
    be compiled again in every process, with only a warning: an ALS fit at 1e7 ratings took
    15 s more before its first sweep."""
    ratings = synthetic(60, 40, 600, rank=3, noise=0.3, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for solver in ("cg", "als", "lbfgs"):
            MatrixFactorization(4, solver=solver, max_iter=2).fit(ratings)
    compiled = 0
    for module_info in pkgutil.iter_modules(fastcofi.kernels.__path__):
        module = importlib.import_module(f"fastcofi.kernels.{module_info.name}")
        for name, kernel in vars(module).items():
            if not isinstance(kernel, CPUDispatcher) or isinstance(kernel._cache, NullCache):
                continue
            for result in kernel.overloads.values():
                compiled += 1
                assert not result.library.has_dynamic_globals, f"{module.__name__}.{name}"
    assert compiled >= 10
