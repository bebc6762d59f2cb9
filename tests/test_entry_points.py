"""The console script pyproject.toml installs points at a function that exists (the README's
Quickstart runs ``fastcofi demo`` through it)."""

import importlib

import pytest

from tests.conftest import REPO

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")


def test_console_scripts_resolve():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts, "pyproject.toml declares no console script"
    for name, target in scripts.items():
        module, _, attr = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attr, None)), (
            f"console script {name!r} points at {target!r}, which is not a callable"
        )
