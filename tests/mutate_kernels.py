"""Mutation testing of the Numba kernels, which mutmut leaves alone (it skips decorated functions).

Each mutant changes one operator, comparison or constant in one kernel of ``fastcofi.kernels``.
The kernels run as Python (``NUMBA_DISABLE_JIT=1``, set here before numba is imported), so a
mutant is just the kernel's function replaced in the module, nothing compiles, and the group's
targeted tests run in this one process (``pytest.main``) against each mutant in turn. A mutant
the tests do not fail survives. The source file is never written.

    python3 -m tests.mutate_kernels objective --budget 600
    python3 -m tests.mutate_kernels serving --functions select_top_n _worse
    python3 -m tests.mutate_kernels solvers --lines 168 173    # survivors checked again

Not part of CI: slow by nature. See tests/README.md.
"""

import argparse
import ast
import contextlib
import copy
import io
import os
import signal
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# group -> (module, functions, tests run against each mutant). The kernels first; the Python
# functions of solvers.py and serving.py are mutated the same way (mutmut needs a whole-suite
# coverage run first, which took longer than this whole loop on the shared machine).
GROUPS = {
    "objective": (
        "fastcofi.kernels.objective",
        ["_penalty_rows", "_own_rows", "cost_and_grad_buffered", "cost_and_grad_two_pass"],
        ["tests/test_objective.py", "-k",
         "dense_reference or both_kernels or finite_differences or uninitialized or many_chunks "
         "or race_free or float32_reads"],
    ),
    "solvers-kernels": (
        "fastcofi.kernels.rowsolve",
        ["_gather", "_dual_system", "_dual_combination", "_solve_dual", "_solve_row_tiled",
         "_cg_row", "solve_row", "solve_rows"],
        ["tests/test_solvers.py", "-k",
         "row_solve or training_rows or jacobi or als_sweep_ends or fewer_ratings_than_unknowns "
         "or as_many_ratings or bfloat16"],
    ),
    "cholesky-kernels": (
        "fastcofi.kernels.cholesky",
        ["_cholesky_in_place", "_cholesky_solve", "_forward_solve", "_backward_solve"],
        ["tests/test_solvers.py", "-k",
         "cholesky or row_solve or training_rows or jacobi or als_sweep_ends "
         "or fewer_ratings_than_unknowns or as_many_ratings or bfloat16"],
    ),
    "bfloat16-kernels": (
        "fastcofi.kernels.bfloat16",
        ["to_bfloat16"],
        ["tests/test_solvers.py", "-k", "bfloat16"],
    ),
    "solvers": (
        "fastcofi.train.solvers",
        ["minimize_scipy", "_minimize_preconditioned", "_scipy_options", "_check_finite",
         "_warn", "_caller_level", "minimize_als", "_minimize_projected", "_move_to",
         "_segmented_result"],
        ["tests/test_solvers.py", "tests/test_projected.py", "-k",
         "not vb and not all_solvers"],
    ),
    "projected-kernels": (
        "fastcofi.kernels.rowsolve",
        ["_row_gram", "row_preconditioners"],
        ["tests/test_projected.py", "tests/test_solvers.py", "-k",
         "preconditioners or projected or row_solve or training_rows"],
    ),

    "serving-kernels": (
        "fastcofi.kernels.topn",
        ["_worse", "_sift_down", "select_top_n", "top_n_batch", "cosine_top_n", "pair_dots"],
        ["tests/test_serving.py", "-k",
         "select_top_n or ties or ten_equal or zero_norm or brute_force or exclusions or padding "
         "or string_ids or similar or pair_dots"],
    ),
    "fold-in-kernels": (
        "fastcofi.kernels.foldin",
        ["_fold_known", "_has_repeat", "_all_finite", "fold_in_row", "fold_in_ids"],
        ["tests/test_serving.py", "-k", "fold_in or new_user"],
    ),
    "sgd": (
        "fastcofi.train.sgd",
        ["n_blocks", "blocks_of", "_per_rating", "minimize_sgd"],
        ["tests/test_sgd.py"],
    ),
    "sgd-kernels": (
        "fastcofi.kernels.sgd",
        ["rows_sorted", "_block", "sgd_epoch"],
        ["tests/test_sgd.py"],
    ),
    "gibbs": (
        "fastcofi.train.gibbs",
        ["_sample_scale_shape", "_sample_scales", "_inverse_scales", "predictive", "run_chain",
         "stack_samples"],
        ["tests/test_gibbs.py"],
    ),
    "gibbs-kernels": (
        "fastcofi.kernels.gibbs",
        ["sample_row", "sample_rows"],
        ["tests/test_gibbs.py"],
    ),
    "serving": (
        "fastcofi.serving",
        ["_check_n", "_one_index", "_candidate_mask", "_pad_id", "_ids_of", "_top_one",
         "_top_n_numpy", "_batch_rows", "recommend", "_fold", "fold_in", "recommend_new_user",
         "predict_new_user", "add_users", "_norms", "similar"],
        # The sampled model's test too: add_users carries a posterior's draws along.
        ["tests/test_serving.py",
         "tests/test_gibbs.py::test_serving_paths_work_for_a_sampled_model", "-k",
         "not concurrent and not workqueue and not compilation and not cluster"],
    ),
}

_SWAP = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
    ast.FloorDiv: ast.Div, ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult,
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.And: ast.Or, ast.Or: ast.And,
}


def _mutations(node):
    """(description, mutate(node) -> None) for one AST node."""
    out = []
    if isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in _SWAP:
        new = _SWAP[type(node.op)]
        out.append((f"{type(node.op).__name__} -> {new.__name__}",
                    lambda n, new=new: setattr(n, "op", new())))
    if isinstance(node, ast.BoolOp) and type(node.op) in _SWAP:
        new = _SWAP[type(node.op)]
        out.append((f"{type(node.op).__name__} -> {new.__name__}",
                    lambda n, new=new: setattr(n, "op", new())))
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _SWAP:
        new = _SWAP[type(node.ops[0])]
        out.append((f"{type(node.ops[0]).__name__} -> {new.__name__}",
                    lambda n, new=new: setattr(n, "ops", [new()])))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        out.append(("-x -> +x", lambda n: setattr(n, "op", ast.UAdd())))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        out.append(("drop not", lambda n: setattr(n, "_drop", True)))
    if (isinstance(node, ast.Constant) and type(node.value) in (int, float)
            and not isinstance(node.value, bool)):
        value = node.value
        new_value = value + 1 if isinstance(value, int) else (1.0 if value == 0 else value * 2)
        out.append((f"{value!r} -> {new_value!r}", lambda n, v=new_value: setattr(n, "value", v)))
    if isinstance(node, ast.Constant) and isinstance(node.value, bool):
        out.append((f"{node.value} -> {not node.value}",
                    lambda n: setattr(n, "value", not n.value)))
    return out


class _DropNot(ast.NodeTransformer):
    def visit_UnaryOp(self, node):  # noqa: N802 (ast's name)
        self.generic_visit(node)
        return node.operand if getattr(node, "_drop", False) else node


def mutants(source, functions):
    """Yield (function, line, description, mutated function source without decorators)."""
    tree = ast.parse(source)
    targets = [node for node in tree.body
               if isinstance(node, ast.FunctionDef) and node.name in functions]
    missing = set(functions) - {node.name for node in targets}
    if missing:
        raise SystemExit(f"functions not found: {sorted(missing)}")
    for function in targets:
        # Decorators and default arguments run at import: mutate only the body.
        spots = [node for stmt in function.body for node in ast.walk(stmt)]
        for position, node in enumerate(spots):
            for description, mutate in _mutations(node):
                mutated = copy.deepcopy(function)
                mutated.decorator_list = []
                mutate([n for stmt in mutated.body for n in ast.walk(stmt)][position])
                mutated = ast.fix_missing_locations(_DropNot().visit(mutated))
                yield function.name, node.lineno, description, ast.unparse(mutated)


class MutantTimeout(Exception):
    """Raised by the alarm in a test that runs past ``--timeout``."""


def _time_out(signum, frame):
    raise MutantTimeout("the tests ran past the mutant's time limit")


def run(group, functions=None, budget=600.0, limit=None, timeout=60, lines=None):
    module_name, default_functions, tests = GROUPS[group]
    os.environ["NUMBA_DISABLE_JIT"] = "1"  # before numba is imported
    import importlib

    import pytest

    module = importlib.import_module(module_name)

    args = ["-x", "-q", "-p", "no:cacheprovider", "--hypothesis-profile=nojit", "-m",
            "not slow", "--no-header", "--no-summary", "-W", "ignore", *tests]
    if pytest.main(args) != 0:
        raise SystemExit("the tests fail without a mutant: fix them first")
    start = time.monotonic()
    killed, survived, skipped = [], [], 0
    chosen = [m for m in mutants(Path(module.__file__).read_text(),
                                 functions or default_functions)
              if lines is None or m[1] in lines]
    for count, (name, line, description, source) in enumerate(chosen):
        if (limit is not None and count >= limit) or time.monotonic() - start > budget:
            skipped += 1
            continue
        original = module.__dict__[name]
        # Every module that imported the function by name (the package's and the tests') sees
        # the mutant too.
        holders = [m.__dict__ for m in list(sys.modules.values())
                   if getattr(m, "__dict__", None) is not None
                   and m.__dict__.get(name) is original]
        # Compiled under the module's own file name: code that looks at its callers' files
        # (`solvers._caller_level`) must see the mutant as part of the package.
        exec(compile(source, module.__file__, "exec"), module.__dict__)
        for holder in holders:
            holder[name] = module.__dict__[name]
        # A mutant can loop for ever (a heap sift that never ends): the alarm raises inside
        # the test, which then fails, and the mutant counts as killed.
        signal.signal(signal.SIGALRM, _time_out)
        signal.alarm(int(timeout))
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                outcome = killed if pytest.main(args) != 0 else survived
        finally:
            signal.alarm(0)
            for holder in holders:
                holder[name] = original
        outcome.append((name, line, description))
        print(f"{'killed' if outcome is killed else 'SURVIVED':9s} {name}:{line} {description}",
              flush=True)
    print(f"\n{group}: {len(killed) + len(survived)} mutants in {time.monotonic() - start:.0f} s: "
          f"{len(killed)} killed, {len(survived)} survived; {skipped} not run (budget)")
    for name, line, description in survived:
        print(f"  survivor {name}:{line} {description}")
    return survived


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("group", choices=sorted(GROUPS))
    parser.add_argument("--functions", nargs="+", help="only these kernels of the group's file")
    parser.add_argument("--budget", type=float, default=600.0,
                        help="seconds; mutants past it are counted, not run (default 600)")
    parser.add_argument("--limit", type=int, help="run at most this many mutants")
    parser.add_argument("--lines", type=int, nargs="+",
                        help="only the mutants on these lines of the group's file (a survivor "
                             "checked again)")
    parser.add_argument("--timeout", type=int, default=60,
                        help="seconds per mutant before it counts as killed (default 60)")
    args = parser.parse_args(argv)
    survivors = run(args.group, args.functions, args.budget, args.limit, args.timeout,
                    args.lines)
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
