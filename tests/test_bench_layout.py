"""bench/ runs on the installed package: its scripts and suites edit no ``sys.path``, import
nothing from ``tests`` (or a ``bench`` package: siblings are imported by their own names), and
every study script answers ``--help`` without starting its measurements."""

import argparse
import ast
import importlib.util
import json

import numpy as np
import pytest

from tests.conftest import REPO

BENCH = REPO / "bench"
FILES = sorted(BENCH.glob("*.py"))
SCRIPTS = [p for p in FILES if "__main__" in p.read_text()]


def _imported_roots(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield "." if node.level else node.module.split(".")[0]


def _touches_sys_path(tree):
    """An attribute chain ``sys.path.<anything>`` or an assignment to ``sys.path``."""
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and node.value.attr == "path" and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "sys"):
            return True
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Attribute) and t.attr == "path"
                and isinstance(t.value, ast.Name) and t.value.id == "sys" for t in node.targets):
            return True
    return False


def test_bench_is_not_a_package():
    # Scripts import their siblings by name (python3 bench/NAME.py puts bench/ on sys.path);
    # with an __init__.py pytest would import the suites as bench.* and those imports would fail.
    assert FILES, f"no benchmark files found in {BENCH}"
    assert not (BENCH / "__init__.py").exists()


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_no_sys_path_edits_or_test_imports(path):
    tree = ast.parse(path.read_text())
    assert not _touches_sys_path(tree), f"{path.name} edits sys.path; import the installed package"
    roots = set(_imported_roots(tree))
    assert not roots & {"tests", "bench", "."}, (
        f"{path.name} imports {sorted(roots & {'tests', 'bench', '.'})}: import the installed "
        "package, and bench/ siblings by their own names"
    )


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse_their_arguments(path):
    # A script without a parser would start a long run when asked for --help.
    assert "ArgumentParser(" in path.read_text(), f"{path.name} has no argparse parser"


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


@pytest.mark.parametrize("path", sorted((BENCH / "results").glob("*.json")), ids=lambda p: p.name)
def test_recorded_results_name_no_paths_of_the_machine_that_ran_them(path):
    found = [s for s in _strings(json.loads(path.read_text())) if s.startswith(("/", "~"))]
    assert not found, f"{path.name}: {found}"


def _load(name, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # its siblings, as `python3 bench/...` finds them
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_large_scale_records_its_folder_and_output_without_their_paths(monkeypatch):
    large_scale = _load("large_scale", monkeypatch)
    assert large_scale.recorded_argv(
        ["train", "--folder", "/data/netflix", "--solver", "als", "--out", "/x/results/a.json",
         "--record"]
    ) == ["train", "--folder", "DIR", "--solver", "als", "--out", "a.json", "--record"]
    assert large_scale.recorded_argv(["all", "--folder=/data/n", "--out=/x/b.json"]) == [
        "all", "--folder=DIR", "--out=b.json"]


def test_a_relative_output_path_is_taken_from_bench_wherever_the_script_runs(monkeypatch,
                                                                             tmp_path):
    # bench/README.md writes its commands as `python3 bench/NAME.py ... --out results/...`.
    harness = _load("harness", monkeypatch)
    monkeypatch.chdir(tmp_path)
    assert harness.output_path("results/a.json") == str(BENCH / "results" / "a.json")
    assert harness.output_path(str(tmp_path / "b.json")) == str(tmp_path / "b.json")
    assert harness.output_path("") == ""


def _output_arguments(tree):
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_argument" and node.args
                and isinstance(node.args[0], ast.Constant) and node.args[0].value == "--out"):
            yield node


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_output_paths_are_resolved_alike(path):
    # An --out that takes a path goes through harness.output_path; one that takes a stem (a
    # name in bench/results, no folder) needs none.
    for call in _output_arguments(ast.parse(path.read_text())):
        keywords = {k.arg: k.value for k in call.keywords}
        resolved = isinstance(keywords.get("type"), ast.Name) and keywords["type"].id == (
            "output_path")
        default = keywords.get("default")
        stem = isinstance(default, ast.Constant) and "/" not in str(default.value)
        assert resolved or stem, f"{path.name}: --out takes a path without output_path"


def test_compare_scale_rounds_pair_each_sweep_with_the_same_rounds_epoch(monkeypatch):
    """``--rounds``: each row keeps the first curve it has and the median of its rounds'
    seconds per iteration, and a sweep is set against LIBMF's epoch of the same round; a failed
    fit, or an epoch of 0 s or less (a difference of two wall times), is left out."""
    compare_scale = _load("compare_scale", monkeypatch)

    def row(seconds, per_iteration):
        return {"seconds": seconds, "probe_rmse": [0.8] * len(seconds),
                "seconds_per_iteration": per_iteration}

    rounds = [
        {"fastcofi als": {"error": ["Killed"]}, "LIBMF lambda 0.02": row([3.0], 0.4)},
        {"fastcofi als": row([1.0, 2.0], 0.9), "LIBMF lambda 0.02": row([9.0], 1.0)},
        {"fastcofi als": row([9.0], 0.5), "LIBMF lambda 0.02": row([9.0], -0.1)},
        {"fastcofi als": row([9.0], 0.7), "LIBMF lambda 0.02": row([9.0], 0.5)},
        {"fastcofi als": row([9.0], 0.6), "LIBMF lambda 0.02": row([9.0], 0.6)},
    ]
    merged = compare_scale.merged_rounds(rounds)
    assert merged["fastcofi als"]["seconds"] == [1.0, 2.0]
    assert merged["fastcofi als"]["rounds_seconds_per_iteration"] == [None, 0.9, 0.5, 0.7, 0.6]
    assert merged["fastcofi als"]["seconds_per_iteration"] == pytest.approx(0.65)
    assert merged["LIBMF lambda 0.02"]["seconds"] == [3.0]
    assert merged["LIBMF lambda 0.02"]["seconds_per_iteration"] == pytest.approx(0.55)
    ratios = compare_scale.paired_ratios(rounds)
    assert list(ratios) == ["fastcofi als s/iteration / LIBMF lambda 0.02 s/epoch"]
    assert np.allclose(ratios["fastcofi als s/iteration / LIBMF lambda 0.02 s/epoch"],
                       [0.9, 1.4, 1.0])
    assert compare_scale.merged_rounds(rounds[:1]) is rounds[0]
    with pytest.raises(SystemExit):
        compare_scale.main(["--rounds", "0"])


def test_compare_scale_unwatched_fit_scores_the_probe_once_after_training(monkeypatch,
                                                                          tmp_path):
    """A run of ``UNWATCHED`` fits without the probe (its seconds per iteration are the sweeps
    alone, as LIBMF's epochs are) and scores the probe once at the end: the RMSE the watched
    fit records after its last iteration, from the same parameters."""
    import fastcofi

    compare_scale = _load("compare_scale", monkeypatch)
    monkeypatch.setattr(compare_scale, "SHAPE", (40, 30))
    rng = np.random.default_rng(0)
    pairs = rng.choice(40 * 30, size=680, replace=False)
    arrays = {}
    for part, chosen in (("train", pairs[:600]), ("probe", pairs[600:])):
        for name, values in (("users", chosen // 30), ("items", chosen % 30),
                             ("values", rng.integers(1, 6, chosen.size).astype(float))):
            arrays[f"{part}_{name}"] = str(tmp_path / f"{part}_{name}.npy")
            np.save(arrays[f"{part}_{name}"], values)
    validations = []
    fit = fastcofi.MatrixFactorization.fit

    def recording_fit(self, ratings, **kwargs):
        validations.append(kwargs.get("validation"))
        return fit(self, ratings, **kwargs)

    monkeypatch.setattr(fastcofi.MatrixFactorization, "fit", recording_fit)
    rows = {}
    for watched in (True, False):
        spec = tmp_path / "spec.json"
        spec.write_text(json.dumps({"arrays": arrays, "params": {"solver": "als"},
                                    "iterations": 3, "k": 2, "threads": 1,
                                    "watched": watched}))
        compare_scale.fastcofi_worker(spec, tmp_path / "out.json")
        rows[watched] = json.loads((tmp_path / "out.json").read_text())
    assert validations[0] is not None and validations[1] is None
    assert len(rows[True]["probe_rmse"]) == 3 and len(rows[False]["probe_rmse"]) == 1
    assert rows[False]["probe_rmse"][0] == pytest.approx(rows[True]["probe_rmse"][-1],
                                                         rel=1e-12)
    unwatched = rows[False]
    assert len(unwatched["cost"]) == 3
    # One sweep's seconds, not the whole fit's.
    assert 0 < unwatched["seconds_per_iteration"] < (unwatched["seconds"][0]
                                                      - unwatched["build_seconds"])
    specs = []

    def fake_run(command, spec, timeout):
        specs.append(spec)
        return {}

    monkeypatch.setattr(compare_scale, "run_fresh", fake_run)
    args = argparse.Namespace(only="als,als-unwatched", factors=2, threads=1, timeout=1.0,
                              libmf_python=None)
    compare_scale.run_round(arrays, args)
    assert [spec["watched"] for spec in specs] == [True, False]
